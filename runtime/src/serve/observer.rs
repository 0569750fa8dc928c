//! Data and prediction drift of the served model: every inference's input features and output
//! classes go into a no_std [`DriftMonitor`] built from the bundle's reference statistics, and
//! closed windows come out with their scores and mergeable sketches.

use std::sync::Arc;

use drover_drift::{DriftMonitor, FeatureRef, RefError, Thresholds, WindowPolicy, WindowReport};
use drover_wire::telemetry::{MAX_FEATURES, Source};

use crate::engine::Signature;
use crate::reference::{FeatureLayout, ReferenceStats, class_of};
use crate::tensor::Tensor;

/// Most values of one image channel looked at per inference (a stride spreads them out):
/// enough for the channel's distribution, cheap next to the model.
const MAX_VALUES_PER_CHANNEL: usize = 256;

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
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").field("features", &self.names.len()).finish()
    }
}

impl Observer {
    /// A monitor of the features in `reference`: input features first (as many as fit beside
    /// the outputs), then each classifier output's class.
    pub fn new(
        reference: &ReferenceStats,
        signature: &Signature,
        policy: WindowPolicy,
        thresholds: Thresholds,
        sustain: u8,
        now_ms: u64,
    ) -> Result<Observer, ObserverError> {
        let first = signature.inputs.first().map(|s| s.name.to_string()).unwrap_or_default();
        if reference.input != first {
            return Err(ObserverError::Input(reference.input.clone(), first));
        }
        let outputs: Vec<(usize, &crate::reference::OutputStats)> = reference
            .outputs
            .iter()
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
        for (i, f) in reference.features.iter().take(room).enumerate() {
            let name = match (&reference.names, reference.layout) {
                (Some(n), _) if n.len() == reference.features.len() => n[i].clone(),
                (_, FeatureLayout::Elements) => format!("{}[{i}]", reference.input),
                (_, FeatureLayout::Channels) => format!("{}[c{i}]", reference.input),
            };
            let r = FeatureRef::numeric(&f.edges, &f.counts)
                .map_err(|error| ObserverError::Reference { feature: name.clone(), error })?;
            // A constant reference feature has no spread to test a variance against.
            let r = if f.std > 0.0 { r.clone().with_moments(f.mean, f.std).unwrap_or(r) } else { r };
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
        })
    }

    /// One inference: its first input (without the batch axis) and its outputs.
    pub fn observe(&mut self, input: &Tensor, outputs: &[Tensor]) {
        let values = input.to_f64_vec();
        match self.layout {
            FeatureLayout::Elements => {
                for (i, x) in values.iter().take(self.inputs).enumerate() {
                    self.monitor.observe(i, *x as f32);
                }
            }
            FeatureLayout::Channels => {
                let channels = input.shape().first().copied().unwrap_or(1).max(1);
                let per = values.len() / channels;
                let stride = per.div_ceil(MAX_VALUES_PER_CHANNEL).max(1);
                for c in 0..channels.min(self.inputs) {
                    for x in values[c * per..(c + 1) * per].iter().step_by(stride) {
                        self.monitor.observe(c, *x as f32);
                    }
                }
            }
        }
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
