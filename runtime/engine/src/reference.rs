//! Reference statistics of a model's training (or validation) data, computed through the real
//! engine and shipped in the bundle: what "normal" inputs and outputs look like, so the agent
//! can tell when live data drifts away from it.
//!
//! Per input feature (per element for vector inputs, pooled per channel for images): count,
//! mean, standard deviation, range, and a histogram on equal-frequency bins (the bins PSI and
//! chi-squared compare against). Per classifier output: the class distribution.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::samples::{Sample, SampleError, SampleFile};
use crate::tensor::{Tensor, TensorData};
use crate::{Model, RunError};

/// Most histogram bins per feature: what the agent's bounded drift monitor holds.
pub const MAX_BINS: usize = drover_wire::drift::MAX_BINS;

/// Most values kept per feature for the quantiles (a stride subsamples beyond it).
const MAX_VALUES_PER_FEATURE: usize = 200_000;

/// How an input's elements map to features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLayout {
    /// Each element of the sample is a feature (tabular and sensor-window inputs).
    Elements,
    /// Elements are pooled per channel along the sample's first axis (images, `[C, H, W]`).
    Channels,
}

/// Statistics of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureStats {
    /// Values seen.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Bin edges (ascending, bins + 1 of them): equal-frequency on the reference data.
    pub edges: Vec<f64>,
    /// Reference values per bin (a value equal to an inner edge falls in the upper bin).
    pub counts: Vec<u64>,
}

/// Class distribution of one classifier output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputStats {
    /// Output name.
    pub name: String,
    /// How the class is read: `label` (an integer output) or `argmax` (a score vector).
    pub kind: String,
    /// Count per class.
    pub classes: BTreeMap<i64, u64>,
}

/// The reference profile a bundle carries (`reference.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceStats {
    /// Samples profiled.
    pub samples: u64,
    /// The input profiled (the first input of the model).
    pub input: String,
    /// How its elements map to features.
    pub layout: FeatureLayout,
    /// Feature names (column names of tabular data), when the bundle author gave them; alerts
    /// name features by them instead of `input[i]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// One entry per feature.
    pub features: Vec<FeatureStats>,
    /// Class distributions of the classifier outputs.
    pub outputs: Vec<OutputStats>,
}

impl ReferenceStats {
    /// The name drift reports give input feature `i`: the author's column name, else
    /// `input[i]` (or `input[ci]` for an image channel). The agent and the fleet server both
    /// name features this way, so the server can match a device's window to the reference.
    pub fn feature_name(&self, i: usize) -> String {
        match (&self.names, self.layout) {
            (Some(n), _) if n.len() == self.features.len() => n[i].clone(),
            (_, FeatureLayout::Elements) => format!("{}[{i}]", self.input),
            (_, FeatureLayout::Channels) => format!("{}[c{i}]", self.input),
        }
    }

    /// The classifier outputs whose class distribution prediction drift is judged on: every
    /// `label` output, and a score vector's argmax only when the model has no label.
    ///
    /// A classifier that outputs both (scikit-learn's `label` and `probabilities`, as converted
    /// by skl2onnx) predicts one class per sample, and the argmax of its probabilities *is* that
    /// label. Testing the argmax as a second class label repeats the label's chi-squared test on
    /// the same counts: one shift of the predictions raised two identical alerts and listed two
    /// causes for retraining, and the second adds no evidence (the same test on the same data is
    /// not more significant for being run twice). The probabilities carry something the label
    /// does not — how sure the model is — but that is a distribution of scores, judged against a
    /// reference of scores, which no bundle carries yet; a class test of the argmax would never
    /// see it either. A model whose only prediction is a score vector (a CNN's softmax) has no
    /// label, so its argmax is its predicted class and is judged as one.
    pub fn judged_outputs(&self) -> impl Iterator<Item = &OutputStats> {
        let has_label = self.outputs.iter().any(|o| o.kind == "label");
        self.outputs.iter().filter(move |o| !has_label || o.kind == "label")
    }

    /// Input feature `i` as the drift monitor compares against it: its bins, and its moments
    /// when it has spread (a constant feature has no variance to test).
    pub fn feature_ref(&self, i: usize) -> Result<drover_drift::FeatureRef, drover_drift::RefError> {
        let f = &self.features[i];
        let r = drover_drift::FeatureRef::numeric(&f.edges, &f.counts)?;
        Ok(if f.std > 0.0 { r.clone().with_moments(f.mean, f.std).unwrap_or(r) } else { r })
    }
}

/// Why the profile could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The data could not be read.
    #[error(transparent)]
    Samples(#[from] SampleError),
    /// The model failed on a sample.
    #[error("reference sample {index}: {error}")]
    Run {
        /// Sample index.
        index: u64,
        /// Why.
        error: RunError,
    },
    /// No sample at all.
    #[error("the reference data holds no sample")]
    Empty,
}

/// Runs every sample of `data` through `model` and profiles inputs and outputs, with `bins`
/// histogram bins per feature.
pub fn profile(model: &mut Model, data: &mut SampleFile, bins: usize) -> Result<ReferenceStats, ReferenceError> {
    let bins = bins.clamp(1, MAX_BINS);
    let signature = model.signature().clone();
    let mut values: Vec<Vec<f64>> = Vec::new();
    let mut layout = FeatureLayout::Elements;
    let mut classes: Vec<BTreeMap<i64, u64>> = vec![BTreeMap::new(); signature.outputs.len()];
    let mut kinds: Vec<Option<&'static str>> = vec![None; signature.outputs.len()];
    let mut outputs = Vec::new();
    let mut n = 0u64;
    loop {
        let batch: Vec<Sample> = data.next_batch(256)?;
        if batch.is_empty() {
            break;
        }
        for sample in &batch {
            let input = &sample[0];
            if values.is_empty() {
                layout = if input.shape().len() >= 3 { FeatureLayout::Channels } else { FeatureLayout::Elements };
                let features = match layout {
                    FeatureLayout::Channels => input.shape()[0],
                    FeatureLayout::Elements => input.len(),
                };
                values = vec![Vec::new(); features];
            }
            collect(input, layout, &mut values);
            model.run_one(sample, &mut outputs).map_err(|error| ReferenceError::Run { index: n, error })?;
            for (o, out) in outputs.iter().enumerate() {
                if let Some((kind, class)) = class_of(out) {
                    kinds[o] = Some(kind);
                    *classes[o].entry(class).or_insert(0) += 1;
                }
            }
            n += 1;
        }
    }
    if n == 0 {
        return Err(ReferenceError::Empty);
    }
    let features = values.into_iter().map(|v| feature_stats(v, bins)).collect();
    let outputs = signature
        .outputs
        .iter()
        .zip(kinds.into_iter().zip(classes))
        .filter_map(|(spec, (kind, classes))| {
            kind.map(|k| OutputStats { name: spec.name.to_string(), kind: k.to_string(), classes })
        })
        .collect();
    Ok(ReferenceStats {
        samples: n,
        input: signature.inputs[0].name.to_string(),
        layout,
        names: None,
        features,
        outputs,
    })
}

/// Appends the sample's values to each feature's list (subsampled past the cap).
fn collect(input: &Tensor, layout: FeatureLayout, values: &mut [Vec<f64>]) {
    let flat = input.to_f64_vec();
    match layout {
        FeatureLayout::Elements => {
            for (v, x) in values.iter_mut().zip(flat) {
                if v.len() < MAX_VALUES_PER_FEATURE {
                    v.push(x);
                }
            }
        }
        FeatureLayout::Channels => {
            let per_channel = flat.len() / values.len().max(1);
            for (c, v) in values.iter_mut().enumerate() {
                let chunk = &flat[c * per_channel..(c + 1) * per_channel];
                let room = MAX_VALUES_PER_FEATURE.saturating_sub(v.len());
                let stride = (chunk.len() / room.max(1)).max(1);
                v.extend(chunk.iter().step_by(stride).take(room));
            }
        }
    }
}

/// The class a classifier output names: an integer scalar is a label; a float vector's
/// largest score is the class.
pub fn class_of(t: &Tensor) -> Option<(&'static str, i64)> {
    match (t.data(), t.shape()) {
        (TensorData::I64(v), []) => Some(("label", v[0])),
        (TensorData::I32(v), []) => Some(("label", i64::from(v[0]))),
        (TensorData::F32(v), [k]) if *k > 1 => {
            let best = v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
            Some(("argmax", best.0 as i64))
        }
        _ => None,
    }
}

fn feature_stats(mut v: Vec<f64>, bins: usize) -> FeatureStats {
    v.retain(|x| x.is_finite());
    let count = v.len() as u64;
    if v.is_empty() {
        return FeatureStats { count: 0, mean: 0.0, std: 0.0, min: 0.0, max: 0.0, edges: vec![], counts: vec![] };
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    v.sort_by(f64::total_cmp);
    let (min, max) = (v[0], v[v.len() - 1]);
    // Equal-frequency edges; repeated values collapse bins, so edges stay strictly increasing.
    let mut edges = vec![min];
    for i in 1..bins {
        let q = v[(i * v.len()) / bins];
        if q > *edges.last().unwrap_or(&min) && q < max {
            edges.push(q);
        }
    }
    edges.push(max);
    let mut counts = vec![0u64; edges.len().saturating_sub(1).max(1)];
    for x in &v {
        counts[bin_of(&edges, *x)] += 1;
    }
    FeatureStats { count, mean, std: var.sqrt(), min, max, edges, counts }
}

/// The bin of `x` among `edges` (values below or above the range go to the end bins).
pub fn bin_of(edges: &[f64], x: f64) -> usize {
    let inner = &edges[1..edges.len().saturating_sub(1).max(1)];
    inner.partition_point(|e| *e <= x).min(edges.len().saturating_sub(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_frequency_bins_split_the_reference_evenly() {
        let v: Vec<f64> = (0..100).map(f64::from).collect();
        let s = feature_stats(v, 4);
        assert_eq!(s.count, 100);
        assert_eq!(s.mean, 49.5);
        assert!((s.std - 28.866_070_047_722_12).abs() < 1e-12);
        assert_eq!((s.min, s.max), (0.0, 99.0));
        assert_eq!(s.edges, vec![0.0, 25.0, 50.0, 75.0, 99.0]);
        assert_eq!(s.counts, vec![25, 25, 25, 25]);
    }

    #[test]
    fn constant_and_repeated_values_collapse_bins() {
        let s = feature_stats(vec![3.0; 10], 5);
        assert_eq!(s.edges, vec![3.0, 3.0]);
        assert_eq!(s.counts, vec![10]);
        let s = feature_stats(vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0], 3);
        assert_eq!(s.counts.iter().sum::<u64>(), 6);
        assert!(s.edges.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn out_of_range_values_fall_in_the_end_bins() {
        let edges = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(bin_of(&edges, -5.0), 0);
        assert_eq!(bin_of(&edges, 0.5), 0);
        assert_eq!(bin_of(&edges, 1.0), 1);
        assert_eq!(bin_of(&edges, 2.9), 2);
        assert_eq!(bin_of(&edges, 3.0), 2);
        assert_eq!(bin_of(&edges, 99.0), 2);
    }

    #[test]
    fn iris_reference_profile_through_the_engine() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let mut model = Model::load(&root.join("iris_logreg.onnx")).expect("model");
        let mut data =
            SampleFile::open(&root.join("reference/iris_logreg.input.jsonl"), model.signature()).expect("data");
        let p = profile(&mut model, &mut data, 4).expect("profile");
        assert_eq!((p.samples, p.features.len(), p.layout), (16, 4, FeatureLayout::Elements));
        assert!(p.features.iter().all(|f| f.count == 16 && f.counts.iter().sum::<u64>() == 16));
        let label = p.outputs.iter().find(|o| o.name == "label").expect("label distribution");
        assert_eq!(label.kind, "label");
        assert_eq!(label.classes.values().sum::<u64>(), 16);
        let probs = p.outputs.iter().find(|o| o.name == "probabilities").expect("argmax distribution");
        assert_eq!(probs.classes, label.classes, "argmax of the probabilities is the label");
    }
}
