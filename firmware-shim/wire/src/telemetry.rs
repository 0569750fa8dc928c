//! What a device reports about itself every period (`dev/{id}/telemetry`) and at the close of
//! every drift window (`dev/{id}/drift`).
//!
//! Both carry mergeable statistics, not just summaries: the latency histogram and the drift
//! sketches add up across devices and periods, so the fleet server computes fleet-wide p99 and
//! fleet-wide drift per model version with the same code the device uses. Both carry the
//! outbox's sequence number, so a consumer orders them and drops duplicates.

use drover_drift::{FeatureScore, LatencyHistogram, Sketch};
use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::frame::{DeviceStats, LinkStats};
use crate::manifest::MAX_NAME;
use crate::message::{ModelRef, Slot};

/// Most features (inputs and outputs) a drift window reports.
pub const MAX_FEATURES: usize = 64;

/// Errors in a period, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// The input did not match the model's signature (shape, type, values).
    pub input: u32,
    /// The engine failed on a well-formed input.
    pub engine: u32,
    /// Refused because the request queue was full.
    pub busy: u32,
    /// No model to serve it.
    pub no_model: u32,
}

impl Errors {
    /// All errors.
    pub fn total(&self) -> u64 {
        u64::from(self.input) + u64::from(self.engine) + u64::from(self.busy) + u64::from(self.no_model)
    }
}

/// The host's health, read from Linux (`/proc`, `statvfs`, thermal zones); absent figures are
/// ones the board does not expose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct System {
    /// CPU busy over the period, percent of all cores.
    pub cpu_pct: Option<f32>,
    /// Memory in use (total − available), KiB.
    pub mem_used_kib: u64,
    /// Memory installed, KiB.
    pub mem_total_kib: u64,
    /// The agent's resident set, KiB.
    pub rss_kib: u64,
    /// Used space on the data dir's file system, KiB.
    pub disk_used_kib: u64,
    /// Size of that file system, KiB.
    pub disk_total_kib: u64,
    /// Hottest thermal zone, °C.
    pub temp_c: Option<f32>,
    /// Seconds since the board booted.
    pub boot_uptime_s: u64,
}

/// The store-and-forward queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    /// Reports not yet acknowledged by the broker (this one included).
    pub queued: u32,
    /// Their size, bytes.
    pub bytes: u64,
    /// Reports dropped because the queue hit its disk quota, since the device was set up.
    pub dropped: u64,
}

/// Rolling prediction quality over the last labelled predictions (labels arrive as feedback).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Labels received in the period.
    pub labels: u32,
    /// Predictions in the rolling window.
    pub window: u32,
    /// Share of correct predictions.
    pub accuracy: f64,
    /// Macro-averaged precision.
    pub precision: f64,
    /// Macro-averaged recall.
    pub recall: f64,
    /// Macro-averaged F1.
    pub f1: f64,
}

/// One period of a device's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The outbox sequence number.
    pub seq: u64,
    /// Unix ms when the period started.
    pub start_ms: u64,
    /// Unix ms when it ended.
    pub end_ms: u64,
    /// The model served at the end of the period.
    pub model: Option<ModelRef>,
    /// Its slot.
    pub slot: Option<Slot>,
    /// Inferences that returned a result.
    pub inferences: u64,
    /// Requests that did not.
    pub errors: Errors,
    /// Latency of the successful inferences, queueing included (mergeable).
    pub latency: LatencyHistogram,
    /// Deepest the request queue got in the period.
    pub queue_max: u32,
    /// The queue's bound.
    pub queue_capacity: u32,
    /// Host health.
    pub system: System,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// The outbox.
    pub outbox: Outbox,
    /// Prediction quality, once labels have arrived.
    pub quality: Option<Quality>,
    /// How the candidate running in shadow compared with the served model, while one runs.
    pub shadow: Option<Shadow>,
    /// How each variant of a traffic split did, while one runs.
    pub split: Option<Split>,
    /// Each configured sensor input (`[[input]]`), in configuration order.
    pub inputs: Vec<InputReport, MAX_INPUTS>,
}

/// Most sensor inputs one agent reports.
pub const MAX_INPUTS: usize = 8;

/// Most predicted classes an input report counts one by one; higher (and negative) classes
/// share [`InputReport::other_classes`].
pub const MAX_INPUT_CLASSES: usize = 16;

/// One sensor input over a period: the serial link's health (frames, losses, corruption), the
/// windows it delivered and what the model predicted for them, so an operator sees a flaky
/// cable or a silent sensor next to the inferences it costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputReport {
    /// The input's name (its configured `name`, else its device path).
    pub name: String<MAX_NAME>,
    /// Whether the port or bus was open at the end of the period.
    pub connected: bool,
    /// Frames received, lost and rejected (serial inputs; zero for bus inputs).
    pub link: LinkStats,
    /// Complete windows received or sampled.
    pub windows: u64,
    /// Windows inferred.
    pub inferred: u64,
    /// Windows whose width or layout does not match the served model's input.
    pub mismatched: u64,
    /// Windows the inference service refused (no model, busy, engine error).
    pub refused: u64,
    /// Failed sensor reads (bus inputs; a microcontroller reports its own in `device`).
    pub sensor_errors: u64,
    /// Predictions per class: `classes[c]` windows were predicted class `c`.
    pub classes: Vec<u64, MAX_INPUT_CLASSES>,
    /// Predictions of classes past [`MAX_INPUT_CLASSES`] or negative.
    pub other_classes: u64,
    /// The microcontroller's last `Stats` frame (serial inputs).
    pub device: Option<DeviceStats>,
}

impl InputReport {
    /// An empty report for the input called `name` (cut to [`MAX_NAME`] bytes).
    pub fn new(name: &str) -> InputReport {
        let mut cut = name.len().min(MAX_NAME);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        InputReport {
            name: String::try_from(&name[..cut]).unwrap_or_default(),
            connected: false,
            link: LinkStats::default(),
            windows: 0,
            inferred: 0,
            mismatched: 0,
            refused: 0,
            sensor_errors: 0,
            classes: Vec::new(),
            other_classes: 0,
            device: None,
        }
    }

    /// Counts one prediction of `class`.
    pub fn count_class(&mut self, class: i64) {
        match usize::try_from(class) {
            Ok(c) if c < MAX_INPUT_CLASSES => {
                while self.classes.len() <= c {
                    // Bounded by MAX_INPUT_CLASSES just above.
                    let _ = self.classes.push(0);
                }
                self.classes[c] += 1;
            }
            _ => self.other_classes += 1,
        }
    }

    /// This period's report, leaving `self` empty for the next one but still naming the input
    /// and remembering whether it is connected and the device's last stats.
    pub fn take(&mut self) -> InputReport {
        let mut next = InputReport::new(&self.name);
        next.connected = self.connected;
        next.device = self.device;
        core::mem::replace(self, next)
    }
}

/// Most classes a split variant counts one by one; higher (and negative) classes share a bucket.
pub const MAX_SPLIT_CLASSES: usize = 16;

/// Live traffic split between two versions over one period (an A/B test). Counts and mergeable
/// histograms, so periods and devices add up; the accuracy of each variant comes from the labels
/// that arrived for its predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Share of request keys routed to B, in parts per million.
    pub b_ppm: u32,
    /// The version served before the split.
    pub a: Variant,
    /// The challenger.
    pub b: Variant,
}

/// One side of a traffic split over a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// The model version.
    pub model: ModelRef,
    /// Samples it answered.
    pub inferences: u64,
    /// Requests routed to it that got no answer (bad input, engine failure, busy).
    pub errors: u64,
    /// Latency of its answers, queueing included.
    pub latency: LatencyHistogram,
    /// Predicted classes: `classes[c]` answers of class `c` (classifiers only).
    pub classes: Vec<u64, MAX_SPLIT_CLASSES>,
    /// Answers of a class beyond `classes` (or negative).
    pub other_classes: u64,
    /// Labels that arrived for its predictions in the period.
    pub labels: u64,
    /// Of those, the predictions that were right.
    pub correct: u64,
}

impl Variant {
    /// An empty period for `model`.
    pub fn new(model: ModelRef) -> Variant {
        Variant {
            model,
            inferences: 0,
            errors: 0,
            latency: LatencyHistogram::default(),
            classes: Vec::new(),
            other_classes: 0,
            labels: 0,
            correct: 0,
        }
    }

    /// Counts one answer of `class`.
    pub fn count_class(&mut self, class: i64) {
        let Ok(c) = usize::try_from(class) else {
            self.other_classes += 1;
            return;
        };
        if c >= MAX_SPLIT_CLASSES {
            self.other_classes += 1;
            return;
        }
        while self.classes.len() <= c {
            // Cannot fail: c < MAX_SPLIT_CLASSES, the capacity.
            let _ = self.classes.push(0);
        }
        self.classes[c] += 1;
    }

    /// Share of labelled predictions that were right.
    pub fn accuracy(&self) -> Option<f64> {
        (self.labels > 0).then(|| self.correct as f64 / self.labels as f64)
    }

    /// Share of answered samples predicted as `class`.
    pub fn class_share(&self, class: usize) -> Option<f64> {
        let total: u64 = self.classes.iter().sum::<u64>() + self.other_classes;
        (total > 0).then(|| self.classes.get(class).copied().unwrap_or(0) as f64 / total as f64)
    }

    /// Adds another period's or device's counts for the same model.
    pub fn merge(&mut self, other: &Variant) {
        self.inferences += other.inferences;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        for (c, n) in other.classes.iter().enumerate() {
            while self.classes.len() <= c {
                let _ = self.classes.push(0);
            }
            self.classes[c] += n;
        }
        self.other_classes += other.other_classes;
        self.labels += other.labels;
        self.correct += other.correct;
    }
}

/// A candidate model run on a copy of live inputs, off the request path, over one period. Sums
/// and counts rather than ratios, so periods and devices merge by adding them up; the methods
/// give the ratios an operator reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shadow {
    /// The candidate.
    pub candidate: ModelRef,
    /// Share of inferences copied to the candidate, in parts per million.
    pub sample_ppm: u32,
    /// Samples both models answered.
    pub compared: u64,
    /// Samples picked but not run because the candidate fell behind (its queue was full).
    pub skipped: u64,
    /// Samples the candidate failed on, or answered in another shape than the served model.
    pub failed: u64,
    /// Compared samples where both models named a class.
    pub classified: u64,
    /// Of those, the ones where both named the same class (top-1 agreement).
    pub agreed: u64,
    /// Sum of |served − candidate| over every compared numeric output element.
    pub abs_diff_sum: f64,
    /// Output elements compared.
    pub abs_diff_count: u64,
    /// Largest |served − candidate| seen.
    pub max_abs_diff: f64,
    /// Engine time of the candidate over the compared samples, microseconds.
    pub candidate_us: u64,
    /// Engine time of the served model per sample over the period, microseconds, and the samples
    /// behind it: the denominator of the latency ratio.
    pub served_us: u64,
    /// Samples behind `served_us`.
    pub served_samples: u64,
}

impl Shadow {
    /// Top-1 agreement in [0, 1], when both models are classifiers and a sample was compared.
    pub fn top1_agreement(&self) -> Option<f64> {
        (self.classified > 0).then(|| self.agreed as f64 / self.classified as f64)
    }

    /// Mean |served − candidate| over output elements.
    pub fn mean_abs_diff(&self) -> Option<f64> {
        (self.abs_diff_count > 0).then(|| self.abs_diff_sum / self.abs_diff_count as f64)
    }

    /// Candidate engine time per sample over the served model's (above 1: the candidate is slower).
    pub fn latency_ratio(&self) -> Option<f64> {
        (self.compared > 0 && self.served_samples > 0 && self.served_us > 0).then(|| {
            (self.candidate_us as f64 / self.compared as f64) / (self.served_us as f64 / self.served_samples as f64)
        })
    }
}

/// Where a drift feature comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An input feature (data drift).
    Input,
    /// A classifier output's class (prediction drift).
    Output,
}

/// One feature's part of a drift window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// Human name: `input[i]`, `input[c2]` for an image channel, or the output's name.
    pub name: String<MAX_NAME>,
    /// Input or output.
    pub source: Source,
    /// The scores against the reference and whether it drifted.
    pub score: FeatureScore,
    /// The window's counts over the reference bins (mergeable).
    pub sketch: Sketch,
}

/// A closed drift window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftWindow {
    /// The outbox sequence number.
    pub seq: u64,
    /// The model whose reference the window is compared with.
    pub model: ModelRef,
    /// Unix ms when the window opened.
    pub start_ms: u64,
    /// Unix ms when it closed.
    pub end_ms: u64,
    /// Samples in it.
    pub samples: u32,
    /// Whether it held enough samples to be judged.
    pub judged: bool,
    /// One inference in how many was observed (the agent's cost budget; 1: every one).
    pub observed_every: u32,
    /// Per feature.
    pub features: Vec<FeatureDrift, MAX_FEATURES>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(version: u64) -> ModelRef {
        ModelRef { name: String::try_from("iris").unwrap_or_default(), version }
    }

    #[test]
    fn input_reports_count_classes_and_start_each_period_empty() {
        let mut r = InputReport::new("mpu-on-uart");
        for class in [2, 2, 0, -1, MAX_INPUT_CLASSES as i64] {
            r.count_class(class);
        }
        r.connected = true;
        r.windows = 5;
        assert_eq!((r.classes.as_slice(), r.other_classes), ([1, 0, 2].as_slice(), 2));
        let period = r.take();
        assert_eq!(period.windows, 5);
        assert_eq!((r.windows, r.classes.len(), r.connected, r.name.as_str()), (0, 0, true, "mpu-on-uart"));
        let long = "é".repeat(40);
        assert_eq!(InputReport::new(&long).name.len(), 64, "cut on a char boundary");
    }

    #[test]
    fn split_variants_count_classes_and_merge_across_periods() {
        let mut a = Variant::new(model(1));
        for class in [0, 0, 2, -1, MAX_SPLIT_CLASSES as i64] {
            a.count_class(class);
        }
        assert_eq!((a.classes.as_slice(), a.other_classes), ([2, 0, 1].as_slice(), 2));
        assert_eq!(a.class_share(0), Some(0.4));
        assert_eq!(a.class_share(9), Some(0.0));
        assert_eq!(a.accuracy(), None, "no labels yet");
        let mut later = Variant::new(model(1));
        later.count_class(4);
        later.latency.record(120);
        (later.inferences, later.errors, later.labels, later.correct) = (1, 2, 4, 3);
        a.merge(&later);
        assert_eq!(a.classes.as_slice(), [2, 0, 1, 0, 1].as_slice());
        assert_eq!((a.inferences, a.errors, a.latency.count()), (1, 2, 1));
        assert_eq!(a.accuracy(), Some(0.75));
        assert_eq!(Variant::new(model(2)).class_share(0), None);
    }
}
