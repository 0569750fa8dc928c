//! Telemetry, drift and alerts end to end: real agents (in-process, each with its own data dir)
//! serving the reference iris model pushed to them as a signed bundle with the training data's
//! reference statistics, real brokers, and the real `drover alerts` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drover_runtime::link::{BrokerSettings, codec};
use drover_runtime::serve::Inference;
use drover_runtime::tensor::{Tensor, TensorData};
use drover_tests::broker::{Broker, Kind, Options};
use drover_tests::cli::{iris_bundle, ok, trust_setup};
use drover_tests::fleet::Fleet;
use drover_tests::manifest::models_dir;
use drover_tests::observer::Observer;
use drover_tests::tools::workspace_bin;
use drover_wire::telemetry::Telemetry;

/// The iris training rows (the drift reference).
fn iris_rows() -> Vec<[f32; 4]> {
    let text = std::fs::read_to_string(models_dir().join("data/iris.train.jsonl")).expect("iris.train.jsonl");
    text.lines().map(|l| serde_json::from_str(l).expect("row")).collect()
}

/// A small deterministic generator (SplitMix64), so every run feeds the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Feeds `n` samples drawn (with replacement) from the reference rows, with `shift` added to
/// each feature; returns the request ids and predicted classes.
fn feed(inference: &Inference, rows: &[[f32; 4]], rng: &mut Rng, n: usize, shift: [f32; 4]) -> Vec<(String, i64)> {
    (0..n)
        .map(|_| {
            let row = rows[(rng.next() % rows.len() as u64) as usize];
            let x: Vec<f32> = row.iter().zip(shift).map(|(v, s)| v + s).collect();
            let t = Tensor::new(vec![4], TensorData::F32(x)).expect("tensor");
            let p = inference.infer(None, &[t]).expect("inference");
            (p.request, p.class.expect("iris is a classifier"))
        })
        .collect()
}

fn settings(broker: &Broker) -> BrokerSettings {
    BrokerSettings { port: broker.port, ..BrokerSettings::default() }
}

fn push(dir: &Path, bundle: &str, broker: &Broker, group: &str) {
    ok("drover", dir, &["push", bundle, "--broker", &broker.address(), "--group", group, "--timeout", "60s"]);
}

/// `drover alerts` running in the background; its stdout lines arrive on a channel.
struct Alerts {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Alerts {
    fn start(dir: &Path, broker: &Broker, extra: &[&str]) -> Alerts {
        let mut child = Command::new(workspace_bin("drover"))
            .current_dir(dir)
            .args(["alerts", "--follow", "--json", "--broker", &broker.address()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn drover alerts");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Alerts { child, lines }
    }

    /// Events (as JSON) until `done` holds for one of them or `timeout` passes.
    fn until(&self, timeout: Duration, done: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut got = vec![];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else { break };
            let v: serde_json::Value = serde_json::from_str(&line).expect("drover alerts --json prints JSON");
            let stop = done(&v);
            got.push(v);
            if stop {
                break;
            }
        }
        got
    }
}

impl Drop for Alerts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two devices serve the same model; one of them starts seeing longer petals. The drift alert
/// reaches `drover alerts` naming that feature (and its hook runs with the event on stdin); the
/// device whose inputs follow the reference raises nothing; lasting drift asks for retraining.
fn shifted_inputs_raise_an_alert_naming_the_feature(kind: Kind) {
    let Some(broker) = Broker::start(kind, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    let bundle = iris_bundle(d, "1", true);
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let mut fleet = Fleet::new(fleet_dir.path(), "pi", 2, &["lab"], &d.join("root.json"), &settings(&broker));
    for m in &mut fleet.members {
        m.cfg.drift.window_samples = 150;
        m.cfg.drift.min_samples = 100;
        m.cfg.telemetry.period_s = Some(1);
        m.cfg.quality.min_accuracy = Some(0.8);
        m.cfg.drift.budget_pct = 0.0; // every inference observed: windows close on the samples fed
    }
    fleet.start_all();
    let hook_out = d.join("hook.jsonl");
    let hook = format!("cat >> {}", hook_out.display());
    let alerts = Alerts::start(d, &broker, &["--exec", &hook]);
    push(d, &bundle, &broker, "lab");
    for i in 0..2 {
        fleet.wait_for(i, Duration::from_secs(20), "iris v1", |f, i| f.inference(i).model().is_some());
    }

    let rows = iris_rows();
    let mut rng = Rng(7);
    // Four windows each: the first normal on both, then petal length +2 cm on pi-01.
    let served = feed(&fleet.inference(0), &rows, &mut rng, 600, [0.0; 4]);
    feed(&fleet.inference(1), &rows, &mut rng, 150, [0.0; 4]);
    feed(&fleet.inference(1), &rows, &mut rng, 450, [0.0, 0.0, 2.0, 0.0]);

    let events = alerts.until(Duration::from_secs(30), |v| v["kind"] == "retrain");
    let drift: Vec<&serde_json::Value> = events.iter().filter(|v| v["kind"] == "drift").collect();
    assert!(
        drift.iter().all(|v| v["device"] == "pi-01"),
        "the device fed reference-like inputs raised no drift alert: {events:#?}"
    );
    let petal = drift
        .iter()
        .find(|v| v["event"]["kind"]["drift"]["feature"] == "petal_length")
        .unwrap_or_else(|| panic!("a drift alert names petal_length: {events:#?}"));
    let evidence = &petal["event"]["kind"]["drift"];
    assert_eq!(evidence["source"], "input");
    assert_eq!(evidence["window"]["samples"], 150);
    assert_eq!(evidence["reference_samples"], 150);
    assert_eq!(petal["event"]["model"]["name"], "iris");
    let retrain = events.iter().find(|v| v["kind"] == "retrain").expect("lasting drift asks for retraining");
    assert_eq!(retrain["device"], "pi-01");
    let features = retrain["event"]["kind"]["retrain"]["features"].as_array().expect("features");
    assert!(features.iter().any(|f| f == "petal_length"), "{retrain}");

    // The hook ran once per event, with the event as JSON on its stdin.
    let hooked = std::fs::read_to_string(&hook_out).expect("the hook ran");
    let hooked: Vec<serde_json::Value> = hooked.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert!(hooked.iter().any(|v| v["event"]["kind"]["drift"]["feature"] == "petal_length"), "{hooked:#?}");

    // Concept drift: labels come back over MQTT (`drover feedback`); the first 300 agree with
    // the predictions, then the world changes and the labels no longer do.
    let labels: String = served
        .iter()
        .enumerate()
        .map(|(i, (request, class))| {
            let label = if i < 300 { *class } else { (class + 1) % 3 };
            format!("{{\"request\": \"{request}\", \"label\": {label}}}\n")
        })
        .collect();
    std::fs::write(d.join("labels.jsonl"), labels).expect("labels");
    ok("drover", d, &["feedback", "--device", "pi-00", "--file", "labels.jsonl", "--broker", &broker.address()]);
    let mut events = vec![];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(["concept_drift", "degraded"].iter().all(|k| events.iter().any(|v: &serde_json::Value| v["kind"] == *k))
        || Instant::now() > deadline)
    {
        events.extend(alerts.until(Duration::from_secs(1), |_| true));
    }
    let degraded = events.iter().find(|v| v["kind"] == "degraded").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(degraded["event"]["kind"]["degraded"]["metric"], "accuracy");
    let concept = events.iter().find(|v| v["kind"] == "concept_drift").unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(concept["device"], "pi-00");
    let c = &concept["event"]["kind"]["concept_drift"];
    let labels_seen = c["labels"].as_u64().expect("labels");
    assert!((301..=450).contains(&labels_seen), "detected after {labels_seen} labels: {concept}");
    assert!(c["error_rate"].as_f64().expect("rate") > 0.0);
}

#[test]
fn embedded_broker_shifted_inputs_raise_an_alert_naming_the_feature() {
    shifted_inputs_raise_an_alert_naming_the_feature(Kind::Embedded);
}

#[test]
fn mosquitto_shifted_inputs_raise_an_alert_naming_the_feature() {
    shifted_inputs_raise_an_alert_naming_the_feature(Kind::Mosquitto);
}

/// The telemetry reports of `device` seen by `obs`, decoded, in arrival order.
fn telemetry(obs: &Observer, device: &str) -> Vec<Telemetry> {
    let topic = format!("drover/v1/dev/{device}/telemetry");
    obs.messages()
        .into_iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, p)| codec::decode(&p).expect("telemetry"))
        .collect()
}

/// A 60-second broker outage, with the agent killed (as by a power cut) and restarted in the
/// middle of it: every period's report arrives afterwards, in order, and the periods join up.
#[test]
fn a_sixty_second_outage_and_an_agent_restart_lose_no_telemetry() {
    let Some(mut broker) = Broker::start(Kind::Mosquitto, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    let bundle = iris_bundle(d, "1", true);
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let mut fleet = Fleet::new(fleet_dir.path(), "pi", 1, &["lab"], &d.join("root.json"), &settings(&broker));
    fleet.members[0].cfg.telemetry.period_s = Some(1);
    fleet.start(0);
    let obs = Observer::connect(broker.port, "drover/v1/dev/+/telemetry");
    push(d, &bundle, &broker, "lab");
    fleet.wait_for(0, Duration::from_secs(20), "iris v1", |f, i| f.inference(i).model().is_some());
    let rows = iris_rows();
    let mut rng = Rng(11);
    feed(&fleet.inference(0), &rows, &mut rng, 20, [0.0; 4]);
    std::thread::sleep(Duration::from_secs(3));

    broker.kill();
    let outage = Instant::now();
    let mut fed = 20;
    let mut restarted = false;
    while outage.elapsed() < Duration::from_secs(60) {
        if !restarted && outage.elapsed() >= Duration::from_secs(25) {
            restarted = true;
            fleet.kill(0);
            fleet.start(0);
            fleet.wait_for(0, Duration::from_secs(20), "iris v1 again", |f, i| f.inference(i).model().is_some());
            std::thread::sleep(Duration::from_secs(2));
        }
        feed(&fleet.inference(0), &rows, &mut rng, 5, [0.0; 4]);
        fed += 5;
        std::thread::sleep(Duration::from_millis(500));
    }
    broker.restart();

    // Everything up to a report made after the outage arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let seen = telemetry(&obs, "pi-00");
        if let Some(last) = seen.iter().rev().find(|t| t.start_ms > 0 && t.end_ms >= seen[0].end_ms + 66_000) {
            break last.seq;
        }
        assert!(Instant::now() < deadline, "no report from after the outage arrived");
        std::thread::sleep(Duration::from_millis(200));
    };
    let seen = telemetry(&obs, "pi-00");
    let mut first_arrivals: Vec<&Telemetry> = vec![];
    for t in &seen {
        if !first_arrivals.iter().any(|f| f.seq == t.seq) {
            first_arrivals.push(t);
        }
    }
    let seqs: Vec<u64> = first_arrivals.iter().map(|t| t.seq).filter(|s| *s <= end).collect();
    assert_eq!(seqs, (1..=end).collect::<Vec<_>>(), "every report arrives once, in order");
    // Reports of one run of the agent cover its time without gaps: each starts where the last ended.
    let gaps: Vec<(u64, u64)> = first_arrivals
        .windows(2)
        .filter(|w| w[1].uptime_s > w[0].uptime_s && w[1].start_ms != w[0].end_ms)
        .map(|w| (w[0].seq, w[1].seq))
        .collect();
    assert!(gaps.is_empty(), "periods that do not join up: {gaps:?}");
    assert!(end >= 60, "one report a second through a 60 s outage: only {end}");
    let inferences: u64 = first_arrivals.iter().filter(|t| t.seq <= end).map(|t| t.inferences).sum();
    // A power cut loses the counts of the period it interrupts (at most a second's worth).
    assert!(inferences >= fed as u64 - 15, "the reports count {inferences} of the {fed} inferences");
    let last = first_arrivals.iter().find(|t| t.seq == end).expect("last");
    assert_eq!(last.outbox.dropped, 0);
    assert_eq!(last.model.as_ref().map(|m| m.name.as_str()), Some("iris"));
    assert!(last.system.mem_total_kib > 0 && last.system.rss_kib > 0, "{:?}", last.system);
}

/// The disk under the telemetry queue fills up (a log gone wild on a small SD card): the agent
/// keeps serving, the reports it could not write are counted, and once there is room again
/// reports flow on, in sequence, with nothing hidden behind a half-written record, across a
/// power cut too; the count of lost reports reaches the broker.
#[test]
fn a_full_disk_under_the_telemetry_queue_loses_only_what_it_could_not_write_and_counts_it() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    let bundle = iris_bundle(d, "1", true);
    let base = tempfile::tempdir().expect("tmp");
    let Some(disk) = drover_tests::disk::SmallDisk::mount(&base.path().join("disk"), "4m") else { return };
    let mut fleet = Fleet::new(&disk.0, "pi", 1, &["lab"], &d.join("root.json"), &settings(&broker));
    fleet.members[0].cfg.telemetry.period_s = Some(1);
    // JSON reports: larger, so the queue's last page fills in a few seconds.
    fleet.members[0].cfg.payload = drover_runtime::link::PayloadFormat::Json;
    fleet.start(0);
    let obs = Observer::connect(broker.port, "drover/v1/dev/+/telemetry");
    let queued = Observer::connect(broker.port, "drover/v1/dev/pi-00/+");
    push(d, &bundle, &broker, "lab");
    fleet.wait_for(0, Duration::from_secs(20), "iris v1", |f, i| f.inference(i).model().is_some());
    let rows = iris_rows();
    let mut rng = Rng(5);
    let reports = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while telemetry(&obs, "pi-00").len() < n {
            assert!(Instant::now() < deadline, "fewer than {n} reports arrived");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    feed(&fleet.inference(0), &rows, &mut rng, 10, [0.0; 4]);
    reports(2);

    // Fill the disk to the last byte.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 16 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0]).is_ok() {}
        let _ = f.sync_all();
    }
    // The queue's last page still takes a few reports; then they stop. Serving goes on
    // throughout (feed panics on a failed inference).
    let (mut seen, mut quiet_since) = (telemetry(&obs, "pi-00").len(), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(40);
    while quiet_since.elapsed() < Duration::from_secs(3) {
        assert!(Instant::now() < deadline, "reports kept arriving from a full disk");
        feed(&fleet.inference(0), &rows, &mut rng, 5, [0.0; 4]);
        std::thread::sleep(Duration::from_millis(300));
        let now_seen = telemetry(&obs, "pi-00").len();
        if now_seen != seen {
            (seen, quiet_since) = (now_seen, Instant::now());
        }
    }
    std::fs::remove_file(&filler).expect("room again");
    let lost = |seen: &[Telemetry]| seen.iter().map(|t| t.outbox.dropped).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while lost(&telemetry(&obs, "pi-00")) == 0 {
        assert!(Instant::now() < deadline, "no report counts the lost ones");
        std::thread::sleep(Duration::from_millis(100));
    }
    let counted = lost(&telemetry(&obs, "pi-00"));
    assert!((2..=60).contains(&counted), "the reports of the quiet seconds were lost and counted: {counted}");

    // A power cut now, and a restart: everything written before it arrives, in sequence.
    let before = telemetry(&obs, "pi-00").iter().map(|t| t.seq).max().unwrap_or(0);
    fleet.kill(0);
    fleet.start(0);
    fleet.wait_for(0, Duration::from_secs(20), "iris v1 again", |f, i| f.inference(i).model().is_some());
    feed(&fleet.inference(0), &rows, &mut rng, 5, [0.0; 4]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while telemetry(&obs, "pi-00").iter().map(|t| t.seq).max().unwrap_or(0) < before + 3 {
        assert!(Instant::now() < deadline, "reports stopped after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Telemetry, events and drift windows share the queue's numbering.
    let mut seqs: Vec<u64> = queued
        .messages()
        .iter()
        .filter_map(|(t, p)| match t.rsplit('/').next() {
            Some("telemetry") => codec::decode::<Telemetry>(p).ok().map(|x| x.seq),
            Some("events") => codec::decode::<drover_wire::event::Event>(p).ok().map(|x| x.seq),
            Some("drift") => codec::decode::<drover_wire::telemetry::DriftWindow>(p).ok().map(|x| x.seq),
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let last = *seqs.last().expect("reports");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "no report written is missing: lost ones never got a number");
}

/// `drover broker` under `RUST_LOG=info` (what an operator sets to see what happens): clients
/// connecting, publishing and going away are not errors, and rumqttd's per-packet spans never
/// reach the log (they came out as `ERROR rumqttd::router::routing publish; topic=…`).
#[test]
fn the_embedded_broker_logs_no_routine_traffic_as_errors() {
    let opts = Options { rust_log: Some("info".into()), ..Options::default() };
    let Some(mut broker) = Broker::start(Kind::Embedded, opts) else { return };
    let obs = Observer::connect(broker.port, "drover/v1/dev/+/telemetry");
    for i in 0..20u8 {
        obs.publish("drover/v1/dev/pi-1/telemetry", vec![i; 10], false);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while obs.messages().len() < 20 {
        assert!(Instant::now() < deadline, "only {} of 20 messages came back", obs.messages().len());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(obs);
    std::thread::sleep(Duration::from_millis(500));
    broker.kill();
    let log = broker.log();
    assert!(!log.contains("publish; topic"), "per-packet spans in the log:\n{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "routine traffic logged as errors:\n{}", errors.join("\n"));
}
