//! The fleet server's I/O shell: one MQTT connection (a persistent session, so messages sent
//! while the server is down wait for it) feeding the [`Hub`], the HTTP listener, the clock and the
//! prune timer. A message is acknowledged to the broker only once its batch is written: a server
//! killed mid-stream gets the unwritten ones again.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_runtime::link::BrokerSettings;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeFilter};
use tokio::net::TcpListener;

use super::http::{Api, UnixMs, router};
use super::hub::Hub;
use super::record;
use super::storage::{Retention, Sqlite, StorageError};

/// [`ServeConfig::batch_max`] of `drover fleet serve`: shared so that the ingest benchmark
/// measures the batching operators get.
pub const DEFAULT_BATCH_MAX: usize = 16;

/// [`ServeConfig::batch_delay`] of `drover fleet serve` (see [`DEFAULT_BATCH_MAX`]).
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(50);

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
    let mut acks = Acks::default();
    let mut subscribe_due = false;
    let mut flush_tick = tokio::time::interval(cfg.batch_delay.max(Duration::from_millis(1)));
    let mut prune_tick = tokio::time::interval(Duration::from_secs(600));
    let mut rollout_tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    let result = loop {
        // The client's request queue drains only while its event loop is polled: what did not
        // fit on an earlier turn goes now (never awaited here, which would stop the polling).
        if subscribe_due {
            let filters = record::filters().into_iter().map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
            subscribe_due = client.try_subscribe_many(filters).is_err();
        }
        acks.hand_over(&client);
        tokio::select! {
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    log::info!("fleet server connected to {}", cfg.broker.address());
                    subscribe_due = true;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Err(e) = hub.take(now_ms(), &p.topic, &p.payload) {
                        log::warn!("dropped: {e}");
                    }
                    unacked.push(p);
                    if unacked.len() >= cfg.batch_max {
                        write_and_ack(&hub, &mut acks, &mut unacked);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("{}: {e}", cfg.broker.address());
                    // Unwritten messages, and written ones whose acknowledgement did not go out,
                    // come again on the resumed session (the registry knows the written ones
                    // for repeats); drop them here.
                    write_and_ack(&hub, &mut acks, &mut unacked);
                    unacked.clear();
                    acks.clear();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = flush_tick.tick() => write_and_ack(&hub, &mut acks, &mut unacked),
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
    write_and_ack(&hub, &mut acks, &mut unacked);
    // Lets the last acknowledgements, then the disconnect, go out.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut disconnecting = false;
        loop {
            acks.hand_over(&client);
            if acks.is_empty() && !disconnecting {
                disconnecting = client.try_disconnect().is_ok();
            }
            if eventloop.poll().await.is_err() {
                break;
            }
        }
    })
    .await;
    let _ = stop_http.send(());
    let _ = http.await;
    result
}

/// Writes the pending changes; acknowledges the messages behind them only if that worked.
fn write_and_ack(hub: &Hub, acks: &mut Acks, unacked: &mut Vec<Publish>) {
    match hub.flush() {
        Ok(_) => acks.0.extend(unacked.drain(..)),
        Err(e) => log::error!("fleet database: {e}; the messages stay unacknowledged"),
    }
}

/// Written messages whose acknowledgements wait for room in the client's request queue, oldest
/// first. None may be dropped or skipped: the queue fills whenever a burst from the broker is
/// still being read (the event loop takes no requests then), and rumqttd takes acknowledgements
/// strictly in order, so one lost ack makes it count a later one against the wrong message,
/// which is then lost.
#[derive(Default)]
struct Acks(VecDeque<Publish>);

impl Acks {
    /// Queues as many acknowledgements as the client takes now.
    fn hand_over(&mut self, client: &AsyncClient) {
        while let Some(p) = self.0.front() {
            if client.try_ack(p).is_err() {
                break;
            }
            self.0.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}
