//! A fleet of real agents in this process: each `drover_runtime::agent::run` with its own
//! config and data dir (provisioned with the test's root of trust), started and stopped at
//! will, as the simulator will run them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_runtime::agent::config::TransferSettings;
use drover_runtime::agent::{AgentConfig, Clock, SystemClock};
use drover_runtime::link::{BrokerSettings, PayloadFormat};
use drover_runtime::serve::Inference;
use drover_runtime::store::{Store, StoreConfig, StoreState};
use tokio::sync::oneshot;

/// One agent of the fleet.
#[derive(Debug)]
pub struct Member {
    /// Its configuration.
    pub cfg: AgentConfig,
    stop: Option<oneshot::Sender<()>>,
    inference: Option<Inference>,
    task: Option<tokio::task::JoinHandle<Result<(), drover_runtime::agent::AgentError>>>,
}

/// Agents sharing one single-threaded runtime, driven by a thread of its own (the agent needs
/// no more; a multi-threaded runtime would also change tokio's features for the whole test
/// build and force the agent to be compiled twice).
#[derive(Debug)]
pub struct Fleet {
    rt: tokio::runtime::Handle,
    driver: Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
    /// The agents, in order of their names.
    pub members: Vec<Member>,
}

impl Fleet {
    /// `n` agents named `{prefix}-{i:02}` in `groups`, each trusting `root_json` and talking to
    /// `broker`; none started yet.
    pub fn new(
        base: &Path,
        prefix: &str,
        n: usize,
        groups: &[&str],
        root_json: &Path,
        broker: &BrokerSettings,
    ) -> Fleet {
        let root: drover_wire::trust::SignedRoot =
            serde_json::from_str(&std::fs::read_to_string(root_json).expect("root.json")).expect("root document");
        let members = (0..n)
            .map(|i| {
                let device = format!("{prefix}-{i:02}");
                let data_dir = base.join(&device);
                let mut store = Store::open(StoreConfig::new(&data_dir)).expect("store");
                store.set_trust(&root).expect("provision trust");
                let cfg = AgentConfig {
                    device,
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    labels: Default::default(),
                    data_dir,
                    payload: if i % 2 == 0 { PayloadFormat::Postcard } else { PayloadFormat::Json },
                    broker: broker.clone(),
                    transfer: TransferSettings { stall_s: 0.7, give_up_s: 120, ..TransferSettings::default() },
                    status_every_s: 60,
                    telemetry: Default::default(),
                    drift: Default::default(),
                    quality: Default::default(),
                    inference: Default::default(),
                    api: drover_runtime::api::ApiSettings {
                        listen: drover_runtime::api::Listen::Off,
                        ..Default::default()
                    },
                    input: Vec::new(),
                };
                Member { cfg, stop: None, inference: None, task: None }
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let rt = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            })
        });
        Fleet { rt, driver: Some((stop, thread)), members }
    }

    /// Starts agent `i`.
    pub fn start(&mut self, i: usize) {
        let m = &mut self.members[i];
        let (tx, rx) = oneshot::channel::<()>();
        let cfg = m.cfg.clone();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
        let inference = Inference::new(cfg.serve_settings(None), clock.clone());
        m.inference = Some(inference.clone());
        m.task = Some(self.rt.spawn(async move {
            drover_runtime::agent::run_with(cfg, clock, inference, async {
                let _ = rx.await;
            })
            .await
        }));
        m.stop = Some(tx);
    }

    /// The inference service of running agent `i` (requests and labels go there).
    pub fn inference(&self, i: usize) -> Inference {
        self.members[i].inference.clone().expect("the agent was started")
    }

    /// Starts every agent.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            self.start(i);
        }
    }

    /// Stops agent `i` cleanly (it says "offline" and disconnects) and waits for it.
    pub fn stop(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(tx) = m.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = m.task.take() {
            let r = self.rt.block_on(task).expect("agent task");
            r.expect("agent ended with an error");
        }
    }

    /// Kills agent `i` at once (its task is dropped mid-flight, as a power cut would).
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.stop = None;
        if let Some(task) = m.task.take() {
            task.abort();
            let _ = self.rt.block_on(task);
        }
    }

    /// The data dir of agent `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.members[i].cfg.data_dir.clone()
    }

    /// The active model of agent `i` as (name, version), read from its persisted state.
    pub fn serving(&self, i: usize) -> Option<(String, u64)> {
        let bytes = std::fs::read(self.data_dir(i).join("state.json")).ok()?;
        let state: StoreState = serde_json::from_slice(&bytes).ok()?;
        let m = state.slot(state.active?)?;
        Some((m.name.to_string(), m.version))
    }

    /// Waits until `pred` holds for agent `i`, or panics after `timeout`.
    pub fn wait_for(&self, i: usize, timeout: Duration, what: &str, pred: impl Fn(&Fleet, usize) -> bool) {
        let deadline = Instant::now() + timeout;
        while !pred(self, i) {
            assert!(Instant::now() < deadline, "{}: timed out waiting for {what}", self.members[i].cfg.device);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if let Some(tx) = self.members[i].stop.take() {
                let _ = tx.send(());
            }
        }
        for m in &mut self.members {
            if let Some(task) = m.task.take() {
                let _ = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
            }
        }
        if let Some((stop, thread)) = self.driver.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}
