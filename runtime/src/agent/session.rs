//! The agent's MQTT protocol, pure: it is fed connection events, messages and the time, and
//! answers with what to publish, subscribe, store, install or apply. No socket, clock or file
//! is touched here; `shell.rs` does that, and the simulator and the tests drive the same code.

use std::collections::BTreeMap;

use drover_wire::Arch;
use drover_wire::command::SignedCommand;
use drover_wire::event::Feedback;
use drover_wire::manifest::AgentVersion;
use drover_wire::message::{Announce, Chunk, Digest, ModelRef, Op, Phase, Progress, Slot, Status, Stored, Want};
use drover_wire::message::{Label, MAX_LABELS};
use drover_wire::topic::{self, DeviceLeaf, GroupLeaf, Name, Parsed};
use serde::{Deserialize, Serialize};

use crate::link::codec::{self, PayloadFormat};
use crate::transfer::{ChunkSet, Patience, Receiver, Verdict};

/// Who this agent is on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The device id (its topic level).
    pub device: Name,
    /// The groups it belongs to.
    pub groups: Vec<Name>,
    /// The agent's version.
    pub agent: AgentVersion,
    /// The device's architecture.
    pub arch: Arch,
    /// The operator's labels.
    pub labels: heapless::Vec<Label, MAX_LABELS>,
}

/// What the device serves, from the store; the session reports it and checks announcements
/// against it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Serving {
    /// The active model.
    pub model: Option<ModelRef>,
    /// Its slot.
    pub slot: Option<Slot>,
    /// Anti-rollback floors: the highest version ever installed, per model name.
    pub highest: BTreeMap<String, u64>,
}

/// Limits and timings of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest bundle accepted, bytes.
    pub max_bundle: u64,
    /// Largest chunk accepted, bytes (must fit the MQTT packet limit).
    pub max_chunk: u32,
    /// When to ask again for missing chunks.
    pub patience: Patience,
    /// Abandon a transfer after this long connected without a new chunk, ms.
    pub give_up_ms: u64,
    /// Least interval between two download progress reports, ms.
    pub report_every_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_bundle: 1024 * 1024 * 1024,
            max_chunk: 64 * 1024,
            patience: Patience::default(),
            give_up_ms: 300_000,
            report_every_ms: 1_000,
        }
    }
}

/// Outcomes the device remembers across restarts, so a retained announcement delivered again on
/// every reconnect is answered with its outcome instead of being acted on twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// `issued_at` of the newest announcement acted on; older ones are stale.
    pub newest_issued: u64,
    /// The last final outcomes: (transfer, issued_at, report).
    pub recent: Vec<(Digest, u64, Progress)>,
}

const LEDGER_LEN: usize = 16;

/// How far past the device's clock an announcement's date may move the stale floor: an
/// operator's clock a little ahead is normal; a date years ahead is a forgery or a broken clock.
pub const MAX_AHEAD_S: u64 = 600;

/// The time, as the shell reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (for timeouts).
    pub ms: u64,
    /// Unix seconds (for reports).
    pub unix: u64,
}

/// What happened.
#[derive(Debug)]
pub enum Input<'a> {
    /// The broker accepted the connection.
    Connected,
    /// The connection is gone.
    Disconnected,
    /// A message arrived.
    Message {
        /// Its topic.
        topic: &'a str,
        /// Its payload.
        payload: &'a [u8],
    },
    /// Time passes (the shell ticks a few times a second).
    Tick,
    /// The shell could not store a chunk or start the transfer on disk.
    SpoolFailed(String),
    /// The shell ran [`Action::Install`].
    Installed {
        /// The outcome.
        phase: Phase,
        /// What the device serves now.
        serving: Serving,
    },
    /// The shell ran [`Action::ApplyCommand`].
    CommandApplied {
        /// The command's sequence.
        sequence: u64,
        /// The outcome.
        phase: Phase,
        /// What the device serves now.
        serving: Serving,
    },
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Subscribe (QoS 1) to these filters.
    Subscribe(Vec<String>),
    /// Unsubscribe from this filter.
    Unsubscribe(String),
    /// Publish (QoS 1).
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
        /// Retained.
        retain: bool,
    },
    /// Open a new transfer on disk, replacing any other.
    StartTransfer(Announce),
    /// Write a verified chunk to the transfer.
    StoreChunk {
        /// Chunk index.
        index: u32,
        /// Its SHA-256.
        sha256: Digest,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// Every chunk is in: check the bundle's digest, install it, answer with [`Input::Installed`].
    Install(Announce),
    /// Verify and apply a signed command, answer with [`Input::CommandApplied`].
    ApplyCommand(Box<SignedCommand>),
    /// Drop the transfer on disk.
    DiscardTransfer,
    /// Persist the ledger.
    SaveLedger(Ledger),
    /// Ground-truth labels for earlier predictions: hand them to the inference service.
    Feedback(Box<Feedback>),
    /// The fleet server stored these reports: the outbox forgets them.
    Stored(Box<Stored>),
}

/// The agent's protocol state.
#[derive(Debug)]
pub struct Session {
    me: Identity,
    format: PayloadFormat,
    limits: SessionLimits,
    serving: Serving,
    ledger: Ledger,
    receiver: Option<Receiver>,
    connected: bool,
    started_ms: u64,
    last_report_ms: u64,
}

impl Session {
    /// A session for `me`, serving `serving`, with the ledger and any transfer (`resume`: its
    /// announcement and the chunks on disk) found at start.
    pub fn new(
        me: Identity,
        format: PayloadFormat,
        limits: SessionLimits,
        serving: Serving,
        ledger: Ledger,
        resume: Option<(Announce, ChunkSet)>,
        now: Now,
    ) -> Session {
        let receiver = resume.map(|(a, have)| Receiver::new(a, have, limits.patience, now.ms));
        Session {
            me,
            format,
            limits,
            serving,
            ledger,
            receiver,
            connected: false,
            started_ms: now.ms,
            last_report_ms: 0,
        }
    }

    /// The Last Will the broker publishes if this device vanishes: presence only. It is set once
    /// per connection, so it must not claim a model or slot the device may leave before then.
    pub fn will(&self, now: Now) -> Status {
        Status { model: None, slot: None, uptime_s: 0, presence_only: true, ..self.status(false, now) }
    }

    /// Presence as it stands, with what the device serves (`online` false on a clean stop).
    pub fn status(&self, online: bool, now: Now) -> Status {
        Status {
            online,
            agent: self.me.agent,
            arch: self.me.arch,
            groups: self.me.groups.iter().filter_map(|g| g.as_str().try_into().ok()).collect(),
            model: self.serving.model.clone(),
            slot: self.serving.slot,
            uptime_s: now.ms.saturating_sub(self.started_ms) / 1000,
            at: now.unix,
            labels: self.me.labels.clone(),
            presence_only: false,
        }
    }

    /// The status topic (statuses and the Last Will).
    pub fn status_topic(&self) -> String {
        topic::device(&self.me.device, DeviceLeaf::Status).to_string()
    }

    /// The transfer in progress, if any.
    pub fn transfer(&self) -> Option<&Receiver> {
        self.receiver.as_ref()
    }

    /// What the device serves.
    pub fn serving(&self) -> &Serving {
        &self.serving
    }

    /// Feeds one input; returns the actions to carry out, in order.
    pub fn handle(&mut self, input: Input<'_>, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Connected => self.on_connected(now, &mut out),
            Input::Disconnected => self.connected = false,
            Input::Message { topic, payload } => self.on_message(topic, payload, now, &mut out),
            Input::Tick => self.on_tick(now, &mut out),
            Input::SpoolFailed(reason) => {
                if let Some(r) = self.receiver.take() {
                    let a = r.announce().clone();
                    self.unsubscribe_chunks(&a, &mut out);
                    out.push(Action::DiscardTransfer);
                    self.report(bundle_op(&a), Phase::failed(&format!("storing the bundle: {reason}")), now, &mut out);
                }
            }
            Input::Installed { phase, serving } => {
                self.serving = serving;
                if let Some(r) = self.receiver.take() {
                    let a = r.announce().clone();
                    self.unsubscribe_chunks(&a, &mut out);
                    out.push(Action::DiscardTransfer);
                    // Only a verified bundle that installed moves the floor (see `finish`).
                    let advance = phase.is_success();
                    self.finish(&a, phase, now, advance, &mut out);
                }
                self.publish_status(now, &mut out);
            }
            Input::CommandApplied { sequence, phase, serving } => {
                self.serving = serving;
                self.report(Op::Command { sequence }, phase, now, &mut out);
                self.publish_status(now, &mut out);
            }
        }
        out
    }

    fn topics(&self) -> Vec<String> {
        let d = &self.me.device;
        let mut t = vec![
            topic::device(d, DeviceLeaf::Bundle).to_string(),
            topic::device(d, DeviceLeaf::Cmd).to_string(),
            topic::device(d, DeviceLeaf::Feedback).to_string(),
            topic::device(d, DeviceLeaf::Chunk).to_string(),
            topic::device(d, DeviceLeaf::Stored).to_string(),
            topic::fleet(GroupLeaf::Bundle).to_string(),
        ];
        for g in &self.me.groups {
            t.push(topic::group(g, GroupLeaf::Bundle).to_string());
            t.push(topic::group(g, GroupLeaf::Cmd).to_string());
        }
        if let Some(r) = &self.receiver {
            t.push(topic::chunks(&r.announce().transfer).to_string());
        }
        t
    }

    fn on_connected(&mut self, now: Now, out: &mut Vec<Action>) {
        self.connected = true;
        // Always subscribe again: a broker that restarted has forgotten the persistent session.
        out.push(Action::Subscribe(self.topics()));
        self.publish_status(now, out);
        if let Some(r) = &mut self.receiver {
            r.touch(now.ms);
            if let Some(want) = r.request(now.ms) {
                let topic = topic::device(&self.me.device, DeviceLeaf::Want).to_string();
                out.push(Action::Publish { topic, payload: codec::encode(self.format, &want), retain: false });
            }
        }
    }

    fn publish_status(&self, now: Now, out: &mut Vec<Action>) {
        let payload = codec::encode(self.format, &self.status(true, now));
        out.push(Action::Publish { topic: self.status_topic(), payload, retain: true });
    }

    fn publish_want(&self, want: &Want, out: &mut Vec<Action>) {
        let topic = topic::device(&self.me.device, DeviceLeaf::Want).to_string();
        out.push(Action::Publish { topic, payload: codec::encode(self.format, want), retain: false });
    }

    fn report(&mut self, op: Op, phase: Phase, now: Now, out: &mut Vec<Action>) {
        let progress = Progress { op, phase, at: now.unix };
        let topic = topic::device(&self.me.device, DeviceLeaf::Progress).to_string();
        out.push(Action::Publish { topic, payload: codec::encode(self.format, &progress), retain: true });
        self.last_report_ms = now.ms;
    }

    /// Reports a final outcome for an announcement and remembers it. `advance`: the announcement
    /// led to a verified install, so older ones become stale. Announcements are not signed (the
    /// bundle is): one refused before verification must not move the floor, or a single forged
    /// announcement dated far in the future would make the device ignore every later push. Even
    /// a verified one moves it at most [`MAX_AHEAD_S`] past the device's clock, since anyone who
    /// may publish announcements can re-announce a genuine bundle with any date.
    fn finish(&mut self, a: &Announce, phase: Phase, now: Now, advance: bool, out: &mut Vec<Action>) {
        let progress = Progress { op: bundle_op(a), phase: phase.clone(), at: now.unix };
        self.ledger.recent.retain(|(t, issued, _)| !(*t == a.transfer && *issued == a.issued_at));
        self.ledger.recent.push((a.transfer, a.issued_at, progress));
        if self.ledger.recent.len() > LEDGER_LEN {
            self.ledger.recent.remove(0);
        }
        if advance {
            let bounded = a.issued_at.min(now.unix.saturating_add(MAX_AHEAD_S));
            self.ledger.newest_issued = self.ledger.newest_issued.max(bounded);
        }
        out.push(Action::SaveLedger(self.ledger.clone()));
        self.report(bundle_op(a), phase, now, out);
    }

    fn unsubscribe_chunks(&self, a: &Announce, out: &mut Vec<Action>) {
        out.push(Action::Unsubscribe(topic::chunks(&a.transfer).to_string()));
    }

    fn on_message(&mut self, topic_str: &str, payload: &[u8], now: Now, out: &mut Vec<Action>) {
        let Some(parsed) = topic::parse(topic_str) else {
            log::debug!("ignoring a message on {topic_str}");
            return;
        };
        match parsed {
            Parsed::Device(_, DeviceLeaf::Bundle)
            | Parsed::Group(_, GroupLeaf::Bundle)
            | Parsed::Fleet(GroupLeaf::Bundle) => match codec::decode::<Announce>(payload) {
                Ok(a) => self.on_announce(a, now, out),
                Err(codec::DecodeError::Empty) => {} // a cleared announcement
                Err(e) => log::warn!("{topic_str}: {e}"),
            },
            Parsed::Chunk(_) | Parsed::Device(_, DeviceLeaf::Chunk) => match codec::decode::<Chunk<'_>>(payload) {
                Ok(c) => self.on_chunk(&c, now, out),
                Err(e) => log::warn!("{topic_str}: {e}"),
            },
            Parsed::Device(_, DeviceLeaf::Cmd) | Parsed::Group(_, GroupLeaf::Cmd) | Parsed::Fleet(GroupLeaf::Cmd) => {
                match codec::decode::<SignedCommand>(payload) {
                    Ok(c) => out.push(Action::ApplyCommand(Box::new(c))),
                    Err(codec::DecodeError::Empty) => {}
                    Err(e) => log::warn!("{topic_str}: {e}"),
                }
            }
            Parsed::Device(_, DeviceLeaf::Feedback) => match codec::decode::<Feedback>(payload) {
                Ok(f) => out.push(Action::Feedback(Box::new(f))),
                Err(codec::DecodeError::Empty) => {}
                Err(e) => log::warn!("{topic_str}: {e}"),
            },
            Parsed::Device(_, DeviceLeaf::Stored) => match codec::decode::<Stored>(payload) {
                Ok(s) => out.push(Action::Stored(Box::new(s))),
                Err(codec::DecodeError::Empty) => {}
                Err(e) => log::warn!("{topic_str}: {e}"),
            },
            _ => log::debug!("ignoring a message on {topic_str}"),
        }
    }

    fn on_announce(&mut self, a: Announce, now: Now, out: &mut Vec<Action>) {
        if let Some((_, _, done)) =
            self.ledger.recent.iter().find(|(t, issued, _)| *t == a.transfer && *issued == a.issued_at)
        {
            // Delivered again (retained, reconnect): say again how it ended.
            let (op, phase) = (done.op.clone(), done.phase.clone());
            self.report(op, phase, now, out);
            return;
        }
        if a.issued_at < self.ledger.newest_issued {
            log::info!("ignoring a stale announcement of {} v{}", a.name, a.version);
            return;
        }
        if let Some(r) = self.receiver.as_mut().filter(|r| r.announce().transfer == a.transfer) {
            // The same bytes again: a newer order takes over the transfer under way (and is the
            // one the operator waits to hear about); a repeat of the current one changes nothing.
            if a.issued_at > r.announce().issued_at && r.reannounce(a.clone()) {
                let (have, total) = (r.have().count(), a.chunk_count() as u32);
                self.report(bundle_op(&a), Phase::Downloading { have, total }, now, out);
            }
            return;
        }
        if let Some(reason) = self.refuse(&a) {
            self.finish(&a, reason, now, false, out);
            return;
        }
        if let Some(old) = self.receiver.take() {
            log::info!(
                "{} v{} supersedes the transfer of {} v{}",
                a.name,
                a.version,
                old.announce().name,
                old.announce().version
            );
            self.unsubscribe_chunks(old.announce(), out);
            out.push(Action::DiscardTransfer);
        }
        let total = a.chunk_count() as u32;
        let mut r = Receiver::new(a.clone(), ChunkSet::new(total), self.limits.patience, now.ms);
        out.push(Action::StartTransfer(a.clone()));
        if self.connected {
            out.push(Action::Subscribe(vec![topic::chunks(&a.transfer).to_string()]));
        }
        let want = r.request(now.ms);
        self.receiver = Some(r);
        if let Some(w) = want {
            self.publish_want(&w, out);
        }
        self.report(bundle_op(&a), Phase::Downloading { have: 0, total }, now, out);
    }

    /// Why an announcement is refused before a byte is downloaded, if it is.
    fn refuse(&self, a: &Announce) -> Option<Phase> {
        if self.serving.model.as_ref().is_some_and(|m| m.name == a.name && m.version == a.version) {
            return Some(Phase::Current);
        }
        let floor = self.serving.highest.get(a.name.as_str()).copied().unwrap_or(0);
        let reason = if a.version <= floor {
            format!("{} v{} is not newer than v{floor}, the highest this device installed", a.name, a.version)
        } else if a.size == 0 || a.size > self.limits.max_bundle {
            format!("bundle size {} is outside 1..={} bytes", a.size, self.limits.max_bundle)
        } else if a.chunk_size < 256 || a.chunk_size > self.limits.max_chunk {
            format!(
                "chunk size {} is outside 256..={} bytes (this device's MQTT packet limit)",
                a.chunk_size, self.limits.max_chunk
            )
        } else if u32::try_from(a.chunk_count()).is_err() {
            "too many chunks".to_string()
        } else {
            return None;
        };
        Some(Phase::failed(&reason))
    }

    fn on_chunk(&mut self, c: &Chunk<'_>, now: Now, out: &mut Vec<Action>) {
        let Some(r) = &mut self.receiver else { return };
        match r.on_chunk(c, now.ms) {
            Verdict::New => {
                out.push(Action::StoreChunk { index: c.index, sha256: c.sha256, data: c.data.to_vec() });
                let (have, total) = (r.have().count(), r.have().total());
                let a = r.announce().clone();
                if r.is_complete() {
                    self.report(bundle_op(&a), Phase::Installing, now, out);
                    out.push(Action::Install(a));
                } else if now.ms.saturating_sub(self.last_report_ms) >= self.limits.report_every_ms {
                    self.report(bundle_op(&a), Phase::Downloading { have, total }, now, out);
                }
            }
            Verdict::Corrupt => {
                log::warn!("chunk {} of {} is corrupted: asking for it again", c.index, c.transfer.short());
                let want = r.want_one(c.index);
                self.publish_want(&want, out);
            }
            Verdict::Duplicate | Verdict::Foreign => {}
        }
    }

    fn on_tick(&mut self, now: Now, out: &mut Vec<Action>) {
        if !self.connected {
            return;
        }
        let Some(r) = &mut self.receiver else { return };
        if r.is_complete() {
            return;
        }
        if r.quiet_ms(now.ms) >= self.limits.give_up_ms {
            let a = r.announce().clone();
            self.receiver = None;
            self.unsubscribe_chunks(&a, out);
            out.push(Action::DiscardTransfer);
            let secs = self.limits.give_up_ms / 1000;
            // Not remembered in the ledger: the same announcement, delivered again, is retried.
            self.report(
                bundle_op(&a),
                Phase::failed(&format!("no chunk arrived for {secs} s: is the sender gone?")),
                now,
                out,
            );
            return;
        }
        if let Some(w) = r.poll(now.ms) {
            self.publish_want(&w, out);
        }
    }
}

fn bundle_op(a: &Announce) -> Op {
    Op::Bundle { transfer: a.transfer, name: a.name.clone(), version: a.version, issued_at: a.issued_at }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
