//! The agent's I/O shell: the MQTT connection (rumqttc), the clock, the transfer spool and the
//! model store around the pure [`Session`]. One [`run`] per agent instance; nothing global, so
//! the simulator runs hundreds in one process.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_wire::Arch;
use drover_wire::command::SignedCommand;
use drover_wire::manifest::AgentVersion;
use drover_wire::message::{Announce, ModelRef, Phase, Slot};
use rumqttc::{AsyncClient, LastWill, QoS, SubscribeFilter};
use tokio::sync::mpsc;

use super::config::AgentConfig;
use super::session::{Action, Identity, Input, Ledger, Now, Serving, Session, SessionLimits};
use crate::link::codec;
use crate::link::pump::{Link, pump, wait_closed};
use crate::store::{CommandOutcome, SlotId, Store, StoreConfig};
use crate::transfer::{Patience, Spool};

/// The time source of an agent: the real clock on a board, a shared or virtual one in the
/// simulator.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Now;
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
    /// A blocking task failed.
    #[error("internal: {0}")]
    Join(String),
}

const LEDGER: &str = "link.json";
const TRANSFER: &str = "transfer";
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
    spool: Option<Spool>,
    session: Session,
    client: AsyncClient,
}

/// Runs one agent until `shutdown` resolves: boots the store (boot counter, verification,
/// health check), connects with a persistent session and a Last Will, and serves the protocol.
pub async fn run(
    cfg: AgentConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let (device, groups) = cfg.names()?;
    let agent_version =
        AgentVersion::parse(env!("CARGO_PKG_VERSION")).unwrap_or(AgentVersion { major: 0, minor: 0, patch: 0 });
    let me = Identity { device, groups, agent: agent_version, arch: Arch::current().unwrap_or(Arch::X86_64) };

    let mut store = Store::open(StoreConfig::new(&cfg.data_dir))?;
    let (store, booted) = tokio::task::spawn_blocking(move || {
        let r = store.boot().map(|o| o.serving.is_some());
        (store, r)
    })
    .await
    .map_err(|e| AgentError::Join(e.to_string()))?;
    match booted {
        Ok(true) => {}
        Ok(false) => log::info!("{}: no model installed yet", me.device),
        Err(e) => log::error!("{}: {e}; waiting for a new bundle", me.device),
    }
    let ledger = load_ledger(&cfg.data_dir.join(LEDGER));
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
    let will = codec::encode(cfg.payload, &session.status(false, now));
    options.set_last_will(LastWill::new(session.status_topic(), will, QoS::AtLeastOnce, true));
    let (client, eventloop) = AsyncClient::new(options, 256);
    let (tx, rx) = mpsc::channel(1024);
    let pump = tokio::spawn(pump(eventloop, tx, crate::link::pump::seed(me.device.as_str(), now.ms)));

    let mut agent = Agent { cfg, me, clock, store: Some(store), spool, session, client };
    let result = agent.serve(rx, shutdown).await;
    pump.abort();
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
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                link = rx.recv() => match link {
                    Some(Link::Up) => {
                        online = true;
                        log::info!("{}: connected to {}", self.me.device, self.cfg.broker.address());
                        self.feed(Input::Connected).await;
                    }
                    Some(Link::Down(e)) => {
                        if online {
                            log::warn!("{}: connection to {} lost: {e}", self.me.device, self.cfg.broker.address());
                        } else {
                            log::debug!("{}: cannot reach {}: {e}", self.me.device, self.cfg.broker.address());
                        }
                        online = false;
                        self.feed(Input::Disconnected).await;
                    }
                    Some(Link::Message(topic, payload)) => {
                        self.feed(Input::Message { topic: &topic, payload: &payload }).await;
                    }
                    None => break,
                },
                _ = tick.tick() => self.feed(Input::Tick).await,
                _ = status.tick() => if online {
                    let now = self.clock.now();
                    let payload = codec::encode(self.cfg.payload, &self.session.status(true, now));
                    self.publish(self.session.status_topic(), payload, true);
                },
            }
        }
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

    fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        // try_publish: while the broker is away the queue fills; a dropped report is repeated on
        // reconnect (presence, wants and retained outcomes are all re-sent then).
        if let Err(e) = self.client.try_publish(topic.as_str(), QoS::AtLeastOnce, retain, payload) {
            log::debug!("{}: not sent to {topic}: {e}", self.me.device);
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
                if let Err(e) = spool.write(index, sha256, &data) {
                    return Some(Feedback::SpoolFailed(e.to_string()));
                }
            }
            Action::Install(a) => return Some(self.install(a).await),
            Action::ApplyCommand(cmd) => {
                // QoS 1 may deliver a command twice, and the operator's tool sends it again after
                // a reconnect: the one just applied is not refused a second time, just skipped.
                if self.store.as_ref().is_some_and(|s| s.state().last_command == cmd.command.sequence) {
                    log::debug!("{}: command {} already applied", self.me.device, cmd.command.sequence);
                    return None;
                }
                return Some(self.apply(*cmd).await);
            }
            Action::DiscardTransfer => {
                self.spool = None;
                if let Err(e) = crate::transfer::spool::discard(&self.transfer_dir()) {
                    log::warn!("{}: {e}", self.me.device);
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
        let joined = tokio::task::spawn_blocking(move || {
            let phase = match spool.finish() {
                Err(e) => Phase::failed(&e.to_string()),
                Ok(path) => match std::fs::File::open(&path) {
                    Err(e) => Phase::failed(&format!("{}: {e}", path.display())),
                    Ok(file) => {
                        let facts = crate::cmd::slots::device_facts(now);
                        match store.install(&mut std::io::BufReader::new(file), &facts) {
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
                },
            };
            (store, spool, phase)
        })
        .await;
        match joined {
            Ok((store, spool, phase)) => {
                let serving = serving(&store);
                self.store = Some(store);
                self.spool = Some(spool);
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
                Err(e) => {
                    log::warn!("{device}: command {sequence} refused: {e}");
                    Phase::failed(&e.to_string())
                }
            };
            (store, phase)
        })
        .await;
        match joined {
            Ok((store, phase)) => {
                let serving = serving(&store);
                self.store = Some(store);
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
