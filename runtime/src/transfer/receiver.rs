//! The device's side of a chunked bundle transfer, pure: it takes chunks and the time and says
//! which chunks to ask for. The shell writes accepted chunks to the spool and sends the requests.

use drover_wire::message::{Announce, Chunk, ChunkRange, Digest, Want};
use sha2::{Digest as _, Sha256};

use super::chunkset::ChunkSet;

/// What became of a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New and intact: store it.
    New,
    /// Held already (another device asked for it too): ignore.
    Duplicate,
    /// Damaged in transit (hash or length wrong): ask for it again ([`Receiver::want_one`]).
    Corrupt,
    /// Of another transfer.
    Foreign,
}

/// How long the receiver waits before asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Ask again for what is missing after this long without a new chunk, ms.
    pub stall_ms: u64,
}

impl Default for Patience {
    fn default() -> Self {
        Patience { stall_ms: 3_000 }
    }
}

/// One transfer in progress.
#[derive(Debug, Clone)]
pub struct Receiver {
    announce: Announce,
    have: ChunkSet,
    patience: Patience,
    /// Last time a new chunk arrived or a request was sent, ms (monotonic).
    last_activity: u64,
    /// Last time a new chunk arrived (or the link came back), ms.
    last_chunk: u64,
}

impl Receiver {
    /// Starts (or resumes, with the chunks already on disk) the transfer of `announce`.
    pub fn new(announce: Announce, have: ChunkSet, patience: Patience, now_ms: u64) -> Receiver {
        Receiver { announce, have, patience, last_activity: now_ms, last_chunk: now_ms }
    }

    /// The announcement.
    pub fn announce(&self) -> &Announce {
        &self.announce
    }

    /// A newer order for the same bytes (the operator pushed again, or a rollout moved from
    /// staging to installing): the chunks held still count, the new order is the one reported
    /// and carried out. Another transfer is refused (`false`).
    pub fn reannounce(&mut self, announce: Announce) -> bool {
        if announce.transfer != self.announce.transfer || announce.size != self.announce.size {
            return false;
        }
        self.announce = announce;
        true
    }

    /// The chunks held.
    pub fn have(&self) -> &ChunkSet {
        &self.have
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Ms since the last new chunk or request.
    pub fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_activity)
    }

    /// Ms since the last new chunk (or [`Receiver::touch`]): how long the sender has been silent.
    pub fn quiet_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_chunk)
    }

    /// The link is back: time spent offline does not count as the sender's silence.
    pub fn touch(&mut self, now_ms: u64) {
        self.last_chunk = now_ms;
    }

    fn want(&self, ranges: &[ChunkRange]) -> Want {
        Want { transfer: self.announce.transfer, ranges: ranges.iter().copied().collect() }
    }

    /// A request for chunk `index` alone (after it arrived damaged).
    pub fn want_one(&self, index: u32) -> Want {
        self.want(&[ChunkRange { start: index, end: index.saturating_add(1) }])
    }

    /// A request for everything missing (on connect, or on resume); `None` when complete.
    pub fn request(&mut self, now_ms: u64) -> Option<Want> {
        let missing = self.have.missing();
        if missing.is_empty() {
            return None;
        }
        self.last_activity = now_ms;
        Some(self.want(&missing))
    }

    /// Checks a chunk against the announcement and its own hash.
    pub fn on_chunk(&mut self, chunk: &Chunk<'_>, now_ms: u64) -> Verdict {
        if chunk.transfer != self.announce.transfer {
            return Verdict::Foreign;
        }
        let index = chunk.index;
        if u64::from(index) >= self.announce.chunk_count() {
            // An index past the end is not a chunk of this bundle: nothing to ask for.
            return Verdict::Foreign;
        }
        if self.have.contains(index) {
            // The sender is serving this transfer (to others): what is missing here may be on
            // its way, so asking again waits for a stall of the whole transfer.
            self.last_activity = now_ms;
            return Verdict::Duplicate;
        }
        let intact = chunk.data.len() as u64 == self.announce.chunk_len(index)
            && Digest(Sha256::digest(chunk.data).into()) == chunk.sha256;
        if !intact {
            return Verdict::Corrupt;
        }
        self.have.insert(index);
        self.last_activity = now_ms;
        self.last_chunk = now_ms;
        Verdict::New
    }

    /// Called periodically: after a stall, asks again for what is missing (a lost chunk, a
    /// sender that restarted, a broker that dropped its queue).
    pub fn poll(&mut self, now_ms: u64) -> Option<Want> {
        if self.is_complete() || self.idle_ms(now_ms) < self.patience.stall_ms {
            return None;
        }
        self.request(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn announce(data: &[u8], chunk_size: u32) -> Announce {
        Announce {
            transfer: Digest(Sha256::digest(data).into()),
            name: "m".try_into().unwrap(),
            version: 1,
            size: data.len() as u64,
            chunk_size,
            issued_at: 0,
            purpose: drover_wire::message::Purpose::Install,
        }
    }

    fn chunk<'a>(a: &Announce, data: &'a [u8], i: u32) -> Chunk<'a> {
        let cs = a.chunk_size as usize;
        let part = &data[i as usize * cs..((i as usize + 1) * cs).min(data.len())];
        Chunk { transfer: a.transfer, index: i, sha256: Digest(Sha256::digest(part).into()), data: part }
    }

    fn receiver(a: &Announce) -> Receiver {
        Receiver::new(a.clone(), ChunkSet::new(a.chunk_count() as u32), Patience { stall_ms: 1000 }, 0)
    }

    #[test]
    fn chunks_in_any_order_complete_the_transfer_once() {
        let data = bundle(10_000);
        let a = announce(&data, 1024);
        let mut r = receiver(&a);
        let first = r.request(0).unwrap();
        assert_eq!(first.ranges.as_slice(), &[ChunkRange { start: 0, end: 10 }]);
        for i in [9, 3, 0, 1, 2, 8, 7, 6, 5, 4] {
            assert_eq!(r.on_chunk(&chunk(&a, &data, i), 10), Verdict::New, "chunk {i}");
            assert_eq!(r.on_chunk(&chunk(&a, &data, i), 10), Verdict::Duplicate);
        }
        assert!(r.is_complete());
        assert_eq!(r.request(20), None);
        assert_eq!(r.poll(10_000), None);
    }

    #[test]
    fn a_corrupted_chunk_is_refused_and_asked_for_alone() {
        let data = bundle(5000);
        let a = announce(&data, 1024);
        let mut r = receiver(&a);
        let good = chunk(&a, &data, 2);
        let mut flipped = good.data.to_vec();
        flipped[5] ^= 1;
        let bad = Chunk { data: &flipped, ..good.clone() };
        assert_eq!(r.on_chunk(&bad, 1), Verdict::Corrupt);
        assert_eq!(r.want_one(2).ranges.as_slice(), &[ChunkRange { start: 2, end: 3 }]);
        let short = Chunk { data: &good.data[..100], ..good.clone() };
        assert_eq!(r.on_chunk(&short, 1), Verdict::Corrupt);
        assert!(!r.have().contains(2));
        assert_eq!(r.on_chunk(&good, 2), Verdict::New);
    }

    #[test]
    fn foreign_and_out_of_range_chunks_change_nothing() {
        let data = bundle(3000);
        let a = announce(&data, 1024);
        let mut r = receiver(&a);
        let other = Chunk { transfer: Digest([9; 32]), ..chunk(&a, &data, 0) };
        assert_eq!(r.on_chunk(&other, 1), Verdict::Foreign);
        let past = Chunk { index: 3, ..chunk(&a, &data, 2) };
        assert_eq!(r.on_chunk(&past, 1), Verdict::Foreign);
        assert_eq!(r.have().count(), 0);
    }

    #[test]
    fn a_stalled_transfer_asks_again_only_for_what_is_missing() {
        let data = bundle(8192);
        let a = announce(&data, 1024);
        let mut r = receiver(&a);
        r.request(0);
        for i in [0, 1, 5] {
            r.on_chunk(&chunk(&a, &data, i), 100);
        }
        assert_eq!(r.poll(600), None, "not stalled yet");
        let w = r.poll(1100).expect("stalled: ask again");
        assert_eq!(w.ranges.as_slice(), &[ChunkRange { start: 2, end: 5 }, ChunkRange { start: 6, end: 8 }]);
        assert_eq!(r.poll(1500), None, "just asked");
        assert!(r.poll(2200).is_some());
    }

    #[test]
    fn chunks_still_flowing_to_others_postpone_asking_again() {
        let data = bundle(8192);
        let a = announce(&data, 1024);
        let mut r = receiver(&a);
        r.request(0);
        r.on_chunk(&chunk(&a, &data, 0), 100);
        // Copies of a chunk held, re-sent for other devices: the sender is busy, not gone.
        assert_eq!(r.on_chunk(&chunk(&a, &data, 0), 900), Verdict::Duplicate);
        assert_eq!(r.poll(1500), None, "the transfer is alive");
        assert_eq!(r.quiet_ms(1500), 1400, "but nothing new came: the give-up clock runs on");
        assert!(r.poll(1900).is_some(), "a stall of the whole transfer");
    }

    #[test]
    fn a_resumed_transfer_asks_for_the_rest() {
        let data = bundle(4096);
        let a = announce(&data, 1024);
        let mut have = ChunkSet::new(4);
        have.insert(0);
        have.insert(1);
        let mut r = Receiver::new(a, have, Patience::default(), 0);
        assert_eq!(r.request(0).unwrap().ranges.as_slice(), &[ChunkRange { start: 2, end: 4 }]);
    }
}
