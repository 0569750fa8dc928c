//! Band energies of a window through a small radix-2 FFT, for models that look at vibration
//! spectra (bearing wear, motor imbalance) rather than time-domain statistics.
//!
//! In place on two stack arrays of the window's length: no tables, no heap. A 128-point
//! transform is ~2.5k multiply-adds, well under a millisecond on a Cortex-M4F.

use core::f32::consts::PI;
use core::fmt;

/// Why a window's spectrum cannot be split as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FftError {
    /// The radix-2 transform needs a power-of-two window of at least 2 samples.
    NotPowerOfTwo,
    /// More bands than frequency bins (a window of N samples has N/2 bins above DC).
    TooManyBands,
}

impl fmt::Display for FftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FftError::NotPowerOfTwo => f.write_str("FFT bands need a power-of-two window of at least 2 samples"),
            FftError::TooManyBands => f.write_str("more FFT bands than frequency bins"),
        }
    }
}

/// Checks that a window of `n` samples can be split into `bands` bands.
pub fn check(n: usize, bands: usize) -> Result<(), FftError> {
    if n < 2 || !n.is_power_of_two() {
        return Err(FftError::NotPowerOfTwo);
    }
    if bands > n / 2 {
        return Err(FftError::TooManyBands);
    }
    Ok(())
}

/// Splits the one-sided power spectrum of the mean-removed window (bins 1..=N/2) into
/// `bands.len()` contiguous bands of equal width and writes each band's energy.
///
/// Scaled so the bands add up to the window's variance (Parseval): a sine of amplitude `a`
/// puts `a²/2` into the band holding its frequency, whatever the window length.
pub fn band_energies<const N: usize>(samples: &[f32; N], bands: &mut [f32]) -> Result<(), FftError> {
    check(N, bands.len())?;
    if bands.is_empty() {
        return Ok(());
    }
    let mean = samples.iter().sum::<f32>() / N as f32;
    let mut re = samples.map(|s| s - mean);
    let mut im = [0.0f32; N];
    fft(&mut re, &mut im);
    let half = N / 2;
    let norm = 1.0 / (N as f32 * N as f32);
    let count = bands.len();
    for (b, energy) in bands.iter_mut().enumerate() {
        let (lo, hi) = (1 + b * half / count, 1 + (b + 1) * half / count);
        *energy = (lo..hi)
            .map(|k| {
                // Every bin but Nyquist stands for itself and its mirror image.
                let one_sided = if k == half { 1.0 } else { 2.0 };
                one_sided * (re[k] * re[k] + im[k] * im[k]) * norm
            })
            .sum();
    }
    Ok(())
}

/// In-place iterative Cooley–Tukey; `N` is a power of two ≥ 2 (checked by the caller).
fn fft<const N: usize>(re: &mut [f32; N], im: &mut [f32; N]) {
    let bits = N.trailing_zeros();
    for i in 0..N {
        let j = i.reverse_bits() >> (usize::BITS - bits);
        if j > i {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= N {
        let step = -2.0 * PI / len as f32;
        for start in (0..N).step_by(len) {
            for k in 0..len / 2 {
                let (s, c) = libm::sincosf(step * k as f32);
                let (a, b) = (start + k, start + k + len / 2);
                let (xr, xi) = (re[b] * c - im[b] * s, re[b] * s + im[b] * c);
                re[b] = re[a] - xr;
                im[b] = im[a] - xi;
                re[a] += xr;
                im[a] += xi;
            }
        }
        len <<= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook O(N²) DFT the FFT must agree with.
    fn dft<const N: usize>(x: &[f32; N]) -> ([f32; N], [f32; N]) {
        let (mut re, mut im) = ([0.0; N], [0.0; N]);
        for k in 0..N {
            for (n, &v) in x.iter().enumerate() {
                let a = -2.0 * core::f64::consts::PI * (k * n) as f64 / N as f64;
                re[k] += (f64::from(v) * libm::cos(a)) as f32;
                im[k] += (f64::from(v) * libm::sin(a)) as f32;
            }
        }
        (re, im)
    }

    #[test]
    fn fft_matches_the_dft() {
        let mut x = [0.0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = libm::sinf(i as f32 * 0.7) + 0.3 * libm::cosf(i as f32 * 2.1) + (i % 5) as f32 * 0.1;
        }
        let (want_re, want_im) = dft(&x);
        let (mut re, mut im) = (x, [0.0; 32]);
        fft(&mut re, &mut im);
        for k in 0..32 {
            assert!((re[k] - want_re[k]).abs() < 1e-3 && (im[k] - want_im[k]).abs() < 1e-3, "bin {k}");
        }
    }

    #[test]
    fn a_sine_lands_in_its_band_with_energy_a_squared_over_two() {
        // 64 samples, frequency bin 12 of 32: band 1 of 4 (bins 9..=16).
        let a = 2.0f32;
        let x: [f32; 64] = core::array::from_fn(|i| 5.0 + a * libm::sinf(2.0 * PI * 12.0 * i as f32 / 64.0));
        let mut bands = [0.0f32; 4];
        band_energies(&x, &mut bands).expect("power of two");
        assert!((bands[1] - a * a / 2.0).abs() < 1e-3, "{bands:?}");
        for b in [0, 2, 3] {
            assert!(bands[b] < 1e-6, "{bands:?}");
        }
    }

    #[test]
    fn bands_add_up_to_the_variance() {
        let x: [f32; 128] = core::array::from_fn(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3);
        let mean = x.iter().sum::<f32>() / 128.0;
        let variance = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 128.0;
        let mut bands = [0.0f32; 8];
        band_energies(&x, &mut bands).expect("power of two");
        let total: f32 = bands.iter().sum();
        assert!((total - variance).abs() < variance * 1e-4, "{total} vs {variance}");
    }

    #[test]
    fn unusable_shapes_are_errors() {
        assert_eq!(band_energies(&[0.0; 48], &mut [0.0; 2]), Err(FftError::NotPowerOfTwo));
        assert_eq!(band_energies(&[0.0; 1], &mut [0.0; 1]), Err(FftError::NotPowerOfTwo));
        assert_eq!(band_energies(&[0.0; 8], &mut [0.0; 5]), Err(FftError::TooManyBands));
        assert_eq!(band_energies(&[0.0; 8], &mut [0.0; 4]), Ok(()));
    }
}
