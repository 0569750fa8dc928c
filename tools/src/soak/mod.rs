//! `drover soak`: one real agent process, for a long time, under steady work: inference at a
//! fixed rate through its local API, telemetry and drift reports to the fleet server, inputs
//! that drift and come back, and a new signed release pushed every few minutes. Its memory,
//! descriptors, threads and data dir are sampled throughout; growth that does not level off is
//! a leak, and it shows here long before it fills a board in the field.
//!
//! Not part of the test run (it takes an hour to mean something); `tests/soak.rs` runs a short
//! one so that the command itself cannot break unnoticed. A program's top level, so its errors
//! are `anyhow`'s.

pub mod load;
pub mod proc_stats;
pub mod trend;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_wire::topic::Name;

use self::load::Load;
use self::proc_stats::{ProcSample, tree_bytes};
use crate::demo::Stack;
use crate::demo::setup::prepare;
use crate::demo::stack::free_port;
use crate::push::Audience;

/// The soaked device's id.
const DEVICE: &str = "soak-00";
/// Its group.
const GROUP: &str = "soak";
/// What drifting inputs get added (cm: a miscalibrated sensor).
const SHIFT: f32 = 3.0;
/// The first part of the run left out of the growth figures.
const WARM_UP: f64 = 0.2;

/// How the soak runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The `drover-agent` binary to soak.
    pub agent: PathBuf,
    /// How long.
    pub duration: Duration,
    /// Inference requests per second.
    pub rate_hz: f64,
    /// A new release every this long.
    pub update_every: Duration,
    /// A reading every this long.
    pub sample_every: Duration,
    /// Seconds between the agent's telemetry reports.
    pub telemetry_s: u32,
    /// Keep the soak's files here (must be empty or new) instead of a removed temporary dir.
    pub keep: Option<PathBuf>,
}

/// One reading.
#[derive(Debug, Clone)]
pub struct Row {
    /// Seconds since the agent started.
    pub at_s: f64,
    /// The agent process.
    pub proc: ProcSample,
    /// Bytes under its data dir.
    pub data_bytes: u64,
    /// Requests answered so far.
    pub answered: u64,
    /// Requests failed so far.
    pub failed: u64,
    /// The last release installed.
    pub version: u64,
    /// Whether the inputs drift now.
    pub drifting: bool,
}

/// One pushed release.
#[derive(Debug, Clone)]
pub struct Update {
    /// Seconds since the agent started, when it was pushed.
    pub at_s: f64,
    /// Its version.
    pub version: u64,
    /// How long until the device reported it installed.
    pub took: Duration,
}

/// What the soak saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every reading, in order.
    pub rows: Vec<Row>,
    /// Every release after the first.
    pub updates: Vec<Update>,
    /// Mean answer time, µs.
    pub mean_latency_us: u64,
    /// Slowest answer, µs.
    pub max_latency_us: u64,
    /// Ended by Ctrl-C before its duration.
    pub interrupted: bool,
}

impl Report {
    /// The least-squares growth of a reading after the warm-up, per hour.
    pub fn growth(&self, value: impl Fn(&Row) -> f64) -> Option<f64> {
        let points: Vec<(f64, f64)> = self.rows.iter().map(|r| (r.at_s, value(r))).collect();
        trend::per_hour(trend::after_warm_up(&points, WARM_UP))
    }
}

/// The soak's own directory: `--keep`'s, or a temporary one removed at the end.
enum Workdir {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Workdir {
    fn path(&self) -> &Path {
        match self {
            Workdir::Kept(p) => p,
            Workdir::Temporary(t) => t.path(),
        }
    }
}

/// The agent process, stopped (SIGTERM, then SIGKILL) when dropped.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(agent: &Path, config: &Path, log: PathBuf) -> anyhow::Result<AgentProcess> {
        let stderr = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(agent)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {}", agent.display()))?;
        Ok(AgentProcess { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the end of the agent's log when it is no longer running.
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait().context("wait for the agent")? {
            None => Ok(()),
            Some(status) => anyhow::bail!("the agent exited ({status}); its log ends with:\n{}", self.log_tail()),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM and the exit status: a clean stop is part of what the soak checks.
    fn stop(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait().context("wait for the agent")?.is_some() {
            return self.check_running();
        }
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).context("the agent's pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).context("SIGTERM the agent")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().context("wait for the agent")? {
                anyhow::ensure!(status.success(), "the agent's stop on SIGTERM: {status}\n{}", self.log_tail());
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the agent did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The agent's configuration: the soak's broker, its API on `api`, telemetry every
/// `telemetry_s`.
fn agent_toml(data_dir: &Path, broker_port: u16, api: SocketAddr, telemetry_s: u32) -> String {
    format!(
        "device = \"{DEVICE}\"\ngroups = [\"{GROUP}\"]\ndata_dir = {data}\n\n[broker]\nhost = \"127.0.0.1\"\nport = {broker_port}\n\n\
         [api]\nlisten = \"{api}\"\n\n[telemetry]\nperiod_s = {telemetry_s}\n",
        data = toml::Value::String(data_dir.to_string_lossy().into_owned()),
    )
}

/// Waits until `url` answers 200.
fn wait_ok(url: &str, within: Duration, agent: &mut AgentProcess) -> anyhow::Result<String> {
    let client: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let deadline = Instant::now() + within;
    loop {
        agent.check_running()?;
        if let Ok(mut r) = client.get(url).call()
            && r.status().is_success()
        {
            return r.body_mut().read_to_string().with_context(|| format!("read {url}"));
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} did not answer within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the soak, writing a line per reading to `out`; stops early when `stop` is set.
pub fn run(opts: &SoakOptions, stop: &AtomicBool, out: &mut dyn Write, now_unix: u64) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.rate_hz > 0.0, "the request rate must be above 0");
    anyhow::ensure!(!opts.sample_every.is_zero() && !opts.update_every.is_zero(), "intervals must be above 0");
    let work = match &opts.keep {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))?;
            anyhow::ensure!(std::fs::read_dir(p)?.next().is_none(), "{} is not empty", p.display());
            Workdir::Kept(p.clone())
        }
        None => Workdir::Temporary(tempfile::tempdir().context("a temporary directory")?),
    };
    let dir = work.path();
    let prepared = prepare(dir, GROUP, now_unix)?;
    let mut stack = Stack::start(dir, &prepared, 1, 0)?;
    let data_dir = dir.join(DEVICE);
    drover_runtime::sim::provision(&data_dir, &prepared.root).context("provision the agent's trust root")?;
    let api: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let config = dir.join("agent.toml");
    std::fs::write(&config, agent_toml(&data_dir, stack.broker.port, api, opts.telemetry_s))
        .with_context(|| format!("write {}", config.display()))?;
    writeln!(out, "Soaking {} for {:?} in {}", opts.agent.display(), opts.duration, dir.display())?;

    let mut agent = AgentProcess::start(&opts.agent, &config, dir.join("agent.log"))?;
    let started = Instant::now();
    let base = format!("http://{api}");
    wait_ok(&format!("{base}/v2/health/live"), Duration::from_secs(30), &mut agent)?;
    let me: BTreeSet<Name> = [Name::new(DEVICE).map_err(|e| anyhow::anyhow!("{e}"))?].into();
    let push = |version: u64| -> anyhow::Result<Duration> {
        let bundle = if version <= 2 {
            prepared.bundles[version as usize - 1].clone()
        } else {
            prepared.releases.build(version)?
        };
        let d = crate::push::deliver::deliver(
            &bundle,
            &stack.broker,
            Audience::Devices(me.clone()),
            1,
            Duration::from_secs(120),
        )?;
        Ok(d.elapsed)
    };
    let took = push(1)?;
    writeln!(out, "iris v1 installed in {:.1} s; {} requests/s from now on", took.as_secs_f64(), opts.rate_hz)?;
    let metadata: serde_json::Value =
        serde_json::from_str(&wait_ok(&format!("{base}/v2/models/iris"), Duration::from_secs(10), &mut agent)?)
            .context("the model's metadata")?;
    let input = metadata["inputs"][0]["name"].as_str().context("the model's metadata names no input")?.to_string();
    let rows = crate::sim::traffic::rows(crate::sim::traffic::IRIS_TRAIN).map_err(|e| anyhow::anyhow!(e))?;
    let load = Load::start(&base, "iris", &input, opts.rate_hz, rows)?;

    let mut report = Report::default();
    let mut version = 1;
    let mut drifting = false;
    let mut next_sample = Instant::now();
    let mut next_update = Instant::now() + opts.update_every;
    let end = Instant::now() + opts.duration;
    writeln!(
        out,
        "{:>7} {:>8} {:>8} {:>4} {:>7} {:>9} {:>9} {:>6} {:>5} {:>5}",
        "min", "rss KiB", "peak KiB", "fds", "threads", "data KiB", "answered", "failed", "model", "drift"
    )?;
    loop {
        agent.check_running()?;
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) {
            report.interrupted = true;
            break;
        }
        if now >= next_sample {
            let row = Row {
                at_s: started.elapsed().as_secs_f64(),
                proc: proc_stats::read(agent.pid()).map_err(|e| anyhow::anyhow!(e))?,
                data_bytes: tree_bytes(&data_dir),
                answered: load.counts.answered.load(Ordering::Relaxed),
                failed: load.counts.failed.load(Ordering::Relaxed),
                version,
                drifting,
            };
            writeln!(
                out,
                "{:>7.1} {:>8} {:>8} {:>4} {:>7} {:>9} {:>9} {:>6} {:>5} {:>5}",
                row.at_s / 60.0,
                row.proc.rss_kib,
                row.proc.peak_kib,
                row.proc.fds,
                row.proc.threads,
                row.data_bytes / 1024,
                row.answered,
                row.failed,
                format!("v{}", row.version),
                if row.drifting { "yes" } else { "no" }
            )?;
            report.rows.push(row);
            next_sample += opts.sample_every;
            if now >= end {
                break;
            }
        }
        if now >= next_update && now < end {
            let at_s = started.elapsed().as_secs_f64();
            let took = push(version + 1).with_context(|| format!("the update to v{}", version + 1))?;
            version += 1;
            report.updates.push(Update { at_s, version, took });
            // Every other release period, the inputs drift (the drift report and alert follow).
            drifting = !drifting;
            load.shift(if drifting { SHIFT } else { 0.0 });
            next_update = Instant::now() + opts.update_every;
        }
        std::thread::sleep(
            next_sample
                .min(next_update)
                .min(end)
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200)),
        );
    }
    let answered = load.counts.answered.load(Ordering::Relaxed);
    report.mean_latency_us = load.counts.latency_us.load(Ordering::Relaxed) / answered.max(1);
    report.max_latency_us = load.counts.max_latency_us.load(Ordering::Relaxed);
    drop(load);
    agent.stop()?;
    stack.stop()?;
    Ok(report)
}
