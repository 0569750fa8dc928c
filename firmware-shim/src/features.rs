/// Summary features of one window, the classic inputs of small vibration and motion models.
///
/// Computed in one pass without allocation, so a microcontroller can produce them at the sensor
/// and send a few bytes instead of the raw samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Features {
    /// Arithmetic mean.
    pub mean: f32,
    /// Root mean square (signal energy).
    pub rms: f32,
    /// Largest minus smallest sample.
    pub peak_to_peak: f32,
    /// Sign changes of the mean-removed signal: a cheap frequency estimate.
    pub zero_crossings: u32,
}

impl Features {
    /// Features of a slice of samples; all zero for an empty slice.
    pub fn of(samples: &[f32]) -> Features {
        if samples.is_empty() {
            return Features { mean: 0.0, rms: 0.0, peak_to_peak: 0.0, zero_crossings: 0 };
        }
        let n = samples.len() as f32;
        let (mut sum, mut sum_sq) = (0.0f32, 0.0f32);
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &s in samples {
            sum += s;
            sum_sq += s * s;
            lo = lo.min(s);
            hi = hi.max(s);
        }
        let mean = sum / n;
        let mut zero_crossings = 0;
        let mut prev_positive: Option<bool> = None;
        for &s in samples {
            let centred = s - mean;
            if centred == 0.0 {
                continue;
            }
            let positive = centred > 0.0;
            if prev_positive.is_some_and(|p| p != positive) {
                zero_crossings += 1;
            }
            prev_positive = Some(positive);
        }
        Features { mean, rms: sqrt(sum_sq / n), peak_to_peak: hi - lo, zero_crossings }
    }
}

/// `f32::sqrt` is not in `core`; Newton's method converges in a few steps for the
/// non-negative energies it is used on here.
fn sqrt(x: f32) -> f32 {
    if x <= 0.0 || !x.is_finite() {
        return if x.is_nan() || x < 0.0 { f32::NAN } else { x };
    }
    let mut guess = if x > 1.0 { x / 2.0 } else { 1.0 };
    for _ in 0..32 {
        let next = 0.5 * (guess + x / guess);
        if (next - guess).abs() <= f32::EPSILON * next {
            return next;
        }
        guess = next;
    }
    guess
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_of_a_square_wave() {
        let s = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0];
        let f = Features::of(&s);
        assert_eq!(f.mean, 0.0);
        assert_eq!(f.rms, 1.0);
        assert_eq!(f.peak_to_peak, 2.0);
        assert_eq!(f.zero_crossings, 5);
    }

    #[test]
    fn constant_signal_has_no_crossings_and_rms_equal_to_level() {
        let f = Features::of(&[3.0; 10]);
        assert_eq!(f.zero_crossings, 0);
        assert!((f.rms - 3.0).abs() < 1e-6);
        assert_eq!(f.peak_to_peak, 0.0);
    }

    #[test]
    fn sqrt_matches_known_values() {
        for (x, r) in [(4.0f32, 2.0f32), (2.0, core::f32::consts::SQRT_2), (0.25, 0.5), (1e6, 1e3), (0.0, 0.0)] {
            assert!((sqrt(x) - r).abs() <= r * 1e-6, "sqrt({x})");
        }
        assert!(sqrt(-1.0).is_nan());
    }
}
