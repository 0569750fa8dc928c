//! The fleet as the server knows it: one [`Device`] per device id, updated from the records the
//! devices publish. Pure: a record and the time it arrived in, the rows to store out
//! ([`Change`]), so the same logic runs in the server, the simulator and the unit tests, and a
//! restarted server rebuilds it from its store.
//!
//! Delivery is at least once (QoS 1, the devices' outboxes resend until acknowledged): a report
//! already seen is recognised by its sequence number and period and changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use drover_wire::drift::LatencyHistogram;
use drover_wire::message::{Phase, Progress, Slot, Status};
use drover_wire::telemetry::{DriftWindow, Telemetry};
use serde::{Deserialize, Serialize};

use super::record::Record;

/// A device's last telemetry period, summarised for tables, charts and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Period {
    /// Unix ms when the period ended.
    pub end_ms: u64,
    /// Its length, ms.
    pub length_ms: u64,
    /// Model version served at its end.
    pub version: Option<u64>,
    /// Inferences answered.
    pub inferences: u64,
    /// Requests not answered.
    pub errors: u64,
    /// Latency quantiles, µs (absent without answers).
    pub p50_us: Option<u32>,
    /// 90th percentile.
    pub p90_us: Option<u32>,
    /// 99th percentile.
    pub p99_us: Option<u32>,
    /// CPU busy, percent of all cores.
    pub cpu_pct: Option<f32>,
    /// Memory in use, KiB.
    pub mem_used_kib: u64,
    /// Memory installed, KiB.
    pub mem_total_kib: u64,
    /// The agent's resident set, KiB.
    pub rss_kib: u64,
    /// Hottest thermal zone, °C.
    pub temp_c: Option<f32>,
    /// Data dir disk use, KiB.
    pub disk_used_kib: u64,
    /// Data dir disk size, KiB.
    pub disk_total_kib: u64,
    /// Reports waiting in the device's outbox.
    pub outbox_queued: u32,
    /// Top-1 agreement of a shadow candidate in the period.
    pub shadow_agreement: Option<f64>,
    /// Rolling accuracy from labels.
    pub accuracy: Option<f64>,
}

impl Period {
    /// The summary of one telemetry report.
    pub fn of(t: &Telemetry) -> Period {
        Period {
            end_ms: t.end_ms,
            length_ms: t.end_ms.saturating_sub(t.start_ms),
            version: t.model.as_ref().map(|m| m.version),
            inferences: t.inferences,
            errors: t.errors.total(),
            p50_us: t.latency.quantile(0.5),
            p90_us: t.latency.quantile(0.9),
            p99_us: t.latency.quantile(0.99),
            cpu_pct: t.system.cpu_pct,
            mem_used_kib: t.system.mem_used_kib,
            mem_total_kib: t.system.mem_total_kib,
            rss_kib: t.system.rss_kib,
            temp_c: t.system.temp_c,
            disk_used_kib: t.system.disk_used_kib,
            disk_total_kib: t.system.disk_total_kib,
            outbox_queued: t.outbox.queued,
            shadow_agreement: t.shadow.as_ref().and_then(|s| s.top1_agreement()),
            accuracy: t.quality.map(|q| q.accuracy),
        }
    }
}

/// Counts since the server first saw the device (Prometheus counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Inferences answered.
    pub inferences: u64,
    /// Errors: the input did not fit the model.
    pub input_errors: u64,
    /// Errors: the engine failed.
    pub engine_errors: u64,
    /// Errors: refused, the queue was full.
    pub busy_errors: u64,
    /// Errors: no model was served.
    pub no_model_errors: u64,
    /// Latencies measured (the count behind the latency summary).
    #[serde(default)]
    pub latency_count: u64,
    /// Their sum, µs.
    #[serde(default)]
    pub latency_sum_us: u64,
}

impl Totals {
    /// Every error.
    pub fn errors(&self) -> u64 {
        self.input_errors + self.engine_errors + self.busy_errors + self.no_model_errors
    }
}

/// A model version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: u64,
}

/// A shadow candidate's comparisons with the served model, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowTotals {
    /// The candidate.
    pub candidate: ModelVersion,
    /// Samples judged: classified by both, or failed by the candidate.
    pub judged: u64,
    /// Of those, the ones where both named the same class.
    pub agreed: u64,
}

/// Latency quantiles of one telemetry period, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Unix ms when the period ended.
    pub end_ms: u64,
    /// Median.
    pub p50: u32,
    /// 90th percentile.
    pub p90: u32,
    /// 99th percentile.
    pub p99: u32,
}

/// The device's latest judged drift window, summarised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Unix ms when the window closed.
    pub end_ms: u64,
    /// Model version it was compared for.
    pub version: u64,
    /// The drift score: the largest PSI over the window's features.
    pub score: f64,
    /// The features that drifted.
    pub drifted: Vec<String>,
    /// Samples in the window.
    pub samples: u32,
}

impl Drift {
    /// The summary of a judged window (`None` for a window with too few samples to judge).
    pub fn of(w: &DriftWindow) -> Option<Drift> {
        w.judged.then(|| Drift {
            end_ms: w.end_ms,
            version: w.model.version,
            score: w.features.iter().map(|f| f.score.psi).filter(|p| p.is_finite()).fold(0.0, f64::max),
            drifted: w.features.iter().filter(|f| f.score.drifted.is_some()).map(|f| f.name.to_string()).collect(),
            samples: w.samples,
        })
    }
}

/// Where the newest report of a kind stood, and which of the ones just before it arrived: what a
/// repeated delivery is recognised by. Reports of one device may arrive out of order (the fleet
/// server reads through several connections of a shared subscription, and the broker deals a
/// device's reports to whichever is next), so a report older than the newest is still new when
/// the window says it has not been seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Outbox sequence number.
    pub seq: u64,
    /// Unix ms of its end.
    pub end_ms: u64,
    /// Bit `i` set: report `seq - 1 - i` arrived (so the [`LATE_WINDOW`] reports before the
    /// newest are told apart, seen or not).
    #[serde(default)]
    pub seen: u64,
}

/// How far behind the newest report a late one is still recognised (and kept): far more than
/// the reordering of a shared subscription, whose members each hold a broker's in-flight window.
pub const LATE_WINDOW: u64 = 64;

/// `v << by`, zero once everything is shifted out.
fn shl(v: u64, by: u64) -> u64 {
    u32::try_from(by).ok().and_then(|by| v.checked_shl(by)).unwrap_or(0)
}

/// How a report stands against a [`Mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Later than every report so far (or the first of a device whose data dir was reset, which
    /// numbers its reports from 1 again in a later period): it says what the device is now.
    Newest,
    /// Older than the newest, not seen before: it counts, but says nothing about now.
    Late,
    /// Seen before (or too old to tell): it changes nothing.
    Repeat,
}

impl Mark {
    /// How a report numbered `seq` and ending at `end_ms` stands.
    pub fn arrival(&self, seq: u64, end_ms: u64) -> Arrival {
        if seq > self.seq || end_ms > self.end_ms {
            return Arrival::Newest;
        }
        let behind = self.seq - seq;
        if behind == 0 || behind > LATE_WINDOW || self.seen & (1 << (behind - 1)) != 0 {
            Arrival::Repeat
        } else {
            Arrival::Late
        }
    }

    /// Records a report [`Mark::arrival`] admitted.
    pub fn record(&mut self, seq: u64, end_ms: u64, arrival: Arrival) {
        match arrival {
            Arrival::Newest if seq > self.seq => {
                let ahead = seq - self.seq;
                // The previous newest moves into the window, `ahead` places back.
                let previous = if self.seq == 0 { 0 } else { shl(1, ahead - 1) };
                self.seen = shl(self.seen, ahead) | previous;
                (self.seq, self.end_ms) = (seq, end_ms);
            }
            // Numbered afresh: what came before says nothing about the new numbers.
            Arrival::Newest => *self = Mark { seq, end_ms, seen: 0 },
            Arrival::Late => self.seen |= 1 << (self.seq - seq - 1),
            Arrival::Repeat => {}
        }
    }
}

/// One device, as the fleet server knows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Device id.
    pub id: String,
    /// Unix ms of its first message here.
    pub first_seen_ms: u64,
    /// Unix ms of its latest message.
    pub last_seen_ms: u64,
    /// Connected, by its presence (retained status, Last Will).
    pub online: bool,
    /// Agent version.
    pub agent: Option<String>,
    /// Architecture.
    pub arch: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// The operator's labels from the agent's config.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Model served.
    pub model: Option<String>,
    /// Its version.
    pub version: Option<u64>,
    /// The slot it is served from.
    pub slot: Option<String>,
    /// Agent uptime at its latest status, s.
    pub uptime_s: u64,
    /// The latest operation, in words (`iris v3: installed`).
    pub operation: Option<String>,
    /// The latest telemetry period.
    pub last: Option<Period>,
    /// The latest period that answered anything: what its latency was (an idle period has
    /// none, and the table should not go blank between bursts).
    #[serde(default)]
    pub latency_us: Option<Quantiles>,
    /// Counts since first seen.
    pub totals: Totals,
    /// The latest judged drift window.
    pub drift: Option<Drift>,
    /// Newest telemetry report.
    pub telemetry_mark: Mark,
    /// Newest drift window.
    pub drift_mark: Mark,
    /// Newest event.
    pub event_mark: Mark,
    /// The version it holds as its staged candidate (a stage push it reported staged).
    #[serde(default)]
    pub candidate: Option<ModelVersion>,
    /// The latest bundle operation that failed on it, and why (a rollout halts on it).
    #[serde(default)]
    pub failed: Option<(ModelVersion, String)>,
    /// Shadow comparisons of its current candidate, summed over its telemetry.
    #[serde(default)]
    pub shadow: Option<ShadowTotals>,
    /// The latest judged drift window whole, for the fleet-wide merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<super::drift::DeviceWindow>,
    /// The latest period's latency histogram, for fleet-wide quantiles (not stored: rebuilt by
    /// the next report).
    #[serde(skip)]
    pub latency: LatencyHistogram,
}

/// A device event the operator sees (its own alerts, and what the server saw happen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEvent {
    /// Device id.
    pub device: String,
    /// Unix ms.
    pub at_ms: u64,
    /// `online`, `offline`, `operation`, or the device event's kind (`drift`, `retrain`, …).
    pub kind: String,
    /// In words.
    pub text: String,
}

/// What a record changed, for the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The device's row.
    Device(Box<Device>),
    /// A point of its telemetry series.
    Point(String, Period),
    /// A judged drift window.
    Drift(String, Drift),
    /// An event.
    Event(FleetEvent),
}

/// The fleet.
#[derive(Debug, Default)]
pub struct Registry {
    devices: BTreeMap<String, Device>,
    /// Devices changed since their rows were last handed out ([`Registry::touched`]).
    dirty: BTreeSet<String>,
}

impl Registry {
    /// A registry holding what the store kept.
    pub fn from_devices(devices: impl IntoIterator<Item = Device>) -> Registry {
        Registry { devices: devices.into_iter().map(|d| (d.id.clone(), d)).collect(), dirty: BTreeSet::new() }
    }

    /// Takes devices as a shared store holds them (what this server and others wrote), in place
    /// of what it knew. The latest period's latency histogram, which is never stored, stays
    /// while it belongs to the same report.
    pub fn refresh(&mut self, devices: impl IntoIterator<Item = Device>) {
        for mut d in devices {
            if let Some(known) = self.devices.get_mut(&d.id) {
                if d.latency.count() == 0 && known.telemetry_mark.seq == d.telemetry_mark.seq {
                    d.latency = std::mem::take(&mut known.latency);
                }
                *known = d;
            } else {
                self.devices.insert(d.id.clone(), d);
            }
        }
    }

    /// The devices, by id.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    /// One device.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    /// Applies a record from `device` that arrived at `now_ms`; returns what to store besides
    /// the device's own row (which [`Registry::touched`] hands out once per batch), or `None` for
    /// a repeated delivery, which changes nothing.
    pub fn apply(&mut self, now_ms: u64, device: &str, record: &Record) -> Option<Vec<Change>> {
        let d = self.devices.entry(device.to_string()).or_insert_with(|| Device {
            id: device.to_string(),
            first_seen_ms: now_ms,
            ..Device::default()
        });
        let mut out = Vec::new();
        let mut event = |kind: &str, text: String| {
            out.push(Change::Event(FleetEvent { device: device.to_string(), at_ms: now_ms, kind: kind.into(), text }))
        };
        match record {
            Record::Status(s) => {
                if s.online != d.online || d.last_seen_ms == 0 {
                    let (kind, text) = if s.online { ("online", "came online") } else { ("offline", "went offline") };
                    event(kind, text.to_string());
                }
                apply_status(d, s);
            }
            Record::Progress(p) => {
                let text = describe_progress(p);
                // Download progress moves every second: the table shows it, the event log
                // keeps the steps.
                let step = !matches!(p.phase, Phase::Downloading { .. });
                if step && d.operation.as_deref() != Some(text.as_str()) {
                    event("operation", text.clone());
                }
                d.operation = Some(text);
                if let drover_wire::message::Op::Bundle { name, version, .. } = &p.op {
                    let mv = ModelVersion { name: name.to_string(), version: *version };
                    match &p.phase {
                        Phase::Staged => d.candidate = Some(mv),
                        Phase::Failed { reason } => d.failed = Some((mv, reason.to_string())),
                        _ => {}
                    }
                }
            }
            Record::Telemetry(t) => {
                let arrival = d.telemetry_mark.arrival(t.seq, t.end_ms);
                if arrival == Arrival::Repeat {
                    return None;
                }
                d.telemetry_mark.record(t.seq, t.end_ms, arrival);
                let period = Period::of(t);
                d.totals.inferences += t.inferences;
                d.totals.input_errors += u64::from(t.errors.input);
                d.totals.engine_errors += u64::from(t.errors.engine);
                d.totals.busy_errors += u64::from(t.errors.busy);
                d.totals.no_model_errors += u64::from(t.errors.no_model);
                d.totals.latency_count += t.latency.count();
                d.totals.latency_sum_us += t.latency.sum_us();
                if let Some(s) = &t.shadow {
                    let candidate = ModelVersion { name: s.candidate.name.to_string(), version: s.candidate.version };
                    let totals = d
                        .shadow
                        .get_or_insert_with(|| ShadowTotals { candidate: candidate.clone(), ..Default::default() });
                    if totals.candidate == candidate {
                        totals.judged += s.classified + s.failed;
                        totals.agreed += s.agreed;
                    } else if arrival == Arrival::Newest {
                        // A new candidate counts afresh (a late report of the old one is dropped).
                        *totals = ShadowTotals { candidate, judged: s.classified + s.failed, agreed: s.agreed };
                    }
                }
                out.push(Change::Point(device.to_string(), period.clone()));
                if arrival == Arrival::Late {
                    // It counts (above, and as a stored period), but what the device is now
                    // comes from the newest report.
                    return Some(self.touch(device, now_ms, out));
                }
                if let Some(m) = &t.model {
                    d.model = Some(m.name.to_string());
                    d.version = Some(m.version);
                }
                if let Some(slot) = t.slot {
                    d.slot = Some(slot_name(slot).into());
                }
                if let (Some(p50), Some(p90), Some(p99)) = (period.p50_us, period.p90_us, period.p99_us) {
                    d.latency_us = Some(Quantiles { end_ms: t.end_ms, p50, p90, p99 });
                }
                d.latency = t.latency.clone();
                d.last = Some(period);
            }
            Record::Drift(w) => {
                let arrival = d.drift_mark.arrival(w.seq, w.end_ms);
                if arrival == Arrival::Repeat {
                    return None;
                }
                d.drift_mark.record(w.seq, w.end_ms, arrival);
                if let Some(drift) = Drift::of(w) {
                    // A late window goes into the history; the device's drift now is its newest.
                    if arrival == Arrival::Newest {
                        d.window = Some(super::drift::DeviceWindow {
                            model: w.model.name.to_string(),
                            version: w.model.version,
                            features: w.features.iter().map(|f| (f.name.to_string(), f.sketch.clone())).collect(),
                        });
                        d.drift = Some(drift.clone());
                    }
                    out.push(Change::Drift(device.to_string(), drift));
                }
            }
            Record::Event(e) => {
                let arrival = d.event_mark.arrival(e.seq, e.at_ms);
                if arrival == Arrival::Repeat {
                    return None;
                }
                d.event_mark.record(e.seq, e.at_ms, arrival);
                out.push(Change::Event(FleetEvent {
                    device: device.to_string(),
                    at_ms: e.at_ms,
                    kind: e.kind.name().into(),
                    text: crate::cmd::alerts::describe(device, e),
                }));
            }
        }
        Some(self.touch(device, now_ms, out))
    }

    /// Marks `device`'s row for the next batch, heard from at `now_ms`; passes `out` through.
    fn touch(&mut self, device: &str, now_ms: u64, out: Vec<Change>) -> Vec<Change> {
        if let Some(d) = self.devices.get_mut(device) {
            d.last_seen_ms = d.last_seen_ms.max(now_ms);
        }
        if !self.dirty.contains(device) {
            self.dirty.insert(device.to_string());
        }
        out
    }

    /// The rows of the devices changed since the last call, each once and as it stands now: a
    /// batch writes a device's row once, however many of its messages it holds (a row carries
    /// the device's whole state, the costliest write of a message).
    pub fn touched(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|id| self.devices.get(&id).map(|d| Change::Device(Box::new(d.clone()))))
            .collect()
    }
}

fn apply_status(d: &mut Device, s: &Status) {
    d.online = s.online;
    if s.presence_only {
        // A Last Will: the device is gone; what it serves is what it last said itself.
        return;
    }
    d.agent = Some(s.agent.to_string());
    d.arch = Some(s.arch.to_string());
    d.groups = s.groups.iter().map(|g| g.to_string()).collect();
    d.labels = s.labels.iter().map(|l| (l.key.to_string(), l.value.to_string())).collect();
    d.uptime_s = s.uptime_s;
    d.model = s.model.as_ref().map(|m| m.name.to_string());
    d.version = s.model.as_ref().map(|m| m.version);
    d.slot = s.slot.map(|s| slot_name(s).into());
}

fn slot_name(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "a",
        Slot::B => "b",
    }
}

/// A device's latest operation in words.
fn describe_progress(p: &Progress) -> String {
    use drover_wire::message::Op;
    let op = match &p.op {
        Op::Bundle { name, version, .. } => format!("{name} v{version}"),
        Op::Command { sequence, .. } => format!("command #{sequence}"),
    };
    let phase = match &p.phase {
        Phase::Downloading { have, total } => format!("downloading {have}/{total}"),
        Phase::Installing => "installing".into(),
        Phase::Installed { slot } => format!("installed in slot {}", slot_name(*slot)),
        Phase::Current => "already current".into(),
        Phase::RolledBack { slot } => format!("rolled back to slot {}", slot_name(*slot)),
        Phase::Staged => "staged as the candidate".into(),
        Phase::Shadowing => "shadowing".into(),
        Phase::ShadowStopped => "shadow stopped".into(),
        Phase::Splitting => "splitting traffic".into(),
        Phase::SplitStopped => "split ended".into(),
        Phase::Failed { reason } => format!("failed: {reason}"),
    };
    format!("{op}: {phase}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use drover_wire::Arch;
    use drover_wire::manifest::AgentVersion;
    use drover_wire::message::ModelRef;
    use drover_wire::telemetry::{Errors, Outbox, System};

    fn model(version: u64) -> ModelRef {
        ModelRef { name: "iris".try_into().expect("name"), version }
    }

    pub(crate) fn status(online: bool, version: Option<u64>) -> Record {
        Record::Status(Box::new(Status {
            online,
            agent: AgentVersion { major: 0, minor: 1, patch: 0 },
            arch: Arch::Aarch64,
            groups: heapless::Vec::from_slice(&["lab".try_into().expect("group")]).expect("one group"),
            model: version.map(model),
            slot: version.map(|_| Slot::A),
            uptime_s: 3,
            at: 0,
            labels: heapless::Vec::from_slice(&[drover_wire::message::Label {
                key: "site".try_into().expect("key"),
                value: "berlin \"north\"".try_into().expect("value"),
            }])
            .expect("one label"),
            presence_only: false,
        }))
    }

    pub(crate) fn telemetry(seq: u64, end_ms: u64, inferences: u64) -> Record {
        let mut latency = LatencyHistogram::default();
        for us in 1..=inferences {
            latency.record(us as u32 * 10);
        }
        Record::Telemetry(Box::new(Telemetry {
            seq,
            start_ms: end_ms - 1000,
            end_ms,
            model: Some(model(3)),
            slot: Some(Slot::B),
            inferences,
            errors: Errors { input: 1, engine: 0, busy: 2, no_model: 0 },
            latency,
            queue_max: 1,
            queue_capacity: 64,
            system: System { cpu_pct: Some(12.5), mem_used_kib: 1000, mem_total_kib: 4000, ..System::default() },
            uptime_s: 10,
            outbox: Outbox::default(),
            quality: None,
            shadow: None,
            split: None,
            inputs: heapless::Vec::new(),
        }))
    }

    #[test]
    fn presence_makes_devices_and_online_offline_events() {
        let mut r = Registry::default();
        let c = r.apply(1000, "pi-1", &status(true, Some(2))).expect("new");
        assert!(matches!(&c[0], Change::Event(e) if e.kind == "online"));
        assert!(matches!(&r.touched()[..], [Change::Device(d)] if d.id == "pi-1" && d.online));
        assert!(r.touched().is_empty(), "handed out once");
        assert_eq!(r.device("pi-1").expect("known").labels["site"], "berlin \"north\"");
        let d = r.device("pi-1").expect("known");
        assert_eq!(
            (d.online, d.version, d.groups.as_slice(), d.first_seen_ms),
            (true, Some(2), &["lab".to_string()][..], 1000)
        );
        assert_eq!(r.apply(2000, "pi-1", &status(true, Some(2))), Some(vec![]), "no new event: still online");
        let c = r.apply(3000, "pi-1", &status(false, Some(2))).expect("new");
        assert!(matches!(&c[0], Change::Event(e) if e.kind == "offline"));
        assert!(
            matches!(&r.touched()[..], [Change::Device(d)] if !d.online && d.last_seen_ms == 3000),
            "two messages, one row: the newest state"
        );
        let d = r.device("pi-1").expect("known");
        assert_eq!((d.online, d.version, d.last_seen_ms, d.first_seen_ms), (false, Some(2), 3000, 1000));
    }

    /// A device that installed v2 after it connected (its Will written then, with v1) and then
    /// crashed: the Will says it is offline, and the fleet still shows v2 in slot b.
    #[test]
    fn a_last_will_changes_presence_and_keeps_the_model_the_device_last_reported() {
        let mut r = Registry::default();
        r.apply(1000, "pi-1", &status(true, Some(2)));
        let Record::Status(mut will) = status(false, None) else { unreachable!() };
        will.presence_only = true;
        will.uptime_s = 0;
        let c = r.apply(2000, "pi-1", &Record::Status(will)).expect("applied");
        assert!(matches!(&c[0], Change::Event(e) if e.kind == "offline"));
        let d = r.device("pi-1").expect("known");
        assert_eq!(
            (d.online, d.model.as_deref(), d.version, d.slot.as_deref(), d.uptime_s),
            (false, Some("iris"), Some(2), Some("a"), 3)
        );
    }

    #[test]
    fn telemetry_adds_up_and_a_repeated_delivery_changes_nothing() {
        let mut r = Registry::default();
        let c = r.apply(10, "pi-1", &telemetry(1, 5_000, 100)).expect("new");
        assert!(matches!(&c[0], Change::Point(id, p) if id == "pi-1" && p.inferences == 100 && p.errors == 3));
        r.touched();
        assert_eq!(r.apply(11, "pi-1", &telemetry(1, 5_000, 100)), None, "the same report again");
        assert!(r.touched().is_empty(), "a repeat touches no row");
        r.apply(12, "pi-1", &telemetry(2, 6_000, 50));
        assert_eq!(r.apply(13, "pi-1", &telemetry(1, 5_000, 100)), None, "an old report resent");
        let d = r.device("pi-1").expect("known");
        assert_eq!((d.totals.inferences, d.totals.errors(), d.totals.busy_errors), (150, 6, 4));
        assert_eq!((d.version, d.slot.as_deref()), (Some(3), Some("b")), "telemetry says what is served");
        let last = d.last.as_ref().expect("a period");
        assert_eq!((last.end_ms, last.inferences, last.cpu_pct), (6_000, 50, Some(12.5)));
        // 50 latencies 10..500 µs: the median is 250 µs, within the histogram's bucket error.
        let p50 = last.p50_us.expect("a median");
        assert!(p50.abs_diff(250) <= 250 / 20, "p50 {p50}");
        // An idle period has no latency; the device's latest latency stays that of the last
        // busy one.
        r.apply(13, "pi-1", &telemetry(3, 7_000, 0));
        let d = r.device("pi-1").expect("known");
        assert_eq!(
            (d.last.as_ref().and_then(|p| p.p50_us), d.latency_us.map(|l| (l.end_ms, l.p50))),
            (None, Some((6_000, p50)))
        );
        // A device whose data dir was reset counts from 1 again, in a later period.
        assert_eq!(r.apply(14, "pi-1", &telemetry(1, 9_000, 7)).map(|c| c.len()), Some(1));
        assert_eq!(r.device("pi-1").expect("known").totals.inferences, 157);
    }

    #[test]
    fn reports_out_of_order_count_once_and_the_newest_says_what_the_device_is() {
        let mut r = Registry::default();
        // Report 3 comes first: another connection of the shared subscription was quicker.
        r.apply(1, "pi-1", &telemetry(3, 3_000, 30)).expect("new");
        let late = r.apply(2, "pi-1", &telemetry(1, 1_000, 10)).expect("late, still counted");
        assert!(matches!(&late[..], [Change::Point(_, p)] if p.end_ms == 1_000), "stored as its own period");
        assert_eq!(r.apply(3, "pi-1", &telemetry(1, 1_000, 10)), None, "a late one again");
        r.apply(4, "pi-1", &telemetry(2, 2_000, 20)).expect("late");
        assert_eq!(r.apply(5, "pi-1", &telemetry(3, 3_000, 30)), None, "the newest again");
        let d = r.device("pi-1").expect("known");
        assert_eq!(d.totals.inferences, 60, "each report once");
        assert_eq!(d.last.as_ref().map(|p| p.end_ms), Some(3_000), "the newest period is the device's last");
        assert_eq!((d.last_seen_ms, d.telemetry_mark.seq), (4, 3));
    }

    #[test]
    fn the_mark_remembers_a_window_of_reports_before_the_newest() {
        let mut m = Mark::default();
        for seq in [5u64, 1, 3, 70, 6, 69] {
            let a = m.arrival(seq, seq * 10);
            assert_ne!(a, Arrival::Repeat, "{seq} is new");
            m.record(seq, seq * 10, a);
        }
        for seq in [5u64, 1, 3, 70, 6, 69] {
            assert_eq!(m.arrival(seq, seq * 10), Arrival::Repeat, "{seq} again");
        }
        assert_eq!(m.arrival(2, 20), Arrival::Repeat, "beyond the window: too old to tell, so dropped");
        assert_eq!((m.arrival(7, 70), m.arrival(71, 710)), (Arrival::Late, Arrival::Newest));
        // A jump far ahead leaves nothing of the old window.
        m.record(1_000, 10_000, Arrival::Newest);
        assert_eq!((m.arrival(999, 9_990), m.arrival(70, 700)), (Arrival::Late, Arrival::Repeat));
        // A device numbering afresh in a later period.
        assert_eq!(m.arrival(1, 20_000), Arrival::Newest);
        m.record(1, 20_000, Arrival::Newest);
        assert_eq!(m, Mark { seq: 1, end_ms: 20_000, seen: 0 });
        // Marks stored before the window existed read back with an empty one.
        let old: Mark = serde_json::from_str(r#"{"seq":4,"end_ms":9}"#).expect("reads");
        assert_eq!(old, Mark { seq: 4, end_ms: 9, seen: 0 });
    }

    #[test]
    fn shadow_comparisons_add_up_per_candidate() {
        let shadowed = |seq: u64, version: u64, classified: u64, agreed: u64| {
            let Record::Telemetry(mut t) = telemetry(seq, seq * 1000, 10) else { unreachable!() };
            t.shadow = Some(drover_wire::telemetry::Shadow {
                candidate: model(version),
                sample_ppm: 1_000_000,
                compared: classified + 1,
                skipped: 0,
                failed: 1,
                classified,
                agreed,
                abs_diff_sum: 0.0,
                abs_diff_count: 0,
                max_abs_diff: 0.0,
                candidate_us: 0,
                served_us: 0,
                served_samples: 0,
            });
            Record::Telemetry(t)
        };
        let mut r = Registry::default();
        r.apply(1, "pi-1", &shadowed(1, 4, 9, 8));
        r.apply(2, "pi-1", &shadowed(2, 4, 9, 9));
        let s = r.device("pi-1").and_then(|d| d.shadow.clone()).expect("shadow totals");
        assert_eq!(
            (s.candidate.version, s.judged, s.agreed),
            (4, 20, 17),
            "a candidate failure counts as disagreement"
        );
        r.apply(3, "pi-1", &shadowed(3, 5, 9, 1));
        let s = r.device("pi-1").and_then(|d| d.shadow.clone()).expect("shadow totals");
        assert_eq!((s.candidate.version, s.judged, s.agreed), (5, 10, 1), "a new candidate counts afresh");
    }

    #[test]
    fn progress_becomes_an_operation_event_once() {
        use drover_wire::message::{Digest, Op};
        let p = Progress {
            op: Op::Bundle { transfer: Digest([1; 32]), name: "iris".try_into().expect("n"), version: 4, issued_at: 1 },
            phase: Phase::Failed { reason: "bad signature".try_into().expect("reason") },
            at: 1,
        };
        let mut r = Registry::default();
        let c = r.apply(5, "pi-1", &Record::Progress(Box::new(p.clone()))).expect("new");
        assert!(matches!(&c[0], Change::Event(e) if e.text == "iris v4: failed: bad signature"), "{c:?}");
        assert_eq!(
            r.apply(6, "pi-1", &Record::Progress(Box::new(p.clone()))),
            Some(vec![]),
            "the retained copy again: no event"
        );
        let iris4 = ModelVersion { name: "iris".into(), version: 4 };
        assert_eq!(r.device("pi-1").expect("known").failed, Some((iris4.clone(), "bad signature".into())));
        let staged = Progress { phase: Phase::Staged, ..p };
        r.apply(7, "pi-1", &Record::Progress(Box::new(staged)));
        assert_eq!(r.device("pi-1").expect("known").candidate, Some(iris4));
    }
}
