//! The fleet server's I/O shell: one MQTT connection (a persistent session, so messages sent
//! while the server is down wait for it) feeding the [`Hub`], the HTTP listener, the clock and the
//! prune timer. A message is acknowledged to the broker only once its batch is written: a server
//! killed mid-stream gets the unwritten ones again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_runtime::link::BrokerSettings;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use tokio::net::TcpListener;

use super::http::{Api, UnixMs, router};
use super::hub::Hub;
use super::record;
use super::storage::{Retention, Sqlite, StorageError};

/// How the server runs.
#[derive(Clone)]
pub struct ServeConfig {
    /// The broker the devices publish to.
    pub broker: BrokerSettings,
    /// The MQTT client id: one per server, so its session (and what waits in it) is its own.
    pub client_id: String,
    /// The SQLite file (`None`: in memory, for the demo and tests that want nothing on disk).
    pub db: Option<PathBuf>,
    /// Reference statistics of the model versions in service, for fleet-wide drift.
    pub catalog: super::drift::Catalog,
    /// The operator key rollouts sign their commands with (`None`: the server runs none).
    pub signer: Option<super::rollouts::Signer>,
    /// Where the dashboard, API and `/metrics` listen.
    pub http: SocketAddr,
    /// Required on every HTTP request, when set.
    pub token: Option<String>,
    /// What the store keeps.
    pub retention: Retention,
    /// Most messages written (and acknowledged) per transaction.
    pub batch_max: usize,
    /// Longest a message waits to be written.
    pub batch_delay: Duration,
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The HTTP listener.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// Open beyond loopback without a token.
    #[error(
        "refusing to serve {0} beyond loopback without a token: give --token-file, or put an authenticating proxy in front and listen on 127.0.0.1"
    )]
    Open(SocketAddr),
    /// The MQTT settings.
    #[error(transparent)]
    Connect(#[from] drover_runtime::link::ConnectError),
    /// The MQTT client.
    #[error("MQTT: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
}

/// A running server: its HTTP address and its state.
pub struct Running {
    /// Where the HTTP side listens (the real port when 0 was asked for).
    pub http: SocketAddr,
    /// The state.
    pub hub: Arc<Hub>,
}

/// Binds the HTTP listener and opens the store; [`serve`] then runs until `shutdown`.
pub async fn start(cfg: &ServeConfig) -> Result<(Running, TcpListener), ServeError> {
    if cfg.token.is_none() && !cfg.http.ip().is_loopback() {
        return Err(ServeError::Open(cfg.http));
    }
    let storage: Box<dyn super::storage::Storage> = match &cfg.db {
        Some(path) => Box::new(Sqlite::open(path)?),
        None => Box::new(Sqlite::in_memory()?),
    };
    let hub = Hub::new(storage, cfg.catalog.clone())?;
    let listener = TcpListener::bind(cfg.http).await.map_err(|source| ServeError::Listen { addr: cfg.http, source })?;
    let http = listener.local_addr().map_err(|source| ServeError::Listen { addr: cfg.http, source })?;
    Ok((Running { http, hub }, listener))
}

/// Runs the server until `shutdown` resolves; writes what is pending before it returns.
pub async fn serve(
    cfg: ServeConfig,
    running: &Running,
    listener: TcpListener,
    now_ms: UnixMs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let hub = running.hub.clone();
    let executor = cfg.signer.clone().map(|signer| super::rollouts::Executor {
        broker: cfg.broker.clone(),
        signer,
        hub: hub.clone(),
        now_ms: now_ms.clone(),
    });
    let api = Api {
        hub: hub.clone(),
        token: cfg.token.as_deref().map(Arc::from),
        now_ms: now_ms.clone(),
        executor: executor.clone(),
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        let app = router(api);
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
    });

    let mut options = cfg.broker.mqtt_options(&cfg.client_id, false)?;
    options.set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, cfg.batch_max.max(16) * 2);
    let mut unacked: Vec<Publish> = Vec::new();
    let mut flush_tick = tokio::time::interval(cfg.batch_delay.max(Duration::from_millis(1)));
    let mut prune_tick = tokio::time::interval(Duration::from_secs(600));
    let mut rollout_tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    log::info!("fleet server connected to {}", cfg.broker.address());
                    for filter in record::filters() {
                        client.subscribe(filter, QoS::AtLeastOnce).await?;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Err(e) = hub.take(now_ms(), &p.topic, &p.payload) {
                        log::warn!("dropped: {e}");
                    }
                    unacked.push(p);
                    if unacked.len() >= cfg.batch_max {
                        write_and_ack(&hub, &client, &mut unacked);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("{}: {e}", cfg.broker.address());
                    // Unwritten messages come again on the resumed session; drop them here.
                    write_and_ack(&hub, &client, &mut unacked);
                    unacked.clear();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = flush_tick.tick() => write_and_ack(&hub, &client, &mut unacked),
            _ = prune_tick.tick() => {
                match hub.prune(now_ms(), &cfg.retention) {
                    Ok(p) if p.raw + p.old + p.devices > 0 => log::info!("pruned {p:?}"),
                    Ok(_) => {}
                    Err(e) => log::warn!("prune: {e}"),
                }
            }
            _ = rollout_tick.tick() => {
                if let Some(e) = &executor {
                    e.tick();
                }
                // Each step of a rollout goes out on the alert stream (best effort: the log keeps it).
                for (topic, payload) in hub.rollout_announcements() {
                    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                        log::warn!("rollout event: {e}");
                    }
                }
            }
            () = &mut shutdown => break Ok(()),
        }
    };
    write_and_ack(&hub, &client, &mut unacked);
    let _ = client.disconnect().await;
    // Lets the disconnect (and the last acknowledgements) go out.
    let _ = tokio::time::timeout(Duration::from_millis(500), async { while eventloop.poll().await.is_ok() {} }).await;
    let _ = stop_http.send(());
    let _ = http.await;
    result
}

/// Writes the pending changes; acknowledges the messages behind them only if that worked.
fn write_and_ack(hub: &Hub, client: &AsyncClient, unacked: &mut Vec<Publish>) {
    match hub.flush() {
        Ok(_) => {
            for p in unacked.drain(..) {
                if let Err(e) = client.try_ack(&p) {
                    log::warn!("ack: {e}");
                }
            }
        }
        Err(e) => log::error!("fleet database: {e}; the messages stay unacknowledged"),
    }
}
