//! Concept drift detectors on a stream of per-sample numbers, typically the model's error
//! indicator (1 when a labelled prediction was wrong, else 0): Page–Hinkley (a cheap CUSUM test)
//! and ADWIN (adaptive windowing with a statistical guarantee). Both are line-by-line ports of
//! river 0.26 (`river.drift.PageHinkley`, `river.drift.ADWIN`), verified against river's detection
//! indices in `fixtures/reference_values.json`, but in fixed-size storage.

use serde::{Deserialize, Serialize};

pub use crate::confusion::Confusion;

/// Which direction of change Page–Hinkley looks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum PageHinkleyMode {
    /// Increases of the mean only (an error rate going up).
    Up,
    /// Decreases of the mean only.
    Down,
    /// Either direction (river's default).
    Both,
}

/// Page–Hinkley change detector, following river's `PageHinkley`: a fading cumulative sum of
/// deviations from the running mean; a change is signalled when it rises more than `threshold`
/// above its minimum (mode up) or falls below its maximum (mode down). After signalling, the next
/// update starts from scratch, as in river.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct PageHinkley {
    min_instances: u32,
    delta: f64,
    threshold: f64,
    alpha: f64,
    mode: PageHinkleyMode,
    n: u64,
    mean: f64,
    sum_increase: f64,
    sum_decrease: f64,
    min_increase: f64,
    max_decrease: f64,
    detected: bool,
}

/// river's defaults (min_instances 30, delta 0.005, threshold 50, alpha 1 − 1e-4), with mode
/// [`PageHinkleyMode::Up`] because on an error stream only a rising error rate is a problem (river
/// itself defaults to `Both`).
impl Default for PageHinkley {
    fn default() -> Self {
        Self::new(30, 0.005, 50.0, 1.0 - 0.0001, PageHinkleyMode::Up)
    }
}

impl PageHinkley {
    /// A detector that stays silent for the first `min_instances` values, ignores deviations
    /// smaller than `delta`, signals when the cumulative deviation exceeds `threshold`, and forgets
    /// old deviations with factor `alpha` per value.
    pub fn new(min_instances: u32, delta: f64, threshold: f64, alpha: f64, mode: PageHinkleyMode) -> Self {
        Self {
            min_instances,
            delta,
            threshold,
            alpha,
            mode,
            n: 0,
            mean: 0.0,
            sum_increase: 0.0,
            sum_decrease: 0.0,
            min_increase: f64::INFINITY,
            max_decrease: -1.0,
            detected: false,
        }
    }

    fn reset(&mut self) {
        *self = Self::new(self.min_instances, self.delta, self.threshold, self.alpha, self.mode);
    }

    /// Feeds one value; true when a change is detected at this value.
    pub fn update(&mut self, x: f64) -> bool {
        if self.detected {
            self.reset();
        }
        self.n += 1;
        self.mean += (1.0 / self.n as f64) * (x - self.mean);
        let dev = x - self.mean;
        self.sum_increase = self.alpha * self.sum_increase + dev - self.delta;
        self.sum_decrease = self.alpha * self.sum_decrease + dev + self.delta;
        if self.sum_increase < self.min_increase {
            self.min_increase = self.sum_increase;
        }
        if self.sum_decrease > self.max_decrease {
            self.max_decrease = self.sum_decrease;
        }
        if self.n >= u64::from(self.min_instances) {
            let up = self.sum_increase - self.min_increase > self.threshold;
            let down = self.max_decrease - self.sum_decrease > self.threshold;
            self.detected = match self.mode {
                PageHinkleyMode::Up => up,
                PageHinkleyMode::Down => down,
                PageHinkleyMode::Both => up || down,
            };
        }
        self.detected
    }

    /// Whether the last update signalled a change.
    pub fn drift_detected(&self) -> bool {
        self.detected
    }

    /// Running mean since the last reset.
    pub fn mean(&self) -> f64 {
        self.mean
    }
}

/// Rows of the ADWIN exponential histogram: row `i` holds buckets of 2^i values, so 32 rows cover
/// about `5 · 2^32` values before the oldest data is dropped early.
pub const ADWIN_ROWS: usize = 32;
/// Largest supported `max_buckets` (river's default); larger requests are clamped.
pub const ADWIN_MAX_BUCKETS: usize = 5;

/// One row of the exponential histogram: buckets of equal size, oldest first.
#[derive(Clone, Copy, PartialEq, Debug)]
struct AdwinRow {
    totals: [f64; ADWIN_MAX_BUCKETS + 1],
    variances: [f64; ADWIN_MAX_BUCKETS + 1],
    len: usize,
}

impl AdwinRow {
    const EMPTY: Self = Self { totals: [0.0; ADWIN_MAX_BUCKETS + 1], variances: [0.0; ADWIN_MAX_BUCKETS + 1], len: 0 };

    fn push(&mut self, total: f64, variance: f64) {
        self.totals[self.len] = total;
        self.variances[self.len] = variance;
        self.len += 1;
    }

    /// Drops the `k` oldest buckets.
    fn drop_oldest(&mut self, k: usize) {
        self.totals.copy_within(k..self.len, 0);
        self.variances.copy_within(k..self.len, 0);
        for i in self.len - k..self.len {
            self.totals[i] = 0.0;
            self.variances[i] = 0.0;
        }
        self.len -= k;
    }
}

/// ADWIN change detector, following river's `ADWIN` (delta 0.002, clock 32, max_buckets 5,
/// min_window_length 5, grace_period 10 by default). Keeps a window of recent values compressed in
/// an exponential histogram (fixed arrays, ~3.3 KiB) and drops its older part whenever the means of
/// two sub-windows differ by more than a Hoeffding-style bound. As in river, the whole window is
/// discarded on the update after a detection.
#[derive(Clone, PartialEq, Debug)]
pub struct Adwin {
    delta: f64,
    clock: u32,
    max_buckets: usize,
    min_window_length: f64,
    grace_period: f64,
    total: f64,
    variance: f64,
    width: f64,
    tick: u32,
    rows: [AdwinRow; ADWIN_ROWS],
    n_rows: usize,
    detected: bool,
}

impl Default for Adwin {
    fn default() -> Self {
        Self::new(0.002, 32, 5, 5, 10)
    }
}

impl Adwin {
    /// A detector with confidence `delta` (smaller: fewer false alarms, slower detection) that
    /// checks for change every `clock` values (at least 1), keeps `max_buckets` (1..=5) buckets per
    /// size, ignores sub-windows shorter than `min_window_length` and checks nothing until
    /// `grace_period` values have arrived.
    pub fn new(delta: f64, clock: u32, max_buckets: usize, min_window_length: u32, grace_period: u32) -> Self {
        Self {
            delta,
            clock: clock.max(1),
            max_buckets: max_buckets.clamp(1, ADWIN_MAX_BUCKETS),
            min_window_length: f64::from(min_window_length),
            grace_period: f64::from(grace_period),
            total: 0.0,
            variance: 0.0,
            width: 0.0,
            tick: 0,
            rows: [AdwinRow::EMPTY; ADWIN_ROWS],
            n_rows: 1,
            detected: false,
        }
    }

    fn reset(&mut self) {
        let min_window_length = self.min_window_length as u32;
        let grace_period = self.grace_period as u32;
        *self = Self::new(self.delta, self.clock, self.max_buckets, min_window_length, grace_period);
    }

    /// Feeds one value; true when a change is detected at this value.
    pub fn update(&mut self, x: f64) -> bool {
        if self.detected {
            self.reset();
        }
        self.insert(x);
        self.detected = self.detect_change();
        self.detected
    }

    /// Whether the last update signalled a change.
    pub fn drift_detected(&self) -> bool {
        self.detected
    }

    /// Number of values in the current window.
    pub fn width(&self) -> u64 {
        self.width as u64
    }

    /// Mean of the current window (0 when empty): the error rate since the last change.
    pub fn estimation(&self) -> f64 {
        if self.width == 0.0 { 0.0 } else { self.total / self.width }
    }

    fn insert(&mut self, value: f64) {
        self.rows[0].push(value, 0.0);
        self.width += 1.0;
        let mut incremental_variance = 0.0;
        if self.width > 1.0 {
            let delta_v = value - self.total / (self.width - 1.0);
            incremental_variance = (self.width - 1.0) * delta_v * delta_v / self.width;
        }
        self.variance += incremental_variance;
        self.total += value;
        self.compress();
    }

    fn compress(&mut self) {
        let mut idx = 0;
        while self.rows[idx].len == self.max_buckets + 1 {
            if idx + 1 >= ADWIN_ROWS {
                // Out of rows (after ~5·2^32 values): forget the oldest bucket instead of growing.
                self.delete_oldest();
                break;
            }
            let n1 = (1u64 << idx) as f64;
            let row = &self.rows[idx];
            let (t0, t1, v0, v1) = (row.totals[0], row.totals[1], row.variances[0], row.variances[1]);
            let (mu1, mu2) = (t0 / n1, t1 / n1);
            let temp = n1 * 0.5 * (mu1 - mu2) * (mu1 - mu2);
            if idx + 1 >= self.n_rows {
                self.rows[idx + 1] = AdwinRow::EMPTY;
                self.n_rows = idx + 2;
            }
            self.rows[idx + 1].push(t0 + t1, v0 + v1 + temp);
            self.rows[idx].drop_oldest(2);
            if self.rows[idx + 1].len <= self.max_buckets {
                break;
            }
            idx += 1;
        }
    }

    fn delete_oldest(&mut self) {
        let last = self.n_rows - 1;
        let n = (1u64 << last) as f64;
        let (u, v) = (self.rows[last].totals[0], self.rows[last].variances[0]);
        let mu = u / n;
        self.width -= n;
        self.total -= u;
        let mu_window = self.total / self.width;
        let inc = v + n * self.width * (mu - mu_window) * (mu - mu_window) / (n + self.width);
        self.variance -= inc;
        self.rows[last].drop_oldest(1);
        if self.rows[last].len == 0 && self.n_rows > 1 {
            self.n_rows -= 1;
        }
    }

    fn detect_change(&mut self) -> bool {
        let mut change = false;
        self.tick = self.tick.wrapping_add(1);
        if !self.tick.is_multiple_of(self.clock) || self.width <= self.grace_period {
            return false;
        }
        let mut reduce_width = true;
        while reduce_width {
            reduce_width = false;
            let (mut n0, mut n1, mut u0, mut u1) = (0.0f64, self.width, 0.0f64, self.total);
            'rows: for idx in (0..self.n_rows).rev() {
                let size = (1u64 << idx) as f64;
                let len = self.rows[idx].len;
                for k in 0..len {
                    n0 += size;
                    n1 -= size;
                    let t = self.rows[idx].totals[k];
                    u0 += t;
                    u1 -= t;
                    if idx == 0 && k == len - 1 {
                        break 'rows;
                    }
                    let delta_mean = (u0 / n0) - (u1 / n1);
                    if n1 >= self.min_window_length
                        && n0 >= self.min_window_length
                        && self.cut_is_significant(n0, n1, delta_mean)
                    {
                        reduce_width = true;
                        change = true;
                        if self.width > 0.0 {
                            self.delete_oldest();
                            break 'rows;
                        }
                    }
                }
            }
        }
        change
    }

    fn cut_is_significant(&self, n0: f64, n1: f64, delta_mean: f64) -> bool {
        let delta_prime = libm::log(2.0 * libm::log(self.width) / self.delta);
        let m_recip = 1.0 / (n0 - self.min_window_length + 1.0) + 1.0 / (n1 - self.min_window_length + 1.0);
        let epsilon =
            libm::sqrt(2.0 * m_recip * (self.variance / self.width) * delta_prime) + 2.0 / 3.0 * delta_prime * m_recip;
        delta_mean.abs() > epsilon
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{cases, data, nums};
    use crate::test_rng::TestRng;
    use std::vec::Vec;

    fn detections(mut update: impl FnMut(f64) -> bool, xs: &[f64]) -> Vec<u64> {
        xs.iter().enumerate().filter(|(_, x)| update(**x)).map(|(i, _)| i as u64).collect()
    }

    fn river_indices(c: &serde_json::Value, key: &str) -> Vec<u64> {
        c[key].as_array().expect("indices").iter().map(|i| i.as_u64().expect("index")).collect()
    }

    /// Detection indices equal river's exactly: the ports keep river's arithmetic order.
    #[test]
    fn detection_indices_match_river_exactly() {
        let d = data();
        for c in cases(&d, "detectors") {
            let xs = nums(&c["values"]);
            let name = c["name"].as_str().expect("name");
            for (key, mode) in [
                ("page_hinkley_up", PageHinkleyMode::Up),
                ("page_hinkley_down", PageHinkleyMode::Down),
                ("page_hinkley_both", PageHinkleyMode::Both),
            ] {
                let mut ph = PageHinkley::new(30, 0.005, 50.0, 1.0 - 0.0001, mode);
                assert_eq!(detections(|x| ph.update(x), &xs), river_indices(c, key), "{name} {key}");
            }
            let mut adwin = Adwin::default();
            assert_eq!(detections(|x| adwin.update(x), &xs), river_indices(c, "adwin"), "{name} adwin");
            let mut fast = Adwin::new(0.01, 1, 5, 5, 10);
            assert_eq!(
                detections(|x| fast.update(x), &xs),
                river_indices(c, "adwin_clock_1_delta_0.01"),
                "{name} adwin clock 1"
            );
        }
        let mut ph = PageHinkley::default();
        let up = cases(&d, "detectors").iter().find(|c| c["name"] == "bernoulli_0.1_to_0.5_at_1000").expect("case");
        assert_eq!(detections(|x| ph.update(x), &nums(&up["values"])), river_indices(up, "page_hinkley_up"));
    }

    #[test]
    fn adwin_window_statistics() {
        let mut a = Adwin::default();
        assert_eq!((a.width(), a.estimation()), (0, 0.0));
        for i in 0..1000 {
            assert!(!a.update(f64::from(i % 2)));
        }
        assert_eq!(a.width(), 1000);
        assert!((a.estimation() - 0.5).abs() < 1e-12);
        // Far beyond one row of buckets: the compressed window still counts every value.
        for _ in 0..100_000 {
            a.update(1.0);
            if a.drift_detected() {
                break;
            }
        }
        assert!(a.width() < 101_000);
    }

    /// Bounds over the seeds of the test (measured: Page–Hinkley 21 per million values, ADWIN 0).
    /// Page–Hinkley's fading sum of deviations drifts past 50 by chance now and then on a 0/1 stream;
    /// ADWIN's cut bound is conservative.
    const PH_ALARMS_PER_MILLION: u32 = 30;
    const ADWIN_ALARMS_PER_MILLION: u32 = 2;

    fn bernoulli(rng: &mut TestRng, p: f64) -> f64 {
        if rng.uniform() < p { 1.0 } else { 0.0 }
    }

    /// False alarms on a stationary error stream at a 10 % error rate: 10 seeds x 100,000 values.
    #[test]
    fn stationary_error_stream_false_alarms() {
        let (mut ph_alarms, mut adwin_alarms) = (0, 0);
        for seed in 0..10 {
            let mut rng = TestRng::new(7 + seed);
            let (mut ph, mut adwin) = (PageHinkley::default(), Adwin::default());
            for _ in 0..100_000 {
                let x = bernoulli(&mut rng, 0.1);
                ph_alarms += u32::from(ph.update(x));
                adwin_alarms += u32::from(adwin.update(x));
            }
        }
        std::println!("stationary 10 % errors, 1M values: page-hinkley {ph_alarms} alarms, adwin {adwin_alarms}");
        assert!(ph_alarms <= PH_ALARMS_PER_MILLION, "page-hinkley false alarms {ph_alarms}");
        assert!(adwin_alarms <= ADWIN_ALARMS_PER_MILLION, "adwin false alarms {adwin_alarms}");
    }

    /// Delay from a label flip (error rate 0.1 -> 0.6 after 5,000 values) to the first detection,
    /// over 50 seeds. Measured: Page–Hinkley mean 79, worst 121 values; ADWIN mean 47, worst 55
    /// (it only checks every 32 values).
    #[test]
    fn label_flip_detection_delay() {
        let (mut worst_ph, mut worst_adwin, mut sum_ph, mut sum_adwin) = (0u64, 0u64, 0u64, 0u64);
        let seeds = 50u64;
        for seed in 0..seeds {
            let mut rng = TestRng::new(1000 + seed);
            let (mut ph, mut adwin) = (PageHinkley::default(), Adwin::default());
            for _ in 0..5_000 {
                let x = bernoulli(&mut rng, 0.1);
                ph.update(x);
                adwin.update(x);
            }
            let (mut ph_delay, mut adwin_delay) = (None, None);
            for t in 0..2_000u64 {
                let x = bernoulli(&mut rng, 0.6);
                if ph.update(x) && ph_delay.is_none() {
                    ph_delay = Some(t);
                }
                if adwin.update(x) && adwin_delay.is_none() {
                    adwin_delay = Some(t);
                }
            }
            let (p, a) = (ph_delay.expect("page-hinkley detects"), adwin_delay.expect("adwin detects"));
            worst_ph = worst_ph.max(p);
            worst_adwin = worst_adwin.max(a);
            sum_ph += p;
            sum_adwin += a;
        }
        std::println!(
            "label flip 0.1 -> 0.6: page-hinkley delay mean {} max {worst_ph}; adwin delay mean {} max {worst_adwin}",
            sum_ph / seeds,
            sum_adwin / seeds
        );
        assert!(worst_ph <= 130, "page-hinkley worst delay {worst_ph}");
        assert!(worst_adwin <= 64, "adwin worst delay {worst_adwin}");
    }
}
