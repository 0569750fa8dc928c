//! One operator operation over MQTT, pure: a bundle push (announce, serve the chunks devices
//! ask for, follow their progress) or a signed command (publish, follow the reports). The
//! shell (`run.rs`) owns the connection and the clock and feeds this.

use std::collections::{BTreeMap, BTreeSet};

use drover_runtime::link::codec::{self, PayloadFormat};
use drover_wire::command::SignedCommand;
use drover_wire::message::{Announce, Chunk, Digest, Op, Phase, Progress, Status, Want};
use drover_wire::topic::{self, DeviceLeaf, GroupLeaf, Name, Parsed};
use sha2::{Digest as _, Sha256};

use super::tracker::{End, Tracker};

/// What is being done.
#[derive(Debug, Clone)]
pub enum Work {
    /// Push a bundle.
    Bundle {
        /// Its announcement.
        announce: Announce,
    },
    /// Send a signed command.
    Command(Box<SignedCommand>),
}

/// What happened.
#[derive(Debug)]
pub enum Input<'a> {
    /// Connected (again).
    Connected,
    /// A message.
    Message {
        /// Topic.
        topic: &'a str,
        /// Payload.
        payload: &'a [u8],
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Subscribe (QoS 1).
    Subscribe(Vec<String>),
    /// Publish (QoS 1).
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
        /// Retained.
        retain: bool,
    },
    /// A device's view changed (redraw it).
    Changed(Name),
}

/// A push or a command in flight.
#[derive(Debug)]
pub struct Campaign {
    work: Work,
    tracker: Tracker,
    format: PayloadFormat,
    queue: BTreeSet<u32>,
    sent: u64,
    /// When each chunk was last published (ms), by index.
    sent_at: BTreeMap<u32, u64>,
    /// Devices that asked for chunks already.
    asked: BTreeSet<Name>,
    /// Chunks asked for by devices' first requests, and when they may go out (ms); they wait
    /// for the gathering too ([`Campaign::release_due`]).
    deferred: BTreeMap<u32, u64>,
    /// When the latest device sent its first request (ms).
    last_asker_ms: u64,
    /// Since when first requests have been gathering (ms), while any are deferred.
    gathering_since: Option<u64>,
}

/// A device's first request follows its subscription to the chunks by a moment: a chunk
/// published this recently may or may not have reached it, so it goes out again only this long
/// after it last did. Devices answering an announcement one after another then share each
/// re-send; without this, each had every chunk published anew to all of them, and the bytes on
/// the wire grew with the square of the fleet.
pub const FRESH_MS: u64 = 250;

/// A chunk asked for again (a stall, damage) goes out at most once this often: with a thousand
/// devices on a busy broker, a copy can take seconds to reach them all, and re-sending it for
/// every device that grew impatient meanwhile made the push hundreds of times the bundle.
pub const RESEND_MS: u64 = 1_000;

/// Devices answer an announcement over a stretch of time (a thousand of them over seconds):
/// chunks for first requests go out once no new device has asked for this long, or once every
/// device known to be online has asked, so that one publication serves them all.
pub const QUIET_MS: u64 = 100;

/// The longest first requests wait for the gathering: a fleet that keeps trickling in is
/// served in rounds this far apart.
pub const MAX_GATHER_MS: u64 = 1_000;

impl Campaign {
    /// Starts `work` for the tracker's audience; payloads in `format`.
    pub fn new(work: Work, tracker: Tracker, format: PayloadFormat) -> Campaign {
        Campaign {
            work,
            tracker,
            format,
            queue: BTreeSet::new(),
            sent: 0,
            sent_at: BTreeMap::new(),
            asked: BTreeSet::new(),
            deferred: BTreeMap::new(),
            last_asker_ms: 0,
            gathering_since: None,
        }
    }

    /// What is being done.
    pub fn work(&self) -> &Work {
        &self.work
    }

    /// The devices and where they stand.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Chunks sent so far (re-sends included).
    pub fn chunks_sent(&self) -> u64 {
        self.sent
    }

    /// Feeds one input.
    pub fn handle(&mut self, input: Input<'_>, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Connected => {
                self.tracker.on_connected(now_ms);
                let mut subs = vec![
                    topic::every_device(DeviceLeaf::Status).to_string(),
                    topic::every_device(DeviceLeaf::Progress).to_string(),
                ];
                if matches!(self.work, Work::Bundle { .. }) {
                    subs.push(topic::every_device(DeviceLeaf::Want).to_string());
                }
                out.push(Action::Subscribe(subs));
                // Published again on every connect: a restarted broker has lost the retained
                // announcement; devices ignore a command they already applied.
                let (leaf, payload, retain) = match &self.work {
                    Work::Bundle { announce } => (GroupLeaf::Bundle, codec::encode(self.format, announce), true),
                    Work::Command(c) => (GroupLeaf::Cmd, codec::encode(self.format, c), false),
                };
                for t in self.tracker.audience().topics(leaf) {
                    out.push(Action::Publish { topic: t, payload: payload.clone(), retain });
                }
            }
            Input::Message { topic, payload } => self.on_message(topic, payload, now_ms, &mut out),
        }
        out
    }

    fn on_message(&mut self, topic_str: &str, payload: &[u8], now_ms: u64, out: &mut Vec<Action>) {
        let Some(Parsed::Device(device, leaf)) = topic::parse(topic_str) else { return };
        match leaf {
            DeviceLeaf::Status => match codec::decode::<Status>(payload) {
                Ok(s) => {
                    if self.tracker.on_status(device.clone(), &s) {
                        out.push(Action::Changed(device));
                    }
                }
                Err(codec::DecodeError::Empty) => {}
                Err(e) => log::warn!("{topic_str}: {e}"),
            },
            DeviceLeaf::Progress => match codec::decode::<Progress>(payload) {
                Ok(p) => {
                    let work = &self.work;
                    let ours = |op: &Op| Campaign::matches(work, op);
                    if self.tracker.on_progress(&device, &p.op, p.phase, ours, now_ms) {
                        out.push(Action::Changed(device));
                    }
                }
                Err(codec::DecodeError::Empty) => {}
                Err(e) => log::warn!("{topic_str}: {e}"),
            },
            DeviceLeaf::Want => match (codec::decode::<Want>(payload), &self.work) {
                (Ok(w), Work::Bundle { announce }) if w.transfer == announce.transfer => {
                    let count = u32::try_from(announce.chunk_count()).unwrap_or(u32::MAX);
                    let first = self.asked.insert(device);
                    if first {
                        self.last_asker_ms = now_ms;
                    }
                    for i in w.ranges.iter().flat_map(|r| r.start.min(count)..r.end.min(count)) {
                        if self.queue.contains(&i) {
                            continue;
                        }
                        if !first {
                            // A stall or a damaged chunk. Devices that fell behind ask for the
                            // same chunks again and again while the broker still delivers the
                            // last copy: one re-send per RESEND_MS serves them all.
                            match self.sent_at.get(&i) {
                                Some(&t) if now_ms.saturating_sub(t) < RESEND_MS => {
                                    self.deferred.entry(i).or_insert(t + RESEND_MS);
                                    self.gathering_since.get_or_insert(now_ms);
                                }
                                _ => {
                                    self.deferred.remove(&i);
                                    self.queue.insert(i);
                                }
                            }
                        } else {
                            let due = self.sent_at.get(&i).map_or(now_ms, |t| t + FRESH_MS);
                            self.deferred.entry(i).or_insert(due);
                            self.gathering_since.get_or_insert(now_ms);
                        }
                    }
                    self.release_due(now_ms);
                }
                (Ok(_), _) => {}
                (Err(e), _) => log::warn!("{topic_str}: {e}"),
            },
            _ => {}
        }
    }

    /// Whether a report is about this operation: the same transfer and announcement (not an
    /// earlier push of the same bundle), or the same command.
    fn matches(work: &Work, op: &Op) -> bool {
        match (work, op) {
            (Work::Bundle { announce: a }, Op::Bundle { transfer, issued_at, .. }) => {
                *transfer == a.transfer && *issued_at == a.issued_at
            }
            (Work::Command(c), Op::Command { sequence }) => *sequence == c.command.sequence,
            _ => false,
        }
    }

    /// Moves the deferred chunks whose time has come to the send queue, once the gathering of
    /// first requests is over: quiet for [`QUIET_MS`], every online device asked, or
    /// [`MAX_GATHER_MS`] passed.
    pub fn release_due(&mut self, now_ms: u64) {
        let Some(since) = self.gathering_since else { return };
        let gathered =
            now_ms >= self.last_asker_ms + QUIET_MS || now_ms >= since + MAX_GATHER_MS || self.awaited_devices() == 0;
        if !gathered {
            return;
        }
        let due: Vec<u32> = self.deferred.iter().filter(|(_, t)| **t <= now_ms).map(|(i, _)| *i).collect();
        for i in due {
            self.deferred.remove(&i);
            self.queue.insert(i);
        }
        self.gathering_since = if self.deferred.is_empty() { None } else { Some(now_ms) };
    }

    /// Devices known to be online and still to ask for their first chunks.
    fn awaited_devices(&self) -> usize {
        self.tracker
            .devices()
            .iter()
            .filter(|(name, view)| {
                view.online == Some(true)
                    && matches!(view.phase, None | Some(Phase::Downloading { .. }))
                    && !self.asked.contains(*name)
            })
            .count()
    }

    /// Whether some device waits for a chunk now (deferred ones wait for [`Campaign::release_due`]).
    pub fn has_chunks(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The next chunk some device asked for (lowest index first), once, published at `now_ms`:
    /// a chunk asked for by twenty devices is published once and reaches them all.
    pub fn next_chunk(&mut self, now_ms: u64) -> Option<u32> {
        let next = self.queue.pop_first()?;
        self.sent += 1;
        self.sent_at.insert(next, now_ms);
        // Going out now serves whoever waited for it later too.
        self.deferred.remove(&next);
        Some(next)
    }

    /// Whether the operation is over, and how.
    pub fn end(&self, now_ms: u64) -> Option<End> {
        self.tracker.end(now_ms)
    }

    /// What to publish at the end: the retained announcement is cleared, so a device that
    /// comes back later does not start a transfer nobody serves.
    pub fn closing(&self) -> Vec<Action> {
        match &self.work {
            Work::Bundle { .. } => self
                .tracker
                .audience()
                .topics(GroupLeaf::Bundle)
                .into_iter()
                .map(|topic| Action::Publish { topic, payload: Vec::new(), retain: true })
                .collect(),
            Work::Command(_) => Vec::new(),
        }
    }
}

/// The announcement of `bundle` (the whole `.drv` file) for model `name` v`version`.
pub fn announce(bundle: &[u8], name: &str, version: u64, chunk_size: u32, issued_at: u64) -> anyhow::Result<Announce> {
    Ok(Announce {
        transfer: Digest(Sha256::digest(bundle).into()),
        name: name.try_into().map_err(|_| anyhow::anyhow!("model name '{name}' is too long"))?,
        version,
        size: bundle.len() as u64,
        chunk_size,
        issued_at,
        purpose: drover_wire::message::Purpose::Install,
    })
}

/// The payload of chunk `index` of `bundle` (always postcard: chunks are bytes).
pub fn chunk_payload(a: &Announce, bundle: &[u8], index: u32) -> Vec<u8> {
    let start = (u64::from(index) * u64::from(a.chunk_size)) as usize;
    let end = (start + a.chunk_len(index) as usize).min(bundle.len());
    let data = &bundle[start.min(end)..end];
    let chunk = Chunk { transfer: a.transfer, index, sha256: Digest(Sha256::digest(data).into()), data };
    codec::encode(PayloadFormat::Postcard, &chunk)
}

#[cfg(test)]
#[path = "campaign_tests.rs"]
mod tests;
