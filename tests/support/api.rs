//! A local inference API served in-process on a free port (or a unix socket), for tests that
//! call it over real HTTP.

use std::path::PathBuf;
use std::sync::Arc;

use drover_runtime::agent::{AgentConfig, SystemClock};
use drover_runtime::api::{Bound, Listen};
use drover_runtime::engine::Model;
use drover_runtime::serve::Inference;
use drover_wire::message::ModelRef;
use tokio::sync::oneshot;

/// The API of one inference service, running until dropped.
pub struct LocalApi {
    /// `http://127.0.0.1:PORT` (or the socket path for a unix listener).
    pub base: String,
    /// The service behind it.
    pub inference: Inference,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// An inference service configured by the `[inference]`-style TOML lines in `extra`.
pub fn service(extra: &str) -> Inference {
    let cfg = AgentConfig::parse(&format!("device = \"api\"\ndata_dir = \"/tmp\"\n{extra}")).expect("config");
    Inference::new(cfg.serve_settings(None), Arc::new(SystemClock::default()))
}

/// Serves `models/{file}` as `name` v`version` on `inference`.
pub fn serve_model(inference: &Inference, file: &str, name: &str, version: u64) {
    let model = Model::load(&crate::manifest::models_dir().join(file)).expect("model");
    inference.serve(model, ModelRef { name: name.try_into().expect("name"), version }, None);
}

impl LocalApi {
    /// Starts the API for `inference` on 127.0.0.1 (a free port), bodies up to `max_body` bytes.
    pub fn start(inference: Inference, max_body: usize) -> LocalApi {
        Self::start_on(inference, max_body, &Listen::Tcp("127.0.0.1:0".parse().expect("addr")))
    }

    /// Starts the API on a unix socket.
    pub fn start_unix(inference: Inference, path: PathBuf) -> LocalApi {
        Self::start_on(inference, 1 << 20, &Listen::Unix(path))
    }

    fn start_on(inference: Inference, max_body: usize, listen: &Listen) -> LocalApi {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let bound = rt.block_on(Bound::bind(listen)).expect("bind").expect("a listener");
        let base = match (&bound.local_addr(), listen) {
            (Some(addr), _) => format!("http://{addr}"),
            (None, Listen::Unix(p)) => p.display().to_string(),
            _ => unreachable!("tcp or unix"),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let served = inference.clone();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let shutdown = async move {
                    let _ = stopped.await;
                };
                bound.serve(served, max_body, shutdown).await.expect("serve");
            })
        });
        LocalApi { base, inference, stop: Some(stop), thread: Some(thread) }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for LocalApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A plain HTTP/1.1 reply.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// `Retry-After`, when sent.
    pub retry_after: Option<String>,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.expect("HTTP exchange");
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    let status = r.status().as_u16();
    let body = r.body_mut().with_config().limit(64 << 20).read_to_string().expect("body");
    Reply { status, content_type, retry_after, body }
}

/// `GET url`.
pub fn get(url: &str) -> Reply {
    reply(agent().get(url).call())
}

/// `POST url` with a JSON body.
pub fn post(url: &str, body: &[u8]) -> Reply {
    reply(agent().post(url).header("content-type", "application/json").send(body))
}

/// `POST url` with extra headers.
pub fn post_with(url: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    let mut req = agent().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.send(body))
}

/// `DELETE url`.
pub fn delete(url: &str) -> Reply {
    reply(agent().delete(url).call())
}

/// Writes `dir/agent.toml` for `drover-agent run`: device `board-1`, its data in `dir/board`, a
/// broker port nothing listens on (the agent keeps retrying, which these runs do not need), and
/// the local API on 127.0.0.1 at a free port, returned.
pub fn agent_config_with_api(dir: &std::path::Path) -> u16 {
    let port = crate::broker::free_port();
    let config = format!(
        "device = \"board-1\"\ndata_dir = \"{}\"\n[broker]\nport = {}\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
        dir.join("board").display(),
        crate::broker::free_port()
    );
    std::fs::write(dir.join("agent.toml"), config).expect("config");
    port
}
