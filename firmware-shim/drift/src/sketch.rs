//! Per-feature, per-window summary that devices send and the fleet server adds up: bin counts plus
//! exact moments. Two sketches of the same feature merge into the sketch of the union of their
//! windows, so drift can be judged per device or across the fleet with the same scoring code.

use core::fmt;

use serde::{Deserialize, Serialize};

/// Most bins a numeric feature's reference may have; bounds the sketch size.
pub const MAX_BINS: usize = 32;
/// Most distinct values a categorical feature's reference may have.
pub const MAX_CATEGORIES: usize = 32;
/// Slots in a sketch: `MAX_BINS`, or `MAX_CATEGORIES` plus one "other/new" slot.
pub const MAX_SLOTS: usize = 33;

/// Why two sketches could not be merged; the target is left unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MergeError {
    /// The sketches were built against references with a different number of slots, so their
    /// counts do not describe the same bins.
    SlotMismatch {
        /// Slots of the sketch being merged into.
        ours: usize,
        /// Slots of the sketch being merged from.
        theirs: usize,
    },
    /// A count would overflow `u32`; split the aggregation.
    Overflow,
}

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SlotMismatch { ours, theirs } => {
                write!(f, "cannot merge sketches with {ours} and {theirs} slots")
            }
            Self::Overflow => f.write_str("merging sketches would overflow a u32 count"),
        }
    }
}

impl core::error::Error for MergeError {}

/// Counts and moments of one feature over one window.
///
/// Invariants (checked when deserialising): the slot counts add up to `n`; `min`/`max` are present
/// exactly when `n > 0` and `min ≤ max`; the sums are finite.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(try_from = "SketchWire")]
pub struct Sketch {
    /// One count per reference bin (numeric) or per reference category plus a final "other" slot.
    pub counts: heapless::Vec<u32, MAX_SLOTS>,
    /// Finite values seen.
    pub n: u32,
    /// NaN or infinite values seen; kept out of every other field.
    pub non_finite: u32,
    /// Sum of the finite values (for the mean).
    pub sum: f64,
    /// Sum of squares of the finite values (for the standard deviation).
    pub sum_sq: f64,
    /// Smallest finite value, `None` when `n == 0`.
    pub min: Option<f32>,
    /// Largest finite value, `None` when `n == 0`.
    pub max: Option<f32>,
}

impl Sketch {
    /// An empty sketch with `slots` zeroed counts (clamped to [`MAX_SLOTS`]; a
    /// [`crate::FeatureRef`] never asks for more).
    pub fn new(slots: usize) -> Self {
        let mut counts = heapless::Vec::new();
        for _ in 0..slots.min(MAX_SLOTS) {
            // Cannot fail: at most MAX_SLOTS pushes.
            let _ = counts.push(0);
        }
        Self { counts, n: 0, non_finite: 0, sum: 0.0, sum_sq: 0.0, min: None, max: None }
    }

    /// Number of slots (bins, or categories + 1).
    pub fn slots(&self) -> usize {
        self.counts.len()
    }

    /// Records one value that the reference put in `slot`. Non-finite values only bump
    /// `non_finite`. A value whose slot is outside the sketch, or whose count would overflow, is
    /// dropped entirely, so `Σ counts == n` always holds.
    pub fn record(&mut self, slot: usize, x: f32) {
        if !x.is_finite() {
            self.non_finite = self.non_finite.saturating_add(1);
            return;
        }
        let (Some(count), Some(n)) = (self.counts.get_mut(slot), self.n.checked_add(1)) else {
            return;
        };
        let Some(c) = count.checked_add(1) else {
            return;
        };
        *count = c;
        self.n = n;
        let v = f64::from(x);
        self.sum += v;
        self.sum_sq += v * v;
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
    }

    /// Adds `other` into `self`, as if both windows' values had been recorded here. Errors (and
    /// leaves `self` unchanged) when the slot counts differ or a count would overflow.
    pub fn merge(&mut self, other: &Sketch) -> Result<(), MergeError> {
        if self.counts.len() != other.counts.len() {
            return Err(MergeError::SlotMismatch { ours: self.counts.len(), theirs: other.counts.len() });
        }
        let overflow = self.counts.iter().zip(other.counts.iter()).any(|(a, b)| a.checked_add(*b).is_none())
            || self.n.checked_add(other.n).is_none();
        if overflow {
            return Err(MergeError::Overflow);
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.n += other.n;
        self.non_finite = self.non_finite.saturating_add(other.non_finite);
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }

    /// Mean of the finite values, `None` when there are none.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }

    /// Population standard deviation of the finite values (divides by n), `None` when there are
    /// none. Computed from the sums, so it loses precision when the mean is huge relative to the
    /// spread; fine for drift reporting, not for metrology.
    pub fn std(&self) -> Option<f64> {
        let mean = self.mean()?;
        let var = self.sum_sq / f64::from(self.n) - mean * mean;
        Some(libm::sqrt(var.max(0.0)))
    }

    /// Empties the sketch but keeps its number of slots, ready for the next window.
    pub fn clear(&mut self) {
        *self = Self::new(self.counts.len());
    }
}

/// Why bytes claiming to be a sketch were rejected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SketchDecodeError {
    /// The slot counts do not add up to `n`.
    CountsMismatch,
    /// `min`/`max` missing while `n > 0`, present while `n == 0`, non-finite, or `min > max`.
    BadRange,
    /// A sum is not finite.
    NonFiniteSum,
}

impl fmt::Display for SketchDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CountsMismatch => "sketch: slot counts do not add up to n",
            Self::BadRange => "sketch: min/max inconsistent with n",
            Self::NonFiniteSum => "sketch: non-finite sum",
        })
    }
}

impl core::error::Error for SketchDecodeError {}

#[derive(Deserialize)]
#[serde(rename = "Sketch")]
struct SketchWire {
    counts: heapless::Vec<u32, MAX_SLOTS>,
    n: u32,
    non_finite: u32,
    sum: f64,
    sum_sq: f64,
    min: Option<f32>,
    max: Option<f32>,
}

impl TryFrom<SketchWire> for Sketch {
    type Error = SketchDecodeError;

    fn try_from(w: SketchWire) -> Result<Self, Self::Error> {
        let total: u64 = w.counts.iter().map(|&c| u64::from(c)).sum();
        if total != u64::from(w.n) {
            return Err(SketchDecodeError::CountsMismatch);
        }
        match (w.n, w.min, w.max) {
            (0, None, None) => {}
            (1.., Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && lo <= hi => {}
            _ => return Err(SketchDecodeError::BadRange),
        }
        if !w.sum.is_finite() || !w.sum_sq.is_finite() || w.sum_sq < 0.0 {
            return Err(SketchDecodeError::NonFiniteSum);
        }
        Ok(Self {
            counts: w.counts,
            n: w.n,
            non_finite: w.non_finite,
            sum: w.sum,
            sum_sq: w.sum_sq,
            min: w.min,
            max: w.max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn filled(slots: usize, values: &[(usize, f32)]) -> Sketch {
        let mut s = Sketch::new(slots);
        for &(slot, x) in values {
            s.record(slot, x);
        }
        s
    }

    #[test]
    fn moments_and_non_finite() {
        let s = filled(3, &[(0, 1.0), (1, 2.0), (2, 3.0), (2, f32::NAN), (1, f32::INFINITY), (7, 4.0)]);
        assert_eq!(s.counts.as_slice(), &[1, 1, 1]);
        assert_eq!((s.n, s.non_finite), (3, 2));
        assert_eq!(s.mean(), Some(2.0));
        // Population std of {1, 2, 3} is sqrt(2/3).
        assert!((s.std().expect("non-empty") - libm::sqrt(2.0 / 3.0)).abs() < 1e-12);
        assert_eq!((s.min, s.max), (Some(1.0), Some(3.0)));
        let mut c = s.clone();
        c.clear();
        assert_eq!(c, Sketch::new(3));
        assert_eq!((c.mean(), c.std()), (None, None));
    }

    #[test]
    fn merge_rejects_mismatched_slots_and_keeps_target() {
        let mut a = filled(3, &[(0, 1.0)]);
        let before = a.clone();
        assert_eq!(a.merge(&Sketch::new(4)), Err(MergeError::SlotMismatch { ours: 3, theirs: 4 }));
        assert_eq!(a, before);
        let mut big = Sketch::new(3);
        big.counts[0] = u32::MAX;
        big.n = u32::MAX;
        assert_eq!(a.merge(&big), Err(MergeError::Overflow));
        assert_eq!(a, before);
    }

    #[test]
    fn invalid_wire_data_is_an_error() {
        let bad = [
            r#"{"counts":[1,2],"n":4,"non_finite":0,"sum":1.0,"sum_sq":1.0,"min":0.0,"max":1.0}"#,
            r#"{"counts":[1,2],"n":3,"non_finite":0,"sum":1.0,"sum_sq":1.0,"min":null,"max":1.0}"#,
            r#"{"counts":[1,2],"n":3,"non_finite":0,"sum":1.0,"sum_sq":1.0,"min":2.0,"max":1.0}"#,
            r#"{"counts":[0,0],"n":0,"non_finite":0,"sum":0.0,"sum_sq":0.0,"min":2.0,"max":2.0}"#,
            r#"{"counts":[1,2],"n":3,"non_finite":0,"sum":null,"sum_sq":1.0,"min":0.0,"max":1.0}"#,
            r#"{"counts":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"n":0,"non_finite":0,"sum":0.0,"sum_sq":0.0,"min":null,"max":null}"#,
        ];
        for text in bad {
            assert!(serde_json::from_str::<Sketch>(text).is_err(), "{text}");
        }
    }

    fn arb_values() -> impl Strategy<Value = std::vec::Vec<(usize, f32)>> {
        proptest::collection::vec((0usize..4, prop_oneof![-1e6f32..1e6f32, Just(f32::NAN)]), 0..100)
    }

    proptest! {
        #[test]
        fn merge_equals_recording_everything(a in arb_values(), b in arb_values()) {
            let mut sa = filled(4, &a);
            let sb = filled(4, &b);
            let mut all = filled(4, &a);
            for &(slot, x) in &b { all.record(slot, x); }
            sa.merge(&sb).expect("same slots");
            prop_assert_eq!(&sa.counts, &all.counts);
            prop_assert_eq!((sa.n, sa.non_finite, sa.min, sa.max), (all.n, all.non_finite, all.min, all.max));
            // Float sums may associate differently.
            prop_assert!((sa.sum - all.sum).abs() <= 1e-9 * (1.0 + all.sum_sq));
        }

        #[test]
        fn round_trips_and_bad_bytes_do_not_panic(a in arb_values(), junk in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = filled(4, &a);
            let back: Sketch = postcard::from_bytes(&postcard::to_stdvec(&s).expect("enc")).expect("dec");
            prop_assert_eq!(&back, &s);
            let back: Sketch = serde_json::from_str(&serde_json::to_string(&s).expect("enc")).expect("dec");
            prop_assert_eq!(&back, &s);
            let _ = postcard::from_bytes::<Sketch>(&junk);
            let _ = serde_json::from_slice::<Sketch>(&junk);
        }
    }
}
