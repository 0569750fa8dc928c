//! Which chunks of a transfer a device holds: a bitmap, and the ranges it still misses.

use drover_wire::message::{ChunkRange, MAX_WANT_RANGES};

/// A set of chunk indices below a fixed count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSet {
    bits: Vec<u64>,
    total: u32,
    count: u32,
}

impl ChunkSet {
    /// An empty set of `total` chunks.
    pub fn new(total: u32) -> ChunkSet {
        ChunkSet { bits: vec![0; (total as usize).div_ceil(64)], total, count: 0 }
    }

    /// Chunks in all.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Chunks held.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether every chunk is held.
    pub fn is_complete(&self) -> bool {
        self.count == self.total
    }

    /// Whether `index` is held (false when out of range).
    pub fn contains(&self, index: u32) -> bool {
        index < self.total && self.bits[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Adds `index`; false if it was held already or is out of range.
    pub fn insert(&mut self, index: u32) -> bool {
        if index >= self.total || self.contains(index) {
            return false;
        }
        self.bits[(index / 64) as usize] |= 1 << (index % 64);
        self.count += 1;
        true
    }

    /// The missing chunks as ascending ranges, at most [`MAX_WANT_RANGES`] of them.
    pub fn missing(&self) -> heapless::Vec<ChunkRange, MAX_WANT_RANGES> {
        let mut out = heapless::Vec::new();
        let mut i = 0;
        while i < self.total {
            if self.contains(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.total && !self.contains(i) {
                i += 1;
            }
            if out.push(ChunkRange { start, end: i }).is_err() {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn missing_ranges_are_the_gaps() {
        let mut s = ChunkSet::new(10);
        assert_eq!(s.missing().as_slice(), &[ChunkRange { start: 0, end: 10 }]);
        for i in [0, 1, 4, 9] {
            assert!(s.insert(i));
        }
        assert!(!s.insert(4) && !s.insert(10));
        assert_eq!(s.count(), 4);
        assert_eq!(s.missing().as_slice(), &[ChunkRange { start: 2, end: 4 }, ChunkRange { start: 5, end: 9 }]);
        for i in 0..10 {
            s.insert(i);
        }
        assert!(s.is_complete() && s.missing().is_empty());
    }

    #[test]
    fn many_gaps_are_reported_a_window_at_a_time() {
        let mut s = ChunkSet::new(1000);
        for i in (0..1000).step_by(2) {
            s.insert(i);
        }
        let m = s.missing();
        assert_eq!(m.len(), MAX_WANT_RANGES);
        assert_eq!(m[0], ChunkRange { start: 1, end: 2 });
    }

    proptest! {
        #[test]
        fn missing_ranges_and_held_chunks_partition_the_set(total in 0u32..300, held in proptest::collection::vec(0u32..320, 0..300)) {
            let mut s = ChunkSet::new(total);
            for i in &held { s.insert(*i); }
            let missing: u32 = s.missing().iter().map(|r| r.end - r.start).sum();
            if s.missing().len() < MAX_WANT_RANGES {
                prop_assert_eq!(missing + s.count(), total);
            }
            for r in s.missing() { for i in r.start..r.end { prop_assert!(!s.contains(i)); } }
        }
    }
}
