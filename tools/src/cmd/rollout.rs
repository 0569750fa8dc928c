//! `drover rollout`: staged rollouts run by the fleet server. `create` sends the signed bundle
//! and the plan; the server deploys stage by stage, shadowing and soaking each, and halts (and
//! rolls back) when a gate fails. `status`, `pause`, `resume`, `abort` follow and steer it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::fleet_client::{get_json, post_json, read_token};
use crate::rollout::{Gates, Rollout, State};

/// The rollout verbs.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a staged rollout of a signed bundle to a group.
    Create(Box<CreateArgs>),
    /// Show one rollout (or all) and its log.
    Status(StatusArgs),
    /// Hold a rollout where it is.
    Pause(IdArgs),
    /// Go on with a paused rollout.
    Resume(IdArgs),
    /// Stop a rollout and roll back the devices it moved.
    Abort(IdArgs),
}

/// Where the fleet server is.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The fleet server.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "DROVER_FLEET")]
    pub server: String,
    /// A file holding the server's token.
    #[arg(long, env = "DROVER_FLEET_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// `drover rollout create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The signed bundle (.drv).
    pub bundle: PathBuf,
    /// The group to roll out to.
    #[arg(long)]
    pub group: String,
    /// Cumulative shares of the group per stage, percent.
    #[arg(long, default_value = "1,10,50,100", value_delimiter = ',')]
    pub stages: Vec<u32>,
    /// Run the version in shadow this long on each stage before serving it.
    #[arg(long, value_parser = super::parse_duration)]
    pub shadow_first: Option<Duration>,
    /// How long each stage serves it before its gates are judged.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub soak: Duration,
    /// How long a stage's devices have to install it.
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    pub install_timeout: Duration,
    /// Least requests per device before a window is judged (it waits up to twice its length).
    #[arg(long, default_value_t = 20)]
    pub min_requests: u64,
    /// Most errors per request in the soak (0.01 = 1 %).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Least top-1 agreement with the served model in the shadow (0.95 = 95 %).
    #[arg(long)]
    pub min_shadow_agreement: Option<f64>,
    /// Most the stage's drift score may exceed the rest of the group's (PSI).
    #[arg(long)]
    pub max_drift_increase: Option<f64>,
    /// Most the stage's p99 may exceed the rest of the group's (0.5 = 50 % slower).
    #[arg(long)]
    pub max_p99_increase: Option<f64>,
    /// The fleet server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `drover rollout status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One rollout (else all).
    pub id: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The fleet server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `drover rollout pause|resume|abort`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The rollout.
    pub id: String,
    /// The fleet server.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs a `drover rollout` verb; `status` is false for a halted or aborted rollout.
pub fn run(cmd: &RolloutCommand) -> anyhow::Result<bool> {
    match cmd {
        RolloutCommand::Create(a) => {
            let bytes = std::fs::read(&a.bundle).with_context(|| format!("read {}", a.bundle.display()))?;
            let req = crate::fleet::rollouts::CreateRequest {
                group: a.group.clone(),
                stages: a.stages.clone(),
                shadow_ms: a.shadow_first.map_or(0, |d| d.as_millis() as u64),
                soak_ms: a.soak.as_millis() as u64,
                install_timeout_ms: a.install_timeout.as_millis() as u64,
                min_requests: a.min_requests,
                gates: Gates {
                    max_error_rate: a.max_error_rate,
                    min_shadow_agreement: a.min_shadow_agreement,
                    max_drift_increase: a.max_drift_increase,
                    max_p99_increase: a.max_p99_increase,
                },
                bundle_hex: hex::encode(&bytes),
            };
            let token = read_token(&a.server.token_file)?;
            let r: Rollout = post_json(&a.server.server, "/api/rollouts", &serde_json::to_value(&req)?, &token)?;
            println!("{}", r.plan.id);
            Ok(true)
        }
        RolloutCommand::Status(a) => {
            let token = read_token(&a.server.token_file)?;
            let rollouts: Vec<Rollout> = match &a.id {
                Some(id) => vec![get_json(&a.server.server, &format!("/api/rollouts/{}", name(id)?), &[], &token)?],
                None => get_json(&a.server.server, "/api/rollouts", &[], &token)?,
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&rollouts)?);
            } else {
                for r in &rollouts {
                    print!("{}", describe(r));
                }
            }
            Ok(rollouts.iter().all(|r| !matches!(r.state, State::Halted { .. } | State::Aborted)))
        }
        RolloutCommand::Pause(a) => control(a, "pause"),
        RolloutCommand::Resume(a) => control(a, "resume"),
        RolloutCommand::Abort(a) => control(a, "abort"),
    }
}

fn name(id: &str) -> anyhow::Result<&str> {
    drover_wire::topic::Name::new(id).map_err(|e| anyhow::anyhow!("rollout id '{id}': {e}"))?;
    Ok(id)
}

fn control(a: &IdArgs, verb: &str) -> anyhow::Result<bool> {
    let token = read_token(&a.server.token_file)?;
    let path = format!("/api/rollouts/{}/{verb}", name(&a.id)?);
    let r: Rollout = post_json(&a.server.server, &path, &serde_json::json!({}), &token)?;
    print!("{}", describe(&r));
    Ok(true)
}

/// A rollout in a few lines: where it stands, then its log.
pub fn describe(r: &Rollout) -> String {
    let p = &r.plan;
    let state = match &r.state {
        State::Running => {
            format!("running, stage {}/{} ({} %), {:?}", r.stage + 1, p.stages.len(), p.stages[r.stage], r.phase)
        }
        State::Paused => format!("paused at stage {}/{}", r.stage + 1, p.stages.len()),
        State::Completed => "completed".into(),
        State::Halted { reason } => format!("HALTED at stage {}: {reason}", r.stage + 1),
        State::Aborted => "aborted".into(),
    };
    let mut out = format!("{}  {} v{} → group {}: {state}\n", p.id, p.model, p.version, p.group);
    for e in &r.log {
        out += &format!("  {}  {}\n", super::rfc3339(e.at_ms / 1000), e.text);
    }
    out
}
