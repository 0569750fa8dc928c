//! Which devices an operation is for and where each one stands, pure: fed the devices'
//! retained presence and progress reports and the time, it says when the operation is over and
//! what each device's result was.

use std::collections::{BTreeMap, BTreeSet};

use drover_wire::message::{Op, Phase, Status};
use drover_wire::topic::{self, DeviceLeaf, GroupLeaf, Name};

/// Who an operation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// These devices.
    Devices(BTreeSet<Name>),
    /// Every device whose presence names this group.
    Group(Name),
    /// Every device that ever reported presence.
    All,
}

impl Audience {
    /// Whether a device with this presence is in the audience.
    fn includes(&self, device: &Name, status: &Status) -> bool {
        match self {
            Audience::Devices(ids) => ids.contains(device),
            Audience::Group(g) => status.groups.iter().any(|s| s.as_str() == g.as_str()),
            Audience::All => true,
        }
    }

    /// The topics an announcement (`GroupLeaf::Bundle`) or command (`GroupLeaf::Cmd`) goes to.
    pub fn topics(&self, leaf: GroupLeaf) -> Vec<String> {
        match self {
            Audience::Devices(ids) => {
                let dev_leaf = match leaf {
                    GroupLeaf::Bundle => DeviceLeaf::Bundle,
                    GroupLeaf::Cmd => DeviceLeaf::Cmd,
                };
                ids.iter().map(|d| topic::device(d, dev_leaf).to_string()).collect()
            }
            Audience::Group(g) => vec![topic::group(g, leaf).to_string()],
            Audience::All => vec![topic::fleet(leaf).to_string()],
        }
    }

    /// For messages: "pi-1, pi-2", "group lab", "the fleet".
    pub fn describe(&self) -> String {
        match self {
            Audience::Devices(ids) => ids.iter().map(Name::as_str).collect::<Vec<_>>().join(", "),
            Audience::Group(g) => format!("group {g}"),
            Audience::All => "the fleet".into(),
        }
    }
}

/// One device as the operator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceView {
    /// Its presence, if it ever reported one (None: unknown to the broker).
    pub online: Option<bool>,
    /// Where the operation stands on it (None: not started).
    pub phase: Option<Phase>,
    /// When it finished, ms after the start.
    pub finished_ms: Option<u64>,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every device reported a final phase.
    AllFinished,
    /// The time ran out.
    TimedOut,
    /// Nobody is in the audience.
    NoDevices,
}

/// The devices of one operation.
#[derive(Debug, Clone)]
pub struct Tracker {
    audience: Audience,
    devices: BTreeMap<Name, DeviceView>,
    start_ms: u64,
    settle_ms: u64,
    timeout_ms: u64,
    connected_ms: Option<u64>,
}

impl Tracker {
    /// An operation for `audience` starting at `start_ms`. Groups are resolved from the
    /// retained presence that arrives in the first `settle_ms` after connecting (devices that
    /// show up later join too); the whole operation gives up after `timeout_ms`.
    pub fn new(audience: Audience, start_ms: u64, settle_ms: u64, timeout_ms: u64) -> Tracker {
        let devices = match &audience {
            Audience::Devices(ids) => ids.iter().map(|d| (d.clone(), DeviceView::default())).collect(),
            _ => BTreeMap::new(),
        };
        Tracker { audience, devices, start_ms, settle_ms, timeout_ms, connected_ms: None }
    }

    /// The audience.
    pub fn audience(&self) -> &Audience {
        &self.audience
    }

    /// The devices so far.
    pub fn devices(&self) -> &BTreeMap<Name, DeviceView> {
        &self.devices
    }

    /// The first connection: the settling of the audience starts.
    pub fn on_connected(&mut self, now_ms: u64) {
        self.connected_ms.get_or_insert(now_ms);
    }

    /// A device's presence; true if the device is (now) in the audience.
    pub fn on_status(&mut self, device: Name, status: &Status) -> bool {
        if !self.audience.includes(&device, status) {
            return false;
        }
        self.devices.entry(device).or_default().online = Some(status.online);
        true
    }

    /// A device's progress on the operation `matches` accepts; true if something changed.
    pub fn on_progress(
        &mut self,
        device: &Name,
        op: &Op,
        phase: Phase,
        matches: impl Fn(&Op) -> bool,
        now_ms: u64,
    ) -> bool {
        if !matches(op) {
            return false;
        }
        let Some(view) = self.devices.get_mut(device) else { return false };
        if view.phase.as_ref().is_some_and(Phase::is_final) || view.phase.as_ref() == Some(&phase) {
            return false;
        }
        if phase.is_final() {
            view.finished_ms = Some(now_ms.saturating_sub(self.start_ms));
        }
        view.phase = Some(phase);
        true
    }

    /// Whether the operation is over, and how.
    pub fn end(&self, now_ms: u64) -> Option<End> {
        // Named devices are known from the start: only a group or the fleet waits for presence.
        let settle_ms = if matches!(self.audience, Audience::Devices(_)) { 0 } else { self.settle_ms };
        let settled = self.connected_ms.is_some_and(|c| now_ms >= c + settle_ms);
        let all_final = self.devices.values().all(|v| v.phase.as_ref().is_some_and(Phase::is_final));
        if settled && self.devices.is_empty() {
            return Some(End::NoDevices);
        }
        if settled && all_final {
            return Some(End::AllFinished);
        }
        (now_ms >= self.start_ms + self.timeout_ms).then_some(End::TimedOut)
    }

    /// Whether every device finished successfully.
    pub fn all_succeeded(&self) -> bool {
        !self.devices.is_empty() && self.devices.values().all(|v| v.phase.as_ref().is_some_and(Phase::is_success))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_wire::Arch;
    use drover_wire::message::{Digest, Slot};

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn status(online: bool, groups: &[&str]) -> Status {
        Status {
            online,
            agent: drover_wire::AgentVersion { major: 0, minor: 1, patch: 0 },
            arch: Arch::X86_64,
            groups: groups.iter().map(|g| (*g).try_into().unwrap()).collect(),
            model: None,
            slot: None,
            uptime_s: 0,
            at: 0,
            labels: heapless::Vec::new(),
            presence_only: false,
        }
    }

    fn op(issued_at: u64) -> Op {
        Op::Bundle { transfer: Digest([1; 32]), name: "m".try_into().unwrap(), version: 2, issued_at }
    }

    fn ours(o: &Op) -> bool {
        *o == op(5)
    }

    #[test]
    fn a_group_is_resolved_from_presence_and_ends_when_all_report() {
        let mut t = Tracker::new(Audience::Group(name("lab")), 0, 1000, 60_000);
        t.on_connected(10);
        assert!(t.on_status(name("pi-1"), &status(true, &["lab"])));
        assert!(t.on_status(name("pi-2"), &status(false, &["lab", "x"])));
        assert!(!t.on_status(name("pi-3"), &status(true, &["other"])));
        assert_eq!(t.end(500), None, "still settling");
        assert!(t.on_progress(&name("pi-1"), &op(5), Phase::Installed { slot: Slot::B }, ours, 700));
        assert!(!t.on_progress(&name("pi-1"), &op(5), Phase::Installing, ours, 800), "final phases stick");
        assert!(!t.on_progress(&name("pi-2"), &op(4), Phase::Current, ours, 800), "an earlier push's report");
        assert!(!t.on_progress(&name("pi-3"), &op(5), Phase::Current, ours, 800), "not in the audience");
        assert_eq!(t.end(2000), None);
        t.on_progress(&name("pi-2"), &op(5), Phase::failed("bad"), ours, 2100);
        assert_eq!(t.end(2200), Some(End::AllFinished));
        assert!(!t.all_succeeded());
        assert_eq!(t.devices()[&name("pi-1")].finished_ms, Some(700));
    }

    #[test]
    fn explicit_devices_that_never_answer_time_out() {
        let ids = [name("a"), name("b")].into_iter().collect();
        let mut t = Tracker::new(Audience::Devices(ids), 0, 1000, 5000);
        t.on_connected(0);
        t.on_progress(&name("a"), &op(5), Phase::Current, ours, 100);
        assert_eq!(t.end(4999), None);
        assert_eq!(t.end(5000), Some(End::TimedOut));
        assert_eq!(t.devices()[&name("b")], DeviceView::default());
    }

    #[test]
    fn named_devices_end_as_soon_as_all_report_without_settling() {
        let ids = [name("a"), name("b")].into_iter().collect();
        let mut t = Tracker::new(Audience::Devices(ids), 0, 1500, 60_000);
        assert_eq!(t.end(100), None, "not connected yet");
        t.on_connected(100);
        t.on_progress(&name("a"), &op(5), Phase::Current, ours, 150);
        assert_eq!(t.end(200), None, "b has not reported");
        t.on_progress(&name("b"), &op(5), Phase::Installed { slot: Slot::A }, ours, 250);
        assert_eq!(t.end(300), Some(End::AllFinished), "no settling for a known audience");
    }

    #[test]
    fn an_empty_group_ends_after_settling() {
        let mut t = Tracker::new(Audience::Group(name("nobody")), 0, 1000, 60_000);
        assert_eq!(t.end(5000), None, "not connected yet");
        t.on_connected(5000);
        assert_eq!(t.end(6000), Some(End::NoDevices));
    }

    #[test]
    fn topics_follow_the_audience() {
        let ids = [name("pi-1")].into_iter().collect();
        assert_eq!(Audience::Devices(ids).topics(GroupLeaf::Bundle), vec!["drover/v1/dev/pi-1/bundle"]);
        assert_eq!(Audience::Group(name("lab")).topics(GroupLeaf::Cmd), vec!["drover/v1/grp/lab/cmd"]);
        assert_eq!(Audience::All.topics(GroupLeaf::Bundle), vec!["drover/v1/fleet/bundle"]);
    }
}
