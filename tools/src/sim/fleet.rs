//! A simulated fleet: N real agents (`drover_runtime::sim::Agents`), each provisioned with the
//! fleet's root of trust in its own data dir, the traffic that feeds them, and the profile's
//! faults applied as they fall due: drift, power cuts, crashes while an update is received.

use std::path::PathBuf;

use drover_runtime::agent::AgentConfig;
use drover_runtime::link::{BrokerSettings, PayloadFormat};
use drover_runtime::sim::{Agents, provision};
use drover_wire::trust::SignedRoot;

use super::profile::{Fault, Profile, Schedule};
use super::traffic::{Traffic, rows};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Where the devices' data dirs go (one directory per device).
    pub dir: PathBuf,
    /// Device names are `{prefix}-{i:03}` (two digits under 100 devices).
    pub prefix: String,
    /// How many devices.
    pub devices: usize,
    /// The groups every device is in.
    pub groups: Vec<String>,
    /// The broker.
    pub broker: BrokerSettings,
    /// The fleet's root of trust.
    pub root: SignedRoot,
    /// What they do.
    pub profile: Profile,
    /// Runtimes (threads) the agents share.
    pub threads: usize,
}

/// Why a fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A device's data dir or store.
    #[error("device {device}: {source}")]
    Store {
        /// Which.
        device: String,
        /// Why.
        source: drover_runtime::store::StoreError,
    },
    /// A thread.
    #[error("start a thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The profile or the rows.
    #[error("{0}")]
    Profile(String),
}

/// Counts of what the simulator did to the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    /// Devices whose inputs drift.
    pub drifting: usize,
    /// Power cuts (scheduled ones and crashes during updates).
    pub power_cuts: u64,
    /// Of those, the ones that hit a device receiving a bundle.
    pub crashes_during_update: u64,
}

/// A running simulated fleet.
pub struct SimFleet {
    /// The agents.
    pub agents: Agents,
    /// Their traffic.
    pub traffic: Traffic,
    schedule: Schedule,
    shift: f32,
    /// Per device: the transfer episode being watched, whether it is decided, and when the
    /// crash it drew falls.
    watch: Vec<Watch>,
    /// What was done so far.
    pub done: Done,
}

#[derive(Debug, Clone, Copy, Default)]
struct Watch {
    receiving: bool,
    episodes: u64,
    crash_at_ms: Option<u64>,
}

/// The name of device `i` of `n`.
pub fn device_name(prefix: &str, i: usize, n: usize) -> String {
    if n <= 100 { format!("{prefix}-{i:02}") } else { format!("{prefix}-{i:04}") }
}

impl SimFleet {
    /// Provisions and starts every device; traffic flows at once (to no model until one is
    /// installed: those requests count as failed).
    pub fn start(spec: &FleetSpec) -> Result<SimFleet, SimError> {
        spec.profile.check().map_err(|e| SimError::Profile(e.to_string()))?;
        let rows = rows(super::traffic::IRIS_TRAIN).map_err(SimError::Profile)?;
        let mut agents = Agents::new(spec.threads)?;
        for i in 0..spec.devices {
            let device = device_name(&spec.prefix, i, spec.devices);
            let data_dir = spec.dir.join(&device);
            provision(&data_dir, &spec.root).map_err(|source| SimError::Store { device: device.clone(), source })?;
            let mut cfg = AgentConfig::new(device, data_dir);
            cfg.groups = spec.groups.clone();
            cfg.labels.insert("site".into(), if i % 2 == 0 { "north" } else { "south" }.into());
            // Both encodings on the wire, as a mixed fleet of agent versions would have.
            cfg.payload = if i % 2 == 0 { PayloadFormat::Postcard } else { PayloadFormat::Json };
            cfg.broker = spec.broker.clone();
            cfg.telemetry.period_s = Some(spec.profile.telemetry_period_s);
            cfg.status_every_s = u64::from(spec.profile.telemetry_period_s).max(5);
            cfg.drift.window_samples = spec.profile.drift_window;
            cfg.drift.min_samples = (spec.profile.drift_window / 2).max(1);
            cfg.drift.budget_pct = 0.0;
            agents.add(cfg);
        }
        let traffic = Traffic::start(spec.devices, spec.profile.rate_hz, rows)?;
        for i in 0..spec.devices {
            agents.start(i);
            traffic.lanes[i].set(agents.inference(i));
        }
        let schedule = Schedule::new(&spec.profile, spec.devices);
        let done = Done { drifting: (0..spec.devices).filter(|&d| schedule.drifts(d)).count(), ..Done::default() };
        Ok(SimFleet {
            agents,
            traffic,
            schedule,
            shift: spec.profile.drift_shift,
            watch: vec![Watch::default(); spec.devices],
            done,
        })
    }

    /// Applies what is due at `now_ms` (since the start); returns it.
    pub fn step(&mut self, now_ms: u64) -> Vec<Fault> {
        let mut faults = self.schedule.due(now_ms);
        for d in 0..self.watch.len() {
            if self.schedule.is_down(d) {
                continue;
            }
            let receiving = self.agents.receiving(d);
            let w = &mut self.watch[d];
            if receiving && !w.receiving {
                w.episodes += 1;
                if self.schedule.crash_on_transfer(d, &w.episodes.to_string()) {
                    // A moment later, if it is still receiving then.
                    w.crash_at_ms = Some(now_ms + (d as u64 * 7919 + w.episodes * 104_729) % 400);
                }
            }
            w.receiving = receiving;
            if w.crash_at_ms.is_some_and(|t| now_ms >= t) {
                w.crash_at_ms = None;
                if receiving {
                    self.schedule.cut_now(d, now_ms);
                    self.done.crashes_during_update += 1;
                    faults.push(Fault::PowerCut(d));
                }
            }
        }
        for f in &faults {
            match *f {
                Fault::Drift(d) => self.traffic.lanes[d].shift(self.shift),
                Fault::PowerCut(d) => {
                    self.traffic.lanes[d].set(None);
                    self.agents.kill(d);
                    self.done.power_cuts += 1;
                }
                Fault::PowerBack(d) => {
                    self.agents.start(d);
                    self.traffic.lanes[d].set(self.agents.inference(d));
                }
            }
        }
        faults
    }

    /// Starts the drift of device `d`'s inputs now (the demo's injection), by `shift`.
    pub fn drift(&mut self, d: usize, shift: f32) {
        self.traffic.lanes[d].shift(shift);
    }

    /// The devices, in order.
    pub fn len(&self) -> usize {
        self.agents.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.agents.members.is_empty()
    }

    /// How many devices serve `name` at `version` (by their persisted state).
    pub fn serving(&self, name: &str, version: u64) -> usize {
        (0..self.len()).filter(|&i| self.agents.serving(i).is_some_and(|(n, v)| n == name && v == version)).count()
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        // No more requests into agents that are stopping.
        for lane in self.traffic.lanes.iter() {
            lane.set(None);
        }
    }
}
