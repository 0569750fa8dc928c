//! `drover simulate` against Mosquitto, driven by an operator from another process: 40 real
//! agents whose profile cuts their power at random and, half the time, while they receive an
//! update. `drover push` of v1 to the group still ends with every device serving v1 (the
//! interrupted ones resume after their outage), and the simulator's summary counts the crashes
//! during the update, the drifting devices and the memory per device.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::broker::{Broker, Kind, Options};
use drover_tests::cli::{iris_bundle, run, trust_setup};
use drover_tests::tools::workspace_bin;
use serde_json::Value;

const DEVICES: usize = 40;

#[test]
fn a_push_reaches_every_simulated_device_through_power_cuts_during_the_update() {
    let Some(broker) = Broker::start(Kind::Mosquitto, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    let v1 = iris_bundle(d, "1", true);
    std::fs::write(
        d.join("profile.toml"),
        "rate_hz = 5\ntelemetry_period_s = 2\ndrift_window = 20\ndrift_share = 0.25\ndrift_after_s = 1\n\
         outage_every_s = 120\noutage_s = 2\ncrash_during_update = 0.5\nseed = 7\n",
    )
    .expect("profile");
    let mut sim = Command::new(workspace_bin("drover"))
        .current_dir(d)
        .args(["simulate", "--devices", &DEVICES.to_string(), "--root", "root.json", "--profile", "profile.toml"])
        .args(["--broker", &broker.address(), "--duration", "45s", "--summary", "summary.json", "--dir", "devices"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover simulate");
    // Drained as it runs: a full pipe would stall the simulator.
    let mut err_pipe = sim.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut s);
        s
    });
    // Give the devices time to come online (retained presence resolves the group).
    std::thread::sleep(Duration::from_secs(4));
    let started = Instant::now();
    // Slowly (small chunks, a low rate), so that the devices spend seconds receiving it.
    let push = run(
        "drover",
        d,
        &[
            "push",
            &v1,
            "--group",
            "sim",
            "--broker",
            &broker.address(),
            "--timeout",
            "35s",
            "--chunk-size",
            "1024",
            "--max-rate",
            "1024",
        ],
    );
    let took = started.elapsed();
    let status = sim.wait().expect("wait for the simulator");
    let err = errors.join().expect("stderr reader");
    assert!(status.success(), "drover simulate failed: {err}");
    let pushed = format!("{}{}", String::from_utf8_lossy(&push.stdout), String::from_utf8_lossy(&push.stderr));
    assert!(push.status.success(), "the push failed after {took:?}:\n{pushed}");

    let s: Value = serde_json::from_slice(&std::fs::read(d.join("summary.json")).expect("summary")).expect("JSON");
    assert_eq!(s["devices"], DEVICES, "{s:#}");
    assert_eq!(s["serving"]["iris v1"], DEVICES, "every device ended on v1: {s:#}");
    assert!(s["crashes_during_update"].as_u64().expect("crashes") >= 5, "the profile cut power mid-update: {s:#}");
    assert_eq!(s["drifting"], DEVICES / 4, "{s:#}");
    assert!(s["answered"].as_u64().expect("answered") > 1000, "{s:#}");
    let per_device = s["rss_per_device"].as_u64().expect("rss");
    assert!(per_device > 0 && per_device < 64 << 20, "{s:#}");
    // The devices' data dirs were kept where asked, one per device.
    assert_eq!(std::fs::read_dir(d.join("devices")).expect("devices").count(), DEVICES);
}
