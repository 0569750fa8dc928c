//! The demo's servers in this process: the embedded broker (rumqttd, as `drover broker` runs
//! it) and the fleet server (as `drover fleet serve` runs it, with the demo's bundles and
//! operator key), each on a free 127.0.0.1 port.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_runtime::link::BrokerSettings;
use tokio::sync::oneshot;

use super::setup::Prepared;
use crate::broker::BrokerConfig;
use crate::fleet::drift::Catalog;
use crate::fleet::hub::Hub;
use crate::fleet::server::{self, ServeConfig};
use crate::fleet::storage::Retention;

/// The running servers.
pub struct Stack {
    /// How clients reach the broker.
    pub broker: BrokerSettings,
    /// The dashboard, API and `/metrics`.
    pub http: SocketAddr,
    /// The fleet server's state (the demo reads what it knows from here).
    pub hub: Arc<Hub>,
    server: Option<(oneshot::Sender<()>, std::thread::JoinHandle<anyhow::Result<()>>)>,
}

/// A port free on 127.0.0.1 now (the soak's agent API takes one too).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).context("find a free port")?.port())
}

impl Stack {
    /// Starts the broker for `devices` clients and the fleet server (database in `dir`).
    pub fn start(dir: &Path, prepared: &Prepared, devices: usize, http_port: u16) -> anyhow::Result<Stack> {
        let port = free_port()?;
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let cfg = BrokerConfig { listen: Some(listen), max_connections: devices + 64, ..BrokerConfig::default() };
        cfg.check()?;
        // rumqttd has no shutdown: the broker's threads end with the process.
        std::thread::Builder::new().name("broker".into()).spawn(move || {
            if let Err(e) = crate::broker::run(&cfg) {
                log::error!("embedded broker: {e:#}");
            }
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(listen).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the embedded broker did not start on {listen}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let broker = BrokerSettings { port, ..BrokerSettings::default() };

        let (catalog, skipped) = Catalog::load_dir(&prepared.bundle_dir).context("the demo's bundles")?;
        anyhow::ensure!(skipped.is_empty(), "bundles skipped: {skipped:?}");
        let serve = ServeConfig {
            broker: broker.clone(),
            client_id: "drover-demo-fleet".into(),
            db: server::Database::Sqlite(dir.join("fleet.db")),
            catalog,
            signer: Some(prepared.operator.clone()),
            http: ([127, 0, 0, 1], http_port).into(),
            token: None,
            retention: Retention::default(),
            batch_max: server::DEFAULT_BATCH_MAX,
            batch_delay: server::DEFAULT_BATCH_DELAY,
            ingest_links: server::DEFAULT_INGEST_LINKS,
            share_group: crate::fleet::record::SHARE_GROUP.into(),
        };
        let (started_tx, started) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("fleet-server".into()).spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let (running, listener) = match server::start(&serve).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started_tx.send(Err(anyhow::anyhow!("fleet server: {e}")));
                        return Ok(());
                    }
                };
                let _ = started_tx.send(Ok((running.http, running.hub.clone())));
                let shutdown = async {
                    let _ = stopped.await;
                };
                server::serve(serve.clone(), &running, listener, Arc::new(crate::cmd::fleet::unix_ms), shutdown)
                    .await
                    .context("fleet server")
            })
        })?;
        let (http, hub) = started.recv().context("the fleet server's thread ended")??;
        Ok(Stack { broker, http, hub, server: Some((stop, thread)) })
    }

    /// The dashboard's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Stops the fleet server (it writes what is pending first).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some((stop, thread)) = self.server.take() {
            let _ = stop.send(());
            thread.join().map_err(|_| anyhow::anyhow!("the fleet server panicked"))??;
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
