//! A fleet of real agents in this process (`drover_runtime::sim::Agents`: each the real
//! `agent::run_with` with its own config and data dir, provisioned with the test's root of
//! trust), started and stopped at will, with the tests' defaults and panicking conveniences.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_runtime::agent::AgentConfig;
use drover_runtime::agent::config::TransferSettings;
use drover_runtime::link::{BrokerSettings, PayloadFormat};
use drover_runtime::serve::Inference;
use drover_runtime::sim::{Agents, provision};

/// Agents sharing one single-threaded runtime (the agent needs no more; a multi-threaded
/// runtime would also change tokio's features for the whole test build and force the agent to
/// be compiled twice). `members` and the rest of [`Agents`] are reached through it.
#[derive(Debug)]
pub struct Fleet {
    agents: Agents,
}

impl std::ops::Deref for Fleet {
    type Target = Agents;
    fn deref(&self) -> &Agents {
        &self.agents
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut Agents {
        &mut self.agents
    }
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
        let fast = TransferSettings { stall_s: 0.7, give_up_s: 120, ..TransferSettings::default() };
        Fleet::on_threads(base, prefix, n, groups, root_json, broker, 1, fast)
    }

    /// As [`Fleet::new`], on `threads` runtimes and with `transfer` settings (the benches run the
    /// agents as `drover simulate` does: a runtime per core, the agent's defaults).
    #[allow(clippy::too_many_arguments)]
    pub fn on_threads(
        base: &Path,
        prefix: &str,
        n: usize,
        groups: &[&str],
        root_json: &Path,
        broker: &BrokerSettings,
        threads: usize,
        transfer: TransferSettings,
    ) -> Fleet {
        let root: drover_wire::trust::SignedRoot =
            serde_json::from_str(&std::fs::read_to_string(root_json).expect("root.json")).expect("root document");
        let mut agents = Agents::new(threads).expect("runtime");
        for i in 0..n {
            let device = format!("{prefix}-{i:02}");
            let data_dir = base.join(&device);
            provision(&data_dir, &root).expect("provision trust");
            let mut cfg = AgentConfig::new(device, data_dir);
            cfg.groups = groups.iter().map(|g| g.to_string()).collect();
            cfg.payload = if i % 2 == 0 { PayloadFormat::Postcard } else { PayloadFormat::Json };
            cfg.broker = broker.clone();
            cfg.transfer = transfer;
            agents.add(cfg);
        }
        Fleet { agents }
    }

    /// The inference service of running agent `i` (requests and labels go there).
    pub fn inference(&self, i: usize) -> Inference {
        self.agents.inference(i).expect("the agent was started")
    }

    /// Starts every agent.
    pub fn start_all(&mut self) {
        for i in 0..self.agents.members.len() {
            self.agents.start(i);
        }
    }

    /// Stops agent `i` cleanly (it says "offline" and disconnects) and waits for it.
    pub fn stop(&mut self, i: usize) {
        self.agents.stop(i).expect("agent ended with an error");
    }

    /// The data dir of agent `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.agents.members[i].cfg.data_dir.clone()
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
