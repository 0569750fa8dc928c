//! Many agents in one process: each the real [`agent::run_with`] with its own configuration, data
//! dir and inference service, spread over a few single-threaded runtimes. The demo, the fleet
//! simulator and the end-to-end tests run fleets this way, so what they exercise is the code a
//! board runs, not a stand-in for it.
//!
//! Nothing is shared between agents but the runtimes' threads: a crash (a dropped task) or a
//! clean stop of one leaves the others running.

use std::path::Path;
use std::sync::Arc;

use drover_wire::trust::SignedRoot;
use tokio::sync::oneshot;

use crate::agent::background::Host;
use crate::agent::{self, AgentConfig, AgentError, Clock, SystemClock};
use crate::serve::Inference;
use crate::store::{Store, StoreConfig, StoreError, StoreState};

/// One agent of a [`Agents`] set.
#[derive(Debug)]
pub struct Member {
    /// Its configuration (changes apply at its next start).
    pub cfg: AgentConfig,
    stop: Option<oneshot::Sender<()>>,
    inference: Option<Inference>,
    task: Option<tokio::task::JoinHandle<Result<(), AgentError>>>,
    runtime: usize,
}

/// A runtime driven by a thread of its own, until told to stop.
#[derive(Debug)]
struct Driver {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Agents sharing `threads` single-threaded runtimes. The agent needs no more than one thread:
/// installs and inference run on threads of their own, so a runtime only waits on sockets and
/// timers. Stopped (each agent cleanly, then the runtimes) when dropped.
#[derive(Debug)]
pub struct Agents {
    drivers: Vec<Driver>,
    /// The machine they share: their installs take turns, two per core at a time.
    host: Host,
    /// The agents, in the order they were added.
    pub members: Vec<Member>,
}

/// Writes the fleet's root of trust into a fresh data dir, as `drover-agent trust` does when a
/// board is provisioned.
pub fn provision(data_dir: &Path, root: &SignedRoot) -> Result<(), StoreError> {
    let mut store = Store::open(StoreConfig::new(data_dir))?;
    store.set_trust(root)
}

impl Agents {
    /// No agents yet, and `threads` (at least one) runtimes to run them on.
    pub fn new(threads: usize) -> std::io::Result<Agents> {
        let mut drivers = Vec::new();
        for n in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("agents-{n}")).spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })?;
            drivers.push(Driver { handle, stop: Some(stop), thread: Some(thread) });
        }
        // Twice the cores: an install waits on its disk too (slot write, syncs), and with one per
        // core the cores can sit idle between them (a 1,000-device push installed in 6.1 s against
        // 4.2 s with two per core in one pair of runs, within noise in another).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Agents { drivers, host: Host::new(2 * cores), members: Vec::new() })
    }

    /// Adds an agent (not started); returns its index.
    pub fn add(&mut self, cfg: AgentConfig) -> usize {
        let runtime = self.members.len() % self.drivers.len();
        self.members.push(Member { cfg, stop: None, inference: None, task: None, runtime });
        self.members.len() - 1
    }

    /// Starts agent `i` with the system clock (a running one is stopped first).
    pub fn start(&mut self, i: usize) {
        self.start_with(i, Arc::new(SystemClock::default()));
    }

    /// Starts agent `i` on `clock`.
    pub fn start_with(&mut self, i: usize, clock: Arc<dyn Clock>) {
        if self.is_running(i) {
            let _ = self.stop(i);
        }
        let m = &mut self.members[i];
        let (tx, rx) = oneshot::channel::<()>();
        let cfg = m.cfg.clone();
        let inference = Inference::new(cfg.serve_settings(None), clock.clone());
        m.inference = Some(inference.clone());
        let host = self.host.clone();
        m.task = Some(self.drivers[m.runtime].handle.spawn(async move {
            agent::run_on(cfg, clock, inference, host, async {
                let _ = rx.await;
            })
            .await
        }));
        m.stop = Some(tx);
    }

    /// Whether agent `i` was started and has neither been stopped nor ended by itself.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The inference service of agent `i` since its latest start (requests and labels go there).
    pub fn inference(&self, i: usize) -> Option<Inference> {
        self.members[i].inference.clone()
    }

    /// Stops agent `i` cleanly (it says "offline", flushes and disconnects) and waits for it;
    /// the agent's own error if it had ended with one.
    pub fn stop(&mut self, i: usize) -> Result<(), AgentError> {
        let m = &mut self.members[i];
        if let Some(tx) = m.stop.take() {
            let _ = tx.send(());
        }
        match m.task.take() {
            Some(task) => match self.drivers[m.runtime].handle.block_on(task) {
                Ok(r) => r,
                // A panic inside the agent is a bug: it reaches the caller as one.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Kills agent `i` at once: its task is dropped wherever it was, as a power cut would leave
    /// it (no offline message: the broker's Last Will says it).
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.stop = None;
        if let Some(task) = m.task.take() {
            task.abort();
            let _ = self.drivers[m.runtime].handle.block_on(task);
        }
    }

    /// Whether agent `i` holds a bundle transfer under way (its spool's part file).
    pub fn receiving(&self, i: usize) -> bool {
        self.members[i].cfg.data_dir.join(crate::agent::shell::TRANSFER).join(crate::transfer::spool::PART).exists()
    }

    /// The active model of agent `i` as (name, version), read from its persisted state.
    pub fn serving(&self, i: usize) -> Option<(String, u64)> {
        let bytes = std::fs::read(self.members[i].cfg.data_dir.join("state.json")).ok()?;
        let state: StoreState = serde_json::from_slice(&bytes).ok()?;
        let m = state.slot(state.active?)?;
        Some((m.name.to_string(), m.version))
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(tx) = m.stop.take() {
                let _ = tx.send(());
            }
        }
        for m in &mut self.members {
            if let Some(task) = m.task.take() {
                let handle = &self.drivers[m.runtime].handle;
                let _ = handle.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), task).await });
            }
        }
        for d in &mut self.drivers {
            if let Some(stop) = d.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = d.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::BrokerSettings;

    fn config(dir: &Path, device: &str) -> AgentConfig {
        let mut cfg = AgentConfig::new(device, dir.join(device));
        cfg.broker = BrokerSettings { port: 1, ..BrokerSettings::default() };
        cfg
    }

    #[test]
    fn agents_start_stop_and_die_independently_of_each_other() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut agents = Agents::new(2).expect("runtimes");
        for d in ["a", "b", "c"] {
            agents.add(config(dir.path(), d));
        }
        for i in 0..3 {
            assert!(!agents.is_running(i));
            agents.start(i);
        }
        // No broker on port 1: they keep retrying, which is running.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!((0..3).all(|i| agents.is_running(i)));
        agents.kill(1);
        assert!(!agents.is_running(1) && agents.is_running(0) && agents.is_running(2));
        agents.stop(0).expect("clean stop");
        assert!(!agents.is_running(0) && agents.is_running(2));
        assert!(agents.inference(2).is_some() && agents.serving(2).is_none(), "nothing installed");
        agents.start(1);
        assert!(agents.is_running(1), "restarted after the kill");
    }
}
