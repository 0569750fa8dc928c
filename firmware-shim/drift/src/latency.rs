//! Mergeable latency histogram with HDR-style log-linear buckets, so an agent can keep every
//! inference latency of a window in a fixed 1.5 KiB array and the fleet server can add histograms
//! from many devices before asking for p50/p99.
//!
//! Bucketing is integer-only: values below 16 µs get one bucket each; from 16 µs up, every power of
//! two is split into 16 equal sub-buckets, so a bucket is never wider than 1/16 of its lower bound.
//! Values of 2^27 µs (~134 s) and more all land in the last bucket.

use core::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Sub-buckets per power of two, as a bit count (16 sub-buckets).
const SUB_BITS: u32 = 4;
/// Number of sub-buckets per power of two; also the number of exact buckets below it.
const SUB: u32 = 1 << SUB_BITS;
/// Values at or above this (2^27 µs, ~134 s) are clamped into the last bucket.
const CLAMP_US: u32 = 1 << 27;

/// Number of buckets: 16 exact ones, 16 per power of two from 2^4 to 2^26, and one overflow bucket
/// for everything from 2^27 µs up.
pub const BUCKETS: usize = 385;

/// Bucket index of a value in microseconds.
fn bucket_of(us: u32) -> usize {
    let v = us.min(CLAMP_US);
    if v < SUB {
        return v as usize;
    }
    let shift = (31 - v.leading_zeros()) - SUB_BITS;
    let sub = (v >> shift) - SUB;
    (SUB + shift * SUB + sub) as usize
}

/// Smallest value of a bucket and its width (number of distinct values it covers, for the last
/// bucket the width of the power of two it starts, as used for its midpoint).
fn bucket_bounds(index: usize) -> (u32, u32) {
    let i = index as u32;
    if i < SUB {
        return (i, 1);
    }
    let shift = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    ((SUB + sub) << shift, 1 << shift)
}

/// Latency histogram over microsecond values.
///
/// Min, max, count and sum are exact; quantiles come from the buckets. For values below 2^27 µs the
/// quantile returned by [`LatencyHistogram::quantile`] is within 1/32 relative error of the exact
/// nearest-rank quantile (half a bucket width over the bucket's lower bound); above that only the
/// clamp to the exact max bounds it. A bucket that already holds `u32::MAX` values drops further
/// values (and they are not counted), so `count` is always the sum of the buckets.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LatencyHistogram {
    buckets: [u32; BUCKETS],
    count: u64,
    sum_us: u64,
    min_us: u32,
    max_us: u32,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram; `const` so it can live in a `static`.
    pub const fn new() -> Self {
        Self { buckets: [0; BUCKETS], count: 0, sum_us: 0, min_us: u32::MAX, max_us: 0 }
    }

    /// Adds one latency. Constant time; never allocates.
    pub fn record(&mut self, us: u32) {
        let slot = &mut self.buckets[bucket_of(us)];
        if *slot == u32::MAX {
            return;
        }
        *slot += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(u64::from(us));
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact sum of the recorded values (saturating at `u64::MAX`).
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// Exact smallest recorded value, `None` when empty.
    pub fn min_us(&self) -> Option<u32> {
        (self.count > 0).then_some(self.min_us)
    }

    /// Exact largest recorded value, `None` when empty.
    pub fn max_us(&self) -> Option<u32> {
        (self.count > 0).then_some(self.max_us)
    }

    /// Exact arithmetic mean, `None` when empty.
    pub fn mean_us(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / self.count as f64)
    }

    /// Nearest-rank quantile: the value of rank `ceil(q * count)` (at least 1), estimated as the
    /// midpoint of its bucket and clamped to the exact `[min, max]` (ranks 1 and `count` return the
    /// exact min and max, and the overflow bucket returns the max). `q` is clamped to `[0, 1]`;
    /// `None` when empty or `q` is NaN. Error bound: see the type's documentation (1/32 relative).
    pub fn quantile(&self, q: f64) -> Option<u32> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let rank = libm::ceil(q.clamp(0.0, 1.0) * self.count as f64) as u64;
        let rank = rank.clamp(1, self.count);
        if rank == 1 {
            return Some(self.min_us);
        }
        if rank == self.count {
            return Some(self.max_us);
        }
        let mut seen = 0u64;
        for (index, &c) in self.buckets.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                if index == BUCKETS - 1 {
                    // The overflow bucket has no upper bound; the exact max is the best estimate.
                    return Some(self.max_us);
                }
                let (low, width) = bucket_bounds(index);
                let mid = low.saturating_add(width / 2);
                return Some(mid.clamp(self.min_us, self.max_us));
            }
        }
        Some(self.max_us)
    }

    /// Adds another histogram into this one, as if every value recorded there had been recorded here
    /// (exactly so unless a bucket saturates at `u32::MAX`).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.count == 0 {
            return;
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.count = self.buckets.iter().map(|&c| u64::from(c)).sum();
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Empties the histogram, e.g. when a reporting window closes.
    pub fn clear(&mut self) {
        *self = Self::new();
    }

    /// The non-empty buckets as `(bucket index, count)`, in increasing index order; this is exactly
    /// what goes on the wire.
    pub fn nonzero(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.buckets.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| (i as u16, *c))
    }
}

/// Why bytes claiming to be a histogram were rejected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HistogramDecodeError {
    BucketOutOfRange,
    IndicesNotIncreasing,
    ZeroCount,
    MinMaxMismatch,
    SumOutOfRange,
}

impl fmt::Display for HistogramDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BucketOutOfRange => "latency histogram: bucket index out of range",
            Self::IndicesNotIncreasing => "latency histogram: bucket indices not strictly increasing",
            Self::ZeroCount => "latency histogram: sparse bucket with a zero count",
            Self::MinMaxMismatch => "latency histogram: min/max inconsistent with the buckets",
            Self::SumOutOfRange => "latency histogram: sum outside [min * count, max * count]",
        })
    }
}

/// Serialises the buckets sparsely as `[[index, count], ...]`.
struct SparseBuckets<'a>(&'a LatencyHistogram);

impl Serialize for SparseBuckets<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.nonzero().count()))?;
        for (index, count) in self.0.nonzero() {
            seq.serialize_element(&(index, count))?;
        }
        seq.end()
    }
}

impl Serialize for LatencyHistogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("LatencyHistogram", 4)?;
        st.serialize_field("sum_us", &self.sum_us)?;
        st.serialize_field("min_us", &self.min_us())?;
        st.serialize_field("max_us", &self.max_us())?;
        st.serialize_field("buckets", &SparseBuckets(self))?;
        st.end()
    }
}

/// Dense buckets rebuilt from the sparse list, validated while reading.
struct DenseBuckets([u32; BUCKETS]);

impl<'de> Deserialize<'de> for DenseBuckets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SparseVisitor;
        impl<'de> Visitor<'de> for SparseVisitor {
            type Value = DenseBuckets;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of [bucket index, count] pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DenseBuckets, A::Error> {
                let mut buckets = [0u32; BUCKETS];
                let mut next_allowed = 0usize;
                while let Some((index, count)) = seq.next_element::<(u16, u32)>()? {
                    let index = usize::from(index);
                    if index >= BUCKETS {
                        return Err(de::Error::custom(HistogramDecodeError::BucketOutOfRange));
                    }
                    if index < next_allowed {
                        return Err(de::Error::custom(HistogramDecodeError::IndicesNotIncreasing));
                    }
                    if count == 0 {
                        return Err(de::Error::custom(HistogramDecodeError::ZeroCount));
                    }
                    buckets[index] = count;
                    next_allowed = index + 1;
                }
                Ok(DenseBuckets(buckets))
            }
        }
        d.deserialize_seq(SparseVisitor)
    }
}

#[derive(Deserialize)]
#[serde(rename = "LatencyHistogram")]
struct HistogramWire {
    sum_us: u64,
    min_us: Option<u32>,
    max_us: Option<u32>,
    buckets: DenseBuckets,
}

impl TryFrom<HistogramWire> for LatencyHistogram {
    type Error = HistogramDecodeError;

    fn try_from(w: HistogramWire) -> Result<Self, Self::Error> {
        let buckets = w.buckets.0;
        let count: u64 = buckets.iter().map(|&c| u64::from(c)).sum();
        let first = buckets.iter().position(|&c| c > 0);
        let last = buckets.iter().rposition(|&c| c > 0);
        let (min_us, max_us) = match (w.min_us, w.max_us, first, last) {
            (None, None, None, None) if w.sum_us == 0 => (u32::MAX, 0),
            (None, None, None, None) => return Err(HistogramDecodeError::SumOutOfRange),
            (Some(lo), Some(hi), Some(first), Some(last))
                if lo <= hi && bucket_of(lo) == first && bucket_of(hi) == last =>
            {
                let (sum, n) = (u128::from(w.sum_us), u128::from(count));
                // The sum saturates at u64::MAX when recording, so only the lower bound is strict there.
                let upper_ok = sum <= u128::from(hi) * n || w.sum_us == u64::MAX;
                if sum < u128::from(lo) * n || !upper_ok {
                    return Err(HistogramDecodeError::SumOutOfRange);
                }
                (lo, hi)
            }
            _ => return Err(HistogramDecodeError::MinMaxMismatch),
        };
        Ok(Self { buckets, count, sum_us: w.sum_us, min_us, max_us })
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = HistogramWire::deserialize(d)?;
        LatencyHistogram::try_from(wire).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;
    use proptest::prelude::*;

    #[test]
    fn bucket_bounds_cover_every_value_without_gaps() {
        // Walk the bucket boundaries: each bucket starts where the previous one ended.
        let mut expected_low = 0u32;
        for index in 0..BUCKETS - 1 {
            let (low, width) = bucket_bounds(index);
            assert_eq!(low, expected_low, "bucket {index}");
            assert_eq!(bucket_of(low), index);
            assert_eq!(bucket_of(low + width - 1), index);
            assert!(width == 1 || u64::from(width) * 16 <= u64::from(low), "bucket {index} too wide");
            expected_low = low + width;
        }
        assert_eq!(expected_low, CLAMP_US);
        assert_eq!(bucket_of(CLAMP_US), BUCKETS - 1);
        assert_eq!(bucket_of(u32::MAX), BUCKETS - 1);
    }

    #[test]
    fn exact_summary_statistics() {
        let mut h = LatencyHistogram::new();
        assert_eq!((h.count(), h.min_us(), h.max_us(), h.mean_us(), h.quantile(0.5)), (0, None, None, None, None));
        for v in [5u32, 1000, 17, 3_000_000_000] {
            h.record(v);
        }
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_us(), 3_000_001_022);
        assert_eq!(h.min_us(), Some(5));
        assert_eq!(h.max_us(), Some(3_000_000_000));
        assert_eq!(h.quantile(0.0), Some(5));
        assert_eq!(h.quantile(1.0), Some(3_000_000_000));
        assert_eq!(h.mean_us(), Some(3_000_001_022.0 / 4.0));
        h.clear();
        assert_eq!(h, LatencyHistogram::new());
    }

    #[test]
    fn quantiles_within_one_32nd_of_exact_nearest_rank() {
        let mut rng = TestRng::new(42);
        for round in 0..20 {
            let n = 1 + (rng.next_u64() % 5000) as usize;
            let mut values = std::vec::Vec::with_capacity(n);
            let mut h = LatencyHistogram::new();
            for _ in 0..n {
                // Log-normal-ish latencies spanning µs to tens of seconds.
                let v = libm::exp(rng.normal() * 2.5 + 7.0 + round as f64 * 0.3).min(1.0e8) as u32;
                values.push(v);
                h.record(v);
            }
            values.sort_unstable();
            for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0] {
                let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
                let exact = f64::from(values[rank - 1]);
                let got = f64::from(h.quantile(q).expect("non-empty"));
                assert!((got - exact).abs() <= exact / 32.0, "q={q} exact={exact} got={got}");
            }
        }
    }

    #[test]
    fn serde_is_sparse_and_round_trips() {
        let mut h = LatencyHistogram::new();
        for v in [3u32, 3, 40, 40_000, 1 << 30] {
            h.record(v);
        }
        let json = serde_json::to_string(&h).expect("json");
        assert_eq!(
            json,
            std::format!(
                r#"{{"sum_us":{},"min_us":3,"max_us":{},"buckets":[[3,2],[{},1],[{},1],[384,1]]}}"#,
                3 + 3 + 40 + 40_000 + (1u64 << 30),
                1u32 << 30,
                bucket_of(40),
                bucket_of(40_000)
            )
        );
        let back: LatencyHistogram = serde_json::from_str(&json).expect("json back");
        assert_eq!(back, h);
        let bytes = postcard::to_stdvec(&h).expect("postcard");
        let back: LatencyHistogram = postcard::from_bytes(&bytes).expect("postcard back");
        assert_eq!(back, h);
        let empty = LatencyHistogram::new();
        let back: LatencyHistogram =
            serde_json::from_str(&serde_json::to_string(&empty).expect("json")).expect("json back");
        assert_eq!(back, empty);
    }

    #[test]
    fn invalid_wire_data_is_an_error() {
        let bad = [
            r#"{"sum_us":6,"min_us":3,"max_us":3,"buckets":[[385,2]]}"#,
            r#"{"sum_us":6,"min_us":3,"max_us":3,"buckets":[[3,1],[3,1]]}"#,
            r#"{"sum_us":6,"min_us":3,"max_us":4,"buckets":[[4,1],[3,1]]}"#,
            r#"{"sum_us":6,"min_us":3,"max_us":3,"buckets":[[3,2],[5,0]]}"#,
            r#"{"sum_us":6,"min_us":4,"max_us":3,"buckets":[[3,2]]}"#,
            r#"{"sum_us":6,"min_us":3,"max_us":3,"buckets":[]}"#,
            r#"{"sum_us":0,"min_us":null,"max_us":null,"buckets":[[3,2]]}"#,
            r#"{"sum_us":7,"min_us":3,"max_us":3,"buckets":[[3,2]]}"#,
            r#"{"sum_us":6,"min_us":3,"max_us":3,"buckets":[[3,-2]]}"#,
            r#"{"sum_us":6,"min_us":3,"max_us":3,"buckets":[[3]]}"#,
            r#"{"sum_us":6}"#,
        ];
        for text in bad {
            assert!(serde_json::from_str::<LatencyHistogram>(text).is_err(), "{text}");
        }
        assert!(
            serde_json::from_str::<LatencyHistogram>(r#"{"sum_us":6,"min_us":3,"max_us":3,"buckets":[[3,2]]}"#).is_ok()
        );
    }

    proptest! {
        #[test]
        fn merge_equals_recording_everything(
            a in proptest::collection::vec(any::<u32>(), 0..200),
            b in proptest::collection::vec(0u32..100_000, 0..200),
        ) {
            let (mut ha, mut hb, mut all) = (LatencyHistogram::new(), LatencyHistogram::new(), LatencyHistogram::new());
            for &v in &a { ha.record(v); all.record(v); }
            for &v in &b { hb.record(v); all.record(v); }
            ha.merge(&hb);
            prop_assert_eq!(&ha, &all);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = postcard::from_bytes::<LatencyHistogram>(&bytes);
            let _ = serde_json::from_slice::<LatencyHistogram>(&bytes);
        }

        #[test]
        fn round_trip_any_histogram(values in proptest::collection::vec(any::<u32>(), 0..100)) {
            let mut h = LatencyHistogram::new();
            for v in values { h.record(v); }
            let back: LatencyHistogram = postcard::from_bytes(&postcard::to_stdvec(&h).expect("enc")).expect("dec");
            prop_assert_eq!(&back, &h);
            let back: LatencyHistogram = serde_json::from_str(&serde_json::to_string(&h).expect("enc")).expect("dec");
            prop_assert_eq!(&back, &h);
        }
    }
}
