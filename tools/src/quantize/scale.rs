//! Scale and zero-point arithmetic, following onnxruntime's quantizer so that a model made here
//! means the same thing to every runtime: uint8 asymmetric activations, int8 symmetric weights
//! (range ±127), int32 biases at `input_scale × weight_scale`, and a range always widened to
//! contain 0 so that zero (padding, ReLU) is exactly representable.

/// How a float activation tensor maps onto uint8: `x ≈ (q - zero_point) × scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActParams {
    /// Step between two consecutive codes.
    pub scale: f32,
    /// The code of 0.0.
    pub zero_point: u8,
}

/// The smallest positive normal f32: onnxruntime's floor below which a scale counts as zero.
const TINY: f32 = f32::MIN_POSITIVE;

/// Parameters for an activation observed in `[min, max]` (onnxruntime's `compute_scale_zp`
/// with qmin 0, qmax 255).
pub fn activation(min: f32, max: f32) -> ActParams {
    let rmin = if min.is_finite() { min.min(0.0) } else { 0.0 };
    let rmax = if max.is_finite() { max.max(0.0) } else { 0.0 };
    let scale = (rmax - rmin) / 255.0;
    if scale.is_nan() || scale < TINY || !scale.is_finite() {
        return ActParams { scale: 1.0, zero_point: 0 };
    }
    let zero_point = (-rmin / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    ActParams { scale, zero_point }
}

/// The scale of an int8 symmetric weight whose largest magnitude is `absmax` (zero point 0,
/// codes -127..=127 as onnxruntime uses for symmetric int8, so that -x is always representable).
pub fn weight_scale(absmax: f32) -> f32 {
    let scale = (2.0 * absmax) / 254.0;
    if scale >= TINY && scale.is_finite() { scale } else { 1.0 }
}

/// Largest magnitude of `values` (NaN ignored).
pub fn absmax(values: &[f32]) -> f32 {
    values.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Weight scales: one for the whole tensor, or (per channel) one per slice along axis 0.
pub fn weight_scales(data: &[f32], channels: Option<usize>) -> Vec<f32> {
    match channels {
        Some(c) if c > 0 && data.len().is_multiple_of(c) => {
            data.chunks(data.len() / c).map(|chunk| weight_scale(absmax(chunk))).collect()
        }
        _ => vec![weight_scale(absmax(data))],
    }
}

/// Quantizes weights with their scales (one, or one per axis-0 slice), rounding half to even as
/// QuantizeLinear does.
pub fn quantize_weights(data: &[f32], scales: &[f32]) -> Vec<i8> {
    let per = if scales.is_empty() { 1 } else { data.len().div_ceil(scales.len()).max(1) };
    data.iter()
        .enumerate()
        .map(|(i, &w)| {
            let s = scales.get(i / per).copied().unwrap_or(1.0);
            (w / s).round_ties_even().clamp(-127.0, 127.0) as i8
        })
        .collect()
}

/// Quantizes a bias to int32 at scale `input_scale × weight_scale[c]` for each output channel
/// `c`; returns the codes, the scales, and how many values had to be clamped to the int32 range.
pub fn quantize_bias(bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> (Vec<i32>, Vec<f32>, usize) {
    let scales: Vec<f32> = if weight_scales.len() == 1 {
        vec![input_scale * weight_scales[0]]
    } else {
        weight_scales.iter().map(|w| input_scale * w).collect()
    };
    let mut clamped = 0;
    let codes = bias
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let s = f64::from(scales.get(i).or(scales.first()).copied().unwrap_or(1.0));
            let q = (f64::from(b) / s).round_ties_even();
            if !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&q) {
                clamped += 1;
            }
            if q.is_nan() { 0 } else { q.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32 }
        })
        .collect();
    (codes, scales, clamped)
}

/// Widens a calibrated bound away from zero onto a grid of 10 mantissa bits.
///
/// tract picks its float kernels per CPU (AVX2, AVX-512, NEON), so the same calibration can end
/// a few ULPs apart on two machines; snapping the bounds to a coarse grid makes the written model
/// byte-identical across them (unless a bound sits right on a grid line), at the cost of a range
/// at most 0.1 % wider.
pub fn snap_outward(x: f32) -> f32 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    const DROP: u32 = 13; // 23 mantissa bits, keep 10
    let bits = x.to_bits();
    let mask = (1u32 << DROP) - 1;
    if bits & mask == 0 {
        return x;
    }
    // Same sign bit, larger magnitude: round the magnitude up on the coarse grid.
    let snapped = f32::from_bits((bits & !mask) + (1 << DROP));
    if snapped.is_finite() { snapped } else { x }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_range_always_contains_zero() {
        // All positive (after a ReLU): zero point 0, scale max/255.
        let p = activation(0.5, 2.55);
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 0.01).abs() < 1e-7);
        // All negative: zero point 255.
        let p = activation(-5.1, -1.0);
        assert_eq!(p.zero_point, 255);
        assert!((p.scale - 0.02).abs() < 1e-7);
        // Straddling zero: 0.0 maps exactly to the zero point.
        let p = activation(-1.0, 3.0);
        assert_eq!(p.zero_point, 64);
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-9);
        let zero_back = (f32::from(p.zero_point) - f32::from(p.zero_point)) * p.scale;
        assert_eq!(zero_back, 0.0);
    }

    #[test]
    fn a_constant_zero_or_broken_range_gets_scale_one() {
        assert_eq!(activation(0.0, 0.0), ActParams { scale: 1.0, zero_point: 0 });
        assert_eq!(activation(f32::NAN, f32::NAN), ActParams { scale: 1.0, zero_point: 0 });
        assert_eq!(weight_scale(0.0), 1.0);
    }

    #[test]
    fn weights_are_symmetric_int8_with_127_at_the_extremes() {
        let w = [2.5, -127.0, 3.5, 0.0, -2.5];
        let s = weight_scales(&w, None);
        assert_eq!(s, vec![1.0]);
        assert_eq!(quantize_weights(&w, &s), vec![2, -127, 4, 0, -2], "halves round to even");
    }

    #[test]
    fn per_channel_scales_follow_axis_0() {
        let w = [1.5, -2.0, 0.1, 0.03];
        let s = weight_scales(&w, Some(2));
        assert_eq!(s, vec![2.0 / 127.0, 0.1 / 127.0]);
        assert_eq!(quantize_weights(&w, &s), vec![95, -127, 127, 38]);
    }

    #[test]
    fn bias_scale_is_input_times_weight_scale() {
        let (q, scales, clamped) = quantize_bias(&[0.3, -0.3], 0.1, &[0.01, 0.02]);
        assert_eq!(scales, vec![0.1 * 0.01, 0.1 * 0.02]);
        assert_eq!(q, vec![300, -150]);
        assert_eq!(clamped, 0);
        let (q, _, clamped) = quantize_bias(&[1e30], 1e-3, &[1e-3]);
        assert_eq!((q, clamped), (vec![i32::MAX], 1));
    }

    #[test]
    fn snapping_widens_by_at_most_a_thousandth_and_is_idempotent() {
        for x in [1.0f32, 3.7312, -0.000_123_4, 12345.678, -7.0] {
            let s = snap_outward(x);
            assert!(s.abs() >= x.abs() && s.signum() == x.signum(), "{x} -> {s}");
            assert!((s - x).abs() <= x.abs() * 1e-3, "{x} -> {s}");
            assert_eq!(snap_outward(s), s);
        }
        // Two values a few ULPs apart land on the same grid point.
        let a = 3.7312f32;
        let b = f32::from_bits(a.to_bits() + 3);
        assert_eq!(snap_outward(a), snap_outward(b));
    }
}
