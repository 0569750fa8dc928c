//! The fleet server end to end: 20 real agents (in-process, each with its own data dir) on the
//! embedded broker serving the reference iris model, the real `drover fleet serve` binary with its
//! SQLite store, and four views of the fleet that must tell the same truth: `drover fleet status`,
//! the web dashboard in a real headless Chromium, `/metrics` (checked by `promtool`, and scraped
//! by a real Prometheus), and the Grafana dashboard's queries evaluated by that Prometheus.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use drover_runtime::link::BrokerSettings;
use drover_runtime::serve::Inference;
use drover_runtime::tensor::{Tensor, TensorData};
use drover_tests::broker::{Broker, Kind, Options};
use drover_tests::browser::Browser;
use drover_tests::cli::{iris_bundle, ok, trust_setup};
use drover_tests::fleet::Fleet;
use drover_tests::manifest::models_dir;
use drover_tests::services::{FleetServer, Prometheus, eventually, until};
use drover_tests::tools::require_tool;
use serde_json::Value;

const DEVICES: usize = 20;
/// Inferences each device answers: one drift window of 60 samples.
const PER_DEVICE: usize = 60;
/// The device fed inputs far from the training data.
const DRIFTED: &str = "edge-07";
/// The device that goes offline.
const LEAVES: usize = 3;

fn feed(inference: &Inference, n: usize, shift: f32) {
    let text = std::fs::read_to_string(models_dir().join("data/iris.train.jsonl")).expect("iris.train.jsonl");
    let rows: Vec<Vec<f32>> = text.lines().map(|l| serde_json::from_str(l).expect("row")).collect();
    for i in 0..n {
        let x = rows[(i * 7) % rows.len()].iter().map(|v| v + shift).collect();
        let t = Tensor::new(vec![4], TensorData::F32(x)).expect("tensor");
        inference.infer(None, &[t]).expect("served by the pushed model");
    }
}

/// `/metrics` as `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// `drover fleet status --json`, as a user's script reads it.
fn status(dir: &std::path::Path, server: &FleetServer, extra: &[&str]) -> Value {
    let out = ok("drover", dir, &[&["fleet", "status", "--json", "--server", &server.url][..], extra].concat());
    serde_json::from_str(&out).expect("fleet status --json prints JSON")
}

fn device<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["devices"].as_array().and_then(|d| d.iter().find(|d| d["id"] == id)).expect("device listed")
}

/// Every PromQL expression of the Grafana dashboard, its variables set to "all".
fn grafana_queries() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/grafana/drover-fleet.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the Grafana dashboard")).expect("dashboard JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((p["title"].as_str().unwrap_or("").to_string(), expr.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = vec![];
    walk(&dashboard["panels"], &mut out);
    for (_, expr) in &mut out {
        for (var, value) in [
            ("$__rate_interval", "1m"),
            ("${__rate_interval}", "1m"),
            ("$__interval", "1m"),
            ("$__range", "1m"),
            ("${device:regex}", ".*"),
            ("${device}", ".*"),
            ("$device", ".*"),
            ("${model:regex}", ".*"),
            ("${model}", ".*"),
            ("$model", ".*"),
        ] {
            *expr = expr.replace(var, value);
        }
    }
    out
}

#[test]
fn twenty_agents_one_truth_in_the_terminal_the_browser_and_prometheus() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    let bundle = iris_bundle(d, "1", true);
    std::fs::create_dir(d.join("bundles")).expect("mkdir");
    std::fs::copy(&bundle, d.join("bundles/iris-v1.drv")).expect("copy");
    let server = FleetServer::start(d, &broker.address(), &["--bundles", "bundles"]);

    let fleet_dir = tempfile::tempdir().expect("tmp");
    let settings = BrokerSettings { port: broker.port, ..BrokerSettings::default() };
    let mut fleet = Fleet::new(fleet_dir.path(), "edge", DEVICES, &[], &d.join("root.json"), &settings);
    for (i, m) in fleet.members.iter_mut().enumerate() {
        m.cfg.groups = vec![if i < DEVICES / 2 { "north" } else { "south" }.to_string()];
        m.cfg.labels.insert("site".into(), if i % 2 == 0 { "berlin" } else { "paris" }.into());
        m.cfg.telemetry.period_s = Some(1);
        m.cfg.drift.window_samples = PER_DEVICE as u32;
        m.cfg.drift.min_samples = 50;
        m.cfg.drift.budget_pct = 0.0;
    }
    fleet.start_all();
    for group in ["north", "south"] {
        ok("drover", d, &["push", &bundle, "--broker", &broker.address(), "--group", group, "--timeout", "90s"]);
    }
    for i in 0..DEVICES {
        fleet.wait_for(i, Duration::from_secs(30), "iris v1", |f, i| f.inference(i).model().is_some());
        let shift = if fleet.members[i].cfg.device == DRIFTED { 5.0 } else { 0.0 };
        feed(&fleet.inference(i), PER_DEVICE, shift);
    }

    // The terminal: every device, its model, what it answered, its drift.
    let view = until(Duration::from_secs(60), "all 20 devices' telemetry and drift", || {
        let view = status(d, &server, &[]);
        let devices = view["devices"].as_array().ok_or("no devices")?;
        if devices.len() != DEVICES {
            return Err(format!("{} devices", devices.len()));
        }
        let waiting = devices.iter().find(|x| {
            !(x["online"] == true
                && x["version"] == 1
                && x["totals"]["inferences"] == PER_DEVICE as u64
                && x["drift"].is_object()
                && x["latency_us"]["p99"].is_u64())
        });
        match waiting {
            Some(x) => Err(x.to_string()),
            None => Ok(view.clone()),
        }
    });
    for x in view["devices"].as_array().expect("devices") {
        let drifted = !x["drift"]["drifted"].as_array().expect("drifted features").is_empty();
        assert_eq!(drifted, x["id"] == DRIFTED, "only {DRIFTED} drifted: {x}");
        assert_eq!(x["model"], "iris");
    }
    // Merged across the fleet: north holds the drifted device, south none.
    let merged = |view: &Value, group: Option<&str>| -> Value {
        let found = view["drift"].as_array().and_then(|m| m.iter().find(|m| m["group"].as_str() == group).cloned());
        found.unwrap_or_else(|| panic!("merged drift of {group:?}: {view}"))
    };
    let (all, north_drift, south_drift) =
        (merged(&view, None), merged(&view, Some("north")), merged(&view, Some("south")));
    assert_eq!(
        (&all["model"], &all["version"], &all["devices"]),
        (&Value::from("iris"), &Value::from(1), &Value::from(20))
    );
    assert_eq!(all["samples"], (DEVICES * PER_DEVICE) as u64);
    assert_eq!((north_drift["devices"].as_u64(), south_drift["devices"].as_u64()), (Some(10), Some(10)));
    let score = |m: &Value| m["score"].as_f64().expect("score");
    assert!(score(&north_drift) > score(&south_drift), "{north_drift} vs {south_drift}");
    let drifted = |m: &Value| m["features"].as_array().expect("features").iter().any(|f| !f["drifted"].is_null());
    assert!(drifted(&north_drift) && !drifted(&south_drift), "{north_drift} vs {south_drift}");
    let north = status(d, &server, &["--group", "north"]);
    assert_eq!(north["drift"].as_array().map(Vec::len), Some(1), "only north's merge: {}", north["drift"]);
    assert_eq!(north["devices"].as_array().map(Vec::len), Some(DEVICES / 2));
    let paris = status(d, &server, &["--label", "site=paris"]);
    let paris: Vec<&str> =
        paris["devices"].as_array().expect("devices").iter().filter_map(|x| x["id"].as_str()).collect();
    assert_eq!(paris.len(), DEVICES / 2);
    assert!(paris.iter().all(|id| id.ends_with(['1', '3', '5', '7', '9'])), "{paris:?}");
    let table = ok("drover", d, &["fleet", "status", "--server", &server.url]);
    assert!(table.contains("20 of 20 devices online"), "{table}");
    assert!(table.lines().any(|l| l.starts_with(DRIFTED) && l.contains("DRIFT")), "{table}");

    // /metrics: valid exposition, and the same figures.
    let metrics = server.get("/metrics").expect("/metrics");
    if let Some(promtool) = require_tool("promtool", "prometheus") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn promtool");
        check.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("feed promtool");
        let out = check.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(promtool) = require_tool("promtool", "prometheus") {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/grafana/prometheus.yml");
        let out = Command::new(promtool).args(["check", "config"]).arg(&example).output().expect("promtool");
        assert!(out.status.success(), "promtool check config: {}", String::from_utf8_lossy(&out.stderr));
    }
    let m = samples(&metrics);
    let fleet_score = m.get(r#"drover_fleet_drift_score{model="iris",version="1"}"#).expect("fleet drift");
    assert!((fleet_score - score(&all)).abs() < 1e-9);
    let north_score = m.get(r#"drover_group_drift_score{group="north",model="iris",version="1"}"#);
    assert!((north_score.expect("north's drift") - score(&north_drift)).abs() < 1e-9);
    assert_eq!(m.get(r#"drover_fleet_devices{state="online",model="iris",version="1"}"#), Some(&20.0), "{metrics}");
    for x in view["devices"].as_array().expect("devices") {
        let id = x["id"].as_str().expect("id");
        let inferences = m.get(&format!(r#"drover_device_inferences_total{{device="{id}"}}"#));
        assert_eq!(inferences, Some(&(PER_DEVICE as f64)), "{id}");
        let site = x["labels"]["site"].as_str().expect("site label");
        let info = format!(r#"drover_device_info{{device="{id}",agent="#);
        let info = m.keys().find(|k| k.starts_with(&info)).expect("info series");
        assert!(
            info.contains(&format!(r#"groups="{}",labels="site={site}""#, x["groups"][0].as_str().expect("group"))),
            "{info}"
        );
        let score = m.get(&format!(r#"drover_device_drift_score{{device="{id}"}}"#)).expect("a drift score");
        assert!((score - x["drift"]["score"].as_f64().expect("score")).abs() < 1e-9, "{id}");
        let p99 = m.get(&format!(r#"drover_device_latency_seconds{{device="{id}",quantile="0.99"}}"#));
        assert_eq!(p99.map(|s| (s * 1e6).round() as u64), x["latency_us"]["p99"].as_u64(), "{id}");
    }

    // The browser: devices appear, one goes offline, its chart has points.
    let prometheus = Prometheus::start(server.url.trim_start_matches("http://"));
    let browser = Browser::start();
    if let Some(b) = &browser {
        b.goto(&format!("{}/", server.url));
        let rows = b.wait_for(
            Duration::from_secs(20),
            "20 rows in the fleet table",
            "const rows = [...document.querySelectorAll('#fleet tbody tr')];
             return rows.length === 20 && rows.map(r => [...r.cells].map(c => c.textContent));",
        );
        for row in rows.as_array().expect("rows") {
            let id = row[0].as_str().expect("id");
            assert_eq!((row[2].as_str(), row[3].as_str(), row[4].as_str()), (Some("online"), Some("iris"), Some("v1")));
            let x = device(&view, id);
            let groups = format!(
                "{}, site={}",
                x["groups"][0].as_str().expect("group"),
                x["labels"]["site"].as_str().expect("site")
            );
            assert_eq!(row[1].as_str(), Some(groups.as_str()));
            let score = device(&view, id)["drift"]["score"].as_f64().expect("score");
            assert!(row[7].as_str().expect("drift cell").starts_with(&format!("{score:.3}")), "{row}");
        }
        let scopes = b.eval(
            "return [...document.querySelectorAll('#fleet-drift tbody tr')].map(r => [r.dataset.scope, r.cells[5].textContent]);",
        );
        assert_eq!(scopes.as_array().map(Vec::len), Some(3), "{scopes}");
        for (scope, want) in [("fleet", &all), ("group north", &north_drift), ("group south", &south_drift)] {
            let row = scopes.as_array().and_then(|r| r.iter().find(|r| r[0] == scope)).expect("scope row");
            assert_eq!(row[1].as_str(), Some(format!("{:.3}", score(want)).as_str()), "{scope}");
        }
        let summary = b.eval("return document.getElementById('summary').textContent");
        assert_eq!(summary, "20 of 20 devices online");
    }
    fleet.stop(LEAVES);
    let gone = fleet.members[LEAVES].cfg.device.clone();
    eventually(Duration::from_secs(20), "the stopped device offline in fleet status", || {
        (device(&status(d, &server, &[]), &gone)["online"] == false).then_some(())
    });
    let m = samples(&server.get("/metrics").expect("/metrics"));
    assert_eq!(m.get(&format!(r#"drover_device_up{{device="{gone}"}}"#)), Some(&0.0));
    assert_eq!(m.get(r#"drover_fleet_devices{state="offline",model="iris",version="1"}"#), Some(&1.0));
    // The event log is written with the batch, a moment after the registry knows.
    let details = eventually(Duration::from_secs(5), "the offline event in fleet device", || {
        let details = ok("drover", d, &["fleet", "device", &gone, "--server", &server.url]);
        details.contains("went offline").then_some(details)
    });
    assert!(details.contains("presence   OFFLINE"), "{details}");
    if let Some(b) = &browser {
        let cell = b.wait_for(
            Duration::from_secs(10),
            "the stopped device offline on the page (live update)",
            &format!(
                "const r = document.querySelector('#fleet tbody tr[data-device=\"{gone}\"]');
                 return r && r.cells[2].textContent === 'offline' && document.getElementById('summary').textContent;"
            ),
        );
        assert_eq!(cell, "19 of 20 devices online");
        b.eval("location.hash = '#/device/edge-05'; return true");
        let points = b.wait_for(
            Duration::from_secs(10),
            "the latency and drift charts of edge-05",
            "const p = [...document.querySelectorAll('#latency-chart polyline, #drift-chart polyline')];
             return p.length === 3 && p.map(l => Number(l.dataset.points));",
        );
        let points: Vec<u64> = serde_json::from_value(points).expect("counts");
        assert!(points[0] >= 1 && points[1] >= 1, "p50 and p99 have points: {points:?}");
        assert!(points[2] >= 1, "the drift chart has the judged window: {points:?}");
        let title = b.eval("return document.getElementById('device-title').textContent");
        assert_eq!(title, "edge-05 (online)");
    }

    // Prometheus scraped the same truth, and every Grafana panel's query evaluates to data.
    if let Some(p) = &prometheus {
        eventually(Duration::from_secs(30), "Prometheus to see 19 online and 1 offline", || {
            let online = p.sum(r#"sum(drover_fleet_devices{state="online"})"#)?;
            let offline = p.sum(r#"sum(drover_fleet_devices{state="offline"})"#)?;
            // rate() needs two scrapes in its window.
            let scrapes = p.sum(r#"count_over_time(up{job="drover-fleet"}[1m])"#)?;
            (online == 19.0 && offline == 1.0 && scrapes >= 3.0).then_some(())
        });
        let total = p.sum("sum(drover_device_inferences_total)").expect("inference counters");
        assert_eq!(total, (DEVICES * PER_DEVICE) as f64);
        let drifted = p.sum("drover_device_drifted_features > 0").expect("the drifted device");
        assert!(drifted >= 1.0);
        let queries = grafana_queries();
        assert!(queries.len() >= 10, "the dashboard has its panels: {queries:?}");
        for (title, expr) in &queries {
            let data = p.query(expr).unwrap_or_else(|e| panic!("Grafana panel '{title}': {e}"));
            let empty = data["result"].as_array().is_some_and(Vec::is_empty);
            // No rollout and no shadow ran in this test: their panels may be empty, no other.
            let idle = ["drover_rollout_stage", "drover_device_shadow_agreement_ratio"];
            assert!(!empty || idle.iter().any(|m| expr.contains(m)), "Grafana panel '{title}' shows nothing: {expr}");
        }
    }
}

/// What a raw HTTP/1.1 request to `url` (`http://HOST:PORT`) gets: the status and the body.
/// A device that installs a model after connecting and then dies (power cut): the broker
/// publishes its Last Will, written at connect when it served nothing. The fleet must show it
/// offline and still serving what it last said it served, not "no model".
#[test]
fn a_device_that_crashes_after_an_install_stays_on_its_model_in_the_fleet_view() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    let bundle = iris_bundle(d, "1", true);
    let server = FleetServer::start(d, &broker.address(), &[]);
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let settings = BrokerSettings { port: broker.port, ..BrokerSettings::default() };
    let mut fleet = Fleet::new(fleet_dir.path(), "crash", 1, &["lab"], &d.join("root.json"), &settings);
    fleet.members[0].cfg.status_every_s = 1;
    fleet.start_all();
    ok("drover", d, &["push", &bundle, "--broker", &broker.address(), "--group", "lab", "--timeout", "60s"]);
    let listed = || {
        let view = status(d, &server, &[]);
        let found = view["devices"].as_array().and_then(|v| v.iter().find(|x| x["id"] == "crash-00")).cloned();
        found.ok_or_else(|| format!("not listed: {view}"))
    };
    until(Duration::from_secs(30), "crash-00 online serving iris v1", || {
        let x = listed()?;
        if x["online"] == true && x["version"] == 1 { Ok(()) } else { Err(x.to_string()) }
    });
    fleet.kill(0);
    let x = until(Duration::from_secs(60), "crash-00 offline", || {
        let x = listed()?;
        if x["online"] == false { Ok(x) } else { Err(x.to_string()) }
    });
    assert_eq!(
        (&x["model"], &x["version"], &x["slot"]),
        (&Value::from("iris"), &Value::from(1), &Value::from("a")),
        "{x}"
    );
}

/// Waits until the server has counted each of `agents` devices' `asked` no-model requests, no
/// more and no fewer: every report stored exactly once.
fn every_request_counted_once(server: &FleetServer, agents: usize, asked: u64, timeout: Duration) {
    until(timeout, "every request counted once", || {
        let view = server.json("/api/fleet");
        let devices = view["devices"].as_array().ok_or("no devices")?;
        let counted: Vec<u64> = devices.iter().filter_map(|x| x["totals"]["no_model_errors"].as_u64()).collect();
        if counted.len() == agents && counted.iter().all(|c| *c == asked) {
            Ok(())
        } else {
            Err(format!("{counted:?} of {asked}"))
        }
    });
}

fn raw(url: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::Read;
    let addr = url.trim_start_matches("http://");
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return (0, e.to_string()),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: 0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The HTTP side against what a hostile web page could make a browser on the operator's machine
/// send: a cross-site POST that would abort a rollout, and a page re-pointed at 127.0.0.1 (DNS
/// rebinding) reading the API; command-line clients still work. With a token, nothing answers
/// without it; without one, the server refuses to listen beyond loopback.
#[test]
fn other_sites_pages_are_refused_and_a_token_guards_everything() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let server = FleetServer::start(d, &broker.address(), &[]);
    let url = server.url.as_str();
    let abort = "/api/rollouts/iris-v2-1/abort";
    let (code, body) = raw(url, "POST", abort, &[("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("another site"), "{body}");
    let (code, body) = raw(url, "POST", abort, &[]);
    assert_eq!(code, 404, "a client without Origin reaches the route (no such rollout): {body}");
    let own = url.trim_start_matches("http://");
    let (code, _) = raw(url, "POST", abort, &[("origin", url), ("sec-fetch-site", "same-origin")]);
    assert_eq!(code, 404, "the dashboard's own buttons reach it");
    let (code, body) = raw(url, "GET", "/api/fleet", &[("host", "rebound.evil.example")]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(raw(url, "GET", "/api/fleet", &[("host", own)]).0, 200);
    drop(server);

    std::fs::write(d.join("token"), "s3cret-token\n").expect("token");
    let out = drover_tests::cli::fails(
        "drover",
        d,
        &["fleet", "serve", "--broker", &broker.address(), "--http", "0.0.0.0:0", "--db", "open.db"],
    );
    assert!(out.contains("refusing to serve 0.0.0.0:0 beyond loopback without a token"), "{out}");
    assert!(!d.join("open.db").exists(), "nothing was created");

    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut child = Command::new(drover_tests::tools::workspace_bin("drover"))
        .current_dir(d)
        .args(["fleet", "serve", "--broker", &broker.address(), "--db", "tokened.db", "--token-file", "token"])
        .args(["--http", &format!("127.0.0.1:{port}"), "--client-id", "fleet-tokened"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn drover fleet serve");
    let url = format!("http://127.0.0.1:{port}");
    let bearer = ("authorization", "Bearer s3cret-token");
    until(Duration::from_secs(20), "the tokened server", || match raw(&url, "GET", "/api/fleet", &[bearer]) {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    for path in ["/", "/metrics", "/api/fleet", "/api/rollouts"] {
        let (code, body) = raw(&url, "GET", path, &[]);
        assert_eq!(code, 401, "{path}: {body}");
        assert_eq!(raw(&url, "GET", path, &[("authorization", "Bearer s3cret-tokeN")]).0, 401, "{path}");
        assert_eq!(raw(&url, "GET", path, &[bearer]).0, 200, "{path}");
    }
    assert_eq!(raw(&url, "GET", "/api/fleet?token=s3cret-token", &[]).0, 200, "the browser's form");
    let _ = child.kill();
    let _ = child.wait();
}

/// The server killed (SIGKILL) mid-stream and started again, its reports read by `links` ingest
/// connections (more than one: dealt across them by a `$share/` subscription): every report the
/// agents sent is counted once, none lost and none twice, and each is one period in the database.
fn a_server_killed_mid_stream_counts_every_report_once(kind: Kind, links: &str) {
    const AGENTS: usize = 6;
    let Some(broker) = Broker::start(kind, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    // The group's name from a file, as a secret: a client in the default group (as a device could
    // join one) would take reports away from the server.
    std::fs::write(d.join("share-group"), "fleet-7Hq2\n").expect("write");
    let mut server =
        FleetServer::start(d, &broker.address(), &["--ingest-links", links, "--share-group-file", "share-group"]);
    let _other_group =
        drover_tests::observer::Observer::connect(broker.port, "$share/drover-fleet/drover/v1/dev/+/telemetry");
    // A plain subscriber beside it sees every report as the broker delivered it.
    let observer = drover_tests::observer::Observer::connect(broker.port, "drover/v1/dev/+/telemetry");
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let settings = BrokerSettings { port: broker.port, ..BrokerSettings::default() };
    let mut fleet = Fleet::new(fleet_dir.path(), "ingest", AGENTS, &[], &d.join("root.json"), &settings);
    for m in fleet.members.iter_mut() {
        m.cfg.telemetry.period_s = Some(1);
    }
    fleet.start_all();
    // Requests with no model to serve them: each is counted in its second's report as a
    // no-model error, so the server's totals tell how many reports it counted.
    let request = Tensor::new(vec![4], TensorData::F32(vec![5.1, 3.5, 1.4, 0.2])).expect("tensor");
    let started = std::time::Instant::now();
    let (mut asked, mut killed, mut restarted) = (0u64, false, false);
    while started.elapsed() < Duration::from_secs(9) {
        for i in 0..AGENTS {
            assert!(fleet.inference(i).infer(None, std::slice::from_ref(&request)).is_err(), "no model yet");
        }
        asked += 1;
        if !killed && started.elapsed() > Duration::from_secs(3) {
            server.kill();
            killed = true;
        }
        if !restarted && started.elapsed() > Duration::from_secs(6) {
            server.restart();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    every_request_counted_once(&server, AGENTS, asked, Duration::from_secs(30));
    // Each report once in the database, as the broker delivered them.
    let mut sent: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for (topic, payload) in observer.seen.lock().expect("lock").iter() {
        let t: drover_wire::telemetry::Telemetry =
            drover_runtime::link::codec::decode(payload).expect("the agents' telemetry decodes");
        let device = topic.split('/').nth(3).expect("a device topic").to_string();
        assert!(sent.entry(device).or_default().insert(t.end_ms), "{topic} delivered twice to one subscriber");
    }
    assert_eq!(sent.len(), AGENTS);
    if kind == Kind::Mosquitto {
        let log = broker.log();
        let last = format!("-ingest-{links} ");
        assert!(log.contains(&last), "the server's ingest connections reached the broker: {log}");
    }
    for (device, periods) in &sent {
        let series = server.json(&format!("/api/devices/{device}/series?since_ms=0&max_points=100000"));
        let stored: Vec<u64> =
            series["points"].as_array().expect("points").iter().filter_map(|p| p["end_ms"].as_u64()).collect();
        let stored_set: std::collections::BTreeSet<u64> = stored.iter().copied().collect();
        assert_eq!(stored.len(), stored_set.len(), "{device}: a period stored twice");
        assert!(stored_set.is_superset(periods), "{device}: reports missing: {:?}", periods.difference(&stored_set));
    }
    drop(fleet);
}

/// The embedded broker (which keeps no session across a restart) killed and started again, four
/// times, while agents report every second: an agent that is back before the fleet server
/// publishes what it queued to a broker with no subscriber yet, which acknowledges it and drops
/// it. The fleet server's `stored` word, not the broker's, is what lets an agent forget a
/// report: every request is still counted once.
#[test]
fn broker_restarts_while_agents_report_lose_no_telemetry() {
    const AGENTS: usize = 4;
    let Some(mut broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    let server = FleetServer::start(d, &broker.address(), &[]);
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let settings = BrokerSettings { port: broker.port, ..BrokerSettings::default() };
    let mut fleet = Fleet::new(fleet_dir.path(), "rst", AGENTS, &[], &d.join("root.json"), &settings);
    for m in fleet.members.iter_mut() {
        m.cfg.telemetry.period_s = Some(1);
        m.cfg.telemetry.resend_s = 3;
    }
    fleet.start_all();
    let request = Tensor::new(vec![4], TensorData::F32(vec![5.1, 3.5, 1.4, 0.2])).expect("tensor");
    let started = std::time::Instant::now();
    let (mut asked, mut restarts) = (0u64, 0);
    while started.elapsed() < Duration::from_secs(26) {
        for i in 0..AGENTS {
            assert!(fleet.inference(i).infer(None, std::slice::from_ref(&request)).is_err(), "no model yet");
        }
        asked += 1;
        // Restarted every 5 s from the 3rd second on: the agents reconnect within half a second,
        // the fleet server a second later, and what the agents publish in between has no
        // subscriber on the new broker.
        let due = started.elapsed() > Duration::from_secs(3 + 5 * restarts) && restarts < 4;
        if due {
            broker.restart();
            restarts += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    every_request_counted_once(&server, AGENTS, asked, Duration::from_secs(60));
    drop(fleet);
}

#[test]
fn mosquitto_fleet_server_with_shared_ingest_killed_mid_stream_counts_every_report_once() {
    a_server_killed_mid_stream_counts_every_report_once(Kind::Mosquitto, "3");
}

/// rumqttd 0.20 drops what waits for a killed member of a shared subscription (and spins its
/// router on them): on the embedded broker the server reads through one plain connection.
#[test]
fn embedded_broker_fleet_server_killed_mid_stream_counts_every_report_once() {
    a_server_killed_mid_stream_counts_every_report_once(Kind::Embedded, "1");
}

/// `drover rollout` against one fleet server; its output, and whether it succeeded.
fn rollout(d: &std::path::Path, server: &FleetServer, args: &[&str]) -> (bool, String) {
    let out = drover_tests::cli::run("drover", d, &[&["rollout"][..], args, &["--server", &server.url]].concat());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Past one machine: three fleet-server instances on one PostgreSQL (Debian's, started by the
/// test, reached over TLS only) share the report streams of 8 real agents through Mosquitto's shared subscription,
/// while a staged rollout runs. The instance that drives the rollout is killed (SIGKILL) in the
/// middle of it and started again 5 s later. Every report is stored exactly once (counted
/// against the requests the agents got, and checked row by row against what the broker
/// delivered), every instance shows the same totals, one instance at a time drives the rollout
/// (the others refuse rollout commands and name it), and the rollout completes under the next.
#[test]
fn three_fleet_servers_on_postgres_share_ingest_and_one_rollout_driver_survives_a_kill() {
    const AGENTS: usize = 8;
    let Some(mut pg) = drover_tests::postgres::Postgres::start() else { return };
    let Some(broker) = Broker::start(Kind::Mosquitto, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    // The servers reach PostgreSQL over TLS only, checked against its CA.
    let pki = drover_tests::broker::Pki::make(&d.join("pg-pki"));
    pg.require_tls(&pki.server_cert, &pki.server_key);
    let url = pg.create_database("fleet");
    let tls_url = format!("{url}?sslmode=require");
    let ca = pki.ca.display().to_string();
    ok("drover", d, &["keygen", "--role", "operator", "--out", "keys"]);
    drover_tests::cli::delegate(d, "--operator", "keys/operator.pub", "lab,so-*", "op.json");
    let v1 = iris_bundle(d, "1", true);
    let v2 = iris_bundle(d, "2", true);
    std::fs::write(d.join("share-group"), "fleet-Zk41\n").expect("write");
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let settings = BrokerSettings { port: broker.port, ..BrokerSettings::default() };
    let mut fleet = Fleet::new(fleet_dir.path(), "so", AGENTS, &["lab"], &d.join("root.json"), &settings);
    for m in fleet.members.iter_mut() {
        m.cfg.telemetry.period_s = Some(1);
    }
    fleet.start_all();
    ok("drover", d, &["push", &v1, "--broker", &broker.address(), "--group", "lab", "--timeout", "90s"]);
    for i in 0..AGENTS {
        fleet.wait_for(i, Duration::from_secs(30), "iris v1", |f, i| f.serving(i) == Some(("iris".into(), 1)));
    }
    let observer = drover_tests::observer::Observer::connect(broker.port, "drover/v1/dev/+/telemetry");
    let args = [
        "--db",
        &tls_url,
        "--db-ca",
        &ca,
        "--share-group-file",
        "share-group",
        "--operator-key",
        "keys/operator.key",
        "--delegation",
        "op.json",
    ];
    let mut servers: Vec<FleetServer> = (0..3).map(|_| FleetServer::start(d, &broker.address(), &args)).collect();

    // Requests to every device, one round every 50 ms; a round is counted once all its
    // requests were answered or refused (each is counted by the agent either way).
    let rounds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let services: Vec<_> = (0..AGENTS).map(|i| fleet.inference(i)).collect();
        let (rounds, stop) = (rounds.clone(), stop.clone());
        std::thread::spawn(move || {
            let request = Tensor::new(vec![4], TensorData::F32(vec![5.1, 3.5, 1.4, 0.2])).expect("tensor");
            while !stop.load(Ordering::Relaxed) {
                for s in &services {
                    let _ = s.infer(None, std::slice::from_ref(&request));
                }
                rounds.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Whichever instance took the lease creates the rollout; the others refuse and name it.
    let plan = [
        "--group",
        "lab",
        "--stages",
        "50,100",
        "--shadow-first",
        "2s",
        "--soak",
        "2s",
        "--install-timeout",
        "60s",
        "--min-requests",
        "3",
        "--min-shadow-agreement",
        "0.9",
        "--max-error-rate",
        "0.05",
    ];
    let create = [&["create", v2.as_str()][..], &plan].concat();
    let (driver, id) = until(Duration::from_secs(20), "an instance that drives rollouts", || {
        for (i, s) in servers.iter().enumerate() {
            let (fine, text) = rollout(d, s, &create);
            if fine {
                return Ok((i, text.trim().to_string()));
            }
            if !text.contains("does not drive rollouts") {
                return Err(format!("unexpected refusal: {text}"));
            }
        }
        Err("none yet".into())
    });
    // The servers' shared subscriptions exist by now: reports published later reach the group
    // (earlier ones reached only the observer, as a group keeps nothing before it exists).
    let subscribed_ms = unix_ms();
    let drivers = |servers: &[FleetServer]| -> Vec<usize> {
        (0..servers.len())
            .filter(|i| servers[*i].get("/metrics").is_some_and(|m| m.contains("drover_fleet_rollout_driver 1\n")))
            .collect()
    };
    assert_eq!(drivers(&servers), [driver], "/metrics tells which one drives");
    for (i, s) in servers.iter().enumerate().filter(|(i, _)| *i != driver) {
        let (fine, text) = rollout(d, s, &["pause", &id]);
        assert!(!fine && text.contains(&servers[driver].url), "instance {i} refuses and names the driver: {text}");
    }
    // Killed while the first stage's deploy is on its way.
    std::thread::sleep(Duration::from_millis(1500));
    servers[driver].kill();
    let killed_at = std::time::Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != driver).collect();
    let next = until(Duration::from_secs(20), "another instance to take over the rollout", || {
        for &i in &survivors {
            let (fine, text) = rollout(d, &servers[i], &["resume", &id]);
            // "cannot resume now": it drives, and the rollout is running.
            if !fine && text.contains("cannot resume") {
                return Ok(i);
            }
        }
        Err("none yet".into())
    });
    std::thread::sleep(Duration::from_secs(5).saturating_sub(killed_at.elapsed()));
    servers[driver].restart();
    let (fine, text) = rollout(d, &servers[driver], &["pause", &id]);
    assert!(!fine && text.contains(&servers[next].url), "the restarted instance follows: {text}");
    assert_eq!(drivers(&servers), [next], "/metrics tells which one drives");
    let r = until(Duration::from_secs(180), "the rollout to complete under the next driver", || {
        let (_, text) = rollout(d, &servers[driver], &["status", &id, "--json"]);
        let all: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        match all[0]["state"]["state"].as_str() {
            Some("completed") => Ok(all[0].clone()),
            Some("running") | Some("paused") => Err(format!("{}", all[0]["log"])),
            _ => panic!("the rollout ended otherwise: {:#}", all[0]),
        }
    });
    for i in 0..AGENTS {
        assert_eq!(fleet.serving(i), Some(("iris".into(), 2)), "{}", fleet.members[i].cfg.device);
    }
    let log: Vec<&str> = r["log"].as_array().expect("log").iter().filter_map(|e| e["text"].as_str()).collect();
    for step in ["created", "stage 1 (50 %): shadowing on 4", "stage 2 (100 %): shadowing on 4", "completed"] {
        let n = log.iter().filter(|l| l.starts_with(step)).count();
        assert_eq!(n, 1, "'{step}' once: one driver at a time: {log:#?}");
    }

    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic");
    let asked = rounds.load(Ordering::Relaxed);
    // Every instance shows every request counted once: their registries are the store's.
    for s in &servers {
        until(Duration::from_secs(30), "every request counted once", || {
            let view = s.json("/api/fleet");
            let devices = view["devices"].as_array().ok_or("no devices")?;
            let counted: Vec<u64> = devices
                .iter()
                .map(|x| {
                    let t = &x["totals"];
                    ["inferences", "input_errors", "engine_errors", "busy_errors", "no_model_errors"]
                        .iter()
                        .filter_map(|k| t[*k].as_u64())
                        .sum()
                })
                .collect();
            if counted.len() == AGENTS && counted.iter().all(|c| *c == asked) {
                Ok(())
            } else {
                Err(format!("{} at {counted:?} of {asked}", s.url))
            }
        });
    }
    // Row by row: each report the broker delivered is one period in PostgreSQL.
    let mut sent: BTreeMap<String, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for (topic, payload) in observer.seen.lock().expect("lock").iter() {
        let t: drover_wire::telemetry::Telemetry =
            drover_runtime::link::codec::decode(payload).expect("the agents' telemetry decodes");
        let device = topic.split('/').nth(3).expect("a device topic").to_string();
        if t.end_ms > subscribed_ms {
            sent.entry(device).or_default().insert(t.end_ms as i64);
        }
    }
    assert_eq!(sent.len(), AGENTS);
    for (device, periods) in &sent {
        let stored: std::collections::BTreeSet<i64> = pg
            .psql(&url, &format!("SELECT end_ms FROM points WHERE device = '{device}'"))
            .lines()
            .map(|l| l.parse().expect("end_ms"))
            .collect();
        let missing: Vec<&i64> = periods.difference(&stored).collect();
        assert!(missing.is_empty(), "{device}: reports missing: {missing:?}");
    }
    // One statement, one snapshot: the agents still report while this runs.
    let (points, rolled_up) = pg
        .psql(&url, "SELECT (SELECT count(*) FROM points), (SELECT sum(periods) FROM rollups)")
        .split_once('|')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .expect("two columns");
    assert_eq!(rolled_up, points, "each period rolled up once");
    drop(fleet);
}

/// Unix ms now, as the agents stamp their reports.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
