//! Activation ranges measured by running the calibration samples through the real engine.
//!
//! The tensors to measure become extra graph outputs of a copy of the model, which the agent's
//! own [`Model`] (tract) then runs: the ranges are those the board will see, not those of some
//! other runtime.

use std::collections::BTreeMap;

use drover_runtime::engine::Model;
use drover_runtime::samples::Sample;
use drover_runtime::tensor::TensorData;
use prost::Message;
use tract_onnx::pb::{ModelProto, ValueInfoProto};

use super::{Method, QuantizeError};

/// The range a tensor is quantized over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Lower bound.
    pub min: f32,
    /// Upper bound.
    pub max: f32,
}

/// Histogram bins per tensor for the percentile method (onnxruntime uses 2048 as well).
const BINS: usize = 2048;

#[derive(Debug, Clone)]
struct Collector {
    min: f32,
    max: f32,
    count: u64,
    bins: Vec<u64>,
}

impl Collector {
    fn new() -> Collector {
        Collector { min: f32::INFINITY, max: f32::NEG_INFINITY, count: 0, bins: Vec::new() }
    }

    fn observe_range(&mut self, values: &[f32]) {
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            self.count += 1;
        }
    }

    fn bin_of(&self, v: f32) -> usize {
        let width = f64::from(self.max) - f64::from(self.min);
        if width <= 0.0 {
            return 0;
        }
        let at = ((f64::from(v) - f64::from(self.min)) / width * BINS as f64).floor();
        (at.max(0.0) as usize).min(BINS - 1)
    }

    fn observe_histogram(&mut self, values: &[f32]) {
        if self.bins.is_empty() {
            self.bins = vec![0; BINS];
        }
        for &v in values.iter().filter(|v| v.is_finite()) {
            let b = self.bin_of(v);
            self.bins[b] += 1;
        }
    }

    fn edge(&self, bin: usize) -> f32 {
        let width = f64::from(self.max) - f64::from(self.min);
        (f64::from(self.min) + width * bin as f64 / BINS as f64) as f32
    }

    /// The bounds holding `percentile` % of the values on each side: the lowest
    /// `(100 - p) %` and highest `(100 - p) %` are left out.
    fn percentile_range(&self, percentile: f64) -> Range {
        let total: u64 = self.bins.iter().sum();
        if total == 0 {
            return Range { min: self.min, max: self.max };
        }
        let tail = ((100.0 - percentile).max(0.0) / 100.0 * total as f64).floor() as u64;
        let mut below = 0u64;
        let mut lo = 0;
        for (i, &c) in self.bins.iter().enumerate() {
            if below + c > tail {
                lo = i;
                break;
            }
            below += c;
        }
        let mut above = 0u64;
        let mut hi = BINS - 1;
        for (i, &c) in self.bins.iter().enumerate().rev() {
            if above + c > tail {
                hi = i;
                break;
            }
            above += c;
        }
        Range { min: self.edge(lo).max(self.min), max: self.edge(hi + 1).min(self.max) }
    }
}

/// Runs every sample and returns the range of each tensor in `tensors` (graph inputs included).
pub fn calibrate(
    model: &ModelProto,
    tensors: &[String],
    samples: &[Sample],
    method: Method,
) -> Result<BTreeMap<String, Range>, QuantizeError> {
    let graph = model.graph.as_ref().ok_or(QuantizeError::Graph("the model has no graph".into()))?;
    let inputs: Vec<String> = {
        let init: std::collections::BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        graph.input.iter().filter(|v| !init.contains(v.name.as_str())).map(|v| v.name.clone()).collect()
    };
    // Where each measured tensor comes from: a sample's input, or an extra output of the copy.
    let mut copy = model.clone();
    let mut source: Vec<Source> = Vec::with_capacity(tensors.len());
    if let Some(g) = copy.graph.as_mut() {
        let first_extra = g.output.len();
        let mut extra = 0;
        for t in tensors {
            if let Some(i) = inputs.iter().position(|n| n == t) {
                source.push(Source::Input(i));
            } else if let Some(o) = g.output.iter().position(|o| &o.name == t) {
                source.push(Source::Output(o));
            } else {
                g.output.push(ValueInfoProto { name: t.clone(), ..ValueInfoProto::default() });
                source.push(Source::Output(first_extra + extra));
                extra += 1;
            }
        }
    }
    log::debug!("calibration: {} tensor(s) over {} sample(s)", tensors.len(), samples.len());
    let mut engine =
        Model::from_bytes(&copy.encode_to_vec()).map_err(|e| QuantizeError::Calibration(format!("{e}")))?;
    let mut collectors = vec![Collector::new(); tensors.len()];
    let passes = if method == Method::MinMax { 1 } else { 2 };
    for pass in 0..passes {
        for (k, sample) in samples.iter().enumerate() {
            let outputs = engine
                .run_samples(std::slice::from_ref(sample))
                .map_err(|e| QuantizeError::Calibration(format!("sample {k}: {e}")))?;
            let outputs = outputs.into_iter().next().unwrap_or_default();
            for ((c, src), name) in collectors.iter_mut().zip(&source).zip(tensors) {
                let tensor = match src {
                    Source::Input(i) => sample.get(*i),
                    Source::Output(o) => outputs.get(*o),
                };
                let Some(TensorData::F32(values)) = tensor.map(|t| t.data()) else {
                    return Err(QuantizeError::Calibration(format!("tensor '{name}' is not float32")));
                };
                if pass == 0 {
                    c.observe_range(values);
                } else {
                    c.observe_histogram(values);
                }
            }
        }
    }
    let mut ranges = BTreeMap::new();
    for (c, name) in collectors.iter().zip(tensors) {
        if c.count == 0 {
            return Err(QuantizeError::Calibration(format!("tensor '{name}' took no finite value")));
        }
        let range = match method {
            Method::MinMax => Range { min: c.min, max: c.max },
            Method::Percentile(p) => c.percentile_range(p),
        };
        ranges.insert(name.clone(), range);
    }
    Ok(ranges)
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Input(usize),
    Output(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_cuts_the_outliers_minmax_keeps() {
        let mut values: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        values.push(100.0);
        values.push(-50.0);
        let mut c = Collector::new();
        c.observe_range(&values);
        assert_eq!((c.min, c.max), (-50.0, 100.0));
        c.observe_histogram(&values);
        let r = c.percentile_range(99.9);
        assert!(r.max < 2.0 && r.max >= 0.99, "{r:?}");
        assert!(r.min > -1.0 && r.min <= 0.0, "{r:?}");
        let all = c.percentile_range(100.0);
        assert_eq!((all.min, all.max), (-50.0, 100.0));
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut c = Collector::new();
        c.observe_range(&[f32::NAN, 1.0, f32::INFINITY, -2.0]);
        assert_eq!((c.min, c.max, c.count), (-2.0, 1.0, 2));
    }
}
