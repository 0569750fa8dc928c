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
        observed_every: w.every,
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

#[cfg(test)]
mod tests {
    use super::*;
    use drover_drift::{Sketch, WindowReport};
    use drover_wire::message::ModelRef;
    use drover_wire::telemetry::{MAX_FEATURES, Source};

    fn score(drifted: Option<Statistic>, streak: u8) -> FeatureScore {
        FeatureScore {
            psi: 0.9,
            js: 0.3,
            ks: 0.4,
            ks_p: 1e-9,
            chi2: None,
            new_category: false,
            variance_p: 0.5,
            drifted,
            streak,
        }
    }

    fn window(scores: &[FeatureScore], judged: bool, retrain: bool) -> ClosedWindow {
        let mut report = WindowReport::<MAX_FEATURES> {
            start_ms: 1_000,
            end_ms: 2_000,
            samples: 200,
            judged,
            features: HVec::new(),
            sketches: HVec::new(),
            retrain,
        };
        for s in scores {
            report.features.push(*s).expect("room");
            report.sketches.push(Sketch::new(10)).expect("room");
        }
        let names: Vec<(String, Source)> = ["a", "b", "label"]
            .iter()
            .zip([Source::Input, Source::Input, Source::Output])
            .map(|(n, s)| (n.to_string(), s))
            .take(scores.len())
            .collect();
        ClosedWindow {
            model: ModelRef { name: "iris".try_into().expect("name"), version: 2 },
            report,
            names: names.into(),
            reference_samples: 150,
            thresholds: Thresholds::default(),
            every: 1,
        }
    }

    #[test]
    fn drift_is_alerted_when_it_starts_with_its_evidence_and_not_again_while_it_lasts() {
        let w = window(
            &[score(Some(Statistic::Psi), 1), score(None, 0), score(Some(Statistic::ChiSquared), 2)],
            true,
            false,
        );
        let events = window_events(&w);
        assert_eq!(events.len(), 1, "{events:?}");
        let EventKind::Drift { feature, source, statistic, value, threshold, window, reference_samples, streak } =
            &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!((feature.as_str(), *source, *statistic, *streak), ("a", Source::Input, Statistic::Psi, 1));
        assert_eq!((*value, *threshold, *reference_samples), (0.9, Thresholds::default().psi, 150));
        assert_eq!((window.start_ms, window.end_ms, window.samples), (1_000, 2_000, 200));
    }

    #[test]
    fn lasting_drift_asks_for_retraining_naming_every_drifted_feature() {
        let w =
            window(&[score(Some(Statistic::Ks), 3), score(None, 0), score(Some(Statistic::ChiSquared), 3)], true, true);
        let events = window_events(&w);
        let Some(EventKind::Retrain { reason, features }) = events.last() else { panic!("{events:?}") };
        assert_eq!(features.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["a", "label"]);
        assert!(reason.contains("3 windows"), "{reason}");
    }

    #[test]
    fn an_unjudged_window_alerts_nothing_but_still_goes_on_the_wire() {
        let w = window(&[score(Some(Statistic::Psi), 1)], false, false);
        assert!(window_events(&w).is_empty());
        let m = window_message(&w, 42);
        assert_eq!((m.seq, m.samples, m.judged, m.observed_every, m.features.len()), (42, 200, false, 1, 1));
        assert_eq!(m.features[0].name.as_str(), "a");
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let b: HString<MAX_NAME> = bounded(&long);
        assert_eq!(b.len(), 64);
        assert!(b.chars().all(|c| c == 'é'));
    }
}
