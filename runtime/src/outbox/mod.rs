//! Store-and-forward for what the agent reports (telemetry, drift windows, events): every record
//! is journaled on disk before it is sent, sent in order, and forgotten only once the fleet server
//! has said it stored it (or, configured so, once the broker has acknowledged it). A broker outage or an agent restart loses nothing that fit in the quota; when
//! the quota is full the oldest records go first, and the loss is counted and reported.
//!
//! `delivery.rs` is the pure part (what to send next, which acknowledgement delivers which
//! record); `journal.rs` is the disk.

pub mod delivery;
pub mod journal;

pub use delivery::{Acks, Delivery, Tag};
pub use journal::{Journal, JournalError, Quota};

/// Which topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Periodic telemetry (`dev/{id}/telemetry`).
    Telemetry,
    /// Closed drift windows with their mergeable sketches (`dev/{id}/drift`).
    Drift,
    /// Alerts and other events (`dev/{id}/events`).
    Events,
}

impl Stream {
    fn code(self) -> u8 {
        match self {
            Stream::Telemetry => 1,
            Stream::Drift => 2,
            Stream::Events => 3,
        }
    }

    fn from_code(code: u8) -> Option<Stream> {
        match code {
            1 => Some(Stream::Telemetry),
            2 => Some(Stream::Drift),
            3 => Some(Stream::Events),
            _ => None,
        }
    }
}

/// One report waiting for the broker: its sequence number (also inside the payload, so a
/// consumer can put records in order and drop the duplicates that at-least-once delivery
/// allows), its stream and its encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the device's outbox, from 1, never reused.
    pub seq: u64,
    /// Which topic.
    pub stream: Stream,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// The outbox: the journal on disk and the delivery state of what it holds.
#[derive(Debug)]
pub struct Outbox {
    journal: Journal,
    delivery: Delivery,
}

/// Records awaiting an acknowledgement at once.
const WINDOW: usize = 16;
/// A record unacknowledged this long while connected is sent again.
const ACK_TIMEOUT_MS: u64 = 30_000;

impl Outbox {
    /// Opens the outbox in `dir`; what was not delivered before a restart is queued again.
    pub fn open(dir: &std::path::Path, quota: Quota, acks: Acks) -> Result<Outbox, JournalError> {
        let (journal, pending) = Journal::open(dir, quota)?;
        let mut delivery = Delivery::with_acks(WINDOW, ACK_TIMEOUT_MS, acks);
        if !pending.is_empty() {
            log::info!("outbox: {} reports from before the restart still to send", pending.len());
        }
        pending.into_iter().for_each(|r| delivery.push(r));
        Ok(Outbox { journal, delivery })
    }

    /// Journals a record whose payload `make` encodes with its sequence number, and queues it.
    /// Returns how many older undelivered records the quota dropped to make room.
    pub fn append(&mut self, stream: Stream, make: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, JournalError> {
        let payload = make(self.journal.next_seq());
        let (record, appended) = self.journal.append(stream, payload)?;
        if let Some(through) = appended.dropped_through {
            self.delivery.drop_through(through);
        }
        self.delivery.push(record);
        Ok(appended.dropped)
    }

    /// The delivery state (to hand records over and feed link events).
    pub fn delivery(&mut self) -> &mut Delivery {
        &mut self.delivery
    }

    /// The broker acknowledged `pkid`: what it delivers is forgotten on disk.
    pub fn acked(&mut self, pkid: u16) -> Result<(), JournalError> {
        match self.delivery.acked(pkid) {
            Some(through) => self.journal.delivered(through),
            None => Ok(()),
        }
    }

    /// The fleet server stored these records: they are forgotten on disk.
    pub fn stored(&mut self, stored: &drover_wire::message::Stored) -> Result<(), JournalError> {
        match self.delivery.stored(stored) {
            Some(through) => self.journal.delivered(through),
            None => Ok(()),
        }
    }

    /// The figures telemetry reports.
    pub fn stats(&self) -> drover_wire::telemetry::Outbox {
        drover_wire::telemetry::Outbox {
            queued: u32::try_from(self.delivery.len()).unwrap_or(u32::MAX),
            bytes: self.delivery.bytes() as u64,
            dropped: self.journal.dropped(),
        }
    }
}
