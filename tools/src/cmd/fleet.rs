//! `drover fleet`: run the fleet server (`serve`), and read it from a terminal (`status`,
//! `watch`, `device`) through its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::broker_args::BrokerArgs;
use super::fleet_client::{get_json, read_token};
use crate::fleet::drift::Catalog;
use crate::fleet::http::FleetView;
use crate::fleet::registry::{Device, FleetEvent};
use crate::fleet::server::{self, ServeConfig};
use crate::fleet::storage::Retention;

/// The fleet server and its views.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Run the fleet server: registry, telemetry store, dashboard, JSON API, /metrics.
    Serve(Box<ServeArgs>),
    /// Print the fleet table (exit 1 if no device is known).
    Status(StatusArgs),
    /// The fleet table, redrawn as it changes.
    Watch(StatusArgs),
    /// One device's details and recent events.
    Device(DeviceArgs),
}

/// `drover fleet serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The database: a SQLite file (created if missing), or a PostgreSQL URL
    /// (`postgres://user@host/db`) that several server instances share.
    #[arg(long, default_value = "fleet.db", env = "DROVER_FLEET_DB", hide_env_values = true)]
    pub db: String,
    /// The CA (PEM) PostgreSQL's TLS certificate must chain to: connections then use TLS (add
    /// `?sslmode=require` to the URL to refuse a server without it).
    #[arg(long)]
    pub db_ca: Option<PathBuf>,
    /// A directory of the bundles in service: their reference statistics let the server merge
    /// the devices' drift windows per model version and group.
    #[arg(long)]
    pub bundles: Option<PathBuf>,
    /// The operator key rollouts sign their commands with (without it the server runs none).
    #[arg(long)]
    pub operator_key: Option<PathBuf>,
    /// The operator key's delegation.
    #[arg(long)]
    pub delegation: Option<PathBuf>,
    /// Where the dashboard, the API and /metrics listen (beyond loopback only with a token).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// A file holding the token every HTTP request must carry.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// MQTT client id (one per server instance: its persistent session holds what it missed).
    #[arg(long, default_value = "drover-fleet")]
    pub client_id: String,
    /// MQTT connections reading the report streams. More than one share them through a
    /// `$share/drover-fleet/` subscription (as further server instances do): each holds the
    /// broker's window of unacknowledged messages, so the database stays busy while one waits
    /// for a commit. Over PostgreSQL even one does, so that the servers sharing the database
    /// split the reports. Needs a broker that keeps a killed member's messages (Mosquitto), not
    /// the embedded one.
    #[arg(long, default_value_t = server::DEFAULT_INGEST_LINKS, value_parser = parse_links)]
    pub ingest_links: usize,
    /// The shared-subscription group (`$share/GROUP/`) of the ingest connections and further
    /// server instances. Mosquitto's ACL file does not stop a device from joining a group, and a
    /// device that joins takes its turn: the reports dealt to it are lost to the servers. Where
    /// devices share the broker, give a name they cannot guess, from a file like a password.
    #[arg(long, default_value = crate::fleet::record::SHARE_GROUP)]
    pub share_group: String,
    /// A file holding the shared-subscription group name (overrides --share-group).
    #[arg(long)]
    pub share_group_file: Option<PathBuf>,
    /// How long every telemetry period is kept.
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    pub raw_retention: Duration,
    /// How long five-minute roll-ups, drift windows and events are kept.
    #[arg(long, default_value = "30d", value_parser = super::parse_duration)]
    pub retention: Duration,
    /// At most this many raw periods in the database (the oldest go first).
    #[arg(long, default_value_t = 5_000_000)]
    pub max_raw_rows: u64,
}

/// `drover fleet status` and `watch`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The fleet server.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "DROVER_FLEET")]
    pub server: String,
    /// A file holding the server's token.
    #[arg(long, env = "DROVER_FLEET_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Only this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Only devices with this label (KEY=VALUE, from the agents' `[labels]`).
    #[arg(long)]
    pub label: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `drover fleet device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The device id.
    pub id: String,
    /// The fleet server.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "DROVER_FLEET")]
    pub server: String,
    /// A file holding the server's token.
    #[arg(long, env = "DROVER_FLEET_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `drover fleet` command.
pub fn run(cmd: &FleetCommand) -> anyhow::Result<bool> {
    match cmd {
        FleetCommand::Serve(args) => serve(args).map(|_| true),
        FleetCommand::Status(args) => {
            let view = fetch_fleet(args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", table(&view));
            }
            Ok(!view.devices.is_empty())
        }
        FleetCommand::Watch(args) => loop {
            match fetch_fleet(args) {
                Ok(view) => print!("\x1b[2J\x1b[H{}", table(&view)),
                Err(e) => println!("\x1b[2J\x1b[H{e:#}"),
            }
            std::thread::sleep(Duration::from_secs(2));
        },
        FleetCommand::Device(args) => device(args),
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let catalog = match &args.bundles {
        None => Catalog::default(),
        Some(dir) => {
            let (catalog, skipped) = Catalog::load_dir(dir).context("--bundles")?;
            for s in skipped {
                log::warn!("{s}");
            }
            catalog
        }
    };
    let signer = match (&args.operator_key, &args.delegation) {
        (Some(key), Some(delegation)) => {
            Some(crate::fleet::rollouts::Signer { key: key.clone(), delegation: delegation.clone() })
        }
        (None, None) => None,
        _ => anyhow::bail!("--operator-key and --delegation go together"),
    };
    let cfg = ServeConfig {
        signer,
        catalog,
        broker: args.broker.settings()?,
        client_id: args.client_id.clone(),
        db: server::Database::parse(&args.db, args.db_ca.clone()),
        http: args.http,
        token: read_token(&args.token_file)?,
        retention: Retention {
            raw: args.raw_retention,
            rollup: args.retention,
            max_raw_rows: args.max_raw_rows,
            ..Retention::default()
        },
        batch_max: server::DEFAULT_BATCH_MAX,
        batch_delay: server::DEFAULT_BATCH_DELAY,
        ingest_links: args.ingest_links,
        share_group: share_group(args)?,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (running, listener) = server::start(&cfg).await.with_context(|| format!("fleet server ({})", cfg.db))?;
        eprintln!("fleet server: http://{} (database {}, broker {})", running.http, cfg.db, cfg.broker.address());
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        server::serve(cfg.clone(), &running, listener, Arc::new(unix_ms), shutdown).await.context("fleet server")
    })
}

/// Unix ms now: the server's clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn fetch_fleet(args: &StatusArgs) -> anyhow::Result<FleetView> {
    let token = read_token(&args.token_file)?;
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(g) = &args.group {
        query.push(("group", g));
    }
    if let Some(l) = &args.label {
        anyhow::ensure!(l.contains('='), "--label must be KEY=VALUE, not '{l}'");
        query.push(("label", l));
    }
    get_json(&args.server, "/api/fleet", &query, &token)
}

fn micros(us: Option<u32>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us >= 1000 => format!("{:.1} ms", f64::from(us) / 1000.0),
        Some(us) => format!("{us} µs"),
    }
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// The fleet table as text.
pub fn table(view: &FleetView) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:<8} {:<12} {:>7} {:>9} {:>7} {:>14} {:>9}\n",
        "DEVICE", "GROUPS", "ONLINE", "MODEL", "VERSION", "P99", "ERRORS", "DRIFT", "LAST SEEN"
    );
    for d in &view.devices {
        let drift = d.drift.as_ref().map_or("-".into(), |w| {
            if w.drifted.is_empty() { format!("{:.3}", w.score) } else { format!("{:.3} DRIFT", w.score) }
        });
        out += &format!(
            "{:<20} {:<12} {:<8} {:<12} {:>7} {:>9} {:>7} {:>14} {:>9}\n",
            d.id,
            d.groups.join(","),
            if d.online { "online" } else { "OFFLINE" },
            d.model.as_deref().unwrap_or("-"),
            d.version.map_or("-".into(), |v| format!("v{v}")),
            micros(d.latency_us.map(|l| l.p99)),
            d.totals.errors(),
            drift,
            ago(view.generated_ms, d.last_seen_ms),
        );
    }
    let online = view.devices.iter().filter(|d| d.online).count();
    out += &format!("{online} of {} devices online\n", view.devices.len());
    for m in &view.drift {
        let drifted: Vec<&str> = m.features.iter().filter(|f| f.drifted.is_some()).map(|f| f.name.as_str()).collect();
        out += &format!(
            "drift {} v{} {}: {:.3} over {} devices, {} samples{}\n",
            m.model,
            m.version,
            m.group.as_deref().map_or("fleet-wide".to_string(), |g| format!("group {g}")),
            m.score,
            m.devices,
            m.samples,
            if drifted.is_empty() { String::new() } else { format!(", DRIFTED: {}", drifted.join(", ")) }
        );
    }
    out
}

#[derive(serde::Deserialize)]
struct DeviceReply {
    device: Device,
    events: Vec<FleetEvent>,
}

fn device(args: &DeviceArgs) -> anyhow::Result<bool> {
    let token = read_token(&args.token_file)?;
    drover_wire::topic::Name::new(&args.id).map_err(|e| anyhow::anyhow!("device id '{}': {e}", args.id))?;
    let reply: serde_json::Value = get_json(&args.server, &format!("/api/devices/{}", args.id), &[], &token)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(true);
    }
    let DeviceReply { device: d, events } = serde_json::from_value(reply).context("fleet server: unexpected reply")?;
    println!("device     {}", d.id);
    println!("presence   {}", if d.online { "online" } else { "OFFLINE" });
    println!("groups     {}", d.groups.join(", "));
    if !d.labels.is_empty() {
        let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("labels     {}", labels.join(", "));
    }
    println!("model      {} {}", d.model.as_deref().unwrap_or("-"), d.version.map_or("".into(), |v| format!("v{v}")));
    println!("slot       {}", d.slot.as_deref().unwrap_or("-"));
    println!("agent      {} {}", d.agent.as_deref().unwrap_or("-"), d.arch.as_deref().unwrap_or(""));
    println!("inferences {}", d.totals.inferences);
    println!(
        "errors     {} (input {}, engine {}, busy {}, no model {})",
        d.totals.errors(),
        d.totals.input_errors,
        d.totals.engine_errors,
        d.totals.busy_errors,
        d.totals.no_model_errors
    );
    if let Some(l) = &d.latency_us {
        println!("latency    p50 {} p99 {}", micros(Some(l.p50)), micros(Some(l.p99)));
    }
    if let Some(w) = &d.drift {
        println!(
            "drift      {:.3} ({})",
            w.score,
            if w.drifted.is_empty() { "none drifted".into() } else { w.drifted.join(", ") }
        );
    }
    println!("operation  {}", d.operation.as_deref().unwrap_or("-"));
    println!("events:");
    for e in events {
        println!("  {} {:<10} {}", super::rfc3339(e.at_ms / 1000), e.kind, e.text);
    }
    Ok(true)
}

/// `--ingest-links`: 1 to 64 (each is a connection and a session at the broker).
fn parse_links(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=64) => Ok(n),
        _ => Err(format!("'{s}' is not a number of connections from 1 to 64")),
    }
}

/// `--share-group`, or the first line of `--share-group-file`: one MQTT topic level.
fn share_group(args: &ServeArgs) -> anyhow::Result<String> {
    let name = match &args.share_group_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("read {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        None => args.share_group.clone(),
    };
    check_share_group(&name)?;
    Ok(name)
}

/// A share name is one topic level without wildcards (MQTT 5, 4.8.2).
fn check_share_group(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['/', '+', '#']) {
        anyhow::bail!("the share group must be one topic level (no '/', '+' or '#'), got '{name}'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_each_device_and_the_online_count() {
        let d = Device {
            id: "pi-1".into(),
            online: false,
            groups: vec!["lab".into()],
            model: Some("iris".into()),
            version: Some(3),
            last_seen_ms: 1_000,
            ..Device::default()
        };
        let text = table(&FleetView { generated_ms: 121_000, devices: vec![d], drift: vec![], rollouts: vec![] });
        let row = text.lines().nth(1).expect("a row");
        for cell in ["pi-1", "lab", "OFFLINE", "iris", "v3", "2m ago"] {
            assert!(row.contains(cell), "{cell} in {row}");
        }
        assert!(text.ends_with("0 of 1 devices online\n"));
    }

    #[test]
    fn ingest_links_and_share_groups_are_checked() {
        assert_eq!((parse_links("1"), parse_links("64")), (Ok(1), Ok(64)));
        assert!(parse_links("0").is_err() && parse_links("65").is_err() && parse_links("x").is_err());
        assert!(check_share_group("fleet-7Hq2").is_ok());
        for bad in ["", "a/b", "+", "g#"] {
            assert!(check_share_group(bad).is_err(), "{bad:?}");
        }
    }
}
