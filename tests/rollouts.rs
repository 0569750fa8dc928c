//! Staged rollouts end to end: 20 real agents on the embedded broker serving iris v1, the real
//! `drover fleet serve` holding an operator key, and `drover rollout` as an operator runs it. A
//! good candidate goes through every stage (shadow first, then served) to the whole group; a bad
//! one (the committed `iris_wrong.onnx`, labels rotated) halts in its first shadow and never
//! serves a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drover_runtime::link::BrokerSettings;
use drover_runtime::tensor::{Tensor, TensorData};
use drover_tests::broker::{Broker, Kind, Options};
use drover_tests::cli::{delegate, iris_bundle, model, ok, run, signed_bundle, trust_setup};
use drover_tests::fleet::Fleet;
use drover_tests::manifest::models_dir;
use drover_tests::services::{FleetServer, until};
use serde_json::Value;

const DEVICES: usize = 20;

/// Requests to every device, a few per second each, until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(fleet: &Fleet) -> Traffic {
        let services: Vec<_> = (0..fleet.members.len()).map(|i| fleet.inference(i)).collect();
        let text = std::fs::read_to_string(models_dir().join("data/iris.train.jsonl")).expect("iris.train.jsonl");
        let rows: Vec<Vec<f32>> = text.lines().map(|l| serde_json::from_str(l).expect("row")).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0usize;
            while !flag.load(Ordering::Relaxed) {
                for s in &services {
                    let t = Tensor::new(vec![4], TensorData::F32(rows[n % rows.len()].clone())).expect("tensor");
                    // A device between models may refuse one: that is what the error gate counts.
                    let _ = s.infer(None, &[t]);
                    n += 7;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Traffic { stop, thread: Some(thread) }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `drover rollout status ID --json` (its exit status says whether the rollout halted).
fn status(d: &std::path::Path, server: &FleetServer, id: &str) -> (Value, bool) {
    let out = run("drover", d, &["rollout", "status", id, "--json", "--server", &server.url]);
    let all: Value = serde_json::from_slice(&out.stdout).expect("rollout status --json");
    (all[0].clone(), out.status.success())
}

/// Waits until the rollout is over; returns its record.
fn finish(d: &std::path::Path, server: &FleetServer, id: &str, timeout: Duration) -> Value {
    until(timeout, &format!("rollout {id} to end"), || {
        let (r, fine) = status(d, server, id);
        match r["state"]["state"].as_str() {
            Some("completed") if fine => Ok(r),
            Some("halted" | "aborted") if !fine => Ok(r),
            _ => Err(format!("{} at stage {} {}: {}", r["state"], r["stage"], r["phase"], r["log"])),
        }
    })
}

#[test]
fn a_good_candidate_reaches_the_whole_group_and_a_bad_one_stops_at_its_first_shadow() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    ok("drover", d, &["keygen", "--role", "operator", "--out", "keys"]);
    delegate(d, "--operator", "keys/operator.pub", "lab,ro-*", "op.json");
    let v1 = iris_bundle(d, "1", true);
    let v2 = iris_bundle(d, "2", true);
    let selftest = models_dir().join("reference/iris_logreg.input.jsonl");
    signed_bundle(
        d,
        &model("iris_wrong.onnx"),
        "iris",
        "3",
        &["--selftest", &selftest.to_string_lossy()],
        "iris-v3.drv",
    );

    let fleet_dir = tempfile::tempdir().expect("tmp");
    let settings = BrokerSettings { port: broker.port, ..BrokerSettings::default() };
    let mut fleet = Fleet::new(fleet_dir.path(), "ro", DEVICES, &["lab"], &d.join("root.json"), &settings);
    for m in &mut fleet.members {
        m.cfg.telemetry.period_s = Some(1);
    }
    fleet.start_all();
    ok("drover", d, &["push", &v1, "--broker", &broker.address(), "--group", "lab", "--timeout", "90s"]);
    for i in 0..DEVICES {
        fleet.wait_for(i, Duration::from_secs(30), "iris v1", |f, i| f.serving(i) == Some(("iris".into(), 1)));
    }
    let server =
        FleetServer::start(d, &broker.address(), &["--operator-key", "keys/operator.key", "--delegation", "op.json"]);
    let _traffic = Traffic::start(&fleet);
    // A persistent alert session: what the rollouts tell while it is away waits for it.
    let alerts =
        ["alerts", "--session", "ops", "--idle", "1", "--json", "--kind", "rollout", "--broker", &broker.address()];
    ok("drover", d, &alerts);
    let plan = [
        "--group",
        "lab",
        "--stages",
        "10,50,100",
        "--shadow-first",
        "2s",
        "--soak",
        "2s",
        "--install-timeout",
        "60s",
        "--min-requests",
        "5",
        "--min-shadow-agreement",
        "0.9",
        "--max-error-rate",
        "0.05",
        "--server",
        &server.url,
    ];

    let good = ok("drover", d, &[&["rollout", "create", &v2][..], &plan].concat()).trim().to_string();
    let r = finish(d, &server, &good, Duration::from_secs(240));
    assert_eq!(r["state"]["state"], "completed", "{r:#}");
    for i in 0..DEVICES {
        assert_eq!(fleet.serving(i), Some(("iris".into(), 2)), "{}", fleet.members[i].cfg.device);
    }
    let log: Vec<&str> = r["log"].as_array().expect("log").iter().filter_map(|e| e["text"].as_str()).collect();
    for stage in [
        "stage 1 (10 %): shadowing on 2 device(s)",
        "stage 2 (50 %): shadowing on 8",
        "stage 3 (100 %): shadowing on 10",
    ] {
        assert!(log.iter().any(|l| l.starts_with(stage)), "{stage}: {log:#?}");
    }
    assert!(log.iter().any(|l| l.contains("shadow agreement 100.0 %")), "{log:#?}");

    let bad = ok("drover", d, &[&["rollout", "create", "iris-v3.drv"][..], &plan].concat()).trim().to_string();
    let r = finish(d, &server, &bad, Duration::from_secs(120));
    assert_eq!(r["state"]["state"], "halted", "{r:#}");
    assert_eq!(r["stage"], 0, "it never got past its first stage");
    let reason = r["state"]["reason"].as_str().expect("reason");
    assert!(reason.starts_with("shadow agreement 0.0 % < 90.0 %"), "{reason}");
    for i in 0..DEVICES {
        assert_eq!(fleet.serving(i), Some(("iris".into(), 2)), "the bad version never served");
    }
    let out = run("drover", d, &["rollout", "status", &bad, "--server", &server.url]);
    assert!(!out.status.success(), "a halted rollout's status exits 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HALTED at stage 1: shadow agreement"), "{text}");
    // Every step reached the alert stream, in order.
    let told: Vec<Value> =
        ok("drover", d, &alerts).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let texts = |id: &str| -> Vec<String> {
        told.iter()
            .filter(|a| a["rollout"] == id)
            .filter_map(|a| a["event"]["event"]["text"].as_str().map(String::from))
            .collect()
    };
    let (good_told, bad_told) = (texts(&good), texts(&bad));
    assert!(good_told.first().is_some_and(|t| t.starts_with("created")), "{good_told:#?}");
    assert!(good_told.last().is_some_and(|t| t.starts_with("completed")), "{good_told:#?}");
    assert!(bad_told.iter().any(|t| t.starts_with("halted: shadow agreement 0.0 %")), "{bad_told:#?}");

    // The dashboard's rollouts table, in a real browser.
    if let Some(b) = drover_tests::browser::Browser::start() {
        b.goto(&format!("{}/", server.url));
        let rows = b.wait_for(
            Duration::from_secs(20),
            "both rollouts on the dashboard",
            "const rows = [...document.querySelectorAll('#rollouts tbody tr')];
             return rows.length === 2 && rows.map(r => [r.dataset.rollout, r.querySelector('.state').textContent]);",
        );
        assert_eq!(rows[0][0], bad.as_str(), "newest first");
        assert!(rows[0][1].as_str().is_some_and(|s| s.starts_with("halted: shadow agreement")), "{rows}");
        assert_eq!(rows[1], serde_json::json!([good, "completed"]));
    }
    let metrics = server.get("/metrics").expect("/metrics");
    assert!(metrics.contains(&format!("drover_rollout_stage{{rollout=\"{bad}\"}} -1")), "{metrics}");
    assert!(metrics.contains(&format!("drover_rollout_stage{{rollout=\"{good}\"}} 2")), "{metrics}");
}
