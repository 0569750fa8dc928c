//! The slot state machine, pure: what is installed where, which slot runs, whether it is
//! committed, how often it was started without committing, and the anti-rollback floor.
//!
//! Every transition is a function from state to state; the I/O shell persists the result
//! atomically before acting on it, so a crash at any instant leaves a state that describes
//! only slots whose content is complete.

use std::collections::BTreeMap;
use std::fmt;

use drover_wire::manifest::Manifest;
use serde::{Deserialize, Serialize};

/// One of the two model slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotId {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl SlotId {
    /// The other slot.
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }

    /// Directory name of the slot.
    pub fn dir_name(self) -> &'static str {
        match self {
            SlotId::A => "a",
            SlotId::B => "b",
        }
    }

    fn index(self) -> usize {
        match self {
            SlotId::A => 0,
            SlotId::B => 1,
        }
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotId::A => "A",
            SlotId::B => "B",
        })
    }
}

/// What the store knows about the device's slots. Persisted as `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreState {
    /// The slot the agent serves from.
    pub active: Option<SlotId>,
    /// The verified manifest of each slot's complete content (None: empty or being written).
    pub slots: [Option<Box<Manifest>>; 2],
    /// The active slot has not passed its health check since it was switched to.
    pub pending: bool,
    /// Starts of the active slot while pending.
    pub boot_attempts: u32,
    /// The committed slot to fall back to.
    pub previous: Option<SlotId>,
    /// Highest version ever installed, per model name (anti-rollback; never decreases).
    pub highest: BTreeMap<String, u64>,
    /// Highest operator command sequence applied (replay floor; never decreases).
    #[serde(default)]
    pub last_command: u64,
    /// The latest signed time this device has seen (an installed bundle's `created_at`, an
    /// applied command's `issued_at`), Unix seconds; never decreases. Expiry is judged against
    /// it whenever the clock says earlier, so a clock set back (a board without a real-time
    /// clock booting at 1970, a forged NTP answer) does not bring expired bundles, delegations,
    /// roots or commands back to life.
    #[serde(default)]
    pub time_floor: u64,
    /// Incremented by every persisted change, for diagnostics.
    pub generation: u64,
}

/// What to do at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// Nothing installed yet.
    Empty,
    /// Serve this slot (`pending`: it still has to pass the health check).
    Run {
        /// The slot.
        slot: SlotId,
        /// Whether it must still be committed.
        pending: bool,
    },
    /// The pending slot failed too often: switched back to this one.
    RolledBack {
        /// The slot now active.
        to: SlotId,
        /// The slot given up.
        from: SlotId,
    },
}

/// Why a rollback is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    /// No committed slot to go back to.
    #[error("no previous model to roll back to")]
    NoPrevious,
}

impl StoreState {
    /// Manifest of a slot.
    pub fn slot(&self, id: SlotId) -> Option<&Manifest> {
        self.slots[id.index()].as_deref()
    }

    fn set_slot(&mut self, id: SlotId, m: Option<Manifest>) {
        self.slots[id.index()] = m.map(Box::new);
    }

    /// The slot an install writes to: never the active one.
    pub fn install_target(&self) -> SlotId {
        self.active.map_or(SlotId::A, SlotId::other)
    }

    /// The anti-rollback floor for a model.
    pub fn highest_installed(&self, name: &str) -> u64 {
        self.highest.get(name).copied().unwrap_or(0)
    }

    /// Before a slot's directory is touched: forget its content (and stop falling back to it).
    pub fn release_slot(&self, id: SlotId) -> StoreState {
        let mut s = self.next();
        s.set_slot(id, None);
        if s.previous == Some(id) {
            s.previous = None;
        }
        s
    }

    /// After the new content is complete and self-tested in `id`: switch to it, pending, and
    /// raise the anti-rollback floor.
    pub fn switch_to(&self, id: SlotId, manifest: Manifest) -> StoreState {
        let mut s = self.next();
        let floor = s.highest.entry(manifest.name.to_string()).or_insert(0);
        *floor = (*floor).max(manifest.version);
        s.time_floor = s.time_floor.max(manifest.created_at);
        // Fall back to the slot that was serving, if it was committed.
        s.previous = match (self.active, self.pending) {
            (Some(a), false) if a != id => Some(a),
            _ => self.previous.filter(|p| *p != id),
        };
        s.set_slot(id, Some(manifest));
        s.active = Some(id);
        s.pending = true;
        s.boot_attempts = 0;
        s
    }

    /// At start-up: count the attempt of a pending slot and give it up after `max_attempts`.
    pub fn boot(&self, max_attempts: u32) -> (StoreState, BootDecision) {
        let Some(active) = self.active else { return (self.clone(), BootDecision::Empty) };
        if !self.pending {
            return (self.clone(), BootDecision::Run { slot: active, pending: false });
        }
        if self.boot_attempts >= max_attempts {
            return match self.rollback() {
                Ok(s) => {
                    let to = s.active.unwrap_or(active);
                    (s, BootDecision::RolledBack { to, from: active })
                }
                // Nothing to go back to: keep trying the only model there is.
                Err(_) => (self.clone(), BootDecision::Run { slot: active, pending: true }),
            };
        }
        let mut s = self.next();
        s.boot_attempts += 1;
        (s, BootDecision::Run { slot: active, pending: true })
    }

    /// The pending slot passed its health check.
    pub fn commit(&self) -> StoreState {
        let mut s = self.next();
        s.pending = false;
        s.boot_attempts = 0;
        s
    }

    /// Back to the previous committed slot (after a failed health check, by the boot counter,
    /// or on the operator's order). The floor is not lowered: the abandoned version stays
    /// installable only by a newer bundle.
    pub fn rollback(&self) -> Result<StoreState, RollbackError> {
        let to = self.previous.filter(|p| self.slot(*p).is_some()).ok_or(RollbackError::NoPrevious)?;
        let mut s = self.next();
        s.previous = if self.pending { None } else { self.active };
        s.active = Some(to);
        s.pending = false;
        s.boot_attempts = 0;
        Ok(s)
    }

    /// The active slot failed verification or its health check and there is nothing to fall
    /// back to: its content is forgotten and nothing is active until a new install.
    pub fn give_up(&self, id: SlotId) -> StoreState {
        let mut s = self.release_slot(id);
        if s.active == Some(id) {
            s.active = None;
        }
        s.pending = false;
        s.boot_attempts = 0;
        s
    }

    /// Records an accepted operator command so it can never be applied again (and the time it
    /// was signed at as the earliest "now" from then on).
    pub fn consume_command(&self, sequence: u64, issued_at: u64) -> StoreState {
        let mut s = self.next();
        s.last_command = s.last_command.max(sequence);
        s.time_floor = s.time_floor.max(issued_at);
        s
    }

    /// The time expiry is judged at: the clock's, unless it is before the latest signed time
    /// this device has seen.
    pub fn trusted_now(&self, clock: u64) -> u64 {
        clock.max(self.time_floor)
    }

    fn next(&self) -> StoreState {
        let mut s = self.clone();
        s.generation += 1;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_wire::manifest::{AgentVersion, FileEntry, FileRole, MANIFEST_FORMAT, RuntimeSettings};
    use heapless::{String as HString, Vec as HVec};

    fn m(version: u64) -> Manifest {
        let mut files = HVec::new();
        let f = FileEntry {
            role: FileRole::Model,
            name: HString::try_from("model.onnx").unwrap(),
            size: 1,
            sha256: [0; 32],
        };
        files.push(f).unwrap();
        Manifest {
            format: MANIFEST_FORMAT,
            name: HString::try_from("iris").unwrap(),
            version,
            label: HString::new(),
            created_at: 0,
            expires_at: 1,
            targets: HVec::new(),
            min_agent: AgentVersion { major: 0, minor: 0, patch: 0 },
            inputs: HVec::new(),
            outputs: HVec::new(),
            files,
            settings: RuntimeSettings::default(),
        }
    }

    /// Installs `version` the way the store does: release the target, switch, commit.
    fn install(s: &StoreState, version: u64) -> StoreState {
        let target = s.install_target();
        s.release_slot(target).switch_to(target, m(version)).commit()
    }

    #[test]
    fn installs_alternate_slots_and_keep_the_previous_for_rollback() {
        let s = install(&StoreState::default(), 1);
        assert_eq!(s.active, Some(SlotId::A));
        assert_eq!(s.previous, None);
        let s = install(&s, 2);
        assert_eq!(s.active, Some(SlotId::B));
        assert_eq!(s.previous, Some(SlotId::A));
        assert_eq!(s.install_target(), SlotId::A);
        let back = s.rollback().unwrap();
        assert_eq!(back.active, Some(SlotId::A));
        assert_eq!(back.slot(SlotId::A).map(|m| m.version), Some(1));
        assert_eq!(back.highest_installed("iris"), 2, "rollback never lowers the floor");
        assert_eq!(back.previous, Some(SlotId::B), "an operator can roll forward again");
    }

    #[test]
    fn releasing_the_previous_slot_removes_the_fallback() {
        let s = install(&install(&StoreState::default(), 1), 2);
        let s = s.release_slot(s.install_target());
        assert_eq!(s.previous, None);
        assert_eq!(s.rollback(), Err(RollbackError::NoPrevious));
        assert_eq!(s.active, Some(SlotId::B), "the active slot is never released");
    }

    #[test]
    fn boot_counter_rolls_back_a_slot_that_never_commits() {
        let s = install(&StoreState::default(), 1);
        let target = s.install_target();
        let mut s = s.release_slot(target).switch_to(target, m(2));
        for attempt in 1..=3 {
            let (next, d) = s.boot(3);
            assert_eq!(d, BootDecision::Run { slot: SlotId::B, pending: true });
            assert_eq!(next.boot_attempts, attempt);
            s = next;
        }
        let (s, d) = s.boot(3);
        assert_eq!(d, BootDecision::RolledBack { to: SlotId::A, from: SlotId::B });
        assert_eq!(s.active, Some(SlotId::A));
        assert!(!s.pending);
        assert_eq!(s.previous, None, "a failed slot is not a fallback");
        assert_eq!(s.highest_installed("iris"), 2);
    }

    #[test]
    fn committed_slot_boots_without_counting() {
        let s = install(&StoreState::default(), 1);
        let (next, d) = s.boot(3);
        assert_eq!(d, BootDecision::Run { slot: SlotId::A, pending: false });
        assert_eq!(next, s);
        assert_eq!(StoreState::default().boot(3).1, BootDecision::Empty);
    }

    #[test]
    fn first_install_that_never_commits_keeps_running_with_nothing_to_fall_back_to() {
        let s = StoreState::default().release_slot(SlotId::A).switch_to(SlotId::A, m(1));
        let s = (0..5).fold(s, |s, _| s.boot(3).0);
        assert_eq!(s.boot(3).1, BootDecision::Run { slot: SlotId::A, pending: true });
    }

    #[test]
    fn state_survives_json_round_trip() {
        let s = install(&install(&StoreState::default(), 1), 2);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<StoreState>(&text).unwrap(), s);
    }
}
