//! `drover simulate`: N real agents in this process against a real broker, with the traffic and
//! faults of a profile (see [`crate::sim`]). Operators push, roll out and watch them with the
//! usual commands from another terminal; this prints what the fleet did and what it costs.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::broker_args::BrokerArgs;
use crate::sim::{Fault, FleetSpec, Profile, SimFleet};

/// Arguments of `drover simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// How many devices.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// The fleet's root of trust (`drover root init`): the devices trust bundles it signs for.
    #[arg(long)]
    pub root: PathBuf,
    /// Traffic and faults (TOML; every field optional): rate_hz, telemetry_period_s,
    /// drift_window, drift_share, drift_after_s, drift_shift, outage_every_s, outage_s,
    /// crash_during_update, seed.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// The group the devices are in.
    #[arg(long, default_value = "sim")]
    pub group: String,
    /// Device names are PREFIX-0000…
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// The devices' data dirs go here (default: a temporary directory removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = super::parse_duration)]
    pub duration: Option<Duration>,
    /// Print a line of figures this often.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub report_every: Duration,
    /// Runtimes (threads) the agents share.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Also write the final figures as JSON to this file.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// Resident memory of this process, bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The final figures.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    /// Devices simulated.
    pub devices: usize,
    /// How long, s.
    pub seconds: f64,
    /// Resident memory before the agents started, bytes.
    pub rss_before: u64,
    /// Highest resident memory seen, bytes.
    pub rss_peak: u64,
    /// (peak − before) / devices.
    pub rss_per_device: u64,
    /// Requests answered, failed, skipped (device down).
    pub answered: u64,
    /// Requests the devices refused or failed.
    pub failed: u64,
    /// Requests not sent: the device was down.
    pub skipped: u64,
    /// Power cuts, in all.
    pub power_cuts: u64,
    /// Of those, while receiving an update.
    pub crashes_during_update: u64,
    /// Devices whose inputs drifted.
    pub drifting: usize,
    /// Devices per served model version at the end (`iris v2` → count).
    pub serving: std::collections::BTreeMap<String, usize>,
}

/// Runs the simulation; true at the end (the figures are printed).
pub fn run(args: &SimulateArgs) -> anyhow::Result<bool> {
    let profile = match &args.profile {
        Some(p) => Profile::parse(&std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?)
            .with_context(|| format!("profile {}", p.display()))?,
        None => Profile::default(),
    };
    anyhow::ensure!(args.devices >= 1, "--devices must be at least 1");
    let root = crate::trust_docs::load_root(&args.root)?;
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("drover-sim-").tempdir().context("make a temporary directory")?),
    };
    let dir = args.dir.clone().or_else(|| temp.as_ref().map(|t| t.path().to_path_buf())).context("a directory")?;
    let stop = super::stop_on_ctrl_c()?;

    let rss_before = rss_bytes().unwrap_or(0);
    let spec = FleetSpec {
        dir: dir.clone(),
        prefix: args.prefix.clone(),
        devices: args.devices,
        groups: vec![args.group.clone()],
        broker: args.broker.settings()?,
        root,
        profile: profile.clone(),
        threads: args.threads,
    };
    let start = Instant::now();
    let mut fleet = SimFleet::start(&spec)?;
    eprintln!(
        "simulating {} devices (group {}, {} req/s each, telemetry every {} s) against {}; data in {}",
        args.devices,
        args.group,
        profile.rate_hz,
        profile.telemetry_period_s,
        spec.broker.address(),
        dir.display()
    );
    let mut rss_peak = rss_before;
    let mut next_report = start + args.report_every;
    let mut out = std::io::stdout();
    while !stop.load(Ordering::Relaxed) && args.duration.is_none_or(|d| start.elapsed() < d) {
        for f in fleet.step(start.elapsed().as_millis() as u64) {
            let name = |d: usize| fleet.agents.members[d].cfg.device.clone();
            match f {
                Fault::Drift(d) => log::info!("{}: inputs drift from now on", name(d)),
                Fault::PowerCut(d) => log::info!("{}: power cut", name(d)),
                Fault::PowerBack(d) => log::info!("{}: power back", name(d)),
            }
        }
        rss_peak = rss_peak.max(rss_bytes().unwrap_or(0));
        if Instant::now() >= next_report {
            next_report += args.report_every;
            let s = summary(&fleet, start, rss_before, rss_peak);
            let _ = writeln!(
                out,
                "{:>6.0}s  {} devices  rss {:.1} MiB ({:.0} KiB/device)  answered {}  failed {}  cuts {} ({} in updates)  serving {:?}",
                s.seconds,
                s.devices,
                s.rss_peak as f64 / 1048576.0,
                s.rss_per_device as f64 / 1024.0,
                s.answered,
                s.failed,
                s.power_cuts,
                s.crashes_during_update,
                s.serving
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = summary(&fleet, start, rss_before, rss_peak);
    println!("{}", serde_json::to_string_pretty(&s)?);
    if let Some(p) = &args.summary {
        std::fs::write(p, serde_json::to_vec_pretty(&s)?).with_context(|| format!("write {}", p.display()))?;
    }
    drop(fleet);
    drop(temp);
    Ok(true)
}

fn summary(fleet: &SimFleet, start: Instant, rss_before: u64, rss_peak: u64) -> Summary {
    let c = &fleet.traffic.counts;
    let mut serving = std::collections::BTreeMap::new();
    for i in 0..fleet.len() {
        let key = match fleet.agents.serving(i) {
            Some((name, v)) => format!("{name} v{v}"),
            None => "nothing".into(),
        };
        *serving.entry(key).or_insert(0) += 1;
    }
    Summary {
        devices: fleet.len(),
        seconds: start.elapsed().as_secs_f64(),
        rss_before,
        rss_peak,
        rss_per_device: rss_peak.saturating_sub(rss_before) / fleet.len().max(1) as u64,
        answered: c.answered.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        skipped: c.skipped.load(Ordering::Relaxed),
        power_cuts: fleet.done.power_cuts,
        crashes_during_update: fleet.done.crashes_during_update,
        drifting: fleet.done.drifting,
        serving,
    }
}
