//! Windowed drift monitor: sketches every monitored feature (model inputs and, as categorical
//! features, the predicted classes) over windows of samples or time, scores each closed window
//! against the references, and tells the caller when drift has persisted long enough to retrain.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::reference::{FeatureKind, FeatureRef, RefError};
use crate::sketch::{MAX_SLOTS, Sketch};
use crate::stats::{ChiSquared, chi_squared, js_distance, ks_binned, ks_p_value, proportions, psi, variance_p_value};

/// Decision thresholds; a feature is drifted in a window when any statistic crosses its threshold.
///
/// The defaults were chosen by measurement (tests in this module, fixed seeds), with windows of
/// 200 samples, 10 equal-frequency bins from 10,000 reference values and reference moments given:
/// - stationary data: 8 of 2,500 windows (0.32 %) flag any of 4 numeric features, and 8 of 2,500
///   (0.32 %) flag any of 4 categorical features; the bound asserted is < 0.5 %;
/// - a 1-σ mean shift, a doubled variance, a new category (5 % of values) and a class mix going
///   from 50/50 to 80/20 are each flagged in the first full window after the change for 200 of 200
///   seeds.
///
/// Without reference moments a doubled variance is only caught in the first window about 57 % of
/// the time: 10 bins and 200 values cannot separate it from noise at this false-alarm rate.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct Thresholds {
    /// Flag when PSI exceeds this (default 0.2; for small drift PSI ≈ χ²/n, so with n = 200 this is
    /// χ² ≈ 40 on 9 degrees of freedom, p ≈ 1e-5).
    pub psi: f64,
    /// Flag when the Jensen–Shannon distance exceeds this (default 0.15).
    pub js: f64,
    /// Flag numeric features when the KS p-value is below this (default 0.001).
    pub ks_p: f64,
    /// Flag categorical features when the chi-squared p-value is below this (default 0.001).
    pub chi2_p: f64,
    /// Flag numeric features whose reference has moments when the two-sided variance-test p-value
    /// is below this (default 0.0005).
    pub variance_p: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { psi: 0.2, js: 0.15, ks_p: 0.001, chi2_p: 0.001, variance_p: 0.0005 }
    }
}

/// When a window closes and whether it is judged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WindowPolicy {
    /// Close once this many samples are in the window (0: no sample limit).
    pub samples: u32,
    /// Close once this many milliseconds have passed since the window opened, so a quiet device
    /// still reports (0: no time limit).
    pub millis: u64,
    /// Windows with fewer samples are reported but not judged: too few values for the
    /// statistics to mean anything, so nothing is flagged and streaks are left unchanged.
    pub min_samples: u32,
}

/// Which statistic made a feature count as drifted (the first that crossed, in the order of
/// the variants).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// Population stability index above [`Thresholds::psi`].
    Psi,
    /// Kolmogorov–Smirnov p-value below [`Thresholds::ks_p`] (numeric features).
    Ks,
    /// Jensen–Shannon distance above [`Thresholds::js`].
    Js,
    /// Chi-squared p-value below [`Thresholds::chi2_p`] (categorical features).
    ChiSquared,
    /// A value outside the reference categories was seen (categorical features).
    NewCategory,
    /// Variance-test p-value below [`Thresholds::variance_p`] (numeric features whose reference
    /// has moments, see [`FeatureRef::with_moments`]).
    Variance,
}

impl fmt::Display for Statistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Psi => "psi",
            Self::Ks => "ks",
            Self::Js => "js",
            Self::ChiSquared => "chi2",
            Self::NewCategory => "new_category",
            Self::Variance => "variance",
        })
    }
}

/// All statistics of one feature in one window, and the verdict.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct FeatureScore {
    /// Population stability index against the reference proportions.
    #[serde(with = "crate::float_wire")]
    pub psi: f64,
    /// Jensen–Shannon distance (NaN when the window had no finite values).
    #[serde(with = "crate::float_wire")]
    pub js: f64,
    /// Binned two-sample KS statistic (0 for categorical features, where order means nothing).
    #[serde(with = "crate::float_wire")]
    pub ks: f64,
    /// Asymptotic KS p-value (1 for categorical features).
    #[serde(with = "crate::float_wire")]
    pub ks_p: f64,
    /// Chi-squared goodness of fit (categorical features only).
    pub chi2: Option<ChiSquared>,
    /// A value outside the reference categories was seen (always false for numeric features).
    pub new_category: bool,
    /// Two-sided p-value of the variance test against the reference std (1 when the reference
    /// has no moments, for categorical features, or with fewer than 2 values).
    #[serde(with = "crate::float_wire")]
    pub variance_p: f64,
    /// The first statistic that crossed its threshold; `None` when not drifted or not judged.
    pub drifted: Option<Statistic>,
    /// Consecutive judged windows, up to and including this one, in which the feature drifted.
    pub streak: u8,
}

impl FeatureScore {
    /// Score of a window with no finite values: neutral statistics, nothing flagged.
    fn empty() -> Self {
        Self {
            psi: 0.0,
            js: 0.0,
            ks: 0.0,
            ks_p: 1.0,
            chi2: None,
            new_category: false,
            variance_p: 1.0,
            drifted: None,
            streak: 0,
        }
    }
}

/// Scores one sketch against its reference (the same code on the device and on merged fleet
/// sketches). Nothing is flagged when the sketch has no finite values or its slot count does not
/// match the reference (use [`crate::Sketch::merge`]'s error to catch that earlier). `streak` is 0;
/// the monitor fills it in.
pub fn score(reference: &FeatureRef, sketch: &Sketch, thresholds: &Thresholds) -> FeatureScore {
    if sketch.n == 0 || sketch.slots() != reference.slots() {
        return FeatureScore::empty();
    }
    let expected = reference.expected();
    let mut observed = [0.0f64; MAX_SLOTS];
    let observed = &mut observed[..expected.len()];
    proportions(&sketch.counts, observed);
    let psi = psi(expected, observed);
    let js = js_distance(expected, observed);
    let mut out = FeatureScore { psi, js, ..FeatureScore::empty() };
    match reference.kind() {
        FeatureKind::Numeric => {
            out.ks = ks_binned(expected, observed);
            out.ks_p = ks_p_value(out.ks, u64::from(sketch.n), reference.total());
            if let (Some((_, std)), Some(pop_std)) = (reference.moments(), sketch.std()) {
                let n = f64::from(sketch.n);
                let unbiased = if sketch.n > 1 { pop_std * pop_std * n / (n - 1.0) } else { 0.0 };
                out.variance_p = variance_p_value(u64::from(sketch.n), unbiased, std * std);
            }
        }
        FeatureKind::Categorical => {
            out.chi2 = Some(chi_squared(&sketch.counts, expected));
            out.new_category = sketch.counts.last().is_some_and(|&c| c > 0);
        }
    }
    out.drifted = if psi > thresholds.psi {
        Some(Statistic::Psi)
    } else if out.ks_p < thresholds.ks_p {
        Some(Statistic::Ks)
    } else if js > thresholds.js {
        Some(Statistic::Js)
    } else if out.chi2.is_some_and(|c| c.p_value < thresholds.chi2_p) {
        Some(Statistic::ChiSquared)
    } else if out.new_category {
        Some(Statistic::NewCategory)
    } else if out.variance_p < thresholds.variance_p {
        Some(Statistic::Variance)
    } else {
        None
    };
    out
}

/// What a closed window looked like; sent to the fleet server as is.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct WindowReport<const F: usize> {
    /// When the window opened (caller's millisecond clock).
    pub start_ms: u64,
    /// When it closed.
    pub end_ms: u64,
    /// Samples counted by [`DriftMonitor::end_sample`].
    pub samples: u32,
    /// Whether the window had at least `min_samples` samples; if not, nothing is flagged.
    pub judged: bool,
    /// One score per feature, in reference order.
    pub features: heapless::Vec<FeatureScore, F>,
    /// The window's sketches, for merging across devices.
    pub sketches: heapless::Vec<Sketch, F>,
    /// Some feature's drift streak just reached `sustain`: time to retrain or alert. Fires once per
    /// episode; the feature re-arms after a clean judged window.
    pub retrain: bool,
}

/// Drift monitor for up to `F` features (inputs and prediction classes alike).
///
/// Feed it with [`observe`](Self::observe) for each feature value and
/// [`end_sample`](Self::end_sample) after each sample; poll [`due`](Self::due) and call
/// [`close`](Self::close) to get a [`WindowReport`].
#[derive(Clone, Debug)]
pub struct DriftMonitor<const F: usize> {
    references: heapless::Vec<FeatureRef, F>,
    live: heapless::Vec<Sketch, F>,
    streaks: [u8; F],
    armed: [bool; F],
    policy: WindowPolicy,
    thresholds: Thresholds,
    sustain: u8,
    start_ms: u64,
    samples: u32,
}

impl<const F: usize> DriftMonitor<F> {
    /// A monitor over `features` (at most `F`, else [`RefError::TooManyFeatures`]) whose first
    /// window opens at `now_ms`. `sustain` is the number of consecutive drifted judged windows that
    /// raise `retrain` (0 is treated as 1).
    pub fn new(
        features: &[FeatureRef],
        policy: WindowPolicy,
        thresholds: Thresholds,
        sustain: u8,
        now_ms: u64,
    ) -> Result<Self, RefError> {
        let references = heapless::Vec::from_slice(features).map_err(|_| RefError::TooManyFeatures)?;
        let mut live = heapless::Vec::new();
        for r in features {
            live.push(Sketch::new(r.slots())).map_err(|_| RefError::TooManyFeatures)?;
        }
        Ok(Self {
            references,
            live,
            streaks: [0; F],
            armed: [true; F],
            policy,
            thresholds,
            sustain: sustain.max(1),
            start_ms: now_ms,
            samples: 0,
        })
    }

    /// Number of monitored features.
    pub fn features(&self) -> usize {
        self.references.len()
    }

    /// The references, in feature order.
    pub fn references(&self) -> &[FeatureRef] {
        &self.references
    }

    /// Records value `x` of feature `feature`. Out-of-range feature indices are ignored; NaN and
    /// infinities are only counted (`Sketch::non_finite`).
    pub fn observe(&mut self, feature: usize, x: f32) {
        let (Some(reference), Some(sketch)) = (self.references.get(feature), self.live.get_mut(feature)) else {
            return;
        };
        let slot = if x.is_finite() { reference.slot(x) } else { 0 };
        sketch.record(slot, x);
    }

    /// Counts one sample (one inference) towards the window size.
    pub fn end_sample(&mut self) {
        self.samples = self.samples.saturating_add(1);
    }

    /// Samples in the current window so far.
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// Whether the window is full or has timed out. A clock that goes backwards never times out.
    pub fn due(&self, now_ms: u64) -> bool {
        let full = self.policy.samples > 0 && self.samples >= self.policy.samples;
        let timed_out = self.policy.millis > 0 && now_ms.saturating_sub(self.start_ms) >= self.policy.millis;
        full || timed_out
    }

    /// Closes the window: scores every feature, updates drift streaks, empties the sketches and
    /// opens the next window at `now_ms`.
    pub fn close(&mut self, now_ms: u64) -> WindowReport<F> {
        let judged = self.samples >= self.policy.min_samples;
        let mut report = WindowReport {
            start_ms: self.start_ms,
            end_ms: now_ms,
            samples: self.samples,
            judged,
            features: heapless::Vec::new(),
            sketches: heapless::Vec::new(),
            retrain: false,
        };
        for (i, (reference, sketch)) in self.references.iter().zip(self.live.iter_mut()).enumerate() {
            let mut s = score(reference, sketch, &self.thresholds);
            if !judged {
                s.drifted = None;
            } else if s.drifted.is_some() {
                self.streaks[i] = self.streaks[i].saturating_add(1);
                if self.streaks[i] >= self.sustain && self.armed[i] {
                    self.armed[i] = false;
                    report.retrain = true;
                }
            } else {
                self.streaks[i] = 0;
                self.armed[i] = true;
            }
            s.streak = self.streaks[i];
            // Cannot fail: at most F features.
            let _ = report.features.push(s);
            let _ = report.sketches.push(sketch.clone());
            sketch.clear();
        }
        self.start_ms = now_ms;
        self.samples = 0;
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;

    const WINDOW: u32 = 200;
    const BINS: usize = 10;
    const REFERENCE_SIZE: usize = 10_000;

    fn policy() -> WindowPolicy {
        WindowPolicy { samples: WINDOW, millis: 0, min_samples: 50 }
    }

    /// Equal-frequency reference for N(0, 1) from `REFERENCE_SIZE` draws: deciles as inner edges,
    /// the sample min and max as outer edges, counts from binning the same draws.
    fn normal_reference(rng: &mut TestRng) -> FeatureRef {
        let mut xs: std::vec::Vec<f64> = (0..REFERENCE_SIZE).map(|_| f64::from(rng.normal() as f32)).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        let mut edges = std::vec![xs[0]];
        for k in 1..BINS {
            edges.push(xs[k * REFERENCE_SIZE / BINS]);
        }
        edges.push(xs[REFERENCE_SIZE - 1]);
        let mut counts = [0u64; BINS];
        let probe = FeatureRef::numeric(&edges, &[1; BINS]).expect("valid edges");
        for &x in &xs {
            counts[probe.slot(x as f32)] += 1;
        }
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (xs.len() - 1) as f64;
        FeatureRef::numeric(&edges, &counts)
            .and_then(|r| r.with_moments(mean, libm::sqrt(var)))
            .expect("valid reference")
    }

    fn class_reference(probs: &[f64]) -> FeatureRef {
        let values: std::vec::Vec<i64> = (0..probs.len() as i64).collect();
        let counts: std::vec::Vec<u64> = probs.iter().map(|p| (p * REFERENCE_SIZE as f64) as u64).collect();
        FeatureRef::categorical(&values, &counts).expect("valid reference")
    }

    /// Feeds one full window where every feature value comes from `draw(feature, rng)`.
    fn run_window<const F: usize>(
        m: &mut DriftMonitor<F>,
        rng: &mut TestRng,
        now: &mut u64,
        mut draw: impl FnMut(usize, &mut TestRng) -> f64,
    ) -> WindowReport<F> {
        for _ in 0..WINDOW {
            for f in 0..m.features() {
                let x = draw(f, rng);
                m.observe(f, x as f32);
            }
            m.end_sample();
            *now += 10;
        }
        assert!(m.due(*now));
        m.close(*now)
    }

    #[test]
    fn stationary_numeric_false_alarms_below_half_percent() {
        let mut rng = TestRng::new(0x5eed_0001);
        let refs: std::vec::Vec<FeatureRef> = (0..4).map(|_| normal_reference(&mut rng)).collect();
        let mut m = DriftMonitor::<4>::new(&refs, policy(), Thresholds::default(), 3, 0).expect("4 features fit");
        let (mut now, windows) = (0u64, 2_500);
        let (mut flagged, mut reasons) = (0, [0u32; 6]);
        for _ in 0..windows {
            let r = run_window(&mut m, &mut rng, &mut now, |_, rng| rng.normal());
            flagged += usize::from(r.features.iter().any(|s| s.drifted.is_some()));
            for s in r.features.iter().filter_map(|s| s.drifted) {
                reasons[s as usize] += 1;
            }
        }
        let rate = flagged as f64 / f64::from(windows);
        std::println!(
            "stationary numeric: {flagged}/{windows} windows flagged ({:.3} %), feature flags by statistic \
             [psi, ks, js, chi2, new, var] = {reasons:?}",
            rate * 100.0
        );
        assert!(rate < 0.005, "false-alarm rate {rate}");
    }

    #[test]
    fn stationary_categorical_false_alarms_below_half_percent() {
        let mut rng = TestRng::new(0x5eed_0002);
        let mixes: [&[f64]; 4] = [&[0.5, 0.5], &[0.7, 0.2, 0.1], &[0.25; 4], &[0.4, 0.3, 0.2, 0.05, 0.05]];
        let refs: std::vec::Vec<FeatureRef> = mixes.iter().map(|p| class_reference(p)).collect();
        let mut m = DriftMonitor::<4>::new(&refs, policy(), Thresholds::default(), 3, 0).expect("4 features fit");
        let (mut now, windows) = (0u64, 2_500);
        let mut flagged = 0;
        for _ in 0..windows {
            let r = run_window(&mut m, &mut rng, &mut now, |f, rng| rng.categorical(mixes[f]) as f64);
            flagged += usize::from(r.features.iter().any(|s| s.drifted.is_some()));
        }
        let rate = flagged as f64 / f64::from(windows);
        std::println!("stationary categorical: {flagged}/{windows} windows flagged ({:.3} %)", rate * 100.0);
        assert!(rate < 0.005, "false-alarm rate {rate}");
    }

    /// Runs `before` clean windows, then switches feature 0 to `shifted` and returns the report of
    /// the first full window after the change.
    fn first_window_after<const F: usize>(
        m: &mut DriftMonitor<F>,
        rng: &mut TestRng,
        clean: impl Fn(usize, &mut TestRng) -> f64,
        shifted: impl Fn(&mut TestRng) -> f64,
    ) -> WindowReport<F> {
        let mut now = 0;
        for _ in 0..5 {
            let r = run_window(m, rng, &mut now, &clean);
            assert!(r.judged);
        }
        run_window(m, rng, &mut now, |f, rng| if f == 0 { shifted(rng) } else { clean(f, rng) })
    }

    /// Detection rate in the first full window after each kind of change, over `SEEDS` seeds.
    const SEEDS: u64 = 200;

    fn detection_rate(mut scenario: impl FnMut(&mut TestRng) -> Option<Statistic>) -> (u64, [u32; 6]) {
        let (mut hits, mut reasons) = (0, [0u32; 6]);
        for seed in 0..SEEDS {
            if let Some(s) = scenario(&mut TestRng::new(0xd1ff_0000 + seed)) {
                hits += 1;
                reasons[s as usize] += 1;
            }
        }
        (hits, reasons)
    }

    fn numeric_change(rng: &mut TestRng, moments: bool, shifted: impl Fn(&mut TestRng) -> f64) -> Option<Statistic> {
        let mut refs = [normal_reference(rng), normal_reference(rng)];
        if !moments {
            for r in &mut refs {
                *r = FeatureRef::numeric(r.edges(), &r_counts(r)).expect("valid");
            }
        }
        let mut m = DriftMonitor::<2>::new(&refs, policy(), Thresholds::default(), 1, 0).expect("fits");
        let r = first_window_after(&mut m, rng, |_, rng| rng.normal(), shifted);
        assert!(r.retrain == r.features[0].drifted.is_some() || r.features[1].drifted.is_some());
        r.features[0].drifted
    }

    /// Reference counts recovered from the expected proportions (for rebuilding without moments).
    fn r_counts(r: &FeatureRef) -> std::vec::Vec<u64> {
        r.expected().iter().map(|p| libm::round(p * r.total() as f64) as u64).collect()
    }

    fn class_change(rng: &mut TestRng, shifted: impl Fn(&mut TestRng) -> f64) -> Option<Statistic> {
        let classes = [class_reference(&[0.5, 0.5]), class_reference(&[0.6, 0.3, 0.1])];
        let clean =
            |f: usize, rng: &mut TestRng| rng.categorical(if f == 0 { &[0.5, 0.5] } else { &[0.6, 0.3, 0.1] }) as f64;
        let mut m = DriftMonitor::<2>::new(&classes, policy(), Thresholds::default(), 1, 0).expect("fits");
        first_window_after(&mut m, rng, clean, shifted).features[0].drifted
    }

    #[test]
    fn changes_are_flagged_in_the_first_full_window() {
        let scenarios: [(&str, (u64, [u32; 6])); 5] = [
            ("mean +1 sd", detection_rate(|rng| numeric_change(rng, true, |rng| rng.normal() + 1.0))),
            (
                "variance x2",
                detection_rate(|rng| numeric_change(rng, true, |rng| rng.normal() * core::f64::consts::SQRT_2)),
            ),
            (
                "class mix 50/50 -> 80/20",
                detection_rate(|rng| class_change(rng, |rng| rng.categorical(&[0.8, 0.2]) as f64)),
            ),
            (
                // One value in twenty is a category never seen in training (P(none in 200) = 3.5e-5).
                "new category at 5 %",
                detection_rate(|rng| {
                    class_change(
                        rng,
                        |rng| if rng.uniform() < 0.05 { 7.0 } else { rng.categorical(&[0.5, 0.5]) as f64 },
                    )
                }),
            ),
            ("mean +1 sd, no moments", detection_rate(|rng| numeric_change(rng, false, |rng| rng.normal() + 1.0))),
        ];
        for (name, (hits, reasons)) in scenarios {
            std::println!(
                "{name}: flagged in the first window for {hits}/{SEEDS} seeds, by [psi, ks, js, chi2, new, var] = {reasons:?}"
            );
            assert_eq!(hits, SEEDS, "{name}");
        }
        // Without reference moments, a doubled variance is only seen by the histogram statistics,
        // which at this false-alarm budget catch it in the first window about 3 times out of 4.
        let (hits, reasons) =
            detection_rate(|rng| numeric_change(rng, false, |rng| rng.normal() * core::f64::consts::SQRT_2));
        std::println!("variance x2, no moments: {hits}/{SEEDS} seeds, by [psi, ks, js, chi2, new, var] = {reasons:?}");
        assert!(hits >= SEEDS / 2, "variance x2 without moments: {hits}");
    }

    #[test]
    fn new_category_alone_is_reported_as_such() {
        let refs = [class_reference(&[0.5, 0.5])];
        let mut m = DriftMonitor::<1>::new(&refs, policy(), Thresholds::default(), 1, 0).expect("fits");
        for i in 0..WINDOW {
            m.observe(0, if i == 0 { 9.0 } else { (i % 2) as f32 });
            m.end_sample();
        }
        let r = m.close(5);
        let s = r.features[0];
        assert!(s.new_category);
        assert_eq!(s.chi2.map(|c| c.p_value), Some(0.0));
        // With one stray value in 200, PSI and JS stay low; chi-squared (p = 0) fires before the
        // new-category flag in the priority order.
        assert_eq!(s.drifted, Some(Statistic::ChiSquared));
    }

    #[test]
    fn streaks_retrain_once_and_rearm() {
        let refs = [class_reference(&[0.5, 0.5])];
        let mut m = DriftMonitor::<1>::new(&refs, policy(), Thresholds::default(), 2, 0).expect("fits");
        let window = |value_of: &dyn Fn(u32) -> f32, m: &mut DriftMonitor<1>| {
            for i in 0..WINDOW {
                m.observe(0, value_of(i));
                m.end_sample();
            }
            m.close(0)
        };
        let drifted = |_: u32| 0.0f32;
        let clean = |i: u32| (i % 2) as f32;
        let seq: std::vec::Vec<(u8, bool)> = [drifted as fn(u32) -> f32, drifted, drifted, clean, drifted, drifted]
            .iter()
            .map(|f| {
                let r = window(f, &mut m);
                (r.features[0].streak, r.retrain)
            })
            .collect();
        assert_eq!(seq, [(1, false), (2, true), (3, false), (0, false), (1, false), (2, true)]);
    }

    #[test]
    fn short_windows_are_not_judged_and_time_closes_windows() {
        let refs = [class_reference(&[0.5, 0.5])];
        let p = WindowPolicy { samples: 1000, millis: 60_000, min_samples: 50 };
        let mut m = DriftMonitor::<1>::new(&refs, p, Thresholds::default(), 1, 1_000).expect("fits");
        for _ in 0..10 {
            m.observe(0, 0.0);
            m.observe(3, 0.0); // out of range: ignored
            m.observe(0, f32::NAN);
            m.end_sample();
        }
        assert!(!m.due(60_999));
        assert!(m.due(61_000));
        assert!(!m.due(0), "clock going backwards must not close the window");
        let r = m.close(61_000);
        assert!(!r.judged && !r.retrain);
        assert_eq!((r.start_ms, r.end_ms, r.samples), (1_000, 61_000, 10));
        assert_eq!(r.features[0].drifted, None);
        assert_eq!((r.sketches[0].n, r.sketches[0].non_finite), (10, 10));
        assert_eq!(m.samples(), 0);
    }

    #[test]
    fn too_many_features_is_an_error() {
        let refs = [class_reference(&[0.5, 0.5]), class_reference(&[0.5, 0.5])];
        assert_eq!(
            DriftMonitor::<1>::new(&refs, policy(), Thresholds::default(), 1, 0).map(|_| ()),
            Err(RefError::TooManyFeatures)
        );
    }

    #[test]
    fn report_round_trips_through_json_and_postcard() {
        let refs = [class_reference(&[0.5, 0.5]), FeatureRef::numeric(&[0.0, 1.0, 2.0], &[5, 5]).expect("valid")];
        let mut m = DriftMonitor::<2>::new(&refs, policy(), Thresholds::default(), 1, 0).expect("fits");
        for i in 0..WINDOW {
            m.observe(0, if i == 0 { 5.0 } else { 0.0 });
            m.observe(1, i as f32 / 100.0);
            m.end_sample();
        }
        let r = m.close(7);
        assert_eq!(r.features[0].chi2.map(|c| c.statistic), Some(f64::INFINITY));
        let json = serde_json::to_string(&r).expect("enc");
        assert_eq!(serde_json::from_str::<WindowReport<2>>(&json).expect("dec"), r);
        let bytes = postcard::to_stdvec(&r).expect("enc");
        assert_eq!(postcard::from_bytes::<WindowReport<2>>(&bytes).expect("dec"), r);
        for junk in [&bytes[..bytes.len() / 2], &[0xff; 40][..]] {
            assert!(postcard::from_bytes::<WindowReport<2>>(junk).is_err());
        }
        let names: std::vec::Vec<std::string::String> = [
            Statistic::Psi,
            Statistic::Ks,
            Statistic::Js,
            Statistic::ChiSquared,
            Statistic::NewCategory,
            Statistic::Variance,
        ]
        .iter()
        .map(|s| std::format!("{s}"))
        .collect();
        assert_eq!(names, ["psi", "ks", "js", "chi2", "new_category", "variance"]);
        let t = Thresholds::default();
        assert_eq!(serde_json::from_str::<Thresholds>(&serde_json::to_string(&t).expect("enc")).expect("dec"), t);
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn junk_never_panics(junk in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = postcard::from_bytes::<WindowReport<4>>(&junk);
            let _ = serde_json::from_slice::<WindowReport<4>>(&junk);
            let _ = postcard::from_bytes::<Thresholds>(&junk);
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::LatencyHistogram;

    /// Keeps the fixed-size state small enough for a microcontroller's RAM (sizes on the host;
    /// 32-bit targets are the same or smaller).
    #[test]
    fn state_sizes_stay_bounded() {
        let (monitor, report, histogram, sketch, reference) = (
            core::mem::size_of::<DriftMonitor<8>>(),
            core::mem::size_of::<WindowReport<8>>(),
            core::mem::size_of::<LatencyHistogram>(),
            core::mem::size_of::<Sketch>(),
            core::mem::size_of::<FeatureRef>(),
        );
        std::println!(
            "size_of: DriftMonitor<8> {monitor}, WindowReport<8> {report}, LatencyHistogram {histogram}, \
             Sketch {sketch}, FeatureRef {reference}"
        );
        assert!(monitor <= 12 * 1024 && report <= 4 * 1024 && histogram <= 1600 && sketch <= 256);
    }
}
