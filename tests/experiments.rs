//! Experiments on the device, end to end. Shadow: the real `drover shadow` binary stages a
//! signed candidate on a group of in-process agents over a real broker and starts it with a
//! signed command; the agents keep serving the installed model, run the candidate on a share of
//! live inferences, and report the comparison in their telemetry; the shadow survives an agent
//! restart and stops on `drover shadow --stop`; the candidate is installed afterwards by a plain
//! push. A/B: `drover ab --stage` splits the traffic of the local API by routing key, each
//! answer names its variant, and telemetry counts both variants.

use std::time::{Duration, Instant};

use drover_runtime::link::{BrokerSettings, codec};
use drover_runtime::serve::Inference;
use drover_runtime::tensor::{Tensor, TensorData};
use drover_tests::api::{LocalApi, post};
use drover_tests::broker::{Broker, Kind, Options};
use drover_tests::cli::{delegate, fails, iris_bundle, ok, trust_setup};
use drover_tests::fleet::Fleet;
use drover_tests::manifest::models_dir;
use drover_tests::observer::Observer;
use drover_wire::telemetry::{Shadow, Split, Telemetry};

fn settings(broker: &Broker) -> BrokerSettings {
    BrokerSettings { port: broker.port, ..BrokerSettings::default() }
}

fn feed(inference: &Inference, n: usize) {
    let rows = std::fs::read_to_string(models_dir().join("data/iris.train.jsonl")).expect("iris.train.jsonl");
    let rows: Vec<Vec<f32>> = rows.lines().map(|l| serde_json::from_str(l).expect("row")).collect();
    for i in 0..n {
        let t = Tensor::new(vec![4], TensorData::F32(rows[i % rows.len()].clone())).expect("tensor");
        let p = inference.infer(None, &[t]).expect("served by the installed model");
        assert_eq!(p.model.version, 1, "the candidate never answers a caller");
        // A device's callers are not a tight loop; a candidate that falls behind them loses
        // samples (counted as skipped), which is not what this test is about.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The shadow reports of `device` so far.
fn shadow_reports(obs: &Observer, device: &str) -> Vec<Shadow> {
    let topic = format!("drover/v1/dev/{device}/telemetry");
    obs.messages()
        .into_iter()
        .filter(|(t, _)| *t == topic)
        .filter_map(|(_, p)| codec::decode::<Telemetry>(&p).expect("telemetry").shadow)
        .collect()
}

/// Waits until `device` has reported `picked` samples given to the candidate (compared or skipped).
fn shadow_runs(obs: &Observer, device: &str, picked: u64) -> Vec<Shadow> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reports = shadow_reports(obs, device);
        if reports.iter().map(|s| s.compared + s.skipped + s.failed).sum::<u64>() >= picked {
            return reports;
        }
        assert!(Instant::now() < deadline, "{device}: the candidate compared too few samples: {reports:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two agents of group `lab` serving iris v1 over a fresh broker, an operator key delegated for
/// `targets`, and the v2 bundle ready to stage.
struct Setup {
    broker: Broker,
    rel: tempfile::TempDir,
    fleet_dir: tempfile::TempDir,
    fleet: Fleet,
    obs: Observer,
    v2: String,
}

impl Setup {
    fn start(kind: Kind, prefix: &str, targets: &str) -> Option<Setup> {
        let broker = Broker::start(kind, Options::default())?;
        let rel = trust_setup();
        let d = rel.path();
        ok("drover", d, &["keygen", "--role", "operator", "--out", "keys"]);
        delegate(d, "--operator", "keys/operator.pub", targets, "op.json");
        let (v1, v2) = (iris_bundle(d, "1", false), iris_bundle(d, "2", false));
        let fleet_dir = tempfile::tempdir().expect("tmp");
        let mut fleet = Fleet::new(fleet_dir.path(), prefix, 2, &["lab"], &d.join("root.json"), &settings(&broker));
        for m in &mut fleet.members {
            m.cfg.telemetry.period_s = Some(1);
        }
        fleet.start_all();
        let obs = Observer::connect(broker.port, "drover/v1/dev/+/telemetry");
        let addr = broker.address();
        ok("drover", d, &["push", &v1, "--broker", &addr, "--group", "lab", "--timeout", "60s"]);
        for i in 0..2 {
            fleet.wait_for(i, Duration::from_secs(20), "iris v1", |f, i| f.inference(i).model().is_some());
        }
        Some(Setup { broker, rel, fleet_dir, fleet, obs, v2 })
    }
}

fn shadow(kind: Kind) {
    let Some(Setup { broker, rel, fleet_dir: _fleet_dir, mut fleet, obs, v2 }) = Setup::start(kind, "pi", "lab") else {
        return;
    };
    let d = rel.path();
    let addr = broker.address();
    let signer = ["--key", "keys/operator.key", "--delegation", "op.json", "--broker", &addr, "--timeout", "60s"];

    // A rate outside (0, 1] is refused before anything is sent.
    let bad = fails("drover", d, &[&["shadow", &v2, "--group", "lab", "--sample-rate", "1.5"][..], &signer].concat());
    assert!(bad.contains("must be in (0, 1]"), "{bad}");

    let out = ok("drover", d, &[&["shadow", &v2, "--group", "lab", "--sample-rate", "0.5"][..], &signer].concat());
    assert_eq!(out.matches("staged as the candidate").count(), 2, "{out}");
    assert_eq!(out.matches("candidate in shadow").count(), 2, "{out}");
    for i in 0..2 {
        fleet.wait_for(i, Duration::from_secs(20), "the shadow", |f, i| f.inference(i).shadow_candidate().is_some());
        assert_eq!(fleet.serving(i), Some(("iris".into(), 1)), "staging leaves the slots alone");
        assert!(fleet.data_dir(i).join("candidate/manifest.json").exists());
    }

    // Half of the inferences also go to the candidate; the twin model agrees on every one.
    feed(&fleet.inference(0), 200);
    let reports = shadow_runs(&obs, "pi-00", 100);
    let sum = |f: fn(&Shadow) -> u64| reports.iter().map(f).sum::<u64>();
    let (compared, skipped) = (sum(|s| s.compared), sum(|s| s.skipped));
    assert_eq!(compared + skipped, 100, "one inference in two, each accounted for: {reports:#?}");
    assert!(compared >= 50, "the candidate kept up with most of them: {reports:#?}");
    assert_eq!(sum(|s| s.failed), 0);
    assert_eq!((sum(|s| s.classified), sum(|s| s.agreed)), (compared, compared), "top-1 agreement is complete");
    assert!(reports.iter().all(|s| s.max_abs_diff == 0.0), "the same model gives the same probabilities");
    assert_eq!(sum(|s| s.served_samples), 200, "the served model's engine time covers every inference");
    let s = reports.iter().find(|s| s.compared > 0).expect("a report with comparisons");
    assert_eq!((s.candidate.name.as_str(), s.candidate.version, s.sample_ppm), ("iris", 2, 500_000));
    assert!(s.latency_ratio().is_some_and(|r| r > 0.0), "{s:?}");

    // The experiment is persisted: a restarted agent resumes the shadow.
    fleet.stop(0);
    fleet.start(0);
    fleet.wait_for(0, Duration::from_secs(20), "the shadow again", |f, i| f.inference(i).shadow_candidate().is_some());

    let out = ok("drover", d, &[&["shadow", "--stop", "--group", "lab"][..], &signer].concat());
    assert_eq!(out.matches("shadow stopped").count(), 2, "{out}");
    for i in 0..2 {
        fleet.wait_for(i, Duration::from_secs(20), "no shadow", |f, i| f.inference(i).shadow_candidate().is_none());
    }

    // Staging did not raise the anti-rollback floor: the candidate installs by a plain push.
    ok("drover", d, &["push", &v2, "--broker", &addr, "--group", "lab", "--timeout", "60s"]);
    for i in 0..2 {
        assert_eq!(fleet.serving(i), Some(("iris".into(), 2)));
    }
}

#[test]
fn embedded_broker_shadow_of_a_staged_candidate() {
    shadow(Kind::Embedded);
}

#[test]
fn mosquitto_shadow_of_a_staged_candidate() {
    shadow(Kind::Mosquitto);
}

/// The split reports of `device` so far.
fn split_reports(obs: &Observer, device: &str) -> Vec<Split> {
    let topic = format!("drover/v1/dev/{device}/telemetry");
    obs.messages()
        .into_iter()
        .filter(|(t, _)| *t == topic)
        .filter_map(|(_, p)| codec::decode::<Telemetry>(&p).expect("telemetry").split)
        .collect()
}

#[test]
fn embedded_broker_ab_split_by_routing_key() {
    let Some(Setup { broker, rel, fleet_dir: _fleet_dir, mut fleet, obs, v2 }) =
        Setup::start(Kind::Embedded, "ab", "lab,ab-*")
    else {
        return;
    };
    let d = rel.path();
    let addr = broker.address();
    let signer = ["--key", "keys/operator.key", "--delegation", "op.json", "--broker", &addr, "--timeout", "60s"];

    // B must be on the device: v2 is neither staged nor in a slot yet.
    let out = fails("drover", d, &[&["ab", "--a", "1", "--b", "2", "--device", "ab-00"][..], &signer].concat());
    assert!(out.contains("neither the staged candidate nor the previous slot"), "{out}");
    let out = ok(
        "drover",
        d,
        &[&["ab", "--a", "1", "--b", "2", "--split", "70/30", "--stage", &v2, "--group", "lab"][..], &signer].concat(),
    );
    assert_eq!(out.matches("staged as the candidate").count(), 2, "{out}");
    assert_eq!(out.matches("traffic split").count(), 2, "{out}");
    for i in 0..2 {
        fleet.wait_for(i, Duration::from_secs(20), "the split", |f, i| f.inference(i).split_settings().is_some());
        assert_eq!(fleet.serving(i), Some(("iris".into(), 1)), "a split leaves the slots alone");
    }
    // A must be what the device serves.
    let out = fails("drover", d, &[&["ab", "--a", "2", "--b", "1", "--device", "ab-01"][..], &signer].concat());
    assert!(out.contains("variant A must be the served model"), "{out}");

    // Callers of the local API: each user's requests meet one variant, and say which.
    let api = LocalApi::start(fleet.inference(0), 1 << 20);
    let url = api.url("/v2/models/iris/infer");
    let mut on_b = 0;
    for user in 0..100 {
        let mut seen = Vec::new();
        for call in 0..2 {
            let request = serde_json::json!({
                "id": format!("u{user}-{call}"),
                "parameters": {"routing_key": format!("user-{user}")},
                "inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}],
            });
            let r = post(&url, request.to_string().as_bytes());
            assert_eq!(r.status, 200, "{}", r.body);
            let body = r.json();
            let version = body["model_version"].as_str().expect("model_version").to_string();
            let variant = body["parameters"]["variant"].as_str().expect("variant").to_string();
            assert_eq!((version == "2"), (variant == "b"), "{body}");
            seen.push(variant);
        }
        assert_eq!(seen[0], seen[1], "user-{user} is sticky");
        on_b += usize::from(seen[0] == "b");
        // Every user's first answer was setosa; the label says so.
        assert!(fleet.inference(0).label(&format!("u{user}-0"), 0));
    }
    assert!((15..=45).contains(&on_b), "about 30 of 100 users on B: {on_b}");

    // Telemetry counts both variants: answers, classes, labels.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (a, b) = loop {
        let reports = split_reports(&obs, "ab-00");
        let mut a = drover_wire::telemetry::Variant::new(reports.first().map_or_else(
            || drover_wire::message::ModelRef { name: "iris".try_into().expect("name"), version: 1 },
            |r| r.a.model.clone(),
        ));
        let mut b = a.clone();
        for r in &reports {
            a.merge(&r.a);
            b.merge(&r.b);
            assert_eq!((r.a.model.version, r.b.model.version, r.b_ppm), (1, 2, 300_000));
        }
        if a.labels + b.labels >= 100 {
            break (a, b);
        }
        assert!(Instant::now() < deadline, "split telemetry: {reports:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((a.inferences, b.inferences), ((200 - 2 * on_b) as u64, 2 * on_b as u64));
    assert_eq!((a.labels, b.labels), ((100 - on_b) as u64, on_b as u64));
    assert_eq!((a.accuracy(), b.accuracy()), (Some(1.0), Some(1.0)));
    assert_eq!((a.class_share(0), b.class_share(0)), (Some(1.0), Some(1.0)));
    assert_eq!(a.latency.count() + b.latency.count(), 200);

    // The split is persisted: a restarted agent resumes it; `--stop` ends it.
    drop(api);
    fleet.stop(0);
    fleet.start(0);
    fleet.wait_for(0, Duration::from_secs(20), "the split again", |f, i| f.inference(i).split_settings().is_some());
    let out = ok("drover", d, &[&["ab", "--stop", "--group", "lab"][..], &signer].concat());
    assert_eq!(out.matches("split ended").count(), 2, "{out}");
    for i in 0..2 {
        fleet.wait_for(i, Duration::from_secs(20), "no split", |f, i| f.inference(i).split_settings().is_none());
    }
}
