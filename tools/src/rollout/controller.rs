//! The rollout controller, sans IO: fed the clock and what the fleet server knows of the group's
//! devices, it says what to send (deploy, activate, stop a shadow, roll back) and keeps a log of
//! every state change. The fleet server runs it on each tick; tests run it on made-up fleets.
//!
//! A stage goes: deploy the version to the stage's new devices (staged as a candidate when the
//! plan shadows first) → shadow for `shadow_ms`, judged on top-1 agreement → activate → soak
//! for `soak_ms`, judged on error rate, p99 and drift against the rest of the group → the next
//! stage. A failed gate, a device that fails or does not install in time, halts the rollout and
//! rolls back every device it moved.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::plan::Plan;

/// What the controller needs to know of one device of the group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceView {
    /// Device id.
    pub id: String,
    /// Connected.
    pub online: bool,
    /// The version it serves.
    pub version: Option<u64>,
    /// It holds the rolled-out version as its staged candidate.
    pub staged: bool,
    /// Its latest operation on the rolled-out version failed, and why.
    pub failed: Option<String>,
    /// Requests answered, since the server first saw it.
    pub answered: u64,
    /// Requests not answered, likewise.
    pub errors: u64,
    /// p99 of its latest busy period, µs.
    pub p99_us: Option<u32>,
    /// Its latest drift score (largest PSI).
    pub drift: Option<f64>,
    /// Shadow samples judged for the rolled-out version (classified or failed), cumulative.
    pub shadow_judged: u64,
    /// Of those, the ones where the candidate agreed with the served model.
    pub shadow_agreed: u64,
}

/// Counters at the start of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    answered: u64,
    errors: u64,
    shadow_judged: u64,
    shadow_agreed: u64,
}

impl Counters {
    fn of(d: &DeviceView) -> Counters {
        Counters {
            answered: d.answered,
            errors: d.errors,
            shadow_judged: d.shadow_judged,
            shadow_agreed: d.shadow_agreed,
        }
    }

    /// What happened since `self` (a device whose counters went back, its data dir reset,
    /// counts from zero).
    fn since(self, now: Counters) -> Counters {
        let d = |a: u64, b: u64| if b >= a { b - a } else { b };
        Counters {
            answered: d(self.answered, now.answered),
            errors: d(self.errors, now.errors),
            shadow_judged: d(self.shadow_judged, now.shadow_judged),
            shadow_agreed: d(self.shadow_agreed, now.shadow_agreed),
        }
    }
}

/// Where a running stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The stage's new devices are getting the version (staged or installed).
    Deploying,
    /// The candidate runs in shadow on them.
    Shadowing,
    /// Their staged candidate is being activated.
    Activating,
    /// They serve it; the gates are judged at the end.
    Soaking,
}

/// The rollout's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    /// Working through the stages.
    Running,
    /// Held by the operator: nothing is sent, the clock of the phase stops.
    Paused,
    /// Every stage passed.
    Completed,
    /// A gate or a device failed; the devices it moved were rolled back.
    Halted {
        /// Why.
        reason: String,
    },
    /// Stopped by the operator; the devices it moved were rolled back.
    Aborted,
}

/// What the fleet server must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Push the bundle to these devices; with `shadow`, staged as a candidate and run in
    /// shadow (a Shadow command), else installed and served.
    Deploy {
        /// Devices.
        devices: Vec<String>,
        /// Stage and shadow instead of serving.
        shadow: bool,
    },
    /// Stop the shadow on these devices.
    StopShadow {
        /// Devices.
        devices: Vec<String>,
    },
    /// Serve the staged candidate (an Install command).
    Activate {
        /// Devices.
        devices: Vec<String>,
    },
    /// Switch these devices back to their previous model.
    Rollback {
        /// Devices.
        devices: Vec<String>,
    },
}

/// One entry of a rollout's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// Unix ms.
    pub at_ms: u64,
    /// The stage index then.
    pub stage: usize,
    /// In words.
    pub text: String,
}

/// A step of a rollout as the fleet server tells it on `drover/v1/rollout/{id}/event` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// The rollout.
    pub rollout: String,
    /// The entry's place in the rollout's log (a repeated delivery has the same).
    pub index: usize,
    /// The entry.
    pub event: RolloutEvent,
    /// The rollout's state after it.
    pub state: State,
}

impl Rollout {
    /// The log entries not yet told, marked told.
    pub fn announce(&mut self) -> Vec<Announcement> {
        let start = self.announced.min(self.log.len());
        self.announced = self.log.len();
        self.log[start..]
            .iter()
            .enumerate()
            .map(|(i, e)| Announcement {
                rollout: self.plan.id.clone(),
                index: start + i,
                event: e.clone(),
                state: self.state.clone(),
            })
            .collect()
    }
}

/// A rollout and where it stands: serialisable, so the fleet server keeps it across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// What was asked.
    pub plan: Plan,
    /// Its state.
    pub state: State,
    /// The stage (index into `plan.stages`).
    pub stage: usize,
    /// The stage's phase.
    pub phase: Phase,
    /// When the phase started, Unix ms (shifted forward by pauses).
    pub phase_since_ms: u64,
    /// Devices of the current stage (all stages so far).
    pub members: BTreeSet<String>,
    /// Devices this rollout sent the version to: rolled back on a halt or an abort.
    pub moved: BTreeSet<String>,
    /// Devices that had it staged (their shadow is stopped on a halt).
    pub shadowing: BTreeSet<String>,
    /// Counters of the members at the start of the window.
    pub base: BTreeMap<String, Counters>,
    /// When a pause started.
    pub paused_at_ms: Option<u64>,
    /// Every state change.
    pub log: Vec<RolloutEvent>,
    /// Whether the current stage's deploy was sent.
    pub sent: bool,
    /// Entries of the log already told on the alert stream (the fleet server's bookkeeping).
    #[serde(default)]
    pub announced: usize,
}

impl Rollout {
    /// A rollout about to start its first stage (it starts on the first tick).
    pub fn new(plan: Plan, now_ms: u64) -> Rollout {
        let mut r = Rollout {
            plan,
            state: State::Running,
            stage: 0,
            phase: Phase::Deploying,
            phase_since_ms: now_ms,
            members: BTreeSet::new(),
            moved: BTreeSet::new(),
            shadowing: BTreeSet::new(),
            base: BTreeMap::new(),
            paused_at_ms: None,
            log: Vec::new(),
            sent: false,
            announced: 0,
        };
        let text = format!(
            "created: {} v{} to group {}, stages {:?} %",
            r.plan.model, r.plan.version, r.plan.group, r.plan.stages
        );
        r.note(now_ms, text);
        r
    }

    /// Whether it still acts.
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Completed | State::Halted { .. } | State::Aborted)
    }

    fn note(&mut self, at_ms: u64, text: String) {
        self.log.push(RolloutEvent { at_ms, stage: self.stage, text });
    }

    fn enter(&mut self, now_ms: u64, phase: Phase, group: &[DeviceView]) {
        self.phase = phase;
        self.phase_since_ms = now_ms;
        self.base =
            group.iter().filter(|d| self.members.contains(&d.id)).map(|d| (d.id.clone(), Counters::of(d))).collect();
    }

    /// Holds the rollout where it is.
    pub fn pause(&mut self, now_ms: u64) -> bool {
        if self.state != State::Running {
            return false;
        }
        self.state = State::Paused;
        self.paused_at_ms = Some(now_ms);
        self.note(now_ms, "paused by the operator".into());
        true
    }

    /// Goes on from where it was paused; the paused time does not count toward the phase.
    pub fn resume(&mut self, now_ms: u64) -> bool {
        if self.state != State::Paused {
            return false;
        }
        let paused = now_ms.saturating_sub(self.paused_at_ms.take().unwrap_or(now_ms));
        self.phase_since_ms = self.phase_since_ms.saturating_add(paused);
        self.state = State::Running;
        self.note(now_ms, "resumed by the operator".into());
        true
    }

    /// Stops it and rolls back what it moved.
    pub fn abort(&mut self, now_ms: u64) -> Vec<Action> {
        if self.is_over() {
            return Vec::new();
        }
        self.state = State::Aborted;
        self.note(now_ms, "aborted by the operator".into());
        self.undo(now_ms)
    }

    fn halt(&mut self, now_ms: u64, reason: String) -> Vec<Action> {
        self.note(now_ms, format!("halted: {reason}"));
        self.state = State::Halted { reason };
        self.undo(now_ms)
    }

    fn undo(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let shadowing: Vec<String> = self.shadowing.difference(&self.moved).cloned().collect();
        if !shadowing.is_empty() {
            self.note(now_ms, format!("stopping the shadow on {}", shadowing.join(", ")));
            out.push(Action::StopShadow { devices: shadowing });
        }
        if !self.moved.is_empty() {
            let devices: Vec<String> = self.moved.iter().cloned().collect();
            self.note(now_ms, format!("rolling back {}", devices.join(", ")));
            out.push(Action::Rollback { devices });
        }
        out
    }

    /// What a driver that took over sends again: the previous one may have died while sending
    /// the current phase's actions, and the rollout would otherwise wait for devices that never
    /// got them until the install timeout halts it. Only what the devices have not done yet goes
    /// again (a device answers a version it has with "already current"). An undo cut off by the
    /// previous driver is not redone: a rollback sent twice would flip a device back.
    pub fn redo(&self, group: &[DeviceView]) -> Vec<Action> {
        if self.state != State::Running {
            return Vec::new();
        }
        let by_id: BTreeMap<&str, &DeviceView> = group.iter().map(|d| (d.id.as_str(), d)).collect();
        let version = Some(self.plan.version);
        let pending = |set: &BTreeSet<String>, done: &dyn Fn(&DeviceView) -> bool| -> Vec<String> {
            self.members
                .iter()
                .filter(|d| set.contains(*d) && by_id.get(d.as_str()).is_none_or(|v| !done(v)))
                .cloned()
                .collect()
        };
        match self.phase {
            Phase::Deploying if self.sent => {
                let shadow = self.plan.shadow_ms > 0;
                // A staged candidate whose shadow order was lost looks done: the whole deploy
                // (bundle, then the shadow order) goes again to every device not yet serving it.
                let devices = if shadow {
                    pending(&self.shadowing, &|v| v.version == version)
                } else {
                    pending(&self.moved, &|v| v.version == version)
                };
                if devices.is_empty() { Vec::new() } else { vec![Action::Deploy { devices, shadow }] }
            }
            Phase::Activating => {
                let devices = pending(&self.moved, &|v| v.version == version);
                if devices.is_empty() {
                    Vec::new()
                } else {
                    vec![Action::StopShadow { devices: devices.clone() }, Action::Activate { devices }]
                }
            }
            _ => Vec::new(),
        }
    }

    /// One step: `group` is every device of the plan's group as the server knows it now.
    pub fn tick(&mut self, now_ms: u64, group: &[DeviceView]) -> Vec<Action> {
        if self.state != State::Running {
            return Vec::new();
        }
        let elapsed = now_ms.saturating_sub(self.phase_since_ms);
        let by_id: BTreeMap<&str, &DeviceView> = group.iter().map(|d| (d.id.as_str(), d)).collect();
        let p = self.plan.clone();
        match self.phase {
            Phase::Deploying => {
                if !self.sent {
                    let ids: Vec<String> = group.iter().map(|d| d.id.clone()).collect();
                    if ids.is_empty() {
                        return self.halt(now_ms, format!("group {} has no devices", p.group));
                    }
                    self.members = p.members(self.stage, &ids).into_iter().collect();
                    let fresh: Vec<String> = self
                        .members
                        .iter()
                        .filter(|d| !self.moved.contains(*d) && !self.shadowing.contains(*d))
                        .filter(|d| by_id.get(d.as_str()).is_none_or(|v| v.version != Some(p.version)))
                        .cloned()
                        .collect();
                    self.sent = true;
                    self.phase_since_ms = now_ms;
                    let shadow = p.shadow_ms > 0;
                    self.note(
                        now_ms,
                        format!(
                            "stage {} ({} %): {} {} device(s): {}",
                            self.stage + 1,
                            p.stages[self.stage],
                            if shadow { "shadowing on" } else { "installing on" },
                            fresh.len(),
                            fresh.join(", ")
                        ),
                    );
                    if shadow {
                        self.shadowing.extend(fresh.iter().cloned());
                    } else {
                        self.moved.extend(fresh.iter().cloned());
                    }
                    return if fresh.is_empty() { Vec::new() } else { vec![Action::Deploy { devices: fresh, shadow }] };
                }
                let want_staged = p.shadow_ms > 0;
                self.wait_for_devices(now_ms, elapsed, &by_id, |v| {
                    if want_staged { v.staged || v.version == Some(p.version) } else { v.version == Some(p.version) }
                })
                .unwrap_or_else(|| {
                    let next = if want_staged { Phase::Shadowing } else { Phase::Soaking };
                    self.note(
                        now_ms,
                        format!(
                            "stage {}: every device {}",
                            self.stage + 1,
                            if want_staged { "holds the candidate; shadowing" } else { "serves it; soaking" }
                        ),
                    );
                    self.enter(now_ms, next, group);
                    Vec::new()
                })
            }
            Phase::Shadowing => {
                if elapsed < p.shadow_ms {
                    return Vec::new();
                }
                let fresh: Vec<String> = self.members.iter().filter(|d| !self.moved.contains(*d)).cloned().collect();
                let window = self.window(&fresh, &by_id);
                let enough = window.shadow_judged >= p.min_requests * fresh.len() as u64;
                if !enough && elapsed < 2 * p.shadow_ms {
                    return Vec::new();
                }
                if let Some(min) = p.gates.min_shadow_agreement {
                    if window.shadow_judged == 0 {
                        return self.halt(
                            now_ms,
                            format!("no shadow samples in {} s: cannot judge agreement", elapsed / 1000),
                        );
                    }
                    let agreement = window.shadow_agreed as f64 / window.shadow_judged as f64;
                    if agreement < min {
                        return self.halt(
                            now_ms,
                            format!(
                                "shadow agreement {:.1} % < {:.1} % over {} samples",
                                agreement * 100.0,
                                min * 100.0,
                                window.shadow_judged
                            ),
                        );
                    }
                    self.note(
                        now_ms,
                        format!(
                            "stage {}: shadow agreement {:.1} % over {} samples: passed",
                            self.stage + 1,
                            agreement * 100.0,
                            window.shadow_judged
                        ),
                    );
                }
                let devices = fresh;
                self.moved.extend(devices.iter().cloned());
                self.note(now_ms, format!("stage {}: activating on {}", self.stage + 1, devices.join(", ")));
                self.enter(now_ms, Phase::Activating, group);
                vec![Action::StopShadow { devices: devices.clone() }, Action::Activate { devices }]
            }
            Phase::Activating => {
                self.wait_for_devices(now_ms, elapsed, &by_id, |v| v.version == Some(p.version)).unwrap_or_else(|| {
                    self.note(now_ms, format!("stage {}: every device serves it; soaking", self.stage + 1));
                    self.enter(now_ms, Phase::Soaking, group);
                    Vec::new()
                })
            }
            Phase::Soaking => {
                if elapsed < p.soak_ms {
                    return Vec::new();
                }
                let members: Vec<String> = self.members.iter().cloned().collect();
                let window = self.window(&members, &by_id);
                let requests = window.answered + window.errors;
                if requests < p.min_requests * self.members.len() as u64 && elapsed < 2 * p.soak_ms {
                    return Vec::new();
                }
                if let Some(reason) = self.judge_soak(&window, group) {
                    return self.halt(now_ms, reason);
                }
                let rate = if requests == 0 { 0.0 } else { window.errors as f64 / requests as f64 };
                self.note(
                    now_ms,
                    format!(
                        "stage {}: gates held ({requests} requests, error rate {:.2} %)",
                        self.stage + 1,
                        rate * 100.0
                    ),
                );
                if self.stage + 1 == p.stages.len() {
                    self.state = State::Completed;
                    self.note(now_ms, format!("completed: {} devices serve v{}", self.members.len(), p.version));
                } else {
                    self.stage += 1;
                    self.sent = false;
                    self.phase = Phase::Deploying;
                    self.phase_since_ms = now_ms;
                    return self.tick(now_ms, group);
                }
                Vec::new()
            }
        }
    }

    /// `None` once every member satisfies `done`; else nothing to send, or the halt.
    fn wait_for_devices(
        &mut self,
        now_ms: u64,
        elapsed: u64,
        by_id: &BTreeMap<&str, &DeviceView>,
        done: impl Fn(&DeviceView) -> bool,
    ) -> Option<Vec<Action>> {
        let members: Vec<String> = self.members.iter().cloned().collect();
        for id in &members {
            if let Some(reason) = by_id.get(id.as_str()).and_then(|v| v.failed.clone()) {
                return Some(self.halt(now_ms, format!("{id} failed: {reason}")));
            }
        }
        let waiting: Vec<&String> =
            members.iter().filter(|id| !by_id.get(id.as_str()).is_some_and(|v| done(v))).collect();
        if waiting.is_empty() {
            return None;
        }
        if elapsed > self.plan.install_timeout_ms {
            let list: Vec<&str> = waiting.iter().map(|s| s.as_str()).collect();
            return Some(self.halt(now_ms, format!("not done within {} s: {}", elapsed / 1000, list.join(", "))));
        }
        Some(Vec::new())
    }

    /// The counters of `ids` since the window began.
    fn window(&self, ids: &[String], by_id: &BTreeMap<&str, &DeviceView>) -> Counters {
        let mut sum = Counters::default();
        for id in ids {
            let Some(v) = by_id.get(id.as_str()) else { continue };
            let d = self.base.get(id).copied().unwrap_or_default().since(Counters::of(v));
            sum.answered += d.answered;
            sum.errors += d.errors;
            sum.shadow_judged += d.shadow_judged;
            sum.shadow_agreed += d.shadow_agreed;
        }
        sum
    }

    /// The soak gates; `Some(reason)` when one fails.
    fn judge_soak(&self, window: &Counters, group: &[DeviceView]) -> Option<String> {
        let g = &self.plan.gates;
        let requests = window.answered + window.errors;
        if let Some(max) = g.max_error_rate {
            let rate = if requests == 0 { 0.0 } else { window.errors as f64 / requests as f64 };
            if rate > max {
                return Some(format!(
                    "error rate {:.2} % > {:.2} % over {requests} requests",
                    rate * 100.0,
                    max * 100.0
                ));
            }
        }
        let (stage, rest): (Vec<&DeviceView>, Vec<&DeviceView>) = group
            .iter()
            .filter(|d| self.members.contains(&d.id) || d.version != Some(self.plan.version))
            .partition(|d| self.members.contains(&d.id));
        if let Some(max) = g.max_p99_increase {
            let (a, b) = (
                median(stage.iter().filter_map(|d| d.p99_us.map(f64::from))),
                median(rest.iter().filter_map(|d| d.p99_us.map(f64::from))),
            );
            if let (Some(a), Some(b)) = (a, b)
                && b > 0.0
                && a / b - 1.0 > max
            {
                return Some(format!(
                    "p99 {a:.0} µs is {:.0} % above the rest of the group's {b:.0} µs (most {:.0} %)",
                    (a / b - 1.0) * 100.0,
                    max * 100.0
                ));
            }
        }
        if let Some(max) = g.max_drift_increase {
            let mean = |v: &[&DeviceView]| {
                let s: Vec<f64> = v.iter().filter_map(|d| d.drift).collect();
                (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64)
            };
            if let (Some(a), Some(b)) = (mean(&stage), mean(&rest))
                && a - b > max
            {
                return Some(format!("drift score {a:.3} exceeds the rest of the group's {b:.3} by more than {max}"));
            }
        }
        None
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}
