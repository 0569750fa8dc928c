//! The agent's I/O shell: the MQTT connection (rumqttc), the clock, the transfer spool and the
//! model store around the pure [`Session`]. One [`run`] per agent instance; nothing global, so
//! the simulator runs hundreds in one process.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_wire::Arch;
use drover_wire::command::SignedCommand;
use drover_wire::event::{Event, EventKind};
use drover_wire::manifest::AgentVersion;
use drover_wire::manifest::FileRole;
use drover_wire::message::{Announce, ModelRef, Phase, Purpose, Slot};
use drover_wire::telemetry::Telemetry;
use drover_wire::topic::{self, DeviceLeaf};
use rumqttc::{AsyncClient, LastWill, QoS, SubscribeFilter};
use tokio::sync::mpsc;

use super::background::Host;
use super::config::AgentConfig;
use super::notify::ServiceNotifier;
use super::session::{Action, Identity, Input, Ledger, Now, Serving, Session, SessionLimits};
use crate::link::codec;
use crate::link::pump::{Link, pump, wait_closed};
use crate::outbox::{Outbox, Quota, Stream, Tag};
use crate::reference::ReferenceStats;
use crate::serve::Inference;
use crate::store::{CommandOutcome, Experiment, SlotId, Store, StoreConfig};
use crate::telemetry::{SystemProbe, alerts};
use crate::transfer::{Patience, Spool};

/// The time source of an agent: the real clock on a board, a shared or virtual one in the
/// simulator.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Now;

    /// Unix milliseconds, for reports and drift windows (whole seconds unless the clock knows
    /// better).
    fn unix_ms(&self) -> u64 {
        self.now().unix.saturating_mul(1000)
    }
}

/// The system clock (monotonic ms from the agent's start, Unix seconds from the wall clock).
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Now {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Now { ms: self.0.elapsed().as_millis() as u64, unix }
    }

    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// Why the agent could not start (once running, it survives broker outages and bad input).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// The broker settings are unusable.
    #[error(transparent)]
    Connect(#[from] crate::link::ConnectError),
    /// The model store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The transfer directory could not be read.
    #[error(transparent)]
    Spool(#[from] crate::transfer::SpoolError),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] crate::outbox::JournalError),
    /// A blocking task failed.
    #[error("internal: {0}")]
    Join(String),
}

const LEDGER: &str = "link.json";
pub(crate) const TRANSFER: &str = "transfer";
const OUTBOX: &str = "outbox";
/// Telemetry period when neither the config nor the bundle sets one.
const DEFAULT_PERIOD_S: u32 = 60;
const TICK: Duration = Duration::from_millis(250);

/// What the store serves, as the session reports it.
pub fn serving(store: &Store) -> Serving {
    let s = store.state();
    let model = s.active.and_then(|a| s.slot(a)).map(|m| ModelRef { name: m.name.clone(), version: m.version });
    Serving { model, slot: s.active.map(slot), highest: s.highest.clone() }
}

fn slot(id: SlotId) -> Slot {
    match id {
        SlotId::A => Slot::A,
        SlotId::B => Slot::B,
    }
}

fn load_ledger(path: &Path) -> Ledger {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::warn!("{}: unreadable ({e}); starting with an empty ledger", path.display());
            Ledger::default()
        }),
        Err(_) => Ledger::default(),
    }
}

fn save_ledger(path: &Path, ledger: &Ledger) -> Result<(), crate::store::StoreError> {
    crate::store::atomic_write(path, &serde_json::to_vec_pretty(ledger).unwrap_or_default())
}

/// The agent: the store, the spool, the session and the connection.
struct Agent {
    cfg: AgentConfig,
    me: Identity,
    clock: Arc<dyn Clock>,
    store: Option<Store>,
    /// The model the store last loaded and tested for a slot (at boot, on install), served by
    /// the next reload without loading the file again.
    tested: Option<(SlotId, crate::engine::Model)>,
    spool: Option<Spool>,
    session: Session,
    client: AsyncClient,
    inference: Inference,
    outbox: Outbox,
    probe: SystemProbe,
    /// Telemetry period from the bundle (the config's wins).
    bundle_period_s: Option<u32>,
    next_telemetry_ms: u64,
    /// The sensor inputs (`[[input]]`), feeding `inference`.
    inputs: crate::input::Inputs,
    /// systemd's notifications (a no-op for in-process agents).
    notifier: ServiceNotifier,
    /// What this agent shares with others on the same machine (the cores installs run on).
    host: Host,
}

/// Runs one agent until `shutdown` resolves: boots the store (boot counter, verification,
/// health check), connects with a persistent session and a Last Will, and serves the protocol.
pub async fn run(
    cfg: AgentConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let inference = Inference::new(cfg.serve_settings(None), clock.clone());
    run_with(cfg, clock, inference, shutdown).await
}

/// [`run`] as a systemd service (`drover-agent run`): READY=1 once serving, watchdog pings
/// from the main loop, STOPPING=1 when `shutdown` resolves (see [`ServiceNotifier`]).
pub async fn run_service(
    cfg: AgentConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let inference = Inference::new(cfg.serve_settings(None), clock.clone());
    run_notifying(cfg, clock, inference, shutdown, ServiceNotifier::from_env(), Host::default()).await
}

/// [`run`] with an inference service the caller keeps a handle to (the local API, sensor
/// sources, the simulator and the tests send it requests and labels).
pub async fn run_with(
    cfg: AgentConfig,
    clock: Arc<dyn Clock>,
    inference: Inference,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    run_notifying(cfg, clock, inference, shutdown, ServiceNotifier::disabled(), Host::default()).await
}

/// As [`run_with`], for one of many agents on one machine (the simulator): `host` is what they
/// share, so that their installs take turns on its cores.
pub async fn run_on(
    cfg: AgentConfig,
    clock: Arc<dyn Clock>,
    inference: Inference,
    host: Host,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    run_notifying(cfg, clock, inference, shutdown, ServiceNotifier::disabled(), host).await
}

async fn run_notifying(
    cfg: AgentConfig,
    clock: Arc<dyn Clock>,
    inference: Inference,
    shutdown: impl std::future::Future<Output = ()>,
    notifier: ServiceNotifier,
    host: Host,
) -> Result<(), AgentError> {
    let (device, groups) = cfg.names()?;
    let agent_version =
        AgentVersion::parse(env!("CARGO_PKG_VERSION")).unwrap_or(AgentVersion { major: 0, minor: 0, patch: 0 });
    let labels = cfg.labels()?;
    let arch = Arch::current().unwrap_or(Arch::X86_64);
    let me = Identity { device, groups, agent: agent_version, arch, labels };

    let mut store = Store::open(StoreConfig::new(&cfg.data_dir))?;
    let (store, booted) = tokio::task::spawn_blocking(move || {
        let r = store.boot().map(|o| o.serving);
        (store, r)
    })
    .await
    .map_err(|e| AgentError::Join(e.to_string()))?;
    let tested = match booted {
        Ok(Some(serving)) => Some(serving),
        Ok(None) => {
            log::info!("{}: no model installed yet", me.device);
            None
        }
        Err(e) => {
            log::error!("{}: {e}; waiting for a new bundle", me.device);
            None
        }
    };
    let ledger = load_ledger(&cfg.data_dir.join(LEDGER));
    let quota = Quota::new(cfg.telemetry.outbox_mib.saturating_mul(1024 * 1024));
    let outbox = Outbox::open(&cfg.data_dir.join(OUTBOX), quota, cfg.telemetry.acks())?;
    let resumed = Spool::resume(&cfg.data_dir.join(TRANSFER))?;
    let now = clock.now();
    let limits = SessionLimits {
        max_bundle: cfg.transfer.max_bundle_mib.saturating_mul(1024 * 1024),
        max_chunk: u32::try_from(cfg.broker.max_packet.saturating_sub(512)).unwrap_or(u32::MAX),
        patience: Patience { stall_ms: (cfg.transfer.stall_s * 1000.0) as u64 },
        give_up_ms: cfg.transfer.give_up_s.saturating_mul(1000),
        ..SessionLimits::default()
    };
    let (spool, resume) = match resumed {
        Some((spool, have)) => {
            log::info!(
                "{}: resuming {} ({}/{} chunks on disk)",
                me.device,
                spool.announce().name,
                have.count(),
                have.total()
            );
            let a = spool.announce().clone();
            (Some(spool), Some((a, have)))
        }
        None => (None, None),
    };
    let session = Session::new(me.clone(), cfg.payload, limits, serving(&store), ledger, resume, now);

    let mut options = cfg.broker.mqtt_options(me.device.as_str(), false)?;
    let will = codec::encode(cfg.payload, &session.will(now));
    options.set_last_will(LastWill::new(session.status_topic(), will, QoS::AtLeastOnce, true));
    let (client, eventloop) = AsyncClient::new(options, 256);
    let (tx, rx) = mpsc::channel(1024);
    let seed = crate::link::pump::seed(me.device.as_str(), now.ms);
    let pump = tokio::spawn(pump(eventloop, tx, seed, crate::link::pump::Acks::Report));

    let api = tokio::spawn(crate::api::run(cfg.api.clone(), inference.clone()));
    let inputs = crate::input::Inputs::start(&cfg.input, &inference);
    let probe = SystemProbe::new("/", &cfg.data_dir);
    let mut agent = Agent {
        cfg,
        me,
        clock,
        store: Some(store),
        tested,
        spool,
        session,
        client,
        inference,
        outbox,
        probe,
        bundle_period_s: None,
        next_telemetry_ms: 0,
        inputs,
        notifier,
        host,
    };
    agent.reload().await;
    agent.probe.sample(); // the first CPU reading, so the first period reports usage
    agent.next_telemetry_ms = now.ms + agent.period_ms();
    let serving = agent
        .inference
        .model()
        .map_or_else(|| "no model yet".to_string(), |m| format!("serving {} v{}", m.name, m.version));
    agent.notifier.ready(&format!("{serving}; connecting to {}", agent.cfg.broker.address()));
    let result = agent.serve(rx, shutdown).await;
    pump.abort();
    api.abort();
    agent.inputs.stop();
    result
}

impl Agent {
    async fn serve(
        &mut self,
        mut rx: mpsc::Receiver<Link>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status = tokio::time::interval(Duration::from_secs(self.cfg.status_every_s.max(1)));
        status.tick().await;
        let mut online = false;
        let mut last_refusal: Option<String> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                link = rx.recv() => match link {
                    Some(Link::Up { session_present, dropped_fresh }) => {
                        online = true;
                        last_refusal = None;
                        log::info!("{}: connected to {}", self.me.device, self.cfg.broker.address());
                        self.notifier.status(&format!("online: connected to {}", self.cfg.broker.address()));
                        self.outbox.delivery().up(session_present, dropped_fresh);
                        self.feed(Input::Connected).await;
                    }
                    Some(Link::Sent(pkid)) => self.outbox.delivery().packet_id(pkid),
                    Some(Link::Acked(pkid)) => {
                        if let Err(e) = self.outbox.acked(pkid) {
                            log::warn!("{}: outbox: {e}", self.me.device);
                        }
                    }
                    Some(Link::Down(e)) => {
                        if online {
                            log::warn!("{}: connection to {} lost: {e}", self.me.device, self.cfg.broker.address());
                        } else if last_refusal.as_deref() != Some(e.as_str()) {
                            // Said once per reason: a broker down at boot retries quietly, but a
                            // refused certificate or password must not hide at debug level.
                            log::warn!("{}: cannot reach {}: {e}", self.me.device, self.cfg.broker.address());
                            last_refusal = Some(e.clone());
                        } else {
                            log::debug!("{}: cannot reach {}: {e}", self.me.device, self.cfg.broker.address());
                        }
                        if online {
                            self.notifier.status(&format!("offline: {e}"));
                        }
                        online = false;
                        self.outbox.delivery().down();
                        self.feed(Input::Disconnected).await;
                    }
                    Some(Link::Message(topic, payload)) => {
                        self.feed(Input::Message { topic: &topic, payload: &payload }).await;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    self.feed(Input::Tick).await;
                    self.report();
                }
                _ = status.tick() => if online {
                    let now = self.clock.now();
                    let payload = codec::encode(self.cfg.payload, &self.session.status(true, now));
                    self.publish(self.session.status_topic(), payload, true);
                },
            }
            self.flush();
            self.notifier.tick(Instant::now());
        }
        self.notifier.stopping();
        // A clean stop: say so (the Last Will is only for vanishing), then disconnect.
        if online {
            let payload = codec::encode(self.cfg.payload, &self.session.status(false, self.clock.now()));
            self.publish(self.session.status_topic(), payload, true);
            let _ = self.client.try_disconnect();
            wait_closed(&mut rx, Duration::from_secs(2)).await;
        }
        if let Some(spool) = &mut self.spool {
            let _ = spool.sync();
        }
        Ok(())
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>, retain: bool) {
        // try_publish: while the broker is away the queue fills; a dropped report is repeated on
        // reconnect (presence, wants and retained outcomes are all re-sent then).
        match self.client.try_publish(topic.as_str(), QoS::AtLeastOnce, retain, payload) {
            Ok(()) => self.outbox.delivery().handed(Tag::Other, self.clock.now().ms),
            Err(e) => log::debug!("{}: not sent to {topic}: {e}", self.me.device),
        }
    }

    /// Hands the outbox's next records to the client, as far as the link and window allow.
    fn flush(&mut self) {
        let now = self.clock.now().ms;
        while let Some(r) = self.outbox.delivery().ready() {
            let leaf = match r.stream {
                Stream::Telemetry => DeviceLeaf::Telemetry,
                Stream::Drift => DeviceLeaf::Drift,
                Stream::Events => DeviceLeaf::Events,
            };
            let (seq, payload) = (r.seq, r.payload.clone());
            let topic = topic::device(&self.me.device, leaf).to_string();
            if self.client.try_publish(topic, QoS::AtLeastOnce, false, payload).is_err() {
                break; // the request queue is full; the record stays queued
            }
            self.outbox.delivery().handed(Tag::Record(seq), now);
        }
    }

    /// Journals a report in the outbox (it is sent by [`Agent::flush`]).
    fn queue(&mut self, stream: Stream, make: impl FnOnce(u64) -> Vec<u8>) {
        match self.outbox.append(stream, make) {
            Ok(0) => {}
            Ok(dropped) => {
                // Said once per drop, through the outbox itself (it has room now).
                let (format, at_ms, model) = (self.cfg.payload, self.clock.unix_ms(), self.inference.model());
                let _ = self.outbox.append(Stream::Events, |seq| {
                    codec::encode(format, &Event { seq, at_ms, model, kind: EventKind::Dropped { count: dropped } })
                });
            }
            Err(e) => log::warn!("{}: outbox: {e}; report lost", self.me.device),
        }
    }

    fn period_ms(&self) -> u64 {
        let s = self.cfg.telemetry.period_s.or(self.bundle_period_s).unwrap_or(DEFAULT_PERIOD_S);
        u64::from(s.max(1)) * 1000
    }

    /// Drift windows, alerts and (when due) the period's telemetry into the outbox.
    fn report(&mut self) {
        let now = self.clock.now();
        let unix_ms = self.clock.unix_ms();
        let format = self.cfg.payload;
        self.inference.poll(unix_ms);
        let (windows, events) = self.inference.take_reports();
        let model = self.inference.model();
        for w in windows {
            let alerts = alerts::window_events(&w);
            self.queue(Stream::Drift, |seq| codec::encode(format, &alerts::window_message(&w, seq)));
            for kind in alerts {
                log::warn!("{}: {} alert: {kind:?}", self.me.device, kind.name());
                let model = Some(w.model.clone());
                self.queue(Stream::Events, |seq| codec::encode(format, &Event { seq, at_ms: unix_ms, model, kind }));
            }
        }
        for kind in events {
            log::warn!("{}: {} alert: {kind:?}", self.me.device, kind.name());
            let model = model.clone();
            self.queue(Stream::Events, |seq| codec::encode(format, &Event { seq, at_ms: unix_ms, model, kind }));
        }
        if now.ms >= self.next_telemetry_ms {
            self.next_telemetry_ms = now.ms + self.period_ms();
            let (period, quality) = self.inference.take_period(unix_ms);
            let shadow = self.inference.take_shadow();
            let split = self.inference.take_split();
            let inputs = self.inputs.take_reports();
            let system = self.probe.sample();
            let serving = self.session.serving().clone();
            let queue_capacity = self.inference.queue_capacity();
            // The report counts itself as queued: it is, once journaled.
            let mut outbox = self.outbox.stats();
            outbox.queued += 1;
            self.queue(Stream::Telemetry, |seq| {
                let t = Telemetry {
                    seq,
                    start_ms: period.start_ms,
                    end_ms: unix_ms,
                    model: serving.model,
                    slot: serving.slot,
                    inferences: period.inferences,
                    errors: period.errors,
                    latency: period.latency,
                    queue_max: period.queue_max,
                    queue_capacity,
                    system,
                    uptime_s: now.ms / 1000,
                    outbox,
                    quality,
                    shadow,
                    split,
                    inputs,
                };
                codec::encode(format, &t)
            });
        }
        self.outbox.delivery().tick(now.ms);
    }

    /// Serves what the store serves, and runs the experiment (shadow or split) it persisted.
    async fn reload(&mut self) {
        self.reload_model().await;
        let experiment = match self.store.as_ref().map(Store::experiment) {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                log::warn!("{}: {e}; no experiment", self.me.device);
                None
            }
            None => return,
        };
        self.sync_shadow(experiment.as_ref()).await;
        self.sync_split(experiment.as_ref()).await;
    }

    /// Runs the staged candidate in shadow while the experiment asks for it (and the candidate is
    /// not the served model itself), and stops it otherwise.
    async fn sync_shadow(&mut self, experiment: Option<&Experiment>) {
        let wanted = match experiment {
            Some(Experiment::Shadow { name, version, sample_ppm }) => heapless::String::try_from(name.as_str())
                .ok()
                .map(|name| (ModelRef { name, version: *version }, *sample_ppm)),
            _ => None,
        };
        let wanted = wanted.filter(|(candidate, _)| self.inference.model().as_ref() != Some(candidate));
        let Some((candidate, sample_ppm)) = wanted else {
            if self.inference.stop_shadow() {
                log::info!("{}: shadow stopped", self.me.device);
            }
            return;
        };
        if self.inference.shadow_settings() == Some((candidate.clone(), sample_ppm)) {
            return;
        }
        let (model, manifest) = match self.load_off_task(|store| store.load_candidate()).await {
            Some(Ok(loaded)) => loaded,
            Some(Err(())) => {
                self.inference.stop_shadow();
                return;
            }
            None => return,
        };
        if manifest.name != candidate.name || manifest.version != candidate.version {
            log::warn!("{}: the staged candidate is not {} v{}", self.me.device, candidate.name, candidate.version);
            return;
        }
        match self.inference.shadow(model, candidate.clone(), sample_ppm) {
            Ok(()) => log::info!(
                "{}: {} v{} in shadow on {:.1} % of inferences",
                self.me.device,
                candidate.name,
                candidate.version,
                f64::from(sample_ppm) / 1e4
            ),
            Err(e) => log::error!("{}: no shadow thread: {e}", self.me.device),
        }
    }

    /// Splits live traffic while the experiment asks for it and A is still the served model
    /// (an install or a rollback since ends the split), and stops it otherwise.
    async fn sync_split(&mut self, experiment: Option<&Experiment>) {
        let served = self.inference.model();
        let wanted = match experiment {
            Some(Experiment::Split { name, a, b, b_ppm }) => heapless::String::try_from(name.as_str())
                .ok()
                .map(|n| (ModelRef { name: n.clone(), version: *a }, ModelRef { name: n, version: *b }, *b_ppm)),
            _ => None,
        };
        let Some((a, b, b_ppm)) = wanted.filter(|(a, _, _)| served.as_ref() == Some(a)) else {
            if self.inference.stop_split() {
                log::info!("{}: traffic split ended", self.me.device);
            }
            return;
        };
        if self.inference.split_settings() == Some((a.clone(), b.clone(), b_ppm)) {
            return;
        }
        let (name, version) = (b.name.to_string(), b.version);
        let model = match self.load_off_task(move |store| store.load_variant(&name, version)).await {
            Some(Ok((model, _))) => model,
            Some(Err(())) => {
                self.inference.stop_split();
                return;
            }
            None => return,
        };
        match self.inference.split(&a, model, b.clone(), b_ppm) {
            Ok(()) => log::info!(
                "{}: traffic split: {:.1} % of request keys to {} v{}, the rest to v{}",
                self.me.device,
                f64::from(b_ppm) / 1e4,
                b.name,
                b.version,
                a.version
            ),
            Err(e) => log::error!("{}: no traffic split: {e}", self.me.device),
        }
    }

    /// Loads a model from the store on a blocking thread (checking files and self-tests takes a
    /// while); logs and gives `None` inside when it fails.
    async fn load_off_task<T: Send + 'static>(
        &mut self,
        load: impl FnOnce(&Store) -> Result<T, crate::store::InstallError> + Send + 'static,
    ) -> Option<Result<T, ()>> {
        let store = self.store.take()?;
        let joined = tokio::task::spawn_blocking(move || {
            let loaded = load(&store);
            (store, loaded)
        })
        .await;
        let Ok((store, loaded)) = joined else { return None };
        self.store = Some(store);
        Some(loaded.map_err(|e| log::error!("{}: the experiment's model does not load: {e}", self.me.device)))
    }

    /// Loads the active slot's model (and its reference statistics) into the inference service
    /// when it changed.
    async fn reload_model(&mut self) {
        // Taken whatever happens next, so a model the store tested is never kept past a reload.
        let tested = self.tested.take();
        let Some(store) = &self.store else { return };
        let state = store.state();
        let active = state.active.and_then(|a| state.slot(a).map(|m| (a, m.clone())));
        let Some((slot_id, manifest)) = active else {
            self.inference.unload();
            return;
        };
        let model_ref = ModelRef { name: manifest.name.clone(), version: manifest.version };
        if self.inference.model().as_ref() == Some(&model_ref) {
            return;
        }
        let dir = store.slot_dir(slot_id);
        let model_path = manifest.model_file().map(|f| dir.join(f.name.as_str()));
        let reference_path =
            manifest.files.iter().find(|f| f.role == FileRole::ReferenceStats).map(|f| dir.join(f.name.as_str()));
        self.bundle_period_s = manifest.settings.telemetry_period_s;
        let thresholds = self.cfg.serve_settings(manifest.settings.drift_psi_milli).thresholds;
        let device = self.me.device.clone();
        let inference = self.inference.clone();
        // The store has just loaded and self-tested this slot's model (boot, install): it is
        // served as it is, so the agent is ready after one load of the file, not two.
        let tested = match tested {
            Some((slot, model)) if slot == slot_id => Some(model),
            _ => None,
        };
        let loaded = tokio::task::spawn_blocking(move || {
            let model = match tested {
                Some(model) => model,
                None => crate::engine::Model::load(&model_path?)
                    .inspect_err(|e| log::error!("{device}: the active model does not load: {e}"))
                    .ok()?,
            };
            let reference = reference_path.and_then(|p| {
                let bytes = std::fs::read(&p).ok()?;
                serde_json::from_slice::<ReferenceStats>(&bytes)
                    .inspect_err(|e| log::warn!("{device}: {}: {e}; no drift monitoring", p.display()))
                    .ok()
            });
            let observer = reference.and_then(|r| inference.observer(&model, &model_ref, &r, thresholds));
            Some((model, model_ref, observer))
        })
        .await
        .ok()
        .flatten();
        match loaded {
            Some((model, model_ref, observer)) => {
                log::info!("{}: serving {} v{}", self.me.device, model_ref.name, model_ref.version);
                self.inference.serve(model, model_ref, observer);
            }
            None => self.inference.unload(),
        }
    }

    /// Feeds one input and carries out every action, including those that follow from the
    /// results fed back (an install, a command).
    async fn feed(&mut self, input: Input<'_>) {
        let mut queue: VecDeque<Action> = self.session.handle(input, self.clock.now()).into();
        while let Some(action) = queue.pop_front() {
            if let Some(next) = self.act(action).await {
                let now = self.clock.now();
                queue.extend(self.session.handle(next.as_input(), now));
            }
        }
    }

    async fn act(&mut self, action: Action) -> Option<Feedback> {
        match action {
            Action::Subscribe(filters) => {
                let filters = filters.into_iter().map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                if let Err(e) = self.client.try_subscribe_many(filters) {
                    log::warn!("{}: subscribe: {e}", self.me.device);
                }
            }
            Action::Unsubscribe(filter) => {
                let _ = self.client.try_unsubscribe(filter);
            }
            Action::Publish { topic, payload, retain } => self.publish(topic, payload, retain),
            Action::StartTransfer(a) => {
                self.spool = None;
                match Spool::create(&self.transfer_dir(), &a) {
                    Ok(s) => {
                        log::info!("{}: downloading {} v{} ({} bytes)", self.me.device, a.name, a.version, a.size);
                        self.spool = Some(s);
                    }
                    Err(e) => return Some(Feedback::SpoolFailed(e.to_string())),
                }
            }
            Action::StoreChunk { index, sha256, data } => {
                let Some(spool) = &mut self.spool else {
                    return Some(Feedback::SpoolFailed("no transfer open".into()));
                };
                if let Err(e) = spool.write(index, sha256, &data, self.clock.now().ms) {
                    return Some(Feedback::SpoolFailed(e.to_string()));
                }
            }
            Action::Install(a) => {
                let feedback = self.install(a).await;
                self.reload().await;
                return Some(feedback);
            }
            Action::ApplyCommand(cmd) => {
                // QoS 1 may deliver a command twice, and the operator's tool sends it again after
                // a reconnect: the one just applied is not refused a second time, just skipped.
                if self.store.as_ref().is_some_and(|s| s.state().last_command == cmd.command.sequence) {
                    log::debug!("{}: command {} already applied", self.me.device, cmd.command.sequence);
                    return None;
                }
                let feedback = self.apply(*cmd).await;
                self.reload().await;
                return Some(feedback);
            }
            Action::DiscardTransfer => {
                self.spool = None;
                if let Err(e) = crate::transfer::spool::discard(&self.transfer_dir()) {
                    log::warn!("{}: {e}", self.me.device);
                }
            }
            Action::Feedback(f) => {
                let known = f.labels.iter().filter(|l| self.inference.label(&l.request, l.label)).count();
                if known < f.labels.len() {
                    log::debug!("{}: {} labels for unknown predictions", self.me.device, f.labels.len() - known);
                }
            }
            Action::Stored(stored) => {
                if let Err(e) = self.outbox.stored(&stored) {
                    log::warn!("{}: outbox: {e}", self.me.device);
                }
            }
            Action::SaveLedger(ledger) => {
                let path = self.cfg.data_dir.join(LEDGER);
                if let Err(e) = save_ledger(&path, &ledger) {
                    log::warn!("{}: {e}", self.me.device);
                }
            }
        }
        None
    }

    fn transfer_dir(&self) -> PathBuf {
        self.cfg.data_dir.join(TRANSFER)
    }

    async fn install(&mut self, a: Announce) -> Feedback {
        let (Some(mut store), Some(mut spool)) = (self.store.take(), self.spool.take()) else {
            return Feedback::SpoolFailed("no transfer open".into());
        };
        let device = self.me.device.clone();
        let now = self.clock.now().unix;
        let joined = self
            .host
            .run("install", move || {
                let phase = match spool.finish() {
                    Err(e) => Phase::failed(&e.to_string()),
                    Ok(path) => match std::fs::File::open(&path) {
                        Err(e) => Phase::failed(&format!("{}: {e}", path.display())),
                        Ok(file) => {
                            let facts = crate::cmd::slots::device_facts(now);
                            let mut reader = std::io::BufReader::new(file);
                            if a.purpose == Purpose::Stage {
                                match store.stage_candidate(&mut reader, &facts) {
                                    Ok(m) => {
                                        log::info!("{device}: staged {} v{} as the candidate", m.name, m.version);
                                        Phase::Staged
                                    }
                                    Err(e) => {
                                        log::warn!("{device}: staging of {} v{} refused: {e}", a.name, a.version);
                                        Phase::failed(&e.to_string())
                                    }
                                }
                            } else {
                                match store.install(&mut reader, &facts) {
                                    Ok(r) => {
                                        log::info!("{device}: installed {} v{} in slot {}", r.name, r.version, r.slot);
                                        Phase::Installed { slot: slot(r.slot) }
                                    }
                                    Err(e) => {
                                        log::warn!("{device}: install of {} v{} refused: {e}", a.name, a.version);
                                        Phase::failed(&e.to_string())
                                    }
                                }
                            }
                        }
                    },
                };
                let tested = store.take_tested();
                (store, spool, phase, tested)
            })
            .await;
        match joined {
            Ok((store, spool, phase, tested)) => {
                let serving = serving(&store);
                self.store = Some(store);
                self.spool = Some(spool);
                self.tested = tested.or(self.tested.take());
                Feedback::Installed(phase, serving)
            }
            Err(e) => Feedback::SpoolFailed(format!("install task failed: {e}")),
        }
    }

    async fn apply(&mut self, cmd: SignedCommand) -> Feedback {
        let sequence = cmd.command.sequence;
        let Some(mut store) = self.store.take() else {
            return Feedback::Command(sequence, Phase::failed("store unavailable"), Serving::default());
        };
        let device = self.me.device.as_str().to_string();
        let groups: Vec<String> = self.me.groups.iter().map(|g| g.as_str().to_string()).collect();
        let now = self.clock.now().unix;
        let joined = tokio::task::spawn_blocking(move || {
            let facts = crate::cmd::slots::device_facts(now);
            let phase = match store.apply_command(&cmd, &device, &groups, &facts, None) {
                Ok(CommandOutcome::RolledBack(s)) => {
                    log::info!("{device}: rolled back to slot {s} on command {sequence}");
                    Phase::RolledBack { slot: slot(s) }
                }
                Ok(CommandOutcome::Installed(r)) => Phase::Installed { slot: slot(r.slot) },
                Ok(CommandOutcome::Experiment(Experiment::Shadow { name, version, sample_ppm })) => {
                    log::info!("{device}: {name} v{version} to run in shadow ({sample_ppm} ppm) on command {sequence}");
                    Phase::Shadowing
                }
                Ok(CommandOutcome::Experiment(Experiment::Split { name, a, b, b_ppm })) => {
                    log::info!("{device}: {name} split v{a} / v{b} ({b_ppm} ppm to v{b}) on command {sequence}");
                    Phase::Splitting
                }
                Ok(CommandOutcome::ShadowStopped(_)) => Phase::ShadowStopped,
                Ok(CommandOutcome::SplitStopped(_)) => Phase::SplitStopped,
                Err(e) => {
                    log::warn!("{device}: command {sequence} refused: {e}");
                    Phase::failed(&e.to_string())
                }
            };
            let tested = store.take_tested();
            (store, phase, tested)
        })
        .await;
        match joined {
            Ok((store, phase, tested)) => {
                let serving = serving(&store);
                self.store = Some(store);
                self.tested = tested.or(self.tested.take());
                Feedback::Command(sequence, phase, serving)
            }
            Err(e) => Feedback::Command(sequence, Phase::failed(&e.to_string()), Serving::default()),
        }
    }
}

/// Results of actions, fed back to the session.
enum Feedback {
    SpoolFailed(String),
    Installed(Phase, Serving),
    Command(u64, Phase, Serving),
}

impl Feedback {
    fn as_input(&self) -> Input<'static> {
        match self {
            Feedback::SpoolFailed(r) => Input::SpoolFailed(r.clone()),
            Feedback::Installed(phase, serving) => Input::Installed { phase: phase.clone(), serving: serving.clone() },
            Feedback::Command(sequence, phase, serving) => {
                Input::CommandApplied { sequence: *sequence, phase: phase.clone(), serving: serving.clone() }
            }
        }
    }
}
