//! Comparing Drover's outputs with onnxruntime's reference outputs.

use drover_runtime::Tensor;
use drover_runtime::samples::read_npy;

use crate::manifest::{ReferenceOutput, resolve};

/// The largest absolute difference between two tensors of equal shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.to_f64_vec().iter().zip(b.to_f64_vec()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Checks that `per_sample[i]` (Drover's output for sample i, without batch axis) matches
/// onnxruntime's sample i within the tolerance; returns the largest difference seen.
pub fn check_output(model: &str, expected: &ReferenceOutput, per_sample: &[Tensor]) -> f64 {
    let reference = read_npy(&resolve(&expected.npy)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reference.shape()[0], per_sample.len(), "{model}/{}: sample count", expected.name);
    let rows = reference.unstack(per_sample.len()).expect("reference splits by sample");
    let mut worst = 0.0f64;
    for (i, (got, want)) in per_sample.iter().zip(&rows).enumerate() {
        assert_eq!(got.dtype().name(), expected.dtype, "{model}/{}: dtype", expected.name);
        assert_eq!(got.shape(), want.shape(), "{model}/{} sample {i}: shape", expected.name);
        let diff = max_abs_diff(got, want);
        assert!(
            diff <= expected.tolerance,
            "{model}/{} sample {i}: max abs diff {diff} exceeds tolerance {}",
            expected.name,
            expected.tolerance
        );
        worst = worst.max(diff);
    }
    worst
}
