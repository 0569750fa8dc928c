//! Concept drift: the agent remembers what it predicted for each request id, and when the true
//! label comes back (over MQTT or the local API) it scores the prediction: rolling accuracy,
//! macro precision, recall and F1, and two detectors on the error stream (Page-Hinkley for a
//! sustained rise, ADWIN for a change between two sub-windows).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use drover_drift::{Adwin, Confusion, PageHinkley};
use drover_wire::event::{Detector, EventKind, Metric};
use heapless::{String as HString, Vec as HVec};

/// Labels scored in the rolling metrics.
pub const QUALITY_WINDOW: usize = 500;
/// Classes told apart in the metrics (higher ones count as one "other" class).
pub const QUALITY_CLASSES: usize = 32;

/// Floors under which a rolling metric raises a `degraded` alert.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Floors {
    /// Minimum accuracy.
    pub accuracy: Option<f64>,
    /// Minimum macro F1.
    pub f1: Option<f64>,
    /// Labels needed in the window before the floors are checked.
    pub min_labels: u32,
}

/// Predictions awaiting labels, and what the labels said. Request ids are kept as 64-bit keyed
/// hashes: remembering a prediction allocates nothing (it is on every inference's path), and a
/// collision between two live ids (about one in 2^64 per pair) would only misfile one label.
pub struct Quality {
    hasher: std::collections::hash_map::RandomState,
    predictions: HashMap<u64, i64>,
    order: VecDeque<u64>,
    memory: usize,
    confusion: Box<Confusion<QUALITY_CLASSES, QUALITY_WINDOW>>,
    page_hinkley: PageHinkley,
    adwin: Box<Adwin>,
    floors: Floors,
    degraded: bool,
    labels_total: u64,
    labels_period: u32,
    errors_recent: VecDeque<bool>,
}

impl std::fmt::Debug for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quality").field("awaiting", &self.order.len()).field("labels", &self.labels_total).finish()
    }
}

impl Quality {
    /// Remembers the last `memory` predictions; alerts below `floors`.
    pub fn new(memory: usize, floors: Floors) -> Quality {
        Quality {
            hasher: std::collections::hash_map::RandomState::new(),
            predictions: HashMap::new(),
            order: VecDeque::new(),
            memory: memory.max(1),
            confusion: Box::default(),
            page_hinkley: PageHinkley::default(),
            adwin: Box::default(),
            floors,
            degraded: false,
            labels_total: 0,
            labels_period: 0,
            errors_recent: VecDeque::new(),
        }
    }

    /// A prediction was served for `request`.
    pub fn remember(&mut self, request: &str, class: i64) {
        let key = self.hasher.hash_one(request);
        if self.predictions.insert(key, class).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.memory {
            if let Some(old) = self.order.pop_front() {
                self.predictions.remove(&old);
            }
        }
    }

    /// The true label of `request` arrived. `None` if the prediction is unknown (too old, never
    /// made here, or already labelled); otherwise the alerts it raised.
    pub fn label(&mut self, request: &str, label: i64) -> Option<Vec<EventKind>> {
        let key = self.hasher.hash_one(request);
        let predicted = self.predictions.remove(&key)?;
        // The id stays in `order` until it ages out; removing it here would cost a scan.
        let wrong = predicted != label;
        self.labels_total += 1;
        self.labels_period = self.labels_period.saturating_add(1);
        self.confusion.record(predicted, label);
        self.errors_recent.push_back(wrong);
        if self.errors_recent.len() > QUALITY_WINDOW {
            self.errors_recent.pop_front();
        }
        let x = if wrong { 1.0 } else { 0.0 };
        let mut events = Vec::new();
        let before = self.adwin.estimation();
        if self.adwin.update(x) && self.adwin.estimation() > before {
            events.push(self.concept(Detector::Adwin));
        }
        if self.page_hinkley.update(x) {
            events.push(self.concept(Detector::PageHinkley));
            let mut reason = HString::new();
            let _ = core::fmt::Write::write_fmt(
                &mut reason,
                format_args!("the error rate rose to {:.2} (Page-Hinkley)", self.error_rate()),
            );
            events.push(EventKind::Retrain { reason, features: HVec::new() });
        }
        events.extend(self.check_floors());
        Some(events)
    }

    /// The rolling metrics, and the labels counted since the last call.
    pub fn snapshot(&mut self) -> Option<drover_wire::telemetry::Quality> {
        let labels = std::mem::take(&mut self.labels_period);
        Some(drover_wire::telemetry::Quality {
            labels,
            window: self.confusion.len() as u32,
            accuracy: self.confusion.accuracy()?,
            precision: self.confusion.macro_precision().unwrap_or(0.0),
            recall: self.confusion.macro_recall().unwrap_or(0.0),
            f1: self.confusion.macro_f1().unwrap_or(0.0),
        })
    }

    fn error_rate(&self) -> f64 {
        let n = self.errors_recent.len().max(1);
        self.errors_recent.iter().filter(|e| **e).count() as f64 / n as f64
    }

    fn concept(&self, detector: Detector) -> EventKind {
        EventKind::ConceptDrift { detector, error_rate: self.error_rate(), labels: self.labels_total }
    }

    fn check_floors(&mut self) -> Vec<EventKind> {
        let window = self.confusion.len() as u32;
        if window < self.floors.min_labels.max(1) {
            return vec![];
        }
        let checks = [
            (Metric::Accuracy, self.floors.accuracy, self.confusion.accuracy()),
            (Metric::F1, self.floors.f1, self.confusion.macro_f1()),
        ];
        let below: Vec<EventKind> = checks
            .into_iter()
            .filter_map(|(metric, floor, value)| {
                let (floor, value) = (floor?, value?);
                (value < floor).then_some(EventKind::Degraded { metric, value, threshold: floor, window })
            })
            .collect();
        // One alert per episode: raised when a metric first falls below, re-armed once all recover.
        let was = self.degraded;
        self.degraded = !below.is_empty();
        if was { vec![] } else { below }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_remembered_predictions_once() {
        let mut q = Quality::new(3, Floors::default());
        q.remember("a", 1);
        q.remember("b", 2);
        assert_eq!(q.label("a", 1).map(|e| e.len()), Some(0));
        assert!(q.label("a", 1).is_none(), "a label counts once");
        assert!(q.label("zzz", 1).is_none(), "unknown requests are ignored");
        for r in ["c", "d", "e"] {
            q.remember(r, 0);
        }
        assert!(q.label("b", 2).is_none(), "b fell out of the memory of 3");
        let s = q.snapshot().expect("one label scored");
        assert_eq!((s.labels, s.window, s.accuracy), (1, 1, 1.0));
        assert_eq!(q.snapshot().map(|s| s.labels), Some(0), "the period count resets");
    }

    #[test]
    fn a_falling_accuracy_raises_one_degraded_alert_per_episode() {
        let floors = Floors { accuracy: Some(0.8), f1: None, min_labels: 20 };
        let mut q = Quality::new(10_000, floors);
        let mut alerts = vec![];
        for i in 0..200 {
            let id = format!("r{i}");
            q.remember(&id, 1);
            // correct for the first 100, then wrong every other time
            let truth = if i < 100 || i % 2 == 0 { 1 } else { 0 };
            for e in q.label(&id, truth).expect("known") {
                if matches!(e, EventKind::Degraded { .. }) {
                    alerts.push(i);
                }
            }
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        // After label i (from 100 on, every odd one wrong) (i - 99) / 2 of i + 1 are wrong:
        // accuracy < 0.8 first at i = 167 (34 wrong of 168).
        assert_eq!(alerts[0], 167);
    }

    #[test]
    fn a_label_flip_is_caught_by_the_detectors_and_asks_for_retraining() {
        let mut q = Quality::new(10_000, Floors::default());
        let mut first = None;
        let mut retrain = false;
        for i in 0..2_000u32 {
            let id = format!("r{i}");
            q.remember(&id, 1);
            // 5 % errors, then the world flips: 1 becomes 0 for most requests
            let wrong = if i < 1_000 { i % 20 == 0 } else { i % 10 != 0 };
            let events = q.label(&id, if wrong { 0 } else { 1 }).expect("known");
            if first.is_none() && events.iter().any(|e| matches!(e, EventKind::ConceptDrift { .. })) {
                first = Some(i);
            }
            retrain |= events.iter().any(|e| matches!(e, EventKind::Retrain { .. }));
        }
        let at = first.expect("the flip is detected");
        assert!((1_000..1_100).contains(&at), "detected at {at}");
        assert!(retrain);
    }
}
