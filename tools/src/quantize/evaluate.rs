//! How much the int8 model departs from the fp32 one on held-out samples, both run by tract as
//! the board will run them: the figure an operator needs before shipping.

use drover_runtime::engine::Model;
use drover_runtime::samples::Sample;
use drover_runtime::tensor::Tensor;
use serde::Serialize;

use super::QuantizeError;

/// The fp32 vs int8 difference on one output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputDelta {
    /// Output name.
    pub name: String,
    /// Largest |fp32 − int8| over every element of every sample.
    pub max_abs_diff: f64,
    /// Mean |fp32 − int8|.
    pub mean_abs_diff: f64,
    /// Largest |fp32| seen, to read the differences against.
    pub max_abs_fp32: f64,
    /// Rows whose arg-max (over the last axis) is the same in both, for outputs with more
    /// than one value per row (class scores); `None` otherwise.
    pub top1_agree: Option<usize>,
    /// Rows compared for `top1_agree`.
    pub rows: usize,
}

/// The comparison over all held-out samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    /// Held-out samples run.
    pub samples: usize,
    /// One entry per float output.
    pub outputs: Vec<OutputDelta>,
}

/// Runs `samples` through both models and compares their float outputs.
pub fn compare(fp32: &[u8], int8: &[u8], samples: &[Sample]) -> Result<Accuracy, QuantizeError> {
    let mut reference = Model::from_bytes(fp32).map_err(|e| QuantizeError::Evaluation(format!("fp32 model: {e}")))?;
    let mut quantized = Model::from_bytes(int8).map_err(|e| QuantizeError::Evaluation(format!("int8 model: {e}")))?;
    let names: Vec<String> = reference.signature().outputs.iter().map(|o| o.name.to_string()).collect();
    let mut deltas: Vec<Acc> = names.iter().map(|n| Acc::new(n)).collect();
    for (k, sample) in samples.iter().enumerate() {
        let one = std::slice::from_ref(sample);
        let a = reference.run_samples(one).map_err(|e| QuantizeError::Evaluation(format!("fp32, sample {k}: {e}")))?;
        let b = quantized.run_samples(one).map_err(|e| QuantizeError::Evaluation(format!("int8, sample {k}: {e}")))?;
        let (Some(a), Some(b)) = (a.first(), b.first()) else { continue };
        for ((acc, x), y) in deltas.iter_mut().zip(a).zip(b) {
            acc.add(x, y)?;
        }
    }
    Ok(Accuracy { samples: samples.len(), outputs: deltas.into_iter().filter_map(Acc::finish).collect() })
}

struct Acc {
    name: String,
    float: bool,
    max: f64,
    sum: f64,
    count: u64,
    max_ref: f64,
    agree: usize,
    rows: usize,
}

impl Acc {
    fn new(name: &str) -> Acc {
        Acc { name: name.to_string(), float: true, max: 0.0, sum: 0.0, count: 0, max_ref: 0.0, agree: 0, rows: 0 }
    }

    fn add(&mut self, x: &Tensor, y: &Tensor) -> Result<(), QuantizeError> {
        if !matches!(x.dtype(), drover_wire::DType::F32 | drover_wire::DType::F64) {
            self.float = false;
            return Ok(());
        }
        if x.shape() != y.shape() {
            return Err(QuantizeError::Evaluation(format!(
                "output '{}': fp32 shape {:?}, int8 shape {:?}",
                self.name,
                x.shape(),
                y.shape()
            )));
        }
        let (xs, ys) = (x.to_f64_vec(), y.to_f64_vec());
        for (a, b) in xs.iter().zip(&ys) {
            let d = (a - b).abs();
            self.max = if d.is_nan() { f64::INFINITY } else { self.max.max(d) };
            self.sum += d;
            self.count += 1;
            self.max_ref = self.max_ref.max(a.abs());
        }
        let width = x.shape().last().copied().unwrap_or(1);
        if width > 1 {
            for (ra, rb) in xs.chunks(width).zip(ys.chunks(width)) {
                self.rows += 1;
                if argmax(ra) == argmax(rb) {
                    self.agree += 1;
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Option<OutputDelta> {
        self.float.then(|| OutputDelta {
            name: self.name,
            max_abs_diff: self.max,
            mean_abs_diff: if self.count == 0 { 0.0 } else { self.sum / self.count as f64 },
            max_abs_fp32: self.max_ref,
            top1_agree: (self.rows > 0).then_some(self.agree),
            rows: self.rows,
        })
    }
}

/// Index of the largest value (the first one on ties, as numpy's argmax).
pub fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5, -1.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }
}
