//! The rollouts the fleet server runs: each a [`Rollout`] controller (pure) with its bundle,
//! fed the registry's view of its group on every tick. What the controllers ask for is carried
//! out by [`execute`] — pushes and signed commands over MQTT, signed with the operator key the
//! server was given.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_runtime::bundle::{Limits, read_header};
use drover_runtime::link::BrokerSettings;
use drover_wire::command::{Operation, Target};
use drover_wire::message::Purpose;
use drover_wire::topic::Name;
use serde::{Deserialize, Serialize};

use super::registry::{Device, Registry};
use crate::push::{Audience, Campaign, Tracker};
use crate::rollout::{Action, DeviceView, Plan, Rollout};

/// The operator key rollout commands are signed with.
#[derive(Debug, Clone)]
pub struct Signer {
    /// The operator secret key file.
    pub key: PathBuf,
    /// Its delegation from the root.
    pub delegation: PathBuf,
}

/// A rollout and the bundle it rolls out.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The controller.
    pub rollout: Rollout,
    /// The signed bundle.
    pub bundle: Arc<Vec<u8>>,
    /// Actions are being carried out: the controller waits for them before its next tick.
    pub busy: bool,
}

/// Actions a rollout asked for, to carry out in order.
#[derive(Debug, Clone)]
pub struct Work {
    /// The rollout as it stood when it asked.
    pub rollout: Rollout,
    /// What to do.
    pub actions: Vec<Action>,
    /// Its bundle.
    pub bundle: Arc<Vec<u8>>,
}

/// What `POST /api/rollouts` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The group.
    pub group: String,
    /// Cumulative shares per stage, percent.
    pub stages: Vec<u32>,
    /// Shadow before serving, ms (0: none).
    pub shadow_ms: u64,
    /// Soak per stage, ms.
    pub soak_ms: u64,
    /// Install timeout per stage, ms.
    pub install_timeout_ms: u64,
    /// Least requests per device for a window to be judged.
    pub min_requests: u64,
    /// The gates.
    pub gates: crate::rollout::Gates,
    /// The signed bundle, hex.
    pub bundle_hex: String,
}

/// Why a rollout was refused.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Not hex.
    #[error("bundle_hex is not hex: {0}")]
    Hex(#[from] hex::FromHexError),
    /// Not a bundle.
    #[error("not a Drover bundle: {0}")]
    Bundle(#[from] drover_runtime::bundle::ContainerError),
    /// Not signed.
    #[error("the bundle is not signed: `drover sign` it first")]
    Unsigned,
    /// The plan.
    #[error(transparent)]
    Plan(#[from] crate::rollout::PlanError),
    /// Bad group name.
    #[error("group '{0}': {1}")]
    Group(String, drover_wire::topic::BadName),
    /// Another rollout of this group is still running.
    #[error("rollout {0} of this group is still running: abort it first")]
    Busy(String),
    /// The server has no operator key to sign the stages' commands.
    #[error("this fleet server has no operator key (--operator-key, --delegation): it cannot run rollouts")]
    NoSigner,
}

/// Every rollout the server knows, by id.
#[derive(Debug, Default)]
pub struct Rollouts {
    entries: BTreeMap<String, Entry>,
}

impl Rollouts {
    /// Rollouts read back from the store.
    pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Rollouts {
        Rollouts {
            entries: entries.into_iter().map(|e| (e.rollout.plan.id.clone(), Entry { busy: false, ..e })).collect(),
        }
    }

    /// Checks and adds a rollout; returns it (to store).
    pub fn create(&mut self, req: CreateRequest, now_ms: u64) -> Result<Entry, CreateError> {
        Name::new(&req.group).map_err(|e| CreateError::Group(req.group.clone(), e))?;
        let bytes = hex::decode(req.bundle_hex.trim())?;
        let header = read_header(&mut bytes.as_slice(), &Limits::default())?;
        if !header.is_signed() {
            return Err(CreateError::Unsigned);
        }
        if let Some(running) = self.entries.values().find(|e| e.rollout.plan.group == req.group && !e.rollout.is_over())
        {
            return Err(CreateError::Busy(running.rollout.plan.id.clone()));
        }
        let m = &header.manifest;
        let n = self.entries.len() + 1;
        let plan = Plan {
            id: format!("{}-v{}-{n}", m.name, m.version),
            model: m.name.to_string(),
            version: m.version,
            group: req.group,
            stages: req.stages,
            shadow_ms: req.shadow_ms,
            soak_ms: req.soak_ms,
            install_timeout_ms: req.install_timeout_ms,
            min_requests: req.min_requests,
            gates: req.gates,
        };
        plan.validate()?;
        let entry = Entry { rollout: Rollout::new(plan, now_ms), bundle: Arc::new(bytes), busy: false };
        self.entries.insert(entry.rollout.plan.id.clone(), entry.clone());
        Ok(entry)
    }

    /// Adds a rollout another server created (it drives them).
    pub fn insert(&mut self, entry: Entry) {
        self.entries.insert(entry.rollout.plan.id.clone(), entry);
    }

    /// Forgets a rollout that could not be stored.
    pub fn remove(&mut self, id: &str) {
        self.entries.remove(id);
    }

    /// One rollout.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// One rollout, to change.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.entries.get_mut(id)
    }

    /// Every rollout, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Carries the outcome of a batch of actions into the rollout's log and lets it tick again.
    pub fn done(&mut self, id: &str, now_ms: u64, notes: Vec<String>) {
        if let Some(e) = self.entries.get_mut(id) {
            e.busy = false;
            for text in notes {
                e.rollout.log.push(crate::rollout::RolloutEvent { at_ms: now_ms, stage: e.rollout.stage, text });
            }
        }
    }

    /// Ticks every running rollout that is not busy; returns the ones that asked for something
    /// (now marked busy) with their actions, and the ids whose state changed (to store).
    pub fn tick(&mut self, now_ms: u64, registry: &Registry) -> (Vec<Work>, Vec<String>) {
        let mut work = Vec::new();
        let mut changed = Vec::new();
        for (id, e) in &mut self.entries {
            if e.busy || e.rollout.is_over() {
                continue;
            }
            let before = e.rollout.log.len();
            let views = views(registry, &e.rollout.plan);
            let actions = e.rollout.tick(now_ms, &views);
            if e.rollout.log.len() != before || !actions.is_empty() {
                changed.push(id.clone());
            }
            if !actions.is_empty() {
                e.busy = true;
                work.push(Work { rollout: e.rollout.clone(), actions, bundle: e.bundle.clone() });
            }
        }
        (work, changed)
    }
}

/// The controller's view of the plan's group.
pub fn views(registry: &Registry, plan: &Plan) -> Vec<DeviceView> {
    registry.devices().filter(|d| d.groups.contains(&plan.group)).map(|d| view(d, plan)).collect()
}

fn view(d: &Device, plan: &Plan) -> DeviceView {
    let ours = |m: &super::registry::ModelVersion| m.name == plan.model && m.version == plan.version;
    let shadow = d.shadow.as_ref().filter(|s| ours(&s.candidate));
    DeviceView {
        id: d.id.clone(),
        online: d.online,
        version: if d.model.as_deref() == Some(plan.model.as_str()) { d.version } else { None },
        staged: d.candidate.as_ref().is_some_and(ours),
        failed: d.failed.as_ref().filter(|(m, _)| ours(m)).map(|(_, why)| why.clone()),
        answered: d.totals.inferences,
        errors: d.totals.errors(),
        p99_us: d.latency_us.map(|l| l.p99),
        drift: d.drift.as_ref().map(|w| w.score),
        shadow_judged: shadow.map_or(0, |s| s.judged),
        shadow_agreed: shadow.map_or(0, |s| s.agreed),
    }
}

/// Runs rollouts' actions in the background, each batch in order, and tells the hub when a
/// batch is over.
#[derive(Clone)]
pub struct Executor {
    /// The broker the devices are on.
    pub broker: BrokerSettings,
    /// The operator key.
    pub signer: Signer,
    /// The hub to report to.
    pub hub: Arc<super::hub::Hub>,
    /// The clock.
    pub now_ms: super::http::UnixMs,
}

impl Executor {
    /// Carries out `actions` of `rollout` on a task of its own.
    pub fn spawn(&self, work: Work) {
        let this = self.clone();
        let Work { rollout, actions, bundle } = work;
        let plan = rollout.plan;
        tokio::spawn(async move {
            let clock = this.now_ms.clone();
            let notes = execute(&plan, actions, &bundle, &this.broker, &this.signer, move || clock()).await;
            this.hub.rollout_done(&plan.id, (this.now_ms)(), notes);
        });
    }

    /// Ticks every rollout and starts what they ask for.
    pub fn tick(&self) {
        for work in self.hub.tick_rollouts((self.now_ms)()) {
            self.spawn(work);
        }
    }
}

/// Carries out a rollout's actions in order; returns a line per action for its log.
pub async fn execute(
    plan: &Plan,
    actions: Vec<Action>,
    bundle: &[u8],
    broker: &BrokerSettings,
    signer: &Signer,
    now_ms: impl Fn() -> u64,
) -> Vec<String> {
    let mut notes = Vec::new();
    for action in actions {
        let result = match &action {
            Action::Deploy { devices, shadow } => deploy(plan, devices, *shadow, bundle, broker, signer, &now_ms).await,
            Action::StopShadow { devices } => {
                command(devices, Operation::StopShadow, plan, broker, signer, &now_ms).await
            }
            // The agent has no order that promotes its staged candidate without the bundle: the
            // bundle goes again as an install push (the device verifies it again, too).
            Action::Activate { devices } => deploy(plan, devices, false, bundle, broker, signer, &now_ms).await,
            Action::Rollback { devices } => command(devices, Operation::Rollback, plan, broker, signer, &now_ms).await,
        };
        if let Err(e) = result {
            log::warn!("rollout {}: {action:?}: {e:#}", plan.id);
            notes.push(format!("{}: {e:#}", describe(&action)));
        }
    }
    notes
}

fn describe(a: &Action) -> &'static str {
    match a {
        Action::Deploy { shadow: true, .. } => "staging",
        Action::Deploy { shadow: false, .. } => "installing",
        Action::StopShadow { .. } => "stopping the shadow",
        Action::Activate { .. } => "activating",
        Action::Rollback { .. } => "rolling back",
    }
}

fn short(name: &str) -> heapless::String<{ drover_wire::manifest::MAX_NAME }> {
    // Model names come from a verified manifest: they fit.
    name.try_into().unwrap_or_default()
}

fn audience(devices: &[String]) -> anyhow::Result<Audience> {
    let ids: BTreeSet<Name> =
        devices.iter().map(|d| Name::new(d).map_err(|e| anyhow::anyhow!("{d}: {e}"))).collect::<Result<_, _>>()?;
    Ok(Audience::Devices(ids))
}

async fn deploy(
    plan: &Plan,
    devices: &[String],
    shadow: bool,
    bundle: &[u8],
    broker: &BrokerSettings,
    signer: &Signer,
    now_ms: &impl Fn() -> u64,
) -> anyhow::Result<()> {
    let base = crate::push::campaign::announce(bundle, &plan.model, plan.version, 32 * 1024, now_ms())?;
    let announce =
        drover_wire::message::Announce { purpose: if shadow { Purpose::Stage } else { base.purpose }, ..base };
    let timeout = plan.install_timeout_ms;
    let tracker = Tracker::new(audience(devices)?, 0, 1500, timeout);
    let mut campaign =
        Campaign::new(crate::push::Work::Bundle { announce }, tracker, drover_runtime::link::PayloadFormat::default());
    crate::push::run::execute(&mut campaign, bundle, None, broker, |_| {}).await?;
    if shadow {
        let op = Operation::Shadow { name: short(&plan.model), version: plan.version, sample_ppm: 1_000_000 };
        command(devices, op, plan, broker, signer, now_ms).await?;
    }
    Ok(())
}

/// Signs `op` for each device and sends them all at once.
async fn command(
    devices: &[String],
    op: Operation,
    plan: &Plan,
    broker: &BrokerSettings,
    signer: &Signer,
    now_ms: &impl Fn() -> u64,
) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(plan.install_timeout_ms);
    let signed_at = now_ms();
    let runs = devices.iter().map(|d| {
        let op = op.clone();
        async move {
            let target = Target::Device(short(d));
            let (signed, _) = crate::cmd::command::sign(
                target,
                op,
                &signer.key,
                &signer.delegation,
                timeout + Duration::from_secs(60),
                signed_at,
            )?;
            let tracker = Tracker::new(audience(std::slice::from_ref(d))?, 0, 1500, timeout.as_millis() as u64);
            let mut campaign = Campaign::new(
                crate::push::Work::Command(Box::new(signed)),
                tracker,
                drover_runtime::link::PayloadFormat::default(),
            );
            crate::push::run::execute(&mut campaign, &[], None, broker, |_| {}).await.map(|_| ())
        }
    });
    for r in futures_util::future::join_all(runs).await {
        r?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::registry::ModelVersion;

    #[test]
    fn the_controller_sees_the_group_through_the_registry() {
        let plan = crate::rollout::plan::tests::plan();
        let mut registry = Registry::default();
        registry.apply(1, "pi-1", &crate::fleet::registry::tests::status(true, Some(2)));
        let devices: Vec<Device> = registry.devices().cloned().collect();
        let mut d = devices[0].clone();
        d.groups = vec!["lab".into()];
        d.candidate = Some(ModelVersion { name: "iris".into(), version: 2 });
        d.failed = Some((ModelVersion { name: "iris".into(), version: 1 }, "old failure".into()));
        let v = view(&d, &plan);
        assert_eq!(
            (v.staged, v.failed.as_deref(), v.version),
            (true, None, Some(2)),
            "another version's failure is not ours"
        );
        let other = Plan { model: "mnist".into(), ..plan.clone() };
        assert_eq!(view(&d, &other).version, None, "another model's version is not ours");
        let registry = Registry::from_devices([d]);
        assert_eq!(views(&registry, &plan).len(), 1);
        assert!(views(&registry, &Plan { group: "elsewhere".into(), ..plan }).is_empty());
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = Rollouts::default();
        let req = |bundle_hex: &str| CreateRequest {
            group: "lab".into(),
            stages: vec![10, 100],
            shadow_ms: 0,
            soak_ms: 1000,
            install_timeout_ms: 1000,
            min_requests: 1,
            gates: crate::rollout::Gates::default(),
            bundle_hex: bundle_hex.into(),
        };
        assert!(matches!(r.create(req("zz"), 0), Err(CreateError::Hex(_))));
        assert!(matches!(r.create(req("00ff"), 0), Err(CreateError::Bundle(_))));
        let bad_group = CreateRequest { group: "a/b".into(), ..req("00") };
        assert!(matches!(r.create(bad_group, 0), Err(CreateError::Group(..))));
        assert_eq!(r.all().count(), 0);
    }
}
