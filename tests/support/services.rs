//! External programs an end-to-end test runs beside the agents: the real `drover fleet serve`
//! binary, Prometheus (Debian's `prometheus`) scraping it, each on a free loopback port and
//! killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::free_port;
use crate::tools::{require_tool, workspace_bin};

/// Polls `f` every 100 ms until it returns `Some`, or panics naming `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    until(timeout, what, || f().ok_or_else(String::new))
}

/// Polls `f` every 100 ms until it returns `Ok`, or panics after `timeout` with `what` and the
/// last reason `f` gave for not being done.
pub fn until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}: {why}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A GET on loopback; `None` while the server is not answering (or answers an error).
pub fn http_get(url: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    agent.get(url).call().ok()?.body_mut().read_to_string().ok()
}

/// `drover fleet serve` as an operator runs it.
pub struct FleetServer {
    child: Child,
    /// Its working directory and arguments, to start it again as it was.
    dir: PathBuf,
    args: Vec<String>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its SQLite file.
    pub db: PathBuf,
}

impl FleetServer {
    /// Starts the server in `dir` against the broker at `broker`, with `extra` arguments, and
    /// waits until its API answers.
    pub fn start(dir: &Path, broker: &str, extra: &[&str]) -> FleetServer {
        let port = free_port();
        let db = dir.join("fleet.db");
        let mut args: Vec<String> =
            ["fleet", "serve", "--broker", broker, "--http", &format!("127.0.0.1:{port}")].map(String::from).into();
        // A `--db` among `extra` (a PostgreSQL URL) stands instead of the SQLite file.
        if !extra.contains(&"--db") {
            args.extend(["--db".to_string(), db.display().to_string()]);
        }
        args.extend(["--client-id".into(), format!("fleet-{port}")]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let server = FleetServer {
            child: spawn_server(dir, &args),
            dir: dir.to_path_buf(),
            args,
            url: format!("http://127.0.0.1:{port}"),
            db,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        eventually(Duration::from_secs(20), "the fleet server's API", || self.get("/api/fleet"));
    }

    /// Kills the server at once (SIGKILL, as a power cut: nothing written or acknowledged on
    /// the way out).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again as it was (the same port, database and MQTT client ids, so the same
    /// broker sessions), and waits until its API answers.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_server(&self.dir, &self.args);
        self.wait_ready();
    }

    /// GET `path` from the server.
    pub fn get(&self, path: &str) -> Option<String> {
        http_get(&format!("{}{path}", self.url))
    }

    /// GET `path` as JSON.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let body = self.get(path).unwrap_or_else(|| panic!("fleet server: GET {path} failed"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("fleet server: GET {path}: {e}: {body}"))
    }
}

fn spawn_server(dir: &Path, args: &[String]) -> Child {
    Command::new(workspace_bin("drover"))
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn drover fleet serve")
}

impl Drop for FleetServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server scraping one target every second, with its own empty TSDB.
pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`127.0.0.1:PORT`, path `/metrics`); `None` when the
    /// binary is missing outside CI.
    pub fn start(target: &str) -> Option<Prometheus> {
        let bin = require_tool("prometheus", "prometheus")?;
        let dir = tempfile::tempdir().expect("tmp");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 scrape_configs:\n  - job_name: drover-fleet\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, _dir: dir, url: format!("http://127.0.0.1:{port}") };
        eventually(Duration::from_secs(30), "Prometheus to be ready", || http_get(&format!("{}/-/ready", p.url)));
        Some(p)
    }

    /// An instant query: the `data` of Prometheus' reply, or its error as `Err`.
    pub fn query(&self, promql: &str) -> Result<serde_json::Value, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut reply = agent
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()
            .map_err(|e| e.to_string())?;
        let body = reply.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] == "success" { Ok(v["data"].clone()) } else { Err(format!("{promql}: {}", v["error"])) }
    }

    /// The sum of an instant vector's values (`None` while it is empty).
    pub fn sum(&self, promql: &str) -> Option<f64> {
        let data = self.query(promql).ok()?;
        let result = data["result"].as_array()?;
        if result.is_empty() {
            return None;
        }
        Some(result.iter().filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok()).sum())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
