//! Data and prediction drift of the served model: every inference's input features and output
//! classes go into a no_std [`DriftMonitor`] built from the bundle's reference statistics, and
//! closed windows come out with their scores and mergeable sketches.

use std::sync::Arc;
use std::time::Instant;

use drover_drift::{DriftMonitor, FeatureRef, RefError, Thresholds, WindowPolicy, WindowReport};
use drover_wire::telemetry::{MAX_FEATURES, Source};

use crate::engine::Signature;
use crate::reference::{FeatureLayout, ReferenceStats, class_of};
use crate::tensor::{Tensor, TensorData};

/// Most values of one image channel looked at per inference (a stride spreads them out):
/// enough for the channel's distribution, cheap next to the model.
const MAX_VALUES_PER_CHANNEL: usize = 256;

/// Largest observation stride the cost budget may choose.
const MAX_EVERY: u32 = 1000;

/// The name and origin of each monitored feature, shared with the windows it explains.
pub type FeatureNames = Arc<[(String, Source)]>;

/// Why drift cannot be watched for a model.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// The reference statistics do not fit the drift monitor.
    #[error("reference feature {feature}: {error}")]
    Reference {
        /// The feature.
        feature: String,
        /// Why.
        error: RefError,
    },
    /// The reference profiles an input the model does not have first.
    #[error("the reference profiles input '{0}', the model's first input is '{1}'")]
    Input(String, String),
}

/// The drift monitor of one served model.
pub struct Observer {
    monitor: Box<DriftMonitor<MAX_FEATURES>>,
    names: FeatureNames,
    layout: FeatureLayout,
    inputs: usize,
    /// Model output index of each monitored output, in monitor order after the inputs.
    outputs: Vec<usize>,
    reference_samples: u64,
    thresholds: Thresholds,
    /// Share of the engine's time drift monitoring may take (0: observe every inference).
    budget: f64,
    /// Observe one inference in `every`.
    every: u32,
    seen: u64,
    /// Running averages (ns) of one observation and of one engine call.
    cost_ns: f64,
    engine_ns: f64,
    values: Vec<f32>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("features", &self.names.len()).finish()
    }
}

impl Observer {
    /// A monitor of the features in `reference`: input features first (as many as fit beside
    /// the outputs), then each classifier output's class. `budget` is the share of the engine's
    /// time monitoring may cost (0.01 = 1 %); above it, only one inference in so many is observed
    /// (0: every inference, whatever it costs).
    pub fn new(
        reference: &ReferenceStats,
        signature: &Signature,
        policy: WindowPolicy,
        thresholds: Thresholds,
        sustain: u8,
        budget: f64,
        now_ms: u64,
    ) -> Result<Observer, ObserverError> {
        let first = signature.inputs.first().map(|s| s.name.to_string()).unwrap_or_default();
        if reference.input != first {
            return Err(ObserverError::Input(reference.input.clone(), first));
        }
        // A classifier's class is judged once: on its label when it has one (see
        // `ReferenceStats::judged_outputs`).
        let outputs: Vec<(usize, &crate::reference::OutputStats)> = reference
            .judged_outputs()
            .filter_map(|o| signature.outputs.iter().position(|s| s.name.as_str() == o.name).map(|i| (i, o)))
            .take(MAX_FEATURES / 2)
            .collect();
        let room = MAX_FEATURES - outputs.len();
        if reference.features.len() > room {
            log::warn!(
                "drift: watching the first {room} of {} features of '{}'",
                reference.features.len(),
                reference.input
            );
        }
        let mut refs = Vec::new();
        let mut names = Vec::new();
        for i in 0..reference.features.len().min(room) {
            let name = reference.feature_name(i);
            let r =
                reference.feature_ref(i).map_err(|error| ObserverError::Reference { feature: name.clone(), error })?;
            refs.push(r);
            names.push((name, Source::Input));
        }
        let inputs = refs.len();
        for (_, o) in &outputs {
            let values: Vec<i64> = o.classes.keys().copied().collect();
            let counts: Vec<u64> = o.classes.values().copied().collect();
            let r = FeatureRef::categorical(&values, &counts)
                .map_err(|error| ObserverError::Reference { feature: o.name.clone(), error })?;
            refs.push(r);
            names.push((o.name.clone(), Source::Output));
        }
        let monitor = DriftMonitor::new(&refs, policy, thresholds, sustain, now_ms)
            .map_err(|error| ObserverError::Reference { feature: "(all)".into(), error })?;
        Ok(Observer {
            monitor: Box::new(monitor),
            names: names.into(),
            layout: reference.layout,
            inputs,
            outputs: outputs.iter().map(|(i, _)| *i).collect(),
            reference_samples: reference.samples,
            thresholds,
            budget: if budget.is_finite() && budget > 0.0 { budget } else { 0.0 },
            every: 1,
            seen: 0,
            cost_ns: 0.0,
            engine_ns: 0.0,
            values: Vec::new(),
        })
    }

    /// Whether the coming inference is one to observe (one in [`Observer::every`]). Asked before
    /// the engine runs, so the engine is timed only for the inferences observed.
    pub fn take_turn(&mut self) -> bool {
        self.seen += 1;
        self.seen.is_multiple_of(u64::from(self.every))
    }

    /// An inference [`Observer::take_turn`] chose: its first input (without the batch axis), its
    /// outputs, and how long the engine took (what the budget is a share of).
    pub fn observe(&mut self, input: &Tensor, outputs: &[Tensor], engine_ns: u64) {
        let start = (self.budget > 0.0).then(Instant::now);
        self.record(input, outputs);
        if let Some(start) = start {
            self.adjust(start.elapsed().as_nanos() as f64, engine_ns as f64);
        }
    }

    /// Keeps monitoring within its budget: the stride is the cost of one observation over the
    /// budgeted share of one engine call (running averages, so one slow call does not swing it).
    fn adjust(&mut self, cost_ns: f64, engine_ns: f64) {
        const ALPHA: f64 = 0.1;
        let first = self.cost_ns == 0.0;
        self.cost_ns = if first { cost_ns } else { self.cost_ns + ALPHA * (cost_ns - self.cost_ns) };
        self.engine_ns = if first { engine_ns } else { self.engine_ns + ALPHA * (engine_ns - self.engine_ns) };
        let every = (self.cost_ns / (self.budget * self.engine_ns.max(1.0))).ceil();
        self.every = if every.is_finite() { (every as u32).clamp(1, MAX_EVERY) } else { MAX_EVERY };
    }

    /// One inference in how many is observed now.
    pub fn every(&self) -> u32 {
        self.every
    }

    fn record(&mut self, input: &Tensor, outputs: &[Tensor]) {
        // f32 inputs (nearly all) are read in place; others are converted once into a buffer.
        let mut converted = std::mem::take(&mut self.values);
        let values: &[f32] = match input.data() {
            TensorData::F32(v) => v,
            _ => {
                converted.clear();
                converted.extend(input.to_f64_vec().into_iter().map(|x| x as f32));
                &converted
            }
        };
        match self.layout {
            FeatureLayout::Elements => {
                for (i, x) in values.iter().take(self.inputs).enumerate() {
                    self.monitor.observe(i, *x);
                }
            }
            FeatureLayout::Channels => {
                let channels = input.shape().first().copied().unwrap_or(1).max(1);
                let per = values.len() / channels;
                let stride = per.div_ceil(MAX_VALUES_PER_CHANNEL).max(1);
                for c in 0..channels.min(self.inputs) {
                    for x in values[c * per..(c + 1) * per].iter().step_by(stride) {
                        self.monitor.observe(c, *x);
                    }
                }
            }
        }
        self.values = converted;
        for (k, &o) in self.outputs.iter().enumerate() {
            if let Some((_, class)) = outputs.get(o).and_then(class_of) {
                self.monitor.observe(self.inputs + k, class as f32);
            }
        }
        self.monitor.end_sample();
    }

    /// Whether the window is full or its time is up.
    pub fn due(&self, now_ms: u64) -> bool {
        self.monitor.due(now_ms)
    }

    /// Closes the window.
    pub fn close(&mut self, now_ms: u64) -> WindowReport<MAX_FEATURES> {
        self.monitor.close(now_ms)
    }

    /// Feature names and origins, in window order.
    pub fn names(&self) -> FeatureNames {
        self.names.clone()
    }

    /// Samples behind the reference.
    pub fn reference_samples(&self) -> u64 {
        self.reference_samples
    }

    /// The thresholds windows are judged with.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Model;
    use crate::samples::SampleFile;
    use drover_drift::Statistic;

    fn iris() -> (Model, ReferenceStats) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let mut model = Model::load(&root.join("iris_logreg.onnx")).expect("model");
        let mut data = SampleFile::open(&root.join("data/iris.train.jsonl"), model.signature()).expect("data");
        let mut reference = crate::reference::profile(&mut model, &mut data, 10).expect("profile");
        reference.names = Some(["sepal_length", "sepal_width", "petal_length", "petal_width"].map(String::from).into());
        (model, reference)
    }

    fn rows() -> Vec<Vec<f32>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let text = std::fs::read_to_string(root.join("data/iris.train.jsonl")).expect("rows");
        text.lines().map(|l| serde_json::from_str(l).expect("row")).collect()
    }

    const POLICY: WindowPolicy = WindowPolicy { samples: 150, millis: 0, min_samples: 100 };

    /// Every training row once (a window of exactly the reference), then every row with
    /// `shift` added: the verdicts of both windows.
    fn two_windows(shift: [f32; 4]) -> (WindowReport<MAX_FEATURES>, WindowReport<MAX_FEATURES>, FeatureNames) {
        let (mut windows, names) = windows(&[[0.0; 4], shift]);
        let second = windows.pop().expect("two");
        (windows.pop().expect("two"), second, names)
    }

    /// One window per shift: every training row with that shift added (sustain 3).
    fn windows(shifts: &[[f32; 4]]) -> (Vec<WindowReport<MAX_FEATURES>>, FeatureNames) {
        let (mut model, reference) = iris();
        let mut o = Observer::new(&reference, model.signature(), POLICY, Thresholds::default(), 3, 0.0, 0).expect("o");
        let mut outputs = Vec::new();
        let mut windows = vec![];
        for &shift in shifts {
            for row in rows() {
                let x: Vec<f32> = row.iter().zip(shift).map(|(v, s)| v + s).collect();
                let t = Tensor::new(vec![4], TensorData::F32(x)).expect("tensor");
                model.run_one(std::slice::from_ref(&t), &mut outputs).expect("run");
                assert!(o.take_turn(), "without a budget every inference is observed");
                o.observe(&t, &outputs, 1_000);
            }
            assert!(o.due(1));
            windows.push(o.close(1));
        }
        (windows, o.names())
    }

    #[test]
    fn features_are_named_inputs_first_then_the_predicted_class() {
        let (_, _, names) = two_windows([0.0; 4]);
        let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sepal_length", "sepal_width", "petal_length", "petal_width", "label"]);
    }

    #[test]
    fn the_reference_itself_does_not_drift_and_a_shifted_feature_does_with_the_predictions() {
        let (same, _, _) = two_windows([0.0; 4]);
        assert!(same.judged);
        assert!(same.features.iter().all(|f| f.drifted.is_none()), "{:?}", same.features);
        let (_, shifted, names) = two_windows([0.0, 0.0, 2.0, 0.0]);
        let drifted: Vec<&str> = shifted
            .features
            .iter()
            .zip(names.iter())
            .filter(|(f, _)| f.drifted.is_some())
            .map(|(_, n)| n.0.as_str())
            .collect();
        assert!(drifted.contains(&"petal_length"), "{drifted:?}");
        assert!(!drifted.contains(&"sepal_width"), "{drifted:?}");
        assert_eq!(shifted.features[2].drifted, Some(Statistic::Psi));
        // Longer petals turn setosas into other classes: the label distribution drifts too.
        assert!(drifted.contains(&"label"), "{drifted:?}");
    }

    #[test]
    fn a_classifier_shift_raises_one_prediction_drift_alert_for_the_label_not_again_for_its_probabilities() {
        use crate::serve::ClosedWindow;
        use drover_wire::event::EventKind;
        use drover_wire::message::ModelRef;
        use drover_wire::telemetry::Source;

        // iris_logreg outputs `label` (int64) and `probabilities` (float32[3]), whose argmax is
        // the label: one shift of the predictions must be judged once.
        let shift = [0.0, 0.0, 2.0, 0.0];
        let (reports, names) = windows(&[shift, shift, shift]);
        let model = ModelRef { name: "iris".try_into().expect("name"), version: 1 };
        let mut alerts = Vec::new();
        let mut retrain = Vec::new();
        for report in reports {
            let w = ClosedWindow {
                model: model.clone(),
                report,
                names: names.clone(),
                reference_samples: 150,
                thresholds: Thresholds::default(),
                every: 1,
            };
            // No output is judged as a class but a classifier's label (or its only score vector).
            for (score, (name, source)) in w.report.features.iter().zip(w.names.iter()) {
                if *source == Source::Output && score.chi2.is_some() {
                    assert_eq!(name, "label", "{name} judged as a class label");
                }
            }
            for e in crate::telemetry::alerts::window_events(&w) {
                match e {
                    EventKind::Drift { feature, source: Source::Output, .. } => alerts.push(feature.to_string()),
                    EventKind::Retrain { features, .. } => {
                        retrain = features.iter().map(|f| f.to_string()).collect::<Vec<_>>();
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(alerts, ["label"], "one prediction-drift alert");
        assert!(retrain.contains(&"label".to_string()), "{retrain:?}");
        let mut once = retrain.clone();
        once.sort();
        once.dedup();
        assert_eq!(once.len(), retrain.len(), "each cause once: {retrain:?}");
        assert!(!retrain.contains(&"probabilities".to_string()), "{retrain:?}");
    }

    #[test]
    fn a_budget_thins_out_observation_in_proportion_to_its_cost() {
        let (model, reference) = iris();
        let t = Tensor::new(vec![4], TensorData::F32(vec![5.0, 3.0, 1.5, 0.2])).expect("tensor");
        let outputs = vec![Tensor::new(vec![], TensorData::I64(vec![0])).expect("label")];
        // An engine call of 1 ns: no observation fits in 1 % of it, so the stride goes to its cap.
        let mut o = Observer::new(&reference, model.signature(), POLICY, Thresholds::default(), 3, 0.01, 0).expect("o");
        for _ in 0..2_000 {
            if o.take_turn() {
                o.observe(&t, &outputs, 1);
            }
        }
        assert_eq!(o.every(), MAX_EVERY);
        assert!(o.monitor.samples() < 10, "{} observed", o.monitor.samples());
        // An engine call of a second: every inference fits.
        let mut o = Observer::new(&reference, model.signature(), POLICY, Thresholds::default(), 3, 0.01, 0).expect("o");
        for _ in 0..100 {
            if o.take_turn() {
                o.observe(&t, &outputs, 1_000_000_000);
            }
        }
        assert_eq!((o.every(), o.monitor.samples()), (1, 100));
    }

    #[test]
    fn a_reference_for_another_input_is_refused() {
        let (model, mut reference) = iris();
        reference.input = "pixels".into();
        let e = Observer::new(&reference, model.signature(), POLICY, Thresholds::default(), 3, 0.0, 0).unwrap_err();
        assert!(e.to_string().contains("'pixels'"), "{e}");
    }
}
