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
//! A broker's acknowledgement is not delivery: a broker that restarts without the fleet
//! server's session acknowledges a report and then has no one to give it to. So, end to end
//! (the default), a record the broker acknowledged waits for the fleet server's [`Stored`]
//! (`dev/{id}/stored`) before it is forgotten, and goes out again if that does not come: after
//! `resend_ms`, all stale ones while the fleet answers, and only a window's worth (a probe,
//! backing off to [`MAX_PROBE_MS`]) while it does not, so a fleet server down for hours costs a
//! trickle, not the whole backlog every half minute. With no Drover fleet server behind the
//! broker, `Acks::Broker` keeps the broker's acknowledgement as delivery.
//!
//! Delivery is at least once: after a timeout, a lost session or a missing `Stored` a record may
//! reach the fleet twice; consumers drop duplicates by `(device, seq)`.

use std::collections::{HashMap, VecDeque};

use drover_wire::message::Stored;

use super::Record;

/// The longest wait between two probes of a fleet server that stores nothing.
pub const MAX_PROBE_MS: u64 = 600_000;

/// Whose acknowledgement delivers a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// The fleet server's [`Stored`], after the broker's: nothing is lost by a broker that
    /// acknowledged and then restarted; the record is sent again after `resend_ms` without it.
    Fleet {
        /// How long a record the broker took waits for the fleet's word before going out again.
        resend_ms: u64,
    },
    /// The broker's PUBACK: for brokers read by something other than a Drover fleet server.
    Broker,
}

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
    Handed {
        at_ms: u64,
    },
    /// The broker acknowledged it (sent at `at_ms`); the fleet has not said it stored it.
    AtBroker {
        at_ms: u64,
    },
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
    acks: Acks,
    /// Whether the fleet stored something since the last re-send round.
    fleet_answers: bool,
    /// When the next re-send round may run, and the wait after an unanswered one.
    next_round_ms: u64,
    probe_wait_ms: u64,
}

impl Delivery {
    /// At most `window` records await an acknowledgement at once; a record unacknowledged for
    /// `ack_timeout_ms` while online is sent again.
    pub fn new(window: usize, ack_timeout_ms: u64) -> Delivery {
        Delivery::with_acks(window, ack_timeout_ms, Acks::Broker)
    }

    /// As [`Delivery::new`], delivered on `acks`' word.
    pub fn with_acks(window: usize, ack_timeout_ms: u64, acks: Acks) -> Delivery {
        Delivery {
            queue: VecDeque::new(),
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            online: false,
            window: window.max(1),
            ack_timeout_ms,
            bytes: 0,
            acks,
            fleet_answers: false,
            next_round_ms: 0,
            probe_wait_ms: resend_ms(acks),
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
    /// delivered, when that moved (only ever with [`Acks::Broker`]).
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        let acks = self.acks;
        if let Some(Tag::Record(seq)) = self.inflight.remove(&pkid)
            && let Some(e) = self.entry(seq)
        {
            match (acks, e.state) {
                (Acks::Broker, _) => e.state = State::Acked,
                (Acks::Fleet { .. }, State::Handed { at_ms }) => e.state = State::AtBroker { at_ms },
                // Stored already (the fleet's word outran the broker's), or queued again.
                (Acks::Fleet { .. }, _) => {}
            }
        }
        self.forget_delivered()
    }

    /// The fleet server stored these records. Returns the sequence number everything up to
    /// which is now delivered, when that moved.
    pub fn stored(&mut self, stored: &Stored) -> Option<u64> {
        let mut any = false;
        for e in &mut self.queue {
            if e.state != State::Acked && stored.contains(e.record.seq) {
                e.state = State::Acked;
                any = true;
            }
        }
        if any {
            // The fleet is there: what is stale goes out at the next tick, not after a backoff.
            self.fleet_answers = true;
            self.probe_wait_ms = resend_ms(self.acks);
            self.next_round_ms = 0;
        }
        self.forget_delivered()
    }

    fn forget_delivered(&mut self) -> Option<u64> {
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
        self.resend_unstored(now_ms);
    }

    /// Records the broker took but the fleet never said it stored, sent again: every stale one
    /// while the fleet answers, a window's worth (backing off) while it does not.
    fn resend_unstored(&mut self, now_ms: u64) {
        let Acks::Fleet { resend_ms } = self.acks else { return };
        if now_ms < self.next_round_ms {
            return;
        }
        let limit = if self.fleet_answers { usize::MAX } else { self.window };
        let mut sent = 0;
        for e in &mut self.queue {
            if sent == limit {
                break;
            }
            if let State::AtBroker { at_ms } = e.state
                && now_ms.saturating_sub(at_ms) >= resend_ms
            {
                e.state = State::Queued;
                sent += 1;
            }
        }
        if sent == 0 {
            return;
        }
        if self.fleet_answers {
            self.next_round_ms = now_ms + resend_ms;
        } else {
            self.next_round_ms = now_ms + self.probe_wait_ms;
            self.probe_wait_ms = (self.probe_wait_ms * 2).clamp(resend_ms, MAX_PROBE_MS.max(resend_ms));
        }
        self.fleet_answers = false;
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

    /// Undelivered records the broker has taken, waiting for the fleet's word.
    pub fn at_broker(&self) -> usize {
        self.queue.iter().filter(|e| matches!(e.state, State::AtBroker { .. })).count()
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

fn resend_ms(acks: Acks) -> u64 {
    match acks {
        Acks::Fleet { resend_ms } => resend_ms.max(1),
        Acks::Broker => 0,
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
    fn stored(seqs: &[u64]) -> Stored {
        Stored::covering(&mut seqs.to_vec()).remove(0)
    }

    /// The broker acknowledges 1..=4 and then restarts without the fleet's session: nothing
    /// reached the fleet. The records stay, go out again after the wait, and are forgotten only
    /// once the fleet says it stored them.
    #[test]
    fn end_to_end_a_broker_ack_is_not_delivery_and_unstored_records_go_out_again() {
        let mut d = Delivery::with_acks(8, 30_000, Acks::Fleet { resend_ms: 5_000 });
        d.up(false, 0);
        (1..=4).for_each(|s| d.push(rec(s)));
        assert_eq!(send_ready(&mut d, 0), vec![1, 2, 3, 4]);
        (1..=4).for_each(|p| d.packet_id(p));
        assert_eq!((1..=4).filter_map(|p| d.acked(p)).last(), None, "the broker's word delivers nothing");
        assert_eq!((d.len(), d.at_broker()), (4, 4));
        d.tick(4_999);
        assert!(d.ready().is_none(), "not before the wait");
        d.tick(5_000);
        assert_eq!(send_ready(&mut d, 5_000), vec![1, 2, 3, 4], "a probe: at most a window");
        (5..=8).for_each(|p| d.packet_id(p));
        (5..=8).for_each(|p| assert_eq!(d.acked(p), None));
        // The fleet server (back now) stores them and says so.
        assert_eq!(d.stored(&stored(&[1, 2, 4])), Some(2));
        assert_eq!(d.stored(&stored(&[3])), Some(4));
        assert!(d.is_empty());
    }

    #[test]
    fn without_a_fleet_answer_probes_are_a_window_at_a_time_and_back_off() {
        let mut d = Delivery::with_acks(2, 30_000, Acks::Fleet { resend_ms: 1_000 });
        d.up(false, 0);
        (1..=5).for_each(|s| d.push(rec(s)));
        let mut pkid = 0;
        let mut round = |d: &mut Delivery, now: u64| {
            let sent = send_ready(d, now);
            for _ in &sent {
                pkid += 1;
                d.packet_id(pkid);
                d.acked(pkid);
            }
            sent
        };
        // The first pass: two at a time, each acknowledged by the broker at once.
        let mut first = vec![];
        while first.len() < 5 {
            first.extend(round(&mut d, 0));
        }
        assert_eq!(first, vec![1, 2, 3, 4, 5]);
        d.tick(1_000);
        assert_eq!(round(&mut d, 1_000), vec![1, 2], "a window's worth, the oldest");
        d.tick(1_500);
        assert!(round(&mut d, 1_500).is_empty());
        d.tick(2_000);
        assert_eq!(round(&mut d, 2_000), vec![1, 2]);
        d.tick(3_999);
        assert!(round(&mut d, 3_999).is_empty(), "the next probe waits twice as long");
        d.tick(4_000);
        assert_eq!(round(&mut d, 4_000), vec![1, 2]);
        // The fleet answers the probe: everything stale goes out at the next tick.
        assert_eq!(d.stored(&stored(&[1, 2])), Some(2));
        d.tick(4_100);
        let mut all = round(&mut d, 4_100);
        all.extend(round(&mut d, 4_100));
        assert_eq!(all, vec![3, 4, 5], "two windows' worth");
        assert_eq!(d.stored(&stored(&[3, 4, 5])), Some(5));
        assert!(d.is_empty());
    }

    #[test]
    fn a_stored_word_that_outruns_the_brokers_ack_still_counts() {
        let mut d = Delivery::with_acks(8, 30_000, Acks::Fleet { resend_ms: 1_000 });
        d.up(false, 0);
        d.push(rec(1));
        assert_eq!(send_ready(&mut d, 0), vec![1]);
        d.packet_id(1);
        assert_eq!(d.stored(&stored(&[1])), Some(1));
        assert_eq!(d.acked(1), None);
        assert!(d.is_empty());
        d.tick(10_000);
        assert!(d.ready().is_none());
    }
}
