//! From a closed drift window to what goes on the wire: the window with its sketches, an alert
//! (with its evidence) for each feature that starts drifting, and a retraining trigger when drift
//! has lasted `sustain` windows. Pure.

use drover_drift::{FeatureScore, Statistic, Thresholds};
use drover_wire::event::{EventKind, MAX_RETRAIN_FEATURES, WindowRef};
use drover_wire::manifest::MAX_NAME;
use drover_wire::telemetry::{DriftWindow, FeatureDrift};
use heapless::{String as HString, Vec as HVec};

use crate::serve::ClosedWindow;

/// A name cut to what a wire name holds (on a character boundary).
pub fn bounded<const N: usize>(s: &str) -> HString<N> {
    let mut out = HString::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// The wire form of a closed window (`seq` is the outbox's).
pub fn window_message(w: &ClosedWindow, seq: u64) -> DriftWindow {
    let mut features = HVec::new();
    for ((score, sketch), (name, source)) in w.report.features.iter().zip(&w.report.sketches).zip(w.names.iter()) {
        let f = FeatureDrift { name: bounded(name), source: *source, score: *score, sketch: sketch.clone() };
        if features.push(f).is_err() {
            break;
        }
    }
    DriftWindow {
        seq,
        model: w.model.clone(),
        start_ms: w.report.start_ms,
        end_ms: w.report.end_ms,
        samples: w.report.samples,
        judged: w.report.judged,
        features,
    }
}

/// The value and threshold behind a statistic's verdict.
fn evidence(statistic: Statistic, score: &FeatureScore, t: &Thresholds) -> (f64, f64) {
    match statistic {
        Statistic::Psi => (score.psi, t.psi),
        Statistic::Ks => (score.ks_p, t.ks_p),
        Statistic::Js => (score.js, t.js),
        Statistic::ChiSquared => (score.chi2.map_or(1.0, |c| c.p_value), t.chi2_p),
        Statistic::NewCategory => (score.psi, 0.0),
        Statistic::Variance => (score.variance_p, t.variance_p),
    }
}

/// Alerts for the window: one per feature whose drift starts here (a first drifted window), and
/// a retraining trigger naming the drifted features when drift has lasted.
pub fn window_events(w: &ClosedWindow) -> Vec<EventKind> {
    let r = &w.report;
    if !r.judged {
        return vec![];
    }
    let window = WindowRef { start_ms: r.start_ms, end_ms: r.end_ms, samples: r.samples };
    let mut events = Vec::new();
    let mut drifted: HVec<HString<MAX_NAME>, MAX_RETRAIN_FEATURES> = HVec::new();
    for (score, (name, source)) in r.features.iter().zip(w.names.iter()) {
        let Some(statistic) = score.drifted else { continue };
        let _ = drifted.push(bounded(name));
        if score.streak == 1 {
            let (value, threshold) = evidence(statistic, score, &w.thresholds);
            events.push(EventKind::Drift {
                feature: bounded(name),
                source: *source,
                statistic,
                value,
                threshold,
                window,
                reference_samples: w.reference_samples,
                streak: score.streak,
            });
        }
    }
    if r.retrain {
        let longest = r.features.iter().map(|f| f.streak).max().unwrap_or(0);
        let names: Vec<&str> = drifted.iter().map(|n| n.as_str()).collect();
        let reason = format!("drift for {longest} windows in a row: {}", names.join(", "));
        events.push(EventKind::Retrain { reason: bounded(&reason), features: drifted });
    }
    events
}
