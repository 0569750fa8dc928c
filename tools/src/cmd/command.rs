//! `drover command`: a signed order to a device or group (rollback, install, shadow, split, stop-…),
//! written to a file for `drover-agent command` on a device the broker does not reach (`drover
//! rollback` and `drover shadow` send theirs over MQTT).

use std::path::PathBuf;

use anyhow::Context;
use drover_runtime::trust::sign_document;
use drover_wire::command::{CONTEXT_COMMAND, Command, Operation, SignedCommand, Target};

use crate::keys::{Role, id_of, read_secret};
use crate::trust_docs::{load_delegation, save};

/// What the command orders.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Order {
    /// Switch back to the previous model.
    Rollback,
    /// Install this version of this model.
    Install {
        /// Model name.
        #[arg(long)]
        name: String,
        /// Version.
        #[arg(long)]
        version: u64,
    },
    /// Run the staged candidate in shadow of the served model.
    Shadow {
        /// Model name.
        #[arg(long)]
        name: String,
        /// Version.
        #[arg(long)]
        version: u64,
        /// Share of the live inferences the candidate also answers, in (0, 1].
        #[arg(long, default_value_t = 1.0)]
        sample_rate: f64,
    },
    /// Stop the shadow candidate.
    StopShadow,
    /// Split live traffic between the served version (A) and another (B) by request key.
    Split {
        /// Variant A: the served version.
        #[arg(long)]
        a: u64,
        /// Variant B: the staged candidate's or the previous slot's version.
        #[arg(long)]
        b: u64,
        /// Traffic shares of A and B, e.g. `90/10`.
        #[arg(long, default_value = "50/50")]
        split: String,
    },
    /// End the traffic split.
    StopSplit,
}

/// Arguments of `drover command`.
#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// The order.
    #[command(subcommand)]
    pub order: Order,
    /// One device.
    #[arg(long, global = true, conflicts_with = "group")]
    pub device: Option<String>,
    /// A group of devices.
    #[arg(long, global = true)]
    pub group: Option<String>,
    /// The operator secret key.
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// The operator key's delegation.
    #[arg(long, global = true)]
    pub delegation: Option<PathBuf>,
    /// How long the command stays valid.
    #[arg(long, global = true, default_value = "15m", value_parser = super::parse_duration)]
    pub expires: std::time::Duration,
    /// Where to write the signed command.
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
}

/// A checked device, group or model name.
pub fn name(s: &str) -> anyhow::Result<heapless::String<{ drover_wire::manifest::MAX_NAME }>> {
    anyhow::ensure!(drover_wire::manifest::is_valid_name(s), "'{s}' is not a valid device, group or model name");
    heapless::String::try_from(s).map_err(|_| anyhow::anyhow!("'{s}' is too long"))
}

/// The command target and the audience to follow for `--device ID` or `--group NAME`.
pub fn target(device: Option<&str>, group: Option<&str>) -> anyhow::Result<(Target, crate::push::Audience)> {
    use crate::push::Audience;
    let checked = |s: &str| drover_wire::topic::Name::new(s).map_err(|e| anyhow::anyhow!("'{s}': {e}"));
    match (device, group) {
        (Some(d), None) => Ok((Target::Device(name(d)?), Audience::Devices([checked(d)?].into()))),
        (None, Some(g)) => Ok((Target::Group(name(g)?), Audience::Group(checked(g)?))),
        _ => anyhow::bail!("give --device ID or --group NAME"),
    }
}

/// Signs `op` for `target` with the operator key in `key` and its `delegation`; the sequence is
/// `now_ms` (Unix milliseconds), so later commands always supersede earlier ones.
pub fn sign(
    target: Target,
    op: Operation,
    key: &std::path::Path,
    delegation: &std::path::Path,
    expires: std::time::Duration,
    now_ms: u64,
) -> anyhow::Result<(SignedCommand, String)> {
    let key = read_secret(key, Role::Operator)?;
    let delegation = load_delegation(delegation)?;
    anyhow::ensure!(delegation.delegation.key == key.public(), "the delegation is for another key");
    let now = now_ms / 1000;
    let command = Command { target, sequence: now_ms, issued_at: now, expires_at: now + expires.as_secs(), op };
    let sig = sign_document(&key, CONTEXT_COMMAND, &command);
    Ok((SignedCommand { command, delegation, sig }, id_of(&key.public())))
}

/// Signs the command and writes it to `--out`.
pub fn run(args: &CommandArgs, now_ms: u64) -> anyhow::Result<()> {
    let target = match (&args.device, &args.group) {
        (Some(d), None) => Target::Device(name(d)?),
        (None, Some(g)) => Target::Group(name(g)?),
        _ => anyhow::bail!("give --device ID or --group NAME"),
    };
    let (Some(key), Some(delegation), Some(out)) = (&args.key, &args.delegation, &args.out) else {
        anyhow::bail!("drover command needs --key, --delegation and --out");
    };
    let op = match &args.order {
        Order::Rollback => Operation::Rollback,
        Order::Install { name: n, version } => Operation::Install { name: name(n)?, version: *version },
        Order::Shadow { name: n, version, sample_rate } => Operation::Shadow {
            name: name(n)?,
            version: *version,
            sample_ppm: super::shadow::sample_ppm(*sample_rate)?,
        },
        Order::StopShadow => Operation::StopShadow,
        Order::Split { a, b, split } => Operation::Split { a: *a, b: *b, b_ppm: super::ab::b_ppm(split)? },
        Order::StopSplit => Operation::StopSplit,
    };
    let (signed, key_id) = sign(target, op, key, delegation, args.expires, now_ms)?;
    save(out, &signed).context("write the command")?;
    println!(
        "signed {:?} for {} with operator key {} -> {}",
        args.order,
        args.device.as_deref().or(args.group.as_deref()).unwrap_or("?"),
        key_id,
        out.display()
    );
    Ok(())
}
