//! The fleet server's I/O shell: MQTT connections (persistent sessions, so messages sent while
//! the server is down wait for it) feeding the [`Hub`], the HTTP listener, the clock and the
//! prune timer. A message is acknowledged to the broker only once its batch is written: a server
//! killed mid-stream gets the unwritten ones again.
//!
//! One connection reads the retained presence topics whole; [`ServeConfig::ingest_links`] more
//! read the report streams (several share them through a `$share/` subscription, the same one
//! further server instances join). Batching adapts to the load (group commit): messages gather
//! while the writer is busy or more are waiting to be read, and go to the writer together once
//! it is idle and nothing more is waiting (or [`ServeConfig::batch_max`] gathered). The broker's window of
//! unacknowledged messages per connection (rumqttd's 100, Mosquitto's `max_inflight_messages`)
//! bounds how many can gather on one.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_runtime::link::BrokerSettings;
use drover_runtime::link::codec::{self, PayloadFormat};
use drover_wire::message::Stored;
use drover_wire::topic::{self, DeviceLeaf, Name};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS, SubscribeFilter};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http::{Api, UnixMs, router};
use super::hub::{Hub, Receipt};
use super::record;
use super::storage::{Retention, Sqlite, StorageError};

/// [`ServeConfig::batch_max`] of `drover fleet serve`: shared so that the ingest benchmark
/// measures the batching operators get.
pub const DEFAULT_BATCH_MAX: usize = 500;

/// [`ServeConfig::batch_delay`] of `drover fleet serve` (see [`DEFAULT_BATCH_MAX`]).
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(50);

/// [`ServeConfig::ingest_links`] of `drover fleet serve`: one, the only safe number on every
/// broker (see there).
pub const DEFAULT_INGEST_LINKS: usize = 1;

/// How long a stopping server waits for its last batch to be written.
const FINAL_WRITE: Duration = Duration::from_secs(10);

/// How the server runs.
#[derive(Clone)]
pub struct ServeConfig {
    /// The broker the devices publish to.
    pub broker: BrokerSettings,
    /// The MQTT client id: one per server, so its session (and what waits in it) is its own.
    pub client_id: String,
    /// Where what the server learns is kept.
    pub db: Database,
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
    /// Most messages gathered while the writer is busy before they are handed over anyway.
    pub batch_max: usize,
    /// Longest a message waits to be handed to the writer.
    pub batch_delay: Duration,
    /// Connections reading the report streams, each with its own window of unacknowledged
    /// messages at the broker. One reads them plainly (over a SQLite store); more, or any over
    /// PostgreSQL, share them through a `$share/` subscription (with further server instances), which needs a broker that keeps a
    /// killed member's messages in its session (Mosquitto does; the embedded rumqttd 0.20 drops
    /// them, and its router spins on shared subscriptions).
    pub ingest_links: usize,
    /// The shared-subscription group of the ingest connections (a secret where devices share
    /// the broker: see [`record::SHARE_GROUP`]).
    pub share_group: String,
}

/// Where the fleet server keeps what it learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// In memory: the demo and tests that want nothing on disk.
    Memory,
    /// A SQLite file: the embedded default, for one server.
    Sqlite(PathBuf),
    /// PostgreSQL: shared by several server instances.
    Postgres {
        /// `postgres://user@host/db`.
        url: String,
        /// The CA the server's TLS certificate must chain to (then connections use TLS).
        ca: Option<PathBuf>,
    },
}

impl Database {
    /// `--db`: a `postgres://` or `postgresql://` URL (TLS verified against `ca` when given), or
    /// else a SQLite file.
    pub fn parse(arg: &str, ca: Option<PathBuf>) -> Database {
        if arg.starts_with("postgres://") || arg.starts_with("postgresql://") {
            Database::Postgres { url: arg.to_string(), ca }
        } else {
            Database::Sqlite(PathBuf::from(arg))
        }
    }

    fn open(&self) -> Result<Box<dyn super::storage::Storage>, StorageError> {
        Ok(match self {
            Database::Memory => Box::new(Sqlite::in_memory()?),
            Database::Sqlite(path) => Box::new(Sqlite::open(path)?),
            Database::Postgres { url, ca } => Box::new(super::storage::Postgres::connect(url, ca.as_deref())?),
        })
    }
}

impl std::fmt::Display for Database {
    /// For logs: a URL's password is left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Memory => write!(f, "in memory"),
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres { url, .. } => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                match rest.split_once('@') {
                    Some((user, host)) => {
                        let user = user.split_once(':').map_or(user, |(u, _)| u);
                        write!(f, "{scheme}://{user}@{host}")
                    }
                    None => write!(f, "{url}"),
                }
            }
        }
    }
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
    let storage = cfg.db.open()?;
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

    // The presence connection (retained statuses and progress, read whole; rollout steps go out
    // on it) and the ingest connections sharing the report streams.
    // Shared by the connections' tasks, read-only.
    let cfg = Arc::new(cfg);
    let (stop_links, stop) = tokio::sync::watch::channel(false);
    let presence = Link::connect(&cfg, cfg.client_id.clone(), record::presence_filters())?;
    let client = presence.client.clone();
    let mut links = vec![tokio::spawn(presence.run(hub.clone(), cfg.clone(), now_ms.clone(), stop.clone()))];
    for i in 1..=cfg.ingest_links.max(1) {
        // Over PostgreSQL, other server instances take their part through the same group.
        let filters = if cfg.ingest_links > 1 || matches!(cfg.db, Database::Postgres { .. }) {
            record::stream_filters(&cfg.share_group)
        } else {
            record::plain_stream_filters()
        };
        let link = Link::connect(&cfg, format!("{}-ingest-{i}", cfg.client_id), filters)?;
        links.push(tokio::spawn(link.run(hub.clone(), cfg.clone(), now_ms.clone(), stop.clone())));
    }
    let holder = format!("{} at http://{}", cfg.client_id, running.http);
    let mut prune_tick = tokio::time::interval(Duration::from_secs(600));
    let mut rollout_tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = prune_tick.tick() => {
                match hub.prune(now_ms(), &cfg.retention) {
                    Ok(p) if p.raw + p.old + p.devices > 0 => log::info!("pruned {p:?}"),
                    Ok(_) => {}
                    Err(e) => log::warn!("prune: {e}"),
                }
            }
            _ = rollout_tick.tick() => {
                // Of the servers sharing a store, one drives the rollouts.
                let Some(redo) = hub.drive(&holder, now_ms()) else { continue };
                if let Some(e) = &executor {
                    for work in redo {
                        e.spawn(work);
                    }
                    e.tick();
                }
                // Each step of a rollout goes out on the alert stream (best effort: the log keeps it).
                for (topic, payload) in hub.rollout_announcements() {
                    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                        log::warn!("rollout event: {e}");
                    }
                }
            }
        }
    }
    let _ = stop_links.send(true);
    for link in links {
        let _ = link.await;
    }
    let _ = stop_http.send(());
    let _ = http.await;
    Ok(())
}

/// One MQTT connection of the server: a persistent session (what is sent while the server is
/// down waits for it) whose messages go to the [`Hub`] and are acknowledged once written. Each
/// holds the broker's window of unacknowledged messages (rumqttd's 100, Mosquitto's
/// `max_inflight_messages`), and a window waits for its batch's commit: several connections
/// keep the writer fed while one waits.
struct Link {
    client: AsyncClient,
    eventloop: EventLoop,
    filters: Vec<String>,
}

impl Link {
    fn connect(cfg: &ServeConfig, client_id: String, filters: Vec<String>) -> Result<Link, ServeError> {
        let mut options = cfg.broker.mqtt_options(&client_id, false)?;
        options.set_manual_acks(true);
        let (client, eventloop) = AsyncClient::new(options, cfg.batch_max.max(16) * 2);
        Ok(Link { client, eventloop, filters })
    }

    /// Reads, hands batches to the writer and acknowledges written ones until `stop` turns true;
    /// then writes and acknowledges what it took, and disconnects.
    async fn run(mut self, hub: Arc<Hub>, cfg: Arc<ServeConfig>, now_ms: UnixMs, mut stop: watch::Receiver<bool>) {
        let client = self.client.clone();
        let mut stop_pause = stop.clone();
        let mut written = hub.written();
        let mut batches = Batches::default();
        let mut acks = Acks::default();
        let mut stored = StoredWords::default();
        let mut subscribe_due = false;
        let mut flush_tick = tokio::time::interval(cfg.batch_delay.max(Duration::from_millis(1)));
        loop {
            // The client's request queue drains only while its event loop is polled: what did not
            // fit on an earlier turn goes now (never awaited here, which would stop the polling).
            if subscribe_due {
                let filters = self.filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                subscribe_due = client.try_subscribe_many(filters).is_err();
            }
            acks.hand_over(&client);
            stored.hand_over(&client);
            let done = *written.borrow();
            // Hand over what gathered once nothing more is waiting to be read and the writer is
            // idle: everything already here goes in one transaction.
            let hand_over = !batches.gathering.is_empty() && batches.writer_idle(done);
            tokio::select! {
                biased;
                Ok(()) = written.changed() => {
                    let done = *written.borrow_and_update();
                    batches.written(done, &mut acks, &mut stored);
                }
                Ok(()) = stop.changed() => break,
                _ = flush_tick.tick() => {
                    if !batches.gathering.is_empty() {
                        batches.submit(&hub, *written.borrow(), &mut acks, &mut stored);
                    }
                }
                // After the timers, which so run while messages keep coming; the hand-over last,
                // when nothing else is ready.
                polled = self.eventloop.poll() => match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        log::info!("fleet server connected to {}", cfg.broker.address());
                        subscribe_due = true;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        match hub.take(now_ms(), &p.topic, &p.payload) {
                            Ok(taken) => batches.receipts.extend(taken.receipt()),
                            Err(e) => log::warn!("dropped: {e}"),
                        }
                        batches.gathering.push(p);
                        if batches.gathering.len() >= cfg.batch_max {
                            batches.submit(&hub, done, &mut acks, &mut stored);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        log::warn!("{}: {e}", cfg.broker.address());
                        // What was taken is still written (the registry holds it already), but
                        // unacknowledged messages come again on the resumed session, where the
                        // registry knows the written ones for repeats: forget their acks here.
                        hub.submit();
                        batches.clear();
                        acks.clear();
                        stored.clear();
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            Ok(()) = stop_pause.changed() => break,
                        }
                    }
                },
                () = std::future::ready(()), if hand_over => batches.submit(&hub, done, &mut acks, &mut stored),
            }
        }
        batches.submit(&hub, *written.borrow(), &mut acks, &mut stored);
        let last = batches.last_ticket();
        match tokio::time::timeout(FINAL_WRITE, written.wait_for(|w| *w >= last)).await {
            Ok(Ok(_)) => batches.written(last, &mut acks, &mut stored),
            _ => log::error!("fleet database: the last batch was not written; its messages stay unacknowledged"),
        }
        // Lets the last acknowledgements, then the disconnect, go out.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut disconnecting = false;
            loop {
                acks.hand_over(&client);
                stored.hand_over(&client);
                if acks.is_empty() && !disconnecting {
                    disconnecting = client.try_disconnect().is_ok();
                }
                if self.eventloop.poll().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
}

/// The messages taken and not yet acknowledged: those gathering for the next submission, and
/// those submitted, by ticket, oldest first.
#[derive(Default)]
struct Batches {
    gathering: Vec<Publish>,
    /// The outbox records among `gathering`, to tell their devices once written.
    receipts: Vec<Receipt>,
    submitted: VecDeque<(u64, Vec<Publish>, Vec<Receipt>)>,
}

impl Batches {
    /// Hands the gathered messages' changes to the writer, which has written up to `written`.
    fn submit(&mut self, hub: &Hub, written: u64, acks: &mut Acks, stored: &mut StoredWords) {
        let ticket = hub.submit();
        if !self.gathering.is_empty() {
            // Repeats and garbled messages changed nothing: they ride on the latest ticket (maybe
            // written already), so that acknowledgements still go out in order.
            let (batch, receipts) = (std::mem::take(&mut self.gathering), std::mem::take(&mut self.receipts));
            self.submitted.push_back((ticket, batch, receipts));
        }
        self.written(written, acks, stored);
    }

    /// Whether the writer has written everything submitted (then the next message goes at once).
    fn writer_idle(&self, written: u64) -> bool {
        self.submitted.back().is_none_or(|(t, _, _)| *t <= written)
    }

    /// Moves the messages of the batches written up to `ticket` to the acknowledgements, and
    /// their outbox records to what the devices are told is stored.
    fn written(&mut self, ticket: u64, acks: &mut Acks, stored: &mut StoredWords) {
        while self.submitted.front().is_some_and(|(t, _, _)| *t <= ticket) {
            if let Some((_, done, receipts)) = self.submitted.pop_front() {
                acks.0.extend(done);
                stored.add(receipts);
            }
        }
    }

    fn last_ticket(&self) -> u64 {
        self.submitted.back().map_or(0, |(t, _, _)| *t)
    }

    fn clear(&mut self) {
        self.gathering.clear();
        self.receipts.clear();
        self.submitted.clear();
    }
}

/// Outbox records written to the store, by device, not yet told to their devices
/// (`dev/{id}/stored`, QoS 0: a lost word only makes the device send the record again, which
/// the store recognises as a repeat and acknowledges once more).
#[derive(Default)]
struct StoredWords(BTreeMap<String, Vec<u64>>);

impl StoredWords {
    fn add(&mut self, receipts: Vec<Receipt>) {
        for r in receipts {
            self.0.entry(r.device).or_default().push(r.seq);
        }
    }

    /// Publishes what the client's queue takes now; the rest waits for the next turn.
    fn hand_over(&mut self, client: &AsyncClient) {
        while let Some(mut entry) = self.0.first_entry() {
            let Ok(name) = Name::new(entry.key()) else {
                entry.remove();
                continue;
            };
            let topic = topic::device(&name, DeviceLeaf::Stored).to_string();
            let words = Stored::covering(entry.get_mut());
            for (i, word) in words.iter().enumerate() {
                let payload = codec::encode(PayloadFormat::Postcard, word);
                if client.try_publish(topic.clone(), QoS::AtMostOnce, false, payload).is_err() {
                    // Keep what was not said (this message and the ones after it).
                    let rest: Vec<u64> =
                        words[i..].iter().flat_map(|w| w.seqs.iter().flat_map(|r| r.first..=r.last)).collect();
                    *entry.get_mut() = rest;
                    return;
                }
            }
            entry.remove();
        }
    }

    fn clear(&mut self) {
        self.0.clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::drift::Catalog;
    use drover_runtime::link::codec::{self, PayloadFormat};

    fn status(online: bool) -> Publish {
        let crate::fleet::record::Record::Status(s) = crate::fleet::registry::tests::status(online, Some(1)) else {
            unreachable!()
        };
        let mut p =
            Publish::new("drover/v1/dev/pi-1/status", QoS::AtLeastOnce, codec::encode(PayloadFormat::Postcard, &s));
        p.pkid = 1;
        p
    }

    #[test]
    fn messages_are_acknowledged_in_order_and_only_once_their_batch_is_written() {
        let hub = Hub::new(Box::new(Sqlite::in_memory().expect("db")), Catalog::default()).expect("hub");
        let (mut batches, mut acks, mut stored) = (Batches::default(), Acks::default(), StoredWords::default());
        let take = |batches: &mut Batches, p: Publish| {
            if let Ok(taken) = hub.take(1, &p.topic, &p.payload) {
                batches.receipts.extend(taken.receipt());
            }
            batches.gathering.push(p);
        };
        take(&mut batches, status(true));
        assert!(batches.writer_idle(0));
        batches.submit(&hub, 0, &mut acks, &mut stored);
        assert!(!batches.writer_idle(0), "ticket 1 is out");
        take(&mut batches, status(false));
        // A garbled message changes nothing, but is acknowledged after the ones before it.
        let mut garbled = status(true);
        garbled.payload = b"\xd1\x00".to_vec().into();
        take(&mut batches, garbled);
        batches.submit(&hub, 0, &mut acks, &mut stored);
        assert_eq!((batches.last_ticket(), acks.0.len()), (2, 0), "nothing written yet, nothing acknowledged");
        hub.flush(Duration::from_secs(10)).expect("written");
        let written = *hub.written().borrow();
        assert_eq!(written, 2);
        batches.written(1, &mut acks, &mut stored);
        assert_eq!(acks.0.len(), 1, "ticket 1's message");
        batches.written(written, &mut acks, &mut stored);
        assert_eq!(acks.0.len(), 3);
        assert!(batches.writer_idle(written));
        // Nothing new to write: it rides on the written ticket and is acknowledged at once.
        let mut garbled = status(true);
        garbled.payload = b"{".to_vec().into();
        take(&mut batches, garbled);
        batches.submit(&hub, written, &mut acks, &mut stored);
        assert_eq!(acks.0.len(), 4);
        assert_eq!(hub.registry(|r| r.device("pi-1").map(|d| d.online)), Some(false));
    }
}
