//! One feature's reference distribution (from the training data), in bounded storage: the bin edges
//! or category values that define a sketch's slots, and the expected proportion of each slot that
//! drift is measured against.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::sketch::{MAX_BINS, MAX_CATEGORIES, MAX_SLOTS};

/// How a feature's values are mapped to slots.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum FeatureKind {
    /// Continuous values, binned by edges (e.g. equal-frequency deciles of the training data).
    Numeric,
    /// Integer codes (categories, predicted classes); unseen codes go to a final "other" slot.
    Categorical,
}

/// Why a reference (or a monitor built from references) was rejected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RefError {
    /// More than [`MAX_BINS`] bins.
    TooManyBins,
    /// No bins (fewer than two edges).
    NoBins,
    /// `edges.len()` is not `counts.len() + 1`, or categorical `values` and `counts` differ in length.
    CountMismatch,
    /// Edges are not strictly ascending (only a single bin `[x, x]` may repeat its edge).
    EdgesNotAscending,
    /// An edge is NaN or infinite.
    NonFiniteEdge,
    /// More than [`MAX_CATEGORIES`] categories.
    TooManyCategories,
    /// No categories.
    NoCategories,
    /// The same category value appears twice.
    DuplicateCategory,
    /// All reference counts are zero, so there are no expected proportions.
    EmptyReference,
    /// Serialized reference mixes numeric edges with categorical values.
    MixedKinds,
    /// More features than the monitor's capacity `F`.
    TooManyFeatures,
    /// Reference moments given for a categorical feature, or not finite, or a non-positive std.
    BadMoments,
}

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooManyBins => "reference has more than 32 bins",
            Self::NoBins => "reference has no bins",
            Self::CountMismatch => "reference counts do not match its edges or values",
            Self::EdgesNotAscending => "reference bin edges are not strictly ascending",
            Self::NonFiniteEdge => "reference bin edge is not finite",
            Self::TooManyCategories => "reference has more than 32 categories",
            Self::NoCategories => "reference has no categories",
            Self::DuplicateCategory => "reference lists a category twice",
            Self::EmptyReference => "reference counts are all zero",
            Self::MixedKinds => "reference mixes bin edges and category values",
            Self::TooManyFeatures => "more features than the monitor can hold",
            Self::BadMoments => "reference mean/std invalid or given for a categorical feature",
        })
    }
}

impl core::error::Error for RefError {}

/// Reference distribution of one feature. Build it with [`FeatureRef::numeric`] or
/// [`FeatureRef::categorical`]; every instance satisfies their validation, including one
/// deserialised from untrusted bytes.
#[derive(Clone, PartialEq, Debug)]
pub struct FeatureRef {
    kind: FeatureKind,
    edges: heapless::Vec<f64, { MAX_BINS + 1 }>,
    values: heapless::Vec<i64, MAX_CATEGORIES>,
    counts: heapless::Vec<u64, MAX_SLOTS>,
    expected: heapless::Vec<f64, MAX_SLOTS>,
    total: u64,
    moments: Option<(f64, f64)>,
}

impl FeatureRef {
    /// Numeric reference from histogram `edges` (ascending, `counts.len() + 1` of them, 1..=32
    /// bins) and the training counts per bin. A constant feature is one bin `[x, x]`.
    pub fn numeric(edges: &[f64], counts: &[u64]) -> Result<FeatureRef, RefError> {
        if counts.is_empty() || edges.len() < 2 {
            return Err(RefError::NoBins);
        }
        if counts.len() > MAX_BINS {
            return Err(RefError::TooManyBins);
        }
        if edges.len() != counts.len() + 1 {
            return Err(RefError::CountMismatch);
        }
        if edges.iter().any(|e| !e.is_finite()) {
            return Err(RefError::NonFiniteEdge);
        }
        let constant = edges.len() == 2 && edges[0] == edges[1];
        if !constant && edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(RefError::EdgesNotAscending);
        }
        let edges = heapless::Vec::from_slice(edges).map_err(|_| RefError::TooManyBins)?;
        Self::build(FeatureKind::Numeric, edges, heapless::Vec::new(), counts, 0)
    }

    /// Categorical reference from the distinct integer `values` seen in training (1..=32) and
    /// their counts. Values outside this list are counted in an extra "other" slot whose expected
    /// proportion is 0, so any of them is a new category.
    pub fn categorical(values: &[i64], counts: &[u64]) -> Result<FeatureRef, RefError> {
        if values.is_empty() {
            return Err(RefError::NoCategories);
        }
        if values.len() > MAX_CATEGORIES {
            return Err(RefError::TooManyCategories);
        }
        if values.len() != counts.len() {
            return Err(RefError::CountMismatch);
        }
        if values.iter().enumerate().any(|(i, v)| values[..i].contains(v)) {
            return Err(RefError::DuplicateCategory);
        }
        let values = heapless::Vec::from_slice(values).map_err(|_| RefError::TooManyCategories)?;
        Self::build(FeatureKind::Categorical, heapless::Vec::new(), values, counts, 1)
    }

    fn build(
        kind: FeatureKind,
        edges: heapless::Vec<f64, { MAX_BINS + 1 }>,
        values: heapless::Vec<i64, MAX_CATEGORIES>,
        counts: &[u64],
        extra_slots: usize,
    ) -> Result<FeatureRef, RefError> {
        let total = counts.iter().try_fold(0u64, |acc, &c| acc.checked_add(c)).ok_or(RefError::CountMismatch)?;
        if total == 0 {
            return Err(RefError::EmptyReference);
        }
        let counts: heapless::Vec<u64, MAX_SLOTS> =
            heapless::Vec::from_slice(counts).map_err(|_| RefError::CountMismatch)?;
        let mut expected = heapless::Vec::new();
        for &c in counts.iter() {
            expected.push(c as f64 / total as f64).map_err(|_| RefError::CountMismatch)?;
        }
        for _ in 0..extra_slots {
            expected.push(0.0).map_err(|_| RefError::CountMismatch)?;
        }
        Ok(FeatureRef { kind, edges, values, counts, expected, total, moments: None })
    }

    /// Adds the training mean and standard deviation of a numeric feature, which enables the
    /// variance test ([`crate::Statistic::Variance`]). Histogram statistics on ~10 bins and a few
    /// hundred samples cannot reliably see a variance change at a low false-alarm rate (the outer
    /// bins only gain a few percent of mass), while the sample variance can. Errors for categorical
    /// features, non-finite values or `std <= 0`.
    pub fn with_moments(mut self, mean: f64, std: f64) -> Result<FeatureRef, RefError> {
        if self.kind != FeatureKind::Numeric || !mean.is_finite() || !std.is_finite() || std <= 0.0 {
            return Err(RefError::BadMoments);
        }
        self.moments = Some((mean, std));
        Ok(self)
    }

    /// Training `(mean, std)` if given with [`FeatureRef::with_moments`].
    pub fn moments(&self) -> Option<(f64, f64)> {
        self.moments
    }

    /// Numeric or categorical.
    pub fn kind(&self) -> FeatureKind {
        self.kind
    }

    /// Number of sketch slots: bins, or categories + 1 for "other".
    pub fn slots(&self) -> usize {
        self.expected.len()
    }

    /// Expected proportion per slot (sums to 1; the categorical "other" slot is 0).
    pub fn expected(&self) -> &[f64] {
        &self.expected
    }

    /// Number of training values behind the reference; the second sample size of the KS p-value.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bin edges (numeric) — empty for categorical features.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// Category values (categorical) — empty for numeric features.
    pub fn values(&self) -> &[i64] {
        &self.values
    }

    /// Slot of a finite value. Numeric: a value equal to an inner edge falls in the upper bin, and
    /// values below or above the range go to the first or last bin (identical to the agent's
    /// `partition_point` binning). Categorical: the index of the value when `x` is exactly an
    /// integer in the list (f32 holds integers exactly only up to 2^24), else the "other" slot.
    pub fn slot(&self, x: f32) -> usize {
        match self.kind {
            FeatureKind::Numeric => {
                let x = f64::from(x);
                let edges = &self.edges;
                let inner = &edges[1..edges.len().saturating_sub(1).max(1)];
                inner.partition_point(|e| *e <= x).min(edges.len().saturating_sub(2))
            }
            FeatureKind::Categorical => {
                let other = self.values.len();
                // i64::MAX as f32 rounds up to 2^63, which is out of range, hence the strict bound.
                let in_range = x.is_finite() && libm::fabsf(x) < 9.2e18;
                if !in_range || libm::roundf(x) != x {
                    return other;
                }
                let v = x as i64;
                self.values.iter().position(|&c| c == v).unwrap_or(other)
            }
        }
    }
}

#[derive(Serialize)]
#[serde(rename = "FeatureRef")]
struct FeatureRefWireOut<'a> {
    kind: FeatureKind,
    edges: &'a [f64],
    values: &'a [i64],
    counts: &'a [u64],
    moments: Option<(f64, f64)>,
}

#[derive(Deserialize)]
#[serde(rename = "FeatureRef")]
struct FeatureRefWireIn {
    kind: FeatureKind,
    edges: heapless::Vec<f64, { MAX_BINS + 1 }>,
    values: heapless::Vec<i64, MAX_CATEGORIES>,
    counts: heapless::Vec<u64, MAX_SLOTS>,
    #[serde(default)]
    moments: Option<(f64, f64)>,
}

/// On the wire a reference is `{kind, edges, values, counts, moments}` (the training counts, not the
/// proportions), and reading it back runs the same validation as the constructors.
impl Serialize for FeatureRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FeatureRefWireOut {
            kind: self.kind,
            edges: &self.edges,
            values: &self.values,
            counts: &self.counts,
            moments: self.moments,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for FeatureRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = FeatureRefWireIn::deserialize(d)?;
        let built = match w.kind {
            FeatureKind::Numeric if w.values.is_empty() => FeatureRef::numeric(&w.edges, &w.counts),
            FeatureKind::Categorical if w.edges.is_empty() => FeatureRef::categorical(&w.values, &w.counts),
            _ => Err(RefError::MixedKinds),
        };
        let built = match (built, w.moments) {
            (Ok(r), Some((mean, std))) => r.with_moments(mean, std),
            (built, _) => built,
        };
        built.map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The binning function the agent uses, copied verbatim, as the oracle for `slot`.
    fn agent_bin(edges: &[f64], x: f64) -> usize {
        let inner = &edges[1..edges.len().saturating_sub(1).max(1)];
        inner.partition_point(|e| *e <= x).min(edges.len().saturating_sub(2))
    }

    #[test]
    fn numeric_validation() {
        assert_eq!(FeatureRef::numeric(&[0.0], &[]), Err(RefError::NoBins));
        assert_eq!(FeatureRef::numeric(&[0.0, 1.0, 2.0], &[1]), Err(RefError::CountMismatch));
        assert_eq!(FeatureRef::numeric(&[0.0, 1.0, 1.0], &[1, 1]), Err(RefError::EdgesNotAscending));
        assert_eq!(FeatureRef::numeric(&[0.0, f64::NAN], &[1]), Err(RefError::NonFiniteEdge));
        assert_eq!(FeatureRef::numeric(&[0.0, 1.0], &[0]), Err(RefError::EmptyReference));
        let edges: std::vec::Vec<f64> = (0..34).map(f64::from).collect();
        assert_eq!(FeatureRef::numeric(&edges, &[1; 33]), Err(RefError::TooManyBins));
        assert!(FeatureRef::numeric(&edges[..33], &[1; 32]).is_ok());
        let constant = FeatureRef::numeric(&[2.5, 2.5], &[10]).expect("constant feature");
        assert_eq!((constant.slots(), constant.slot(-1.0), constant.slot(9.0)), (1, 0, 0));
    }

    #[test]
    fn categorical_validation_and_slots() {
        assert_eq!(FeatureRef::categorical(&[], &[]), Err(RefError::NoCategories));
        assert_eq!(FeatureRef::categorical(&[1, 1], &[1, 1]), Err(RefError::DuplicateCategory));
        assert_eq!(FeatureRef::categorical(&[1, 2], &[1]), Err(RefError::CountMismatch));
        let r = FeatureRef::categorical(&[3, -1, 7], &[2, 1, 1]).expect("valid");
        assert_eq!(r.slots(), 4);
        assert_eq!(r.expected(), &[0.5, 0.25, 0.25, 0.0]);
        assert_eq!(r.kind(), FeatureKind::Categorical);
        let slots: std::vec::Vec<usize> =
            [3.0f32, -1.0, 7.0, 7.4, 4.0, f32::NAN, f32::INFINITY, 1e30].iter().map(|&x| r.slot(x)).collect();
        assert_eq!(slots, [0, 1, 2, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn serde_round_trip_and_validation() {
        for r in [
            FeatureRef::numeric(&[0.0, 0.5, 2.0], &[3, 5]).expect("valid"),
            FeatureRef::categorical(&[0, 1], &[4, 4]).expect("valid"),
            FeatureRef::numeric(&[0.0, 1.0], &[4]).and_then(|r| r.with_moments(0.5, 0.25)).expect("valid"),
        ] {
            let json = serde_json::to_string(&r).expect("enc");
            assert_eq!(serde_json::from_str::<FeatureRef>(&json).expect("dec"), r);
            let bytes = postcard::to_stdvec(&r).expect("enc");
            assert_eq!(postcard::from_bytes::<FeatureRef>(&bytes).expect("dec"), r);
        }
        for bad in [
            r#"{"kind":"Numeric","edges":[1.0,0.0],"values":[],"counts":[1]}"#,
            r#"{"kind":"Numeric","edges":[0.0,1.0],"values":[3],"counts":[1]}"#,
            r#"{"kind":"Categorical","edges":[],"values":[3,3],"counts":[1,1]}"#,
            r#"{"kind":"Categorical","edges":[],"values":[3],"counts":[0]}"#,
            r#"{"kind":"Other","edges":[],"values":[3],"counts":[1]}"#,
            r#"{"kind":"Numeric","edges":[0.0,1.0],"values":[],"counts":[1],"moments":[0.0,0.0]}"#,
            r#"{"kind":"Categorical","edges":[],"values":[3],"counts":[1],"moments":[0.0,1.0]}"#,
        ] {
            assert!(serde_json::from_str::<FeatureRef>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn numeric_slot_matches_agent_binning(
            quarters in proptest::collection::vec(-400i32..400, 2..34),
            probes in proptest::collection::vec(-150.0f32..150.0, 1..50),
        ) {
            // Multiples of 1/4 are exact in f32, so probing exactly on an edge is possible.
            let mut raw: std::vec::Vec<f64> = quarters.iter().map(|&q| f64::from(q) / 4.0).collect();
            raw.sort_by(|a, b| a.total_cmp(b));
            raw.dedup();
            prop_assume!(raw.len() >= 2);
            let counts = std::vec![1u64; raw.len() - 1];
            let r = FeatureRef::numeric(&raw, &counts).expect("valid edges");
            for x in probes.iter().copied().chain(raw.iter().map(|&e| e as f32)) {
                prop_assert_eq!(r.slot(x), agent_bin(&raw, f64::from(x)));
            }
            for (i, &e) in raw.iter().enumerate().take(raw.len() - 1).skip(1) {
                // A value exactly on inner edge i starts bin i (the upper one).
                prop_assert_eq!(r.slot(e as f32), i);
            }
        }

        #[test]
        fn bad_bytes_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = postcard::from_bytes::<FeatureRef>(&junk);
            let _ = serde_json::from_slice::<FeatureRef>(&junk);
        }
    }
}
