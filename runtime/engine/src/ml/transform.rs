//! The `post_transform` functions of the `ai.onnx.ml` operators, computed as onnxruntime does
//! (its `ml_common.h`), so that probabilities agree with the exporters' reference in the last
//! bits: the same f32 arithmetic, the same order, and onnxruntime's approximation of `erfinv`
//! for PROBIT.

use super::attrs::{AttrError, Attrs};

/// A `post_transform` attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    /// Reads `post_transform` (default `NONE`).
    pub fn parse(attrs: &Attrs<'_>) -> Result<PostTransform, AttrError> {
        Ok(match attrs.string_or("post_transform", "NONE")?.as_str() {
            "NONE" => PostTransform::None,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX" => PostTransform::Softmax,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            other => {
                return Err(attrs.error(
                    "post_transform",
                    format!("'{other}' is none of NONE, LOGISTIC, SOFTMAX, SOFTMAX_ZERO, PROBIT"),
                ));
            }
        })
    }

    /// Applies the transform to a vector of two or more scores, in place.
    pub fn apply(self, scores: &mut [f32]) {
        match self {
            PostTransform::None => {}
            PostTransform::Logistic => scores.iter_mut().for_each(|s| *s = logistic(*s)),
            PostTransform::Softmax => softmax(scores),
            PostTransform::SoftmaxZero => softmax_zero(scores),
            PostTransform::Probit => scores.iter_mut().for_each(|s| *s = probit(*s)),
        }
    }
}

/// onnxruntime's `ComputeLogistic`: symmetric, so large negative scores do not lose precision.
pub(crate) fn logistic(v: f32) -> f32 {
    let p = 1.0 / (1.0 + (-v.abs()).exp());
    if v < 0.0 { 1.0 - p } else { p }
}

/// Softmax with the maximum subtracted first (onnxruntime's `ComputeSoftmax`).
pub(crate) fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(-f32::MAX, |m, v| if v > m { v } else { m });
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    values.iter_mut().for_each(|v| *v /= sum);
}

/// Softmax that leaves zero scores at (almost) zero (onnxruntime's `ComputeSoftmaxZero`).
pub(crate) fn softmax_zero(values: &mut [f32]) {
    let max = values.iter().copied().fold(-f32::MAX, |m, v| if v > m { v } else { m });
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        if *v > 0.000_000_1 || *v < -0.000_000_1 {
            *v = (*v - max).exp();
            sum += *v;
        } else {
            *v *= exp_neg_max;
        }
    }
    values.iter_mut().for_each(|v| *v /= sum);
}

/// onnxruntime's `ComputeProbit`: `√2 · erfinv(2v − 1)` with its closed-form `erfinv`.
pub(crate) fn probit(v: f32) -> f32 {
    // onnxruntime's 1.41421356f is the same f32 as SQRT_2.
    std::f32::consts::SQRT_2 * erf_inv(2.0 * v - 1.0)
}

/// The closed-form approximation of `erfinv` onnxruntime uses (Winitzki, a = 0.147).
fn erf_inv(x: f32) -> f32 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    // onnxruntime writes π as 3.14159; the same constant gives the same bits.
    #[allow(clippy::approx_constant)]
    let v = 2.0 / (3.14159 * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sign * v3.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_symmetric_and_saturates_without_nan() {
        assert_eq!(logistic(0.0), 0.5);
        assert!((logistic(2.0) + logistic(-2.0) - 1.0).abs() < 1e-7);
        assert_eq!(logistic(-200.0), 0.0);
        assert_eq!(logistic(200.0), 1.0);
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_scores() {
        let mut v = [1000.0, 1001.0, 999.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(v[1] > v[0] && v[0] > v[2]);
    }

    #[test]
    fn softmax_zero_keeps_zero_scores_near_zero() {
        let mut v = [0.0, 2.0, 1.0];
        softmax_zero(&mut v);
        assert_eq!(v[0], 0.0);
        assert!((v[1] + v[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn probit_inverts_the_normal_cdf_approximately() {
        assert!(probit(0.5).abs() < 1e-6);
        // Φ(1) = 0.841345; the approximation is good to ~1e-3.
        assert!((probit(0.841_345) - 1.0).abs() < 5e-3);
        assert!((probit(0.158_655) + 1.0).abs() < 5e-3);
    }
}
