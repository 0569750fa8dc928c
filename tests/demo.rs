//! `drover demo` as a newcomer runs it: the real binary with `--duration 30`, on a fresh
//! temporary directory. While it runs, the dashboard it printed answers with the whole fleet;
//! it exits 0 after telling every step (v1 pushed, the drift alerts, the staged rollout of v2
//! completed on every device); afterwards nothing listens on its ports and nothing is left in
//! its temporary directory.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use drover_tests::cli::fails;
use drover_tests::tools::workspace_bin;
use serde_json::Value;

#[test]
fn the_demo_tells_the_whole_life_cycle_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let started = Instant::now();
    let mut child = Command::new(workspace_bin("drover"))
        .args(["demo", "--duration", "30"])
        .env("TMPDIR", tmp.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover demo");
    // Both pipes are drained as the demo runs: a full pipe would stall it.
    let mut err_pipe = child.stderr.take().expect("stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut s);
        s
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // The URL comes early; the dashboard's API then shows the ten devices.
    let mut text = Vec::new();
    let url = loop {
        let line = lines.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no URL in {text:#?}"));
        text.push(line.clone());
        if let Some(rest) = line.trim().strip_prefix("Dashboard:") {
            break rest.trim().trim_end_matches('/').to_string();
        }
    };
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let address = url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(25);
    let seen = loop {
        let fleet: Option<Value> = ureq::get(&format!("{url}/api/fleet"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|b| serde_json::from_str(&b).ok());
        let online = fleet
            .as_ref()
            .and_then(|f| f["devices"].as_array())
            .map_or(0, |d| d.iter().filter(|x| x["online"] == true && x["version"] == 1).count());
        if online == 10 {
            break online;
        }
        assert!(Instant::now() < deadline, "the dashboard's API never showed 10 devices on v1: {fleet:?}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(seen, 10);

    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    text.extend(lines.try_iter());
    let stderr = errors.join().expect("stderr reader");
    let all = text.join("\n");
    assert!(status.success(), "drover demo failed:\n{all}\n{stderr}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(29), "it ran for its duration: {elapsed:?}");

    for step in [
        "1. Keys:",
        "2. Bundles: iris v1 and v2",
        "4. Started 10 agents",
        "iris v1 installed on 10/10 devices",
        "7. Data drift: pi-02, pi-07",
        "ALERT pi-02",
        "ALERT pi-07",
        "8. Rolling out iris v2",
        "stage 1 (30 %): shadowing on 3 device(s)",
        "shadow agreement",
        "completed",
        "9. 10/10 devices serve iris v2.",
        "Stopping:",
        "Removed ",
        "Done: 2 alert(s), rollout completed",
    ] {
        assert!(all.contains(step), "missing {step:?} in\n{all}\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Nothing left: the dashboard's port is closed, the temporary directory is empty.
    assert!(TcpStream::connect(&address).is_err(), "the fleet server still listens on {address}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").map(|e| e.expect("entry").path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn kept_files_go_only_into_an_empty_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("precious.txt"), "mine").expect("write");
    let out = fails("drover", dir.path(), &["demo", "--keep", ".", "--duration", "5"]);
    assert!(out.contains("not empty"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.path().join("precious.txt")).expect("untouched"), "mine");
}

/// `drover soak`, short: the real agent binary under load, three releases pushed while it
/// serves, every reading taken, no request failed, and a clean stop. (The hour-long run is not
/// part of the tests: its figures are in docs/security.md.)
#[test]
fn a_short_soak_takes_its_readings_through_updates_and_stops_the_agent_cleanly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let keep = tmp.path().join("kept");
    let agent = workspace_bin("drover-agent");
    let out = drover_tests::cli::ok(
        "drover",
        tmp.path(),
        &[
            "soak",
            "--agent",
            &agent.to_string_lossy(),
            "--duration",
            "24s",
            "--update-every",
            "6s",
            "--sample-every",
            "2s",
            "--rate",
            "25",
            "--telemetry-s",
            "2",
            "--keep",
            &keep.to_string_lossy(),
        ],
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 10 && f[0].parse::<f64>().is_ok())
        .collect();
    assert!(rows.len() >= 10, "a reading every 2 s for 24 s:\n{out}");
    let versions: Vec<&str> = rows.iter().map(|r| r[8]).collect();
    assert_eq!(versions.first(), Some(&"v1"), "{out}");
    assert!(versions.contains(&"v3"), "releases pushed during the soak are installed:\n{out}");
    assert!(rows.iter().any(|r| r[9] == "yes") && rows.iter().any(|r| r[9] == "no"), "inputs drift and return:\n{out}");
    for r in &rows {
        let rss: u64 = r[1].parse().expect("rss");
        let fds: u64 = r[3].parse().expect("fds");
        assert!(rss > 1024 && fds >= 3, "the agent process is measured: {r:?}");
    }
    let last = rows.last().expect("rows");
    let answered: u64 = last[6].parse().expect("answered");
    assert!(answered >= 200, "about 25 requests a second answered:\n{out}");
    assert_eq!(last[7], "0", "no request failed, updates included:\n{out}");
    assert!(out.contains("updates: ") && out.contains("RSS: ") && out.contains("file descriptors: "), "{out}");
    // The kept files: the agent's log and its data dir, serving the last release.
    assert!(keep.join("agent.log").is_file());
    let status = drover_tests::cli::ok(
        "drover-agent",
        tmp.path(),
        &["status", "--data-dir", &keep.join("soak-00").to_string_lossy(), "--json"],
    );
    let status: Value = serde_json::from_str(&status).expect("status JSON");
    assert!(status.to_string().contains(&format!("\"version\":{}", &last[8][1..])), "{status}");

    let out = fails("drover", tmp.path(), &["soak", "--agent", "/nonexistent/drover-agent", "--duration", "1s"]);
    assert!(out.contains("no agent binary at /nonexistent/drover-agent"), "{out}");
}
