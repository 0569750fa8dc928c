//! Events a device raises (`dev/{id}/events`): drift and degradation alerts with their evidence,
//! retraining triggers, lost reports; and the labels that come back to it (`dev/{id}/feedback`).
//!
//! An alert carries its evidence (statistic, value, threshold, window, reference size) so an
//! operator, or a training pipeline run by `drover alerts --exec`, can act without asking the
//! device anything.

use drover_drift::Statistic;
use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::manifest::MAX_NAME;
use crate::message::{MAX_REASON, ModelRef};
use crate::telemetry::Source;

/// Most features a retraining trigger names.
pub const MAX_RETRAIN_FEATURES: usize = 8;
/// Most labels in one feedback message.
pub const MAX_LABELS: usize = 256;
/// Longest request id.
pub const MAX_REQUEST_ID: usize = 64;

/// The window an alert was judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRef {
    /// Unix ms when it opened.
    pub start_ms: u64,
    /// Unix ms when it closed.
    pub end_ms: u64,
    /// Samples in it.
    pub samples: u32,
}

/// A concept-drift detector on the stream of prediction errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// Page-Hinkley (a sustained rise of the error rate).
    PageHinkley,
    /// ADWIN (two sub-windows with different error rates).
    Adwin,
}

/// A rolling quality metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of correct predictions.
    Accuracy,
    /// Macro-averaged F1.
    F1,
}

/// What happened.
// Bounded storage without an allocator: the retraining trigger's names make it the largest
// variant (under 1 KiB), which every event then occupies in memory; on the wire it is compact.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A feature drifted away from the reference in a judged window.
    Drift {
        /// The feature (as in [`crate::telemetry::FeatureDrift::name`]).
        feature: String<MAX_NAME>,
        /// Input (data drift) or output (prediction drift).
        source: Source,
        /// The statistic that crossed its threshold.
        statistic: Statistic,
        /// Its value (for a new category, the share of the window outside the reference's).
        value: f64,
        /// The threshold (for p-values, the value must fall below it).
        threshold: f64,
        /// The window.
        window: WindowRef,
        /// Samples behind the reference statistics.
        reference_samples: u64,
        /// Consecutive drifted windows so far.
        streak: u8,
    },
    /// A detector saw the error rate change (labels were needed).
    ConceptDrift {
        /// Which detector.
        detector: Detector,
        /// Error rate over the recent labelled predictions.
        error_rate: f64,
        /// Labelled predictions seen since the model started serving.
        labels: u64,
    },
    /// A rolling metric fell below its floor.
    Degraded {
        /// Which metric.
        metric: Metric,
        /// Its value.
        value: f64,
        /// The floor (from the config).
        threshold: f64,
        /// Labelled predictions in the rolling window.
        window: u32,
    },
    /// Drift or degradation has lasted: time to retrain.
    Retrain {
        /// Why, in words.
        reason: String<MAX_REASON>,
        /// The features behind it.
        features: Vec<String<MAX_NAME>, MAX_RETRAIN_FEATURES>,
    },
    /// Reports were dropped because the outbox hit its quota.
    Dropped {
        /// How many.
        count: u64,
    },
}

impl EventKind {
    /// The event's name in logs and `drover alerts`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Drift { .. } => "drift",
            EventKind::ConceptDrift { .. } => "concept_drift",
            EventKind::Degraded { .. } => "degraded",
            EventKind::Retrain { .. } => "retrain",
            EventKind::Dropped { .. } => "dropped",
        }
    }
}

/// An event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The outbox sequence number.
    pub seq: u64,
    /// Unix ms when it happened.
    pub at_ms: u64,
    /// The model served then.
    pub model: Option<ModelRef>,
    /// What happened.
    pub kind: EventKind,
}

/// The true class of an earlier prediction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The request id the prediction answered.
    pub request: String<MAX_REQUEST_ID>,
    /// The true class.
    pub label: i64,
}

/// Ground truth sent back to a device (by a labelling tool or a downstream system).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// The labels.
    pub labels: Vec<Label, MAX_LABELS>,
}
