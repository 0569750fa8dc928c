//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`),
//! for the tests that check what a person sees on the fleet dashboard.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::broker::free_port;
use crate::services::eventually;
use crate::tools::require_tool;

/// A browser session; the driver and the browser stop when dropped.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` when they are missing outside CI.
    pub fn start() -> Option<Browser> {
        let chromium = require_tool("chromium", "chromium")?;
        let chromedriver = require_tool("chromedriver", "chromium-driver")?;
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let profile = tempfile::tempdir().expect("tmp");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-extensions", "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually(Duration::from_secs(30), "chromedriver to start a session", || {
            rt.block_on(ClientBuilder::new(HttpConnector::new()).capabilities(caps.clone()).connect(&url)).ok()
        });
        Some(Browser { rt, client: Some(client), driver, _profile: profile })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session until dropped")
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.client().goto(url)).unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> serde_json::Value {
        self.rt.block_on(self.client().execute(script, vec![])).unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Evaluates `script` until it returns something other than `null` or `false`.
    pub fn wait_for(&self, timeout: Duration, what: &str, script: &str) -> serde_json::Value {
        eventually(timeout, what, || {
            let v = self.eval(script);
            (!(v.is_null() || v == false)).then_some(v)
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), client.close()).await });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
