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
    /// A device of the transfer dropped out or came back (a line in the log: a progress bar or
    /// a count that merely stops moving tells the operator nothing).
    Interrupted(Name, Interruption),
}

/// A device of the transfer (it asked for chunks and does not have the whole bundle yet)
/// dropping out mid-transfer and coming back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interruption {
    /// Its presence went offline (its Last Will, or a clean disconnect).
    Offline {
        /// Chunks it had reported having, when it had reported any.
        have: Option<u32>,
        /// Chunks in the bundle.
        total: u32,
    },
    /// Its presence is online again; its request for what it lacks follows.
    Online,
    /// A fresh online presence while it was online: its earlier connection vanished without a
    /// Last Will (the broker handed the session to its new connection); its request follows.
    Reconnected,
    /// It asked for the chunks it lacks again: the first of them is `at` (counted from 1).
    Resumed {
        /// The first chunk it lacks, counted from 1 (chunk `at` of `total`).
        at: u32,
        /// Chunks in the bundle.
        total: u32,
    },
}

/// A push or a command in flight.
#[derive(Debug)]
pub struct Campaign {
    work: Work,
    tracker: Tracker,
    format: PayloadFormat,
    /// Chunks to publish to every device of the transfer.
    queue: BTreeSet<u32>,
    /// Chunks to send to one device alone, with the devices that asked.
    direct: BTreeMap<u32, BTreeSet<Name>>,
    /// Publications: to every device, and to one.
    sent: u64,
    sent_direct: u64,
    /// Copies delivered, as far as the sender knows: each publication to the transfer counts
    /// the devices listening to it then.
    copies: u64,
    /// Chunks published to the transfer, by index.
    published: BTreeSet<u32>,
    /// Devices that asked for chunks already (and so listen to the transfer).
    asked: BTreeSet<Name>,
    /// Chunks asked for by devices' first requests, waiting for the gathering
    /// ([`Campaign::release_due`]).
    deferred: BTreeSet<u32>,
    /// When the latest device sent its first request (ms).
    last_asker_ms: u64,
    /// Since when first requests have been gathering (ms), while any are deferred.
    gathering_since: Option<u64>,
    /// [`Campaign::awaited_devices`] as last counted, with the devices asked and known then:
    /// counted again only when either changed (it walks the whole fleet).
    awaited: Option<(usize, usize, usize)>,
    /// [`Campaign::listeners`] as counted at a given ms (a burst of requests shares one count).
    listening: Option<(u64, usize)>,
    /// Devices that went offline mid-transfer and have not asked for chunks since.
    away: BTreeMap<Name, Away>,
    /// Each device's latest presence: a copy delivered again (this tool reconnecting) is the
    /// same, a device's new connection publishes a new one.
    presence: BTreeMap<Name, Status>,
}

/// Where a device that dropped out of the transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Away {
    /// Its presence says offline.
    Offline,
    /// Its presence says online again; its request has not come yet.
    Back,
}

/// Who a chunk goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// Every device of the transfer (`xfer/{transfer}/chunk`).
    Transfer,
    /// One device (`dev/{device}/chunk`).
    Device(Name),
}

/// A chunk to publish now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its index.
    pub index: u32,
    /// Who it goes to.
    pub to: Recipient,
}

impl Outgoing {
    /// The topic it is published on.
    pub fn topic(&self, a: &Announce) -> String {
        match &self.to {
            Recipient::Transfer => topic::chunks(&a.transfer).to_string(),
            Recipient::Device(d) => topic::device(d, DeviceLeaf::Chunk).to_string(),
        }
    }
}

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
            direct: BTreeMap::new(),
            sent: 0,
            sent_direct: 0,
            copies: 0,
            published: BTreeSet::new(),
            asked: BTreeSet::new(),
            deferred: BTreeSet::new(),
            last_asker_ms: 0,
            gathering_since: None,
            awaited: None,
            listening: None,
            away: BTreeMap::new(),
            presence: BTreeMap::new(),
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

    /// Chunk publications so far (to every device of the transfer, and to single devices).
    pub fn chunks_sent(&self) -> u64 {
        self.sent
    }

    /// Of [`Campaign::chunks_sent`], those sent to a single device.
    pub fn chunks_sent_direct(&self) -> u64 {
        self.sent_direct
    }

    /// Chunk copies the broker delivered, as the sender counts them (a publication to the
    /// transfer counts the devices listening then): against chunks x devices, what the push
    /// cost over the bundle itself.
    pub fn copies(&self) -> u64 {
        self.copies
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
                    let was = self.tracker.devices().get(&device).and_then(|v| v.online);
                    if self.tracker.on_status(device.clone(), &s) {
                        out.push(Action::Changed(device.clone()));
                        // A new presence serving what the last one did: a new connection (a
                        // changed model is published too, and is no reconnection).
                        let fresh = self
                            .presence
                            .insert(device.clone(), s.clone())
                            .is_some_and(|old| old != s && old.model == s.model && old.slot == s.slot);
                        if let Some(i) = self.presence_changed(&device, was, s.online, fresh) {
                            out.push(Action::Interrupted(device, i));
                        }
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
                        if !self.in_transfer(&device) {
                            // Done with the transfer (installing, or finished): nothing to resume.
                            self.away.remove(&device);
                        }
                        out.push(Action::Changed(device));
                    }
                }
                Err(codec::DecodeError::Empty) => {}
                Err(e) => log::warn!("{topic_str}: {e}"),
            },
            DeviceLeaf::Want => match (codec::decode::<Want>(payload), &self.work) {
                (Ok(w), Work::Bundle { announce }) if w.transfer == announce.transfer => {
                    let count = u32::try_from(announce.chunk_count()).unwrap_or(u32::MAX);
                    if self.away.remove(&device).is_some() {
                        // Its first request since it dropped out (whether or not its presence
                        // came first): where it picks the transfer up again.
                        let lacking = w.ranges.iter().filter(|r| r.start < r.end.min(count)).map(|r| r.start).min();
                        if let Some(first) = lacking {
                            let resumed = Interruption::Resumed { at: first + 1, total: count };
                            out.push(Action::Interrupted(device.clone(), resumed));
                        }
                    }
                    let first = self.asked.insert(device.clone());
                    if first {
                        self.last_asker_ms = now_ms;
                    }
                    for i in w.ranges.iter().flat_map(|r| r.start.min(count)..r.end.min(count)) {
                        if self.queue.contains(&i) || self.deferred.contains(&i) {
                            // About to go to every device of the transfer, this one included.
                            continue;
                        }
                        if first && !self.published.contains(&i) {
                            // Never sent: gathered with the others' first requests.
                            self.deferred.insert(i);
                            self.gathering_since.get_or_insert(now_ms);
                        } else {
                            // Sent before this device listened (or lost, or damaged on its
                            // way): a copy for it alone, unless so many ask that one to all
                            // costs less.
                            self.direct.entry(i).or_default().insert(device.clone());
                            self.promote(i, now_ms);
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

    /// Whether `device` is in the middle of the transfer: it asked for chunks and has not
    /// reported the whole bundle (installing, or a final phase).
    fn in_transfer(&self, device: &Name) -> bool {
        self.asked.contains(device)
            && self
                .tracker
                .devices()
                .get(device)
                .is_none_or(|v| matches!(v.phase, None | Some(Phase::Downloading { .. })))
    }

    /// A device's presence went from `was` to `online` (`fresh`: not a copy of the one before):
    /// whether that interrupts the transfer (it went offline in the middle of it) or ends an
    /// interruption (it is back, or it reconnected without ever being seen offline).
    fn presence_changed(
        &mut self,
        device: &Name,
        was: Option<bool>,
        online: bool,
        fresh: bool,
    ) -> Option<Interruption> {
        let Work::Bundle { announce } = &self.work else { return None };
        if !online && was != Some(false) && self.in_transfer(device) {
            self.away.insert(device.clone(), Away::Offline);
            let have = match self.tracker.devices().get(device).and_then(|v| v.phase.as_ref()) {
                Some(Phase::Downloading { have, .. }) => Some(*have),
                _ => None,
            };
            let total = u32::try_from(announce.chunk_count()).unwrap_or(u32::MAX);
            return Some(Interruption::Offline { have, total });
        }
        if online && self.away.get(device) == Some(&Away::Offline) {
            self.away.insert(device.clone(), Away::Back);
            return Some(Interruption::Online);
        }
        // A device publishes its presence when it connects: a new one while it was online and
        // in the transfer means its connection dropped and came back, with no Last Will (a
        // broker hands the session to the new connection without one).
        if online && fresh && was == Some(true) && !self.away.contains_key(device) && self.in_transfer(device) {
            self.away.insert(device.clone(), Away::Back);
            return Some(Interruption::Reconnected);
        }
        None
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
        for i in std::mem::take(&mut self.deferred) {
            self.direct.remove(&i);
            self.queue.insert(i);
        }
        self.gathering_since = None;
    }

    /// Devices known to be online and still to ask for their first chunks.
    fn awaited_devices(&mut self) -> usize {
        let key = (self.asked.len(), self.tracker.devices().len());
        if let Some((asked, known, n)) = self.awaited
            && (asked, known) == key
        {
            return n;
        }
        let n = self.count_awaited();
        self.awaited = Some((key.0, key.1, n));
        n
    }

    fn count_awaited(&self) -> usize {
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

    /// Devices listening to the transfer: they asked, and have not reported the whole bundle.
    fn listeners(&mut self, now_ms: u64) -> usize {
        if let Some((at, n)) = self.listening
            && at == now_ms
        {
            return n;
        }
        let n = self.count_listeners();
        self.listening = Some((now_ms, n));
        n
    }

    fn count_listeners(&self) -> usize {
        let devices = self.tracker.devices();
        self.asked
            .iter()
            .filter(|d| devices.get(*d).is_none_or(|v| matches!(v.phase, None | Some(Phase::Downloading { .. }))))
            .count()
    }

    /// Publishes chunk `i` to the whole transfer instead of one copy per device when that is
    /// cheaper: each copy to a single device costs a publication into the broker and one out.
    fn promote(&mut self, i: u32, now_ms: u64) {
        let asking = self.direct.get(&i).map_or(0, BTreeSet::len);
        if asking > 1 && 2 * asking > self.listeners(now_ms) {
            self.direct.remove(&i);
            self.queue.insert(i);
        }
    }

    /// Whether some device waits for a chunk now (deferred ones wait for [`Campaign::release_due`]).
    pub fn has_chunks(&self) -> bool {
        !self.queue.is_empty() || !self.direct.is_empty()
    }

    /// The next chunk to publish at `now_ms`, once: first those for every device of the
    /// transfer (lowest index first; twenty devices asking for one cost one publication), then
    /// copies for single devices.
    pub fn next_chunk(&mut self, now_ms: u64) -> Option<Outgoing> {
        if let Some(index) = self.queue.pop_first() {
            self.sent += 1;
            self.copies += self.listeners(now_ms) as u64;
            self.published.insert(index);
            self.direct.remove(&index);
            return Some(Outgoing { index, to: Recipient::Transfer });
        }
        let mut entry = self.direct.first_entry()?;
        let index = *entry.key();
        let device = entry.get_mut().pop_first();
        if entry.get().is_empty() {
            entry.remove();
        }
        let device = device?;
        self.sent += 1;
        self.sent_direct += 1;
        self.copies += 1;
        Some(Outgoing { index, to: Recipient::Device(device) })
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
    Payloads::new(a, bundle).payload(index)
}

/// The chunks' payloads, each chunk hashed once however often it is sent (a late device's
/// copies repeat what went to everyone).
#[derive(Debug)]
pub struct Payloads<'a> {
    announce: &'a Announce,
    bundle: &'a [u8],
    digests: BTreeMap<u32, Digest>,
}

impl<'a> Payloads<'a> {
    /// The chunks of `bundle` as `announce` cuts them.
    pub fn new(announce: &'a Announce, bundle: &'a [u8]) -> Payloads<'a> {
        Payloads { announce, bundle, digests: BTreeMap::new() }
    }

    /// Chunk `index`, encoded (always postcard: chunks are bytes).
    pub fn payload(&mut self, index: u32) -> Vec<u8> {
        let a = self.announce;
        let start = (u64::from(index) * u64::from(a.chunk_size)) as usize;
        let end = (start + a.chunk_len(index) as usize).min(self.bundle.len());
        let data = &self.bundle[start.min(end)..end];
        let sha256 = *self.digests.entry(index).or_insert_with(|| Digest(Sha256::digest(data).into()));
        codec::encode(PayloadFormat::Postcard, &Chunk { transfer: a.transfer, index, sha256, data })
    }
}

#[cfg(test)]
#[path = "campaign_tests.rs"]
mod tests;
