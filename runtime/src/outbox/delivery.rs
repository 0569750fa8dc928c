//! Which outbox record to send next and which broker acknowledgement delivers which record, as a
//! pure state machine (no socket, no clock: time and link events are inputs).
//!
//! rumqttc tells the agent two things about a QoS 1 publish: the packet id it was given when the
//! event loop took it from the request queue (`Outgoing::Publish(pkid)`), and the broker's
//! `PubAck(pkid)`. Requests leave the queue in the order they were handed over, so a FIFO of
//! [`Tag`]s (one per publish handed to the client, outbox record or not) pairs each fresh packet
//! id with its record. A packet id already in flight is a retransmission and pairs with nothing.
//! When the broker had no session for the agent, rumqttc drops what it had in flight and the
//! requests it had already taken from the queue; the link reports how many of those were fresh,
//! and their records are sent again.
//!
//! Delivery is at least once: after a timeout or a lost session a record may reach the broker
//! twice; consumers drop duplicates by `(device, seq)`.

use std::collections::{HashMap, VecDeque};

use super::Record;

/// What a publish handed to the MQTT client was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An outbox record.
    Record(u64),
    /// Anything else the agent publishes (status, progress, chunk requests).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    Handed { at_ms: u64 },
    Acked,
}

#[derive(Debug)]
struct Entry {
    record: Record,
    state: State,
}

/// The delivery state of the undelivered records, oldest first.
#[derive(Debug)]
pub struct Delivery {
    queue: VecDeque<Entry>,
    handed: VecDeque<Tag>,
    inflight: HashMap<u16, Tag>,
    online: bool,
    window: usize,
    ack_timeout_ms: u64,
    bytes: usize,
}

impl Delivery {
    /// At most `window` records await an acknowledgement at once; a record unacknowledged for
    /// `ack_timeout_ms` while online is sent again.
    pub fn new(window: usize, ack_timeout_ms: u64) -> Delivery {
        Delivery {
            queue: VecDeque::new(),
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            online: false,
            window: window.max(1),
            ack_timeout_ms,
            bytes: 0,
        }
    }

    /// A record to deliver (in sequence order, after the ones already queued).
    pub fn push(&mut self, record: Record) {
        debug_assert!(self.queue.back().is_none_or(|e| e.record.seq < record.seq));
        self.bytes += record.payload.len();
        self.queue.push_back(Entry { record, state: State::Queued });
    }

    /// Forgets every record up to `seq` (the journal dropped them to stay in its quota); returns
    /// how many were still undelivered.
    pub fn drop_through(&mut self, seq: u64) -> u64 {
        let mut dropped = 0;
        while self.queue.front().is_some_and(|e| e.record.seq <= seq) {
            if let Some(e) = self.queue.pop_front() {
                self.bytes -= e.record.payload.len();
                dropped += u64::from(e.state != State::Acked);
            }
        }
        dropped
    }

    /// The next record to publish now, if the link is up and the window has room. The caller
    /// publishes it and then calls [`Delivery::handed`] with its tag (or nothing if the client
    /// refused it; it stays queued).
    pub fn ready(&self) -> Option<&Record> {
        if !self.online {
            return None;
        }
        let waiting = self.queue.iter().filter(|e| matches!(e.state, State::Handed { .. })).count();
        if waiting >= self.window {
            return None;
        }
        self.queue.iter().find(|e| e.state == State::Queued).map(|e| &e.record)
    }

    /// A publish was handed to the MQTT client.
    pub fn handed(&mut self, tag: Tag, now_ms: u64) {
        if let Tag::Record(seq) = tag
            && let Some(e) = self.entry(seq)
        {
            e.state = State::Handed { at_ms: now_ms };
        }
        self.handed.push_back(tag);
    }

    /// The client's event loop gave a publish its packet id.
    pub fn packet_id(&mut self, pkid: u16) {
        if pkid == 0 || self.inflight.contains_key(&pkid) {
            return; // QoS 0, or a retransmission of a publish already paired
        }
        if let Some(tag) = self.handed.pop_front() {
            self.inflight.insert(pkid, tag);
        }
    }

    /// The broker acknowledged `pkid`. Returns the sequence number everything up to which is now
    /// delivered, when that moved.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        if let Some(Tag::Record(seq)) = self.inflight.remove(&pkid)
            && let Some(e) = self.entry(seq)
        {
            e.state = State::Acked;
        }
        let mut through = None;
        while self.queue.front().is_some_and(|e| e.state == State::Acked) {
            if let Some(e) = self.queue.pop_front() {
                self.bytes -= e.record.payload.len();
                through = Some(e.record.seq);
            }
        }
        through
    }

    /// Connected. Without a session on the broker, rumqttc dropped its in-flight publishes and
    /// the `dropped_fresh` requests it had taken from the queue but not yet numbered: those
    /// records go out again.
    pub fn up(&mut self, session_present: bool, dropped_fresh: usize) {
        self.online = true;
        if session_present {
            return;
        }
        let lost: Vec<Tag> = self
            .inflight
            .drain()
            .map(|(_, t)| t)
            .chain((0..dropped_fresh).filter_map(|_| self.handed.pop_front()))
            .collect();
        for tag in lost {
            if let Tag::Record(seq) = tag {
                self.requeue(seq);
            }
        }
    }

    /// Disconnected: nothing new is handed over until the link is up again.
    pub fn down(&mut self) {
        self.online = false;
    }

    /// Time passes: records unacknowledged for too long while online are sent again (their
    /// first acknowledgement, if it ever comes, still counts).
    pub fn tick(&mut self, now_ms: u64) {
        if !self.online {
            return;
        }
        let timeout = self.ack_timeout_ms;
        for e in &mut self.queue {
            if let State::Handed { at_ms } = e.state
                && now_ms.saturating_sub(at_ms) >= timeout
            {
                e.state = State::Queued;
            }
        }
    }

    /// Undelivered records.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether everything is delivered.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes of payload not yet delivered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn entry(&mut self, seq: u64) -> Option<&mut Entry> {
        let first = self.queue.front()?.record.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        // Sequence numbers are contiguous in the queue unless the journal skipped some on
        // recovery; fall back to a search then.
        match self.queue.get(i) {
            Some(e) if e.record.seq == seq => self.queue.get_mut(i),
            _ => self.queue.iter_mut().find(|e| e.record.seq == seq),
        }
    }

    fn requeue(&mut self, seq: u64) {
        if let Some(e) = self.entry(seq)
            && matches!(e.state, State::Handed { .. })
        {
            e.state = State::Queued;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Stream;
    use super::*;

    fn rec(seq: u64) -> Record {
        Record { seq, stream: Stream::Telemetry, payload: vec![seq as u8; 10] }
    }

    /// Hands over everything ready, as the shell does; returns the sequence numbers sent.
    fn send_ready(d: &mut Delivery, now: u64) -> Vec<u64> {
        let mut sent = vec![];
        while let Some(r) = d.ready() {
            let seq = r.seq;
            d.handed(Tag::Record(seq), now);
            sent.push(seq);
        }
        sent
    }

    #[test]
    fn nothing_leaves_while_offline_and_order_is_kept_after() {
        let mut d = Delivery::new(4, 30_000);
        (1..=6).for_each(|s| d.push(rec(s)));
        assert!(d.ready().is_none());
        d.up(false, 0);
        assert_eq!(send_ready(&mut d, 0), vec![1, 2, 3, 4], "the window bounds what is in flight");
        for (pkid, _) in (1..=4).zip(0..) {
            d.packet_id(pkid);
        }
        assert_eq!(d.acked(2), None, "record 1 is not acknowledged yet");
        assert_eq!(d.acked(1), Some(2), "1 and 2 are delivered");
        assert_eq!(send_ready(&mut d, 0), vec![5, 6]);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn other_publishes_between_records_do_not_confuse_the_pairing() {
        let mut d = Delivery::new(8, 30_000);
        d.up(false, 0);
        d.push(rec(1));
        d.handed(Tag::Other, 0); // a status
        assert_eq!(send_ready(&mut d, 0), vec![1]);
        d.handed(Tag::Other, 0); // a progress report
        d.packet_id(7); // status
        d.packet_id(8); // record 1
        d.packet_id(9); // progress
        assert_eq!(d.acked(7), None);
        assert_eq!(d.acked(9), None);
        assert_eq!(d.acked(8), Some(1));
        assert!(d.is_empty());
    }

    #[test]
    fn retransmissions_pair_with_nothing() {
        let mut d = Delivery::new(8, 30_000);
        d.up(false, 0);
        d.push(rec(1));
        d.push(rec(2));
        assert_eq!(send_ready(&mut d, 0), vec![1, 2]);
        d.packet_id(1);
        d.down();
        d.up(true, 0); // the broker kept the session: rumqttc resends pkid 1 itself
        d.packet_id(1);
        d.packet_id(2); // record 2, numbered only now
        assert_eq!(d.acked(1), Some(1));
        assert_eq!(d.acked(2), Some(2));
    }

    #[test]
    fn a_lost_session_sends_the_dropped_records_again() {
        let mut d = Delivery::new(8, 30_000);
        d.up(false, 0);
        (1..=4).for_each(|s| d.push(rec(s)));
        assert_eq!(send_ready(&mut d, 0), vec![1, 2, 3, 4]);
        d.packet_id(1);
        d.packet_id(2);
        d.down();
        // rumqttc had 1 and 2 in flight and 3 taken from the queue (dropped); 4 is still queued
        // in the channel and will be numbered after the reconnect.
        d.up(false, 1);
        assert_eq!(send_ready(&mut d, 10), vec![1, 2, 3]);
        d.packet_id(1); // record 4 leaves the channel first
        d.packet_id(2); // then 1, 2, 3 again
        d.packet_id(3);
        d.packet_id(4);
        assert_eq!(d.acked(1), None);
        assert_eq!(d.acked(2), Some(1));
        assert_eq!(d.acked(3), Some(2));
        assert_eq!(d.acked(4), Some(4));
        assert!(d.is_empty());
    }

    #[test]
    fn an_unacknowledged_record_is_sent_again_after_the_timeout_and_a_late_ack_still_counts() {
        let mut d = Delivery::new(8, 1_000);
        d.up(false, 0);
        d.push(rec(1));
        assert_eq!(send_ready(&mut d, 0), vec![1]);
        d.tick(999);
        assert!(d.ready().is_none());
        d.tick(1_000);
        assert_eq!(send_ready(&mut d, 1_000), vec![1]);
        d.packet_id(5);
        d.packet_id(6);
        assert_eq!(d.acked(5), Some(1));
        assert_eq!(d.acked(6), None, "the duplicate's ack finds nothing");
    }

    #[test]
    fn dropping_for_the_quota_counts_only_undelivered_records() {
        let mut d = Delivery::new(8, 1_000);
        (1..=5).for_each(|s| d.push(rec(s)));
        assert_eq!(d.bytes(), 50);
        assert_eq!(d.drop_through(3), 3);
        assert_eq!(d.bytes(), 20);
        d.up(false, 0);
        assert_eq!(send_ready(&mut d, 0), vec![4, 5]);
    }
}
