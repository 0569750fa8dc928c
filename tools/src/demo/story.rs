//! The demo's steps, told as they happen.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_wire::topic::Name;

use super::DemoOptions;
use super::setup::{Prepared, prepare};
use super::stack::Stack;
use crate::cmd::fleet_client::post_json;
use crate::push::Audience;
use crate::rollout::{Gates, Rollout, State};
use crate::sim::{FleetSpec, Profile, SimFleet};

/// The group every demo device is in.
const GROUP: &str = "demo";
/// Requests per second to each device.
const RATE_HZ: f64 = 20.0;
/// What a drifting device adds to each of its inputs (cm: a miscalibrated sensor).
const SHIFT: f32 = 3.0;

/// How the demo ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The dashboard's URL (gone once the demo ended).
    pub url: String,
    /// Every step ran (false: stopped by Ctrl-C or the duration first).
    pub story_done: bool,
    /// Requests the devices answered.
    pub answered: u64,
    /// Drift alerts that reached the fleet server from the drifted devices.
    pub alerts: usize,
    /// The rollout's end, in words.
    pub rollout: Option<String>,
    /// Devices serving v2 at the end.
    pub serving_v2: usize,
}

/// Prints the steps with the time since the start.
struct Narrator<'a> {
    start: Instant,
    deadline: Instant,
    stop: &'a AtomicBool,
    out: &'a mut dyn Write,
}

/// Why a wait ended early.
#[derive(Debug, PartialEq, Eq)]
enum Cut {
    /// Ctrl-C.
    Stopped,
    /// The demo's duration is over.
    TimeUp,
}

impl Narrator<'_> {
    fn say(&mut self, text: impl AsRef<str>) {
        let t = self.start.elapsed().as_secs_f64();
        for (i, line) in text.as_ref().lines().enumerate() {
            let _ =
                if i == 0 { writeln!(self.out, "[{t:5.1}s] {line}") } else { writeln!(self.out, "         {line}") };
        }
        let _ = self.out.flush();
    }

    /// Sleeps in short steps until `done` holds, for at most `patience`. Ctrl-C and the end of
    /// the demo's time cut a wait short; running out of patience is the step's failure.
    fn wait(
        &mut self,
        what: &str,
        patience: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> anyhow::Result<Result<(), Cut>> {
        let until = Instant::now().checked_add(patience);
        loop {
            if done(self) {
                return Ok(Ok(()));
            }
            if self.stop.load(Ordering::Relaxed) {
                return Ok(Err(Cut::Stopped));
            }
            if Instant::now() >= self.deadline {
                return Ok(Err(Cut::TimeUp));
            }
            anyhow::ensure!(until.is_none_or(|u| Instant::now() < u), "{what}: nothing after {patience:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs the demo to its end: the steps, then the fleet keeps running until the duration is up
/// or `stop` is set. Everything it started is stopped, and its directory removed unless kept,
/// whatever happens on the way.
pub fn run(opts: &DemoOptions, stop: &AtomicBool, out: &mut dyn Write, now_unix: u64) -> anyhow::Result<Outcome> {
    anyhow::ensure!((1..=1000).contains(&opts.devices), "--devices must be 1 to 1000");
    let start = Instant::now();
    let (temp, dir) = match &opts.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            let empty = std::fs::read_dir(d).with_context(|| format!("read {}", d.display()))?.next().is_none();
            anyhow::ensure!(empty, "--keep {}: the directory is not empty", d.display());
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new().prefix("drover-demo-").tempdir().context("make a temporary directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let mut n = Narrator { start, deadline: start + opts.duration, stop, out };
    n.say(format!(
        "Drover demo: {} devices, an MQTT broker and the fleet server, all in this process, for {} s.",
        opts.devices,
        opts.duration.as_secs()
    ));
    let result = story(opts, &mut n, &dir, now_unix);
    match (&result, &temp) {
        (_, Some(_)) => n.say(format!("Removed {}.", dir.display())),
        (_, None) => n.say(format!("Kept {} (keys, bundles, devices' data dirs, fleet.db).", dir.display())),
    }
    drop(temp);
    result
}

fn story(opts: &DemoOptions, n: &mut Narrator<'_>, dir: &Path, now_unix: u64) -> anyhow::Result<Outcome> {
    let prepared = prepare(dir, GROUP, now_unix)?;
    n.say(format!(
        "1. Keys: a root, a release and an operator key in {}/keys (secrets 0600), the fleet's root of\n\
         trust root.json, and delegations: the release key signs model `iris`, the operator key commands\n\
         group `{GROUP}`.",
        dir.display()
    ));
    n.say(format!(
        "2. Bundles: iris v1 and v2 (scikit-learn classifiers, {} B of ONNX each) signed into bundles/, each\n\
         with self-test vectors and the drift reference of its training data.",
        prepared.model_bytes
    ));
    let mut stack = Stack::start(dir, &prepared, opts.devices, opts.http_port)?;
    let url = stack.url();
    n.say(format!(
        "3. Embedded MQTT broker on {} and the fleet server.\n\n    Dashboard:  {url}/\n    Prometheus: {url}/metrics\n",
        stack.broker.address()
    ));
    let mut outcome = Outcome { url: url.clone(), ..Outcome::default() };
    let result = story_with(opts, n, dir, &prepared, &stack, &mut outcome);
    if let Err(e) = &result {
        n.say(format!("The demo failed: {e:#}"));
    }
    n.say("Stopping: the agents (each says offline and flushes its telemetry), the fleet server, the broker.");
    // The fleet was dropped inside `story_with`; the server writes what is pending and stops.
    stack.stop()?;
    result.map(|()| outcome)
}

/// The steps with the servers up; the fleet is stopped when this returns.
fn story_with(
    opts: &DemoOptions,
    n: &mut Narrator<'_>,
    dir: &Path,
    prepared: &Prepared,
    stack: &Stack,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let devices = opts.devices;
    let profile =
        Profile { rate_hz: RATE_HZ, telemetry_period_s: 1, drift_window: 60, drift_share: 0.0, ..Profile::default() };
    let spec = FleetSpec {
        dir: dir.join("devices"),
        prefix: super::setup::DEVICE_PREFIX.into(),
        devices,
        groups: vec![GROUP.into()],
        broker: stack.broker.clone(),
        root: prepared.root.clone(),
        profile,
        threads: if devices > 50 { 2 } else { 1 },
    };
    let mut fleet = SimFleet::start(&spec)?;
    n.say(format!(
        "4. Started {devices} agents: the real agent code, each with its own data dir under devices/, trusting\n\
         root.json and serving nothing yet."
    ));
    let online = |stack: &Stack| stack.hub.registry(|r| r.devices().filter(|d| d.online).count());
    if let Err(cut) = n.wait("devices online", Duration::from_secs(30), |_| online(stack) == devices)? {
        return finish(n, &fleet, outcome, cut);
    }

    // v1 to everyone, the way `drover push` does it.
    n.say(format!(
        "5. Pushing iris v1 to group `{GROUP}` over MQTT, like\n   drover push bundles/iris-v1.drv --group {GROUP} --broker {}",
        stack.broker.address()
    ));
    let pushed = push(&prepared.bundles[0], stack, devices)?;
    n.say(pushed);
    let v1_everywhere = |stack: &Stack| {
        stack.hub.registry(|r| r.devices().filter(|d| d.version == Some(1) && d.online).count()) == devices
    };
    if let Err(cut) =
        n.wait("the fleet server to see v1 everywhere", Duration::from_secs(30), |_| v1_everywhere(stack))?
    {
        return finish(n, &fleet, outcome, cut);
    }
    n.say(format!(
        "6. Traffic: {RATE_HZ} requests/s to each device; each reports telemetry every second and closes a drift\n\
         window every {} samples. The dashboard's counts and latencies move.",
        spec.profile.drift_window
    ));
    // A few seconds of clean windows first.
    let clean_until = Instant::now() + Duration::from_secs(1);
    if let Err(cut) = n.wait("clean windows", Duration::from_secs(10), |_| Instant::now() >= clean_until)? {
        return finish(n, &fleet, outcome, cut);
    }

    // Drift on a few devices, spread over the fleet.
    let drifted: Vec<usize> = {
        let k = devices.div_ceil(5).max(1);
        (0..k).map(|j| (j * devices / k + 2) % devices).collect::<BTreeSet<_>>().into_iter().collect()
    };
    let names: Vec<String> = drifted.iter().map(|&i| fleet.agents.members[i].cfg.device.clone()).collect();
    for &i in &drifted {
        fleet.drift(i, SHIFT);
    }
    n.say(format!(
        "7. Data drift: {} now read every feature {SHIFT} cm high (a miscalibrated sensor). Their agents\n\
         compare each window with the bundle's reference and raise an alert.",
        names.join(", ")
    ));
    let mut told = BTreeSet::new();
    let waited = n.wait("the drift alerts", Duration::from_secs(45), |n| {
        let events = stack.hub.storage(|s| s.events(None, 500)).unwrap_or_default();
        for e in events.iter().rev() {
            if e.kind == "drift" && names.contains(&e.device) && told.insert(e.device.clone()) {
                // The text is `drover alerts`' line: time, device, kind, then what happened.
                let what = e.text.split_once(e.kind.as_str()).map_or(e.text.as_str(), |(_, rest)| rest.trim());
                n.say(format!("   ALERT {} ({}): {what}", e.device, e.kind));
            }
        }
        told.len() == names.len()
    })?;
    outcome.alerts = told.len();
    if let Err(cut) = waited {
        return finish(n, &fleet, outcome, cut);
    }
    // The fleet-wide view follows with the devices' next drift windows.
    let group_score = |stack: &Stack| {
        stack
            .hub
            .drift()
            .iter()
            .find(|m| m.group.as_deref() == Some(GROUP) && m.version == 1)
            .map(|m| (m.score, m.devices))
    };
    let merged =
        n.wait("the merged drift", Duration::from_secs(10), |_| group_score(stack).is_some_and(|(s, _)| s >= 0.2));
    if let Some((score, k)) = group_score(stack) {
        n.say(format!(
            "   The fleet server merges the latest windows of the {k} devices of group `{GROUP}`: drift score (PSI) {score:.2}."
        ));
    }
    if let Err(cut) = merged? {
        return finish(n, &fleet, outcome, cut);
    }

    // v2, stage by stage, shadow first.
    let plan = crate::fleet::rollouts::CreateRequest {
        group: GROUP.into(),
        stages: vec![30, 100],
        shadow_ms: 3_000,
        soak_ms: 3_000,
        install_timeout_ms: 60_000,
        min_requests: 5,
        gates: Gates { max_error_rate: Some(0.05), min_shadow_agreement: Some(0.9), ..Gates::default() },
        bundle_hex: hex::encode(std::fs::read(&prepared.bundles[1]).context("read the v2 bundle")?),
    };
    n.say(format!(
        "8. Rolling out iris v2 (retrained) to group `{GROUP}` in stages of 30 % and 100 %: each stage first\n\
         runs v2 in shadow beside v1 (compared, never answering) for 3 s, then serves it for a 3 s soak;\n\
         it halts and rolls back if shadow agreement < 90 % or errors > 5 %. Like\n   \
         drover rollout create bundles/iris-v2.drv --group {GROUP} --stages 30,100 --shadow-first 3s --soak 3s \\\n     \
         --min-shadow-agreement 0.9 --max-error-rate 0.05 --server {}",
        outcome.url
    ));
    let created: Rollout = post_json(&outcome.url, "/api/rollouts", &serde_json::to_value(&plan)?, &None)?;
    let id = created.plan.id.clone();
    let mut shown = 0;
    let mut end: Option<State> = None;
    let waited = n.wait("the rollout", Duration::from_secs(120), |n| {
        let Some(r) = stack.hub.rollouts().into_iter().find(|r| r.plan.id == id) else { return false };
        for e in r.log.iter().skip(shown) {
            n.say(format!("   rollout {id}: {}", e.text));
        }
        shown = r.log.len();
        let over = matches!(r.state, State::Completed | State::Halted { .. } | State::Aborted);
        if over {
            end = Some(r.state);
        }
        over
    })?;
    if let Err(cut) = waited {
        return finish(n, &fleet, outcome, cut);
    }
    let end = end.context("the rollout's end")?;
    outcome.serving_v2 = fleet.serving("iris", 2);
    outcome.rollout = Some(match &end {
        State::Halted { reason } => format!("halted: {reason}"),
        other => format!("{other:?}").to_lowercase(),
    });
    anyhow::ensure!(matches!(end, State::Completed), "rollout {id} {}", outcome.rollout.as_deref().unwrap_or(""));
    n.say(format!("9. {}/{devices} devices serve iris v2.", outcome.serving_v2));
    outcome.story_done = true;

    let left = n.deadline.saturating_duration_since(Instant::now());
    n.say(format!(
        "The fleet keeps running for {} s more (Ctrl-C stops it sooner). Meanwhile, in another terminal:\n   \
         drover fleet status --server {url}\n   drover fleet device {} --server {url}\n   \
         drover watch --broker {}\n   curl {url}/metrics",
        left.as_secs(),
        names.first().map(String::as_str).unwrap_or("pi-00"),
        stack.broker.address(),
        url = outcome.url
    ));
    let _ = n.wait("the end", Duration::MAX, |_| false)?;
    finish(n, &fleet, outcome, Cut::TimeUp)
}

/// The closing lines, then the fleet is dropped (each agent stopped cleanly).
fn finish(n: &mut Narrator<'_>, fleet: &SimFleet, outcome: &mut Outcome, cut: Cut) -> anyhow::Result<()> {
    outcome.answered = fleet.traffic.counts.answered.load(Ordering::Relaxed);
    if !outcome.story_done {
        n.say(match cut {
            Cut::Stopped => "Stopped (Ctrl-C) before the last step.",
            Cut::TimeUp => "The time given (--duration) ran out before the last step.",
        });
    }
    n.say(format!("{} requests answered by the fleet.", outcome.answered));
    Ok(())
}

/// Pushes a bundle to the demo's group; the result in words. Every device must install it.
fn push(bundle: &Path, stack: &Stack, devices: usize) -> anyhow::Result<String> {
    let group = Audience::Group(Name::new(GROUP).map_err(|e| anyhow::anyhow!("{e}"))?);
    let d = crate::push::deliver::deliver(bundle, &stack.broker, group, devices, Duration::from_secs(120))?;
    Ok(format!(
        "   iris v{} installed on {}/{devices} devices in {:.1} s ({} bytes; {} chunk messages, {} of them copies for a device that missed the one to all).",
        d.version,
        d.devices,
        d.elapsed.as_secs_f64(),
        d.bytes,
        d.chunks_sent,
        d.chunks_sent_direct
    ))
}
