//! The local inference API: the Open Inference Protocol v2 over HTTP/1.1 (the REST API of
//! Triton, KServe, Seldon MLServer), so that other processes on the device call the served model
//! with the clients they already have, curl included.
//!
//! Listens on `127.0.0.1:8000` by default (Triton's port), or a unix socket, never on a public
//! interface unless configured. Requests go through the agent's [`Inference`] service: its
//! bounded queue answers `503` when full, and every request feeds telemetry and drift like any
//! other inference.

pub mod data;
pub mod oip;
mod routes;
pub mod tensors;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use crate::serve::Inference;

pub use routes::router;

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (`127.0.0.1:8000`).
    Tcp(SocketAddr),
    /// A unix socket (`unix:/run/drover/api.sock`): file permissions decide who may call.
    Unix(PathBuf),
    /// No local API (`off`): the simulator, or devices fed only by sensors.
    Off,
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if s == "off" {
            return Ok(Listen::Off);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| format!("'{s}' is not HOST:PORT, unix:/path or off"))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Listen, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "http://{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Off => f.write_str("off"),
        }
    }
}

/// The `[api]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// `HOST:PORT`, `unix:/path` or `off`.
    #[serde(default = "default_listen")]
    pub listen: Listen,
    /// Largest request body, KiB (a larger one is refused with 413 before it is parsed).
    #[serde(default = "default_max_body_kib")]
    pub max_body_kib: usize,
}

fn default_listen() -> Listen {
    Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8000)))
}
fn default_max_body_kib() -> usize {
    8 * 1024
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings { listen: default_listen(), max_body_kib: default_max_body_kib() }
    }
}

/// A bound listener, before serving (tests bind port 0 and read the address).
#[derive(Debug)]
pub enum Bound {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix socket.
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Bound {
    /// Binds `listen` (a stale socket file from an earlier run is replaced). `None` for `off`.
    pub async fn bind(listen: &Listen) -> std::io::Result<Option<Bound>> {
        Ok(match listen {
            Listen::Off => None,
            Listen::Tcp(addr) => Some(Bound::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            Listen::Unix(path) => {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Some(Bound::Unix(tokio::net::UnixListener::bind(path)?, path.clone()))
            }
        })
    }

    /// The TCP address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok(),
            Bound::Unix(..) => None,
        }
    }

    /// Serves the API for `inference` until `shutdown` resolves; requests in flight finish.
    pub async fn serve(
        self,
        inference: Inference,
        max_body: usize,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = router(inference, max_body);
        match self {
            Bound::Tcp(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            Bound::Unix(l, path) => {
                let served = axum::serve(l, app).with_graceful_shutdown(shutdown).await;
                let _ = std::fs::remove_file(path);
                served
            }
        }
    }
}

/// Keeps the API up for the agent's lifetime: binds (retrying every 10 s while the address is
/// taken, so a port clash never costs the device its fleet connection) and serves.
pub async fn run(settings: ApiSettings, inference: Inference) {
    let mut warned = false;
    loop {
        match Bound::bind(&settings.listen).await {
            Ok(None) => return,
            Ok(Some(bound)) => {
                log::info!("local inference API on {}", settings.listen);
                let max_body = settings.max_body_kib.saturating_mul(1024);
                if let Err(e) = bound.serve(inference.clone(), max_body, std::future::pending()).await {
                    log::error!("local inference API on {}: {e}", settings.listen);
                }
            }
            Err(e) if !warned => {
                log::error!("local inference API: cannot listen on {}: {e}; retrying every 10 s", settings.listen);
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!("off".parse::<Listen>(), Ok(Listen::Off));
        assert_eq!("unix:/run/d.sock".parse::<Listen>(), Ok(Listen::Unix("/run/d.sock".into())));
        assert_eq!("127.0.0.1:9000".parse::<Listen>(), Ok(Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 9000)))));
        assert!("localhost".parse::<Listen>().unwrap_err().contains("HOST:PORT"));
        assert!("unix:".parse::<Listen>().is_err());
        assert_eq!(ApiSettings::default().listen.to_string(), "http://127.0.0.1:8000");
    }
}
