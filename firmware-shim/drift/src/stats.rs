//! Drift statistics as pure functions on slices of proportions or counts, shared by the on-device
//! monitor and the fleet server (which applies them to merged sketches). No allocation: inputs are
//! borrowed, outputs are scalars or caller-provided slices.

use serde::{Deserialize, Serialize};

/// Floor applied to both proportions before PSI takes a logarithm, so an empty bin gives a large
/// but finite contribution instead of infinity. Evidently uses the same 1e-4 (it replaces exact
/// zeros with it); here anything below 1e-4 is raised to it, which only differs for bins holding
/// less than one value in ten thousand.
pub const PSI_FLOOR: f64 = 1e-4;

/// Converts counts to proportions in `out` (which should be at least as long as `counts`; extra
/// entries of `out` are left untouched, missing ones are skipped) and returns the total. When the
/// total is zero every proportion is 0, never NaN.
pub fn proportions(counts: &[u32], out: &mut [f64]) -> u64 {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    for (o, &c) in out.iter_mut().zip(counts) {
        *o = if total == 0 { 0.0 } else { f64::from(c) / total as f64 };
    }
    total
}

/// Population stability index `Σ (o − e) · ln(o / e)` over bins, with both proportions floored at
/// [`PSI_FLOOR`] (in the difference as well as in the log, like Evidently). Symmetric, ≥ 0. Rule of
/// thumb: < 0.1 stable, 0.1–0.25 moderate, > 0.25 major shift. Slices are compared up to the
/// shorter length.
pub fn psi(expected: &[f64], observed: &[f64]) -> f64 {
    expected
        .iter()
        .zip(observed)
        .map(|(&e, &o)| {
            let (e, o) = (e.max(PSI_FLOOR), o.max(PSI_FLOOR));
            (o - e) * libm::log(o / e)
        })
        .sum()
}

/// `x · ln(x / y)` with the conventions of `scipy.special.rel_entr`.
fn rel_entr(x: f64, y: f64) -> f64 {
    if x > 0.0 && y > 0.0 {
        x * libm::log(x / y)
    } else if x == 0.0 && y >= 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Jensen–Shannon distance (natural log, so in `[0, sqrt(ln 2)]`), equal to
/// `scipy.spatial.distance.jensenshannon(p, q)`: both inputs are normalised to sum to 1 first, so
/// raw counts work too. Bounded even when one side has empty bins, which makes it a calmer
/// companion to PSI. NaN when either input sums to 0 (as in scipy). Compared up to the shorter length.
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let n = p.len().min(q.len());
    let (p, q) = (&p[..n], &q[..n]);
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::NAN;
    }
    let mut divergence = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a / sp, b / sq);
        let m = (a + b) / 2.0;
        divergence += rel_entr(a, m) + rel_entr(b, m);
    }
    libm::sqrt((divergence / 2.0).max(0.0))
}

/// Result of Pearson's chi-squared goodness-of-fit test.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct ChiSquared {
    /// `Σ (o − e)² / e`; `+inf` when a category with expected proportion 0 was observed.
    #[serde(with = "crate::float_wire")]
    pub statistic: f64,
    /// Degrees of freedom: categories with non-zero expected proportion, minus one.
    pub dof: u32,
    /// Upper-tail probability of `statistic` under chi-squared with `dof` degrees of freedom.
    #[serde(with = "crate::float_wire")]
    pub p_value: f64,
}

/// Pearson's chi-squared test of observed counts against expected proportions. Equal to
/// `scipy.stats.chisquare(f_obs, f_exp=expected * n)` over the categories whose expected proportion
/// is positive. A category with expected 0 but observed > 0 makes the statistic `+inf` and p 0;
/// categories with expected 0 and observed 0 are left out (also from the degrees of freedom). With
/// no observations or fewer than two usable categories there is nothing to test: statistic 0, p 1.
pub fn chi_squared(observed: &[u32], expected: &[f64]) -> ChiSquared {
    let n: u64 = observed.iter().map(|&c| u64::from(c)).sum();
    let mut statistic = 0.0;
    let mut categories = 0u32;
    let mut impossible = false;
    for (&o, &e) in observed.iter().zip(expected) {
        let o = f64::from(o);
        if e > 0.0 {
            let e = e * n as f64;
            statistic += (o - e) * (o - e) / e;
            categories += 1;
        } else if o > 0.0 {
            impossible = true;
        }
    }
    let dof = categories.saturating_sub(1);
    if n == 0 {
        return ChiSquared { statistic: 0.0, dof, p_value: 1.0 };
    }
    if impossible {
        return ChiSquared { statistic: f64::INFINITY, dof, p_value: 0.0 };
    }
    if dof == 0 {
        return ChiSquared { statistic, dof, p_value: 1.0 };
    }
    ChiSquared { statistic, dof, p_value: chi2_sf(statistic, dof) }
}

/// Iteration cap for the incomplete-gamma series and continued fraction; both converge in far
/// fewer steps for the degrees of freedom a drift monitor uses (≤ 32).
const GAMMA_MAX_ITER: usize = 10_000;
const GAMMA_EPS: f64 = 1e-16;
const GAMMA_TINY: f64 = 1e-300;

/// Regularised lower incomplete gamma P(a, x) by its power series (Numerical Recipes `gser`);
/// converges quickly for x < a + 1.
fn gamma_p_series(a: f64, x: f64) -> f64 {
    let mut ap = a;
    let mut term = 1.0 / a;
    let mut sum = term;
    for _ in 0..GAMMA_MAX_ITER {
        ap += 1.0;
        term *= x / ap;
        sum += term;
        if term.abs() < sum.abs() * GAMMA_EPS {
            break;
        }
    }
    sum * libm::exp(-x + a * libm::log(x) - libm::lgamma(a))
}

/// Regularised upper incomplete gamma Q(a, x) by its continued fraction (Numerical Recipes `gcf`,
/// modified Lentz); converges quickly for x ≥ a + 1.
fn gamma_q_fraction(a: f64, x: f64) -> f64 {
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / GAMMA_TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..GAMMA_MAX_ITER {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < GAMMA_TINY {
            d = GAMMA_TINY;
        }
        c = b + an / c;
        if c.abs() < GAMMA_TINY {
            c = GAMMA_TINY;
        }
        d = 1.0 / d;
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < GAMMA_EPS {
            break;
        }
    }
    libm::exp(-x + a * libm::log(x) - libm::lgamma(a)) * h
}

/// Survival function of the chi-squared distribution, `scipy.stats.chi2.sf(x, dof)`, computed as
/// the regularised upper incomplete gamma Q(dof/2, x/2) (series below a + 1, continued fraction
/// above). Matches scipy to ~1e-10 relative for dof 1..=200 and x up to several hundred. `dof = 0`
/// is the point mass at 0 (scipy returns NaN there): 1 for x ≤ 0, else 0. NaN in, NaN out.
pub fn chi2_sf(x: f64, dof: u32) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if dof == 0 || x == f64::INFINITY {
        return 0.0;
    }
    let (a, x) = (f64::from(dof) / 2.0, x / 2.0);
    let q = if x < a + 1.0 { 1.0 - gamma_p_series(a, x) } else { gamma_q_fraction(a, x) };
    q.clamp(0.0, 1.0)
}

/// Two-sided p-value of the chi-squared test for a variance: with `n` values of unbiased sample
/// variance `variance` drawn from a normal distribution of variance `reference_variance`,
/// `(n − 1)·variance / reference_variance` follows chi-squared with `n − 1` degrees of freedom. The
/// p-value is `2 · min(sf, cdf)`. The test assumes light tails (kurtosis near 3): on heavy-tailed
/// data sample variances swing more and the p-value is too small. 1 when `n < 2` or the reference
/// variance is not positive.
pub fn variance_p_value(n: u64, variance: f64, reference_variance: f64) -> f64 {
    if n < 2 || reference_variance.is_nan() || reference_variance <= 0.0 || !variance.is_finite() {
        return 1.0;
    }
    let dof = u32::try_from(n - 1).unwrap_or(u32::MAX);
    let statistic = f64::from(dof) * variance.max(0.0) / reference_variance;
    let sf = chi2_sf(statistic, dof);
    (2.0 * sf.min(1.0 - sf)).clamp(0.0, 1.0)
}

/// Two-sample Kolmogorov–Smirnov statistic on binned data: the largest gap between the cumulative
/// proportions at the bin boundaries. Binning hides where inside a bin the samples sit, so this is a
/// lower bound of the KS statistic of the raw samples (the supremum is taken over fewer points), and
/// the p-value from [`ks_p_value`] is correspondingly conservative. Both inputs should be proportions.
pub fn ks_binned(expected: &[f64], observed: &[f64]) -> f64 {
    let (mut ce, mut co, mut d) = (0.0f64, 0.0f64, 0.0f64);
    for (&e, &o) in expected.iter().zip(observed) {
        ce += e;
        co += o;
        d = d.max((ce - co).abs());
    }
    d
}

/// Below this, the Kolmogorov survival function is computed as 1 − CDF with the theta-function
/// series of the CDF, which converges fast for small x (the alternating series does not).
const KOLMOGOROV_CUTOVER: f64 = 0.82;

/// Survival function of the Kolmogorov limiting distribution, `scipy.special.kolmogorov(x)`:
/// `P(K > x) = 2 Σ_{k≥1} (−1)^{k−1} exp(−2k²x²)`. 1 for x ≤ 0, NaN for NaN.
pub fn kolmogorov_sf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    if x < KOLMOGOROV_CUTOVER {
        // CDF = sqrt(2π)/x Σ_{k≥1} exp(−(2k−1)² π² / (8x²))
        let w = core::f64::consts::PI * core::f64::consts::PI / (8.0 * x * x);
        let mut cdf = 0.0;
        for k in 1..=20u32 {
            let j = f64::from(2 * k - 1);
            let term = libm::exp(-j * j * w);
            cdf += term;
            if term < 1e-300 || term < cdf * 1e-17 {
                break;
            }
        }
        let cdf = cdf * libm::sqrt(2.0 * core::f64::consts::PI) / x;
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    let mut sf = 0.0;
    let mut sign = 1.0;
    for k in 1..=100u32 {
        let k = f64::from(k);
        let term = libm::exp(-2.0 * k * k * x * x);
        sf += sign * term;
        if term <= sf.abs() * 1e-17 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sf).clamp(0.0, 1.0)
}

/// Asymptotic p-value of a two-sample KS statistic `d` with sample sizes `n` and `m`:
/// `kolmogorov_sf(d · sqrt(n·m/(n+m)))`. This is the large-sample approximation (scipy's
/// `ks_2samp(..., method='asymp')` without its small-sample corrections); it is slightly
/// conservative for a few hundred samples, and more so on binned data (see [`ks_binned`]).
/// 1 when either sample is empty.
pub fn ks_p_value(d: f64, n: u64, m: u64) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let (n, m) = (n as f64, m as f64);
    kolmogorov_sf(d * libm::sqrt(n * m / (n + m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cases, close, data, ints, num, nums};

    #[test]
    fn psi_matches_numpy_formula() {
        let d = data();
        assert_eq!(num(&d["psi_floor"]), PSI_FLOOR);
        for c in cases(&d, "psi") {
            let (e, o, want) = (nums(&c["expected"]), nums(&c["observed"]), num(&c["psi"]));
            assert!(close(psi(&e, &o), want, 1e-12, 1e-15), "{c}");
        }
    }

    #[test]
    fn js_distance_matches_scipy() {
        let d = data();
        for c in cases(&d, "js") {
            let (p, q, want) = (nums(&c["p"]), nums(&c["q"]), num(&c["js"]));
            assert!(close(js_distance(&p, &q), want, 1e-12, 1e-15), "{c}: got {}", js_distance(&p, &q));
        }
    }

    #[test]
    fn chi_squared_matches_scipy_chisquare() {
        let d = data();
        for c in cases(&d, "chisquare") {
            let observed: std::vec::Vec<u32> = ints(&c["observed"]).iter().map(|&x| x as u32).collect();
            let got = chi_squared(&observed, &nums(&c["expected"]));
            assert_eq!(i64::from(got.dof), c["dof"].as_i64().expect("dof"));
            assert!(close(got.statistic, num(&c["statistic"]), 1e-11, 1e-13), "{c}: {got:?}");
            assert!(close(got.p_value, num(&c["p_value"]), 1e-10, 1e-300), "{c}: {got:?}");
        }
    }

    #[test]
    fn chi2_sf_matches_scipy_to_1e10_relative() {
        let d = data();
        for c in cases(&d, "chi2_sf") {
            let (x, dof, want) = (num(&c["x"]), c["dof"].as_u64().expect("dof") as u32, num(&c["sf"]));
            let got = chi2_sf(x, dof);
            assert!(close(got, want, 1e-10, 1e-300), "x={x} dof={dof}: got {got:e}, scipy {want:e}");
        }
    }

    #[test]
    fn kolmogorov_sf_matches_scipy() {
        let d = data();
        for c in cases(&d, "kolmogorov") {
            let (x, want) = (num(&c["x"]), num(&c["sf"]));
            let got = kolmogorov_sf(x);
            assert!(close(got, want, 1e-10, 1e-15), "x={x}: got {got:e}, scipy {want:e}");
        }
    }

    #[test]
    fn ks_binned_matches_cumsum_and_bounds_raw_ks() {
        let d = data();
        for c in cases(&d, "ks_binned") {
            let (e, o) = (nums(&c["expected"]), nums(&c["observed"]));
            let got = ks_binned(&e, &o);
            assert!(close(got, num(&c["ks"]), 1e-12, 1e-15), "{got} vs {}", c["ks"]);
            assert!(got <= num(&c["raw_ks"]) + 1e-12, "binned KS must not exceed the raw-sample KS");
            let (n, m) = (c["n"].as_u64().expect("n"), c["m"].as_u64().expect("m"));
            assert!(close(ks_p_value(got, n, m), num(&c["p_value"]), 1e-9, 1e-15));
        }
    }

    #[test]
    fn proportions_and_empty_input() {
        let mut out = [9.0; 4];
        assert_eq!(proportions(&[1, 3, 0, 4], &mut out), 8);
        assert_eq!(out, [0.125, 0.375, 0.0, 0.5]);
        assert_eq!(proportions(&[0, 0], &mut out), 0);
        assert_eq!(&out[..2], &[0.0, 0.0]);
    }

    #[test]
    fn psi_is_zero_on_identity_and_symmetric() {
        let a = [0.1, 0.2, 0.3, 0.4];
        let b = [0.25, 0.25, 0.25, 0.25];
        assert_eq!(psi(&a, &a), 0.0);
        assert!((psi(&a, &b) - psi(&b, &a)).abs() < 1e-15);
        assert!(psi(&a, &b) > 0.0);
    }

    #[test]
    fn chi_squared_edge_cases() {
        let inf = chi_squared(&[5, 5, 1], &[0.5, 0.5, 0.0]);
        assert_eq!((inf.statistic, inf.dof, inf.p_value), (f64::INFINITY, 1, 0.0));
        let left_out = chi_squared(&[5, 5, 0], &[0.5, 0.5, 0.0]);
        assert_eq!((left_out.statistic, left_out.dof, left_out.p_value), (0.0, 1, 1.0));
        let empty = chi_squared(&[0, 0], &[0.5, 0.5]);
        assert_eq!(empty.p_value, 1.0);
    }

    #[test]
    fn chi2_sf_special_values() {
        assert_eq!(chi2_sf(0.0, 3), 1.0);
        assert_eq!(chi2_sf(f64::INFINITY, 3), 0.0);
        assert!(chi2_sf(f64::NAN, 3).is_nan());
        // dof 2 is the exponential distribution with mean 2: sf(x) = exp(-x/2), independent of the series.
        for x in [0.1, 1.0, 2.9, 3.1, 10.0, 80.0] {
            let want = libm::exp(-x / 2.0);
            assert!((chi2_sf(x, 2) - want).abs() <= want * 1e-13, "x={x}");
        }
    }

    #[test]
    fn kolmogorov_branches_agree_at_cutover() {
        let below = kolmogorov_sf(KOLMOGOROV_CUTOVER - 1e-12);
        let above = kolmogorov_sf(KOLMOGOROV_CUTOVER);
        assert!((below - above).abs() < 1e-11, "{below} {above}");
        assert_eq!(kolmogorov_sf(0.0), 1.0);
        assert!(kolmogorov_sf(10.0) < 1e-80);
    }
}
