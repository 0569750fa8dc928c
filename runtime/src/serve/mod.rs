//! The inference service of a running agent: the served model behind a bounded queue, and what
//! each inference feeds (period counters, the drift monitor, the predictions awaiting labels).
//!
//! [`Inference`] is a cheap, cloneable handle: the local API, sensor sources, the simulator and
//! the tests call [`Inference::infer`] from any thread; the agent's shell swaps the model after
//! an install or a rollback and drains counters, drift windows and alerts into the outbox.

pub mod batcher;
pub mod observer;
pub mod period;
pub mod quality;
pub mod shadow;
pub mod split;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use drover_drift::{Thresholds, WindowPolicy, WindowReport};
use drover_wire::event::EventKind;
use drover_wire::message::ModelRef;
use drover_wire::telemetry::MAX_FEATURES;

pub use batcher::Batching;
pub use observer::{FeatureNames, Observer, ObserverError};
pub use period::Period;
pub use quality::{Floors, Quality};
pub use split::Arm;

use crate::agent::Clock;
use crate::engine::{BatchAxis, Model, RunError, Signature};
use crate::reference::{ReferenceStats, class_of};
use crate::tensor::Tensor;

/// How drift is judged and predictions are remembered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServeSettings {
    /// Requests that may wait for the engine; one more is refused as busy.
    pub queue: u32,
    /// When windows close.
    pub window: WindowPolicy,
    /// When a feature counts as drifted (unless the bundle sets its own).
    pub thresholds: Thresholds,
    /// Consecutive drifted windows that ask for retraining.
    pub sustain: u8,
    /// Share of the engine's time drift monitoring may cost (0: observe every inference).
    pub budget: f64,
    /// Predictions remembered for labels.
    pub memory: usize,
    /// Quality floors.
    pub floors: Floors,
    /// Dynamic batching of concurrent requests (models with a symbolic batch axis only).
    pub batching: Option<Batching>,
}

/// Why a request got no prediction.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The queue is full: try again later (HTTP 503).
    #[error("busy: {0} requests already waiting")]
    Busy(u32),
    /// No model is installed (or it failed to load).
    #[error("no model is being served")]
    NoModel,
    /// The input does not fit the model (HTTP 400).
    #[error("{0}")]
    Input(RunError),
    /// The engine failed (HTTP 500).
    #[error("{0}")]
    Engine(RunError),
}

/// A prediction.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The request id (the caller's, or one made up): what a label refers to later.
    pub request: String,
    /// The model that answered.
    pub model: ModelRef,
    /// Its outputs, without the batch axis.
    pub outputs: Vec<Tensor>,
    /// The class, for classifiers.
    pub class: Option<i64>,
}

/// The served model as callers see it: what to call it and what it takes.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// Name and version.
    pub model: ModelRef,
    /// Inputs, outputs and batch axis.
    pub signature: Arc<Signature>,
}

/// A drift window closed on the device, with what explains it.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// The model it watched.
    pub model: ModelRef,
    /// The scores and sketches.
    pub report: WindowReport<MAX_FEATURES>,
    /// Feature names, in report order.
    pub names: FeatureNames,
    /// Samples behind the reference.
    pub reference_samples: u64,
    /// The thresholds it was judged with.
    pub thresholds: Thresholds,
    /// One inference in how many was observed (the cost budget's stride) when it closed.
    pub every: u32,
}

struct Served {
    model: Model,
    model_ref: ModelRef,
    signature: Arc<Signature>,
    observer: Option<Observer>,
    outputs: Vec<Tensor>,
}

#[derive(Default)]
struct Reports {
    period: Period,
    windows: Vec<ClosedWindow>,
    events: Vec<EventKind>,
    quality: Option<Quality>,
}

struct Shared {
    engine: Mutex<Option<Served>>,
    reports: Mutex<Reports>,
    waiting: AtomicU32,
    requests: AtomicU64,
    engine_calls: AtomicU64,
    /// The served model takes batches (kept beside the engine so that routing a request never
    /// waits for the engine lock).
    batchable: AtomicBool,
    settings: ServeSettings,
    clock: Arc<dyn Clock>,
    batcher: Option<batcher::Queue>,
    /// The candidate in shadow, if any (`shadowing` says so without taking the lock).
    shadow: Mutex<Option<shadow::Runner>>,
    shadowing: AtomicBool,
    /// The served model's engine time and samples this period: the shadow latency ratio's base.
    served_us: AtomicU64,
    served_samples: AtomicU64,
    /// The A/B split, if any (`splitting` says so without taking the lock).
    split: Mutex<Option<split::Split>>,
    splitting: AtomicBool,
}

/// The handle to an agent's inference service.
#[derive(Clone)]
pub struct Inference {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference").field("waiting", &self.shared.waiting.load(Ordering::Relaxed)).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside tract is caught by the engine guard; a poisoned lock only means a caller
    // panicked mid-request, and the state it guards stays consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inference {
    /// A service with no model yet.
    pub fn new(settings: ServeSettings, clock: Arc<dyn Clock>) -> Inference {
        let start = clock.unix_ms();
        let reports = Reports { period: Period::new(start), ..Reports::default() };
        let (queue, worker) = match settings.batching {
            Some(policy) => {
                let (queue, worker) = batcher::queue(policy);
                (Some(queue), Some(worker))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            engine: Mutex::new(None),
            reports: Mutex::new(reports),
            waiting: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            engine_calls: AtomicU64::new(0),
            batchable: AtomicBool::new(false),
            settings,
            clock,
            batcher: queue,
            shadow: Mutex::new(None),
            shadowing: AtomicBool::new(false),
            served_us: AtomicU64::new(0),
            served_samples: AtomicU64::new(0),
            split: Mutex::new(None),
            splitting: AtomicBool::new(false),
        });
        if let Some(worker) = worker {
            worker.start(Arc::downgrade(&shared));
        }
        Inference { shared }
    }

    /// Runs one sample (input tensors without the batch axis) through the served model. Blocks
    /// while earlier requests run; refuses at once when the queue is full.
    pub fn infer(&self, request: Option<&str>, sample: &[Tensor]) -> Result<Prediction, InferError> {
        if self.splitting() {
            let (mut predictions, _) = self.infer_routed(request, None, vec![sample.to_vec()])?;
            return predictions.pop().ok_or_else(|| InferError::Engine(RunError::Batch("no output".into())));
        }
        if self.batches() {
            let mut predictions = self.infer_batch(request, vec![sample.to_vec()])?;
            return predictions.pop().ok_or_else(|| InferError::Engine(RunError::Batch("no output".into())));
        }
        let prediction = self
            .queued(1, || self.run(request, sample))
            .and_then(|mut v| v.pop().ok_or_else(|| InferError::Engine(RunError::Batch("no output".into()))))?;
        if self.shadowing() {
            let mut runner = lock(&self.shared.shadow);
            if let Some(r) = runner.as_mut()
                && r.pick()
            {
                r.offer(sample.to_vec(), prediction.outputs.clone());
            }
        }
        Ok(prediction)
    }

    /// Runs a client's batch of samples (each without the batch axis) as one request: one engine
    /// call for models with a symbolic batch axis (merged with other requests when batching is
    /// on), one per sample otherwise. With several samples, prediction `i` is known to labels as
    /// `{request}/{i}`.
    pub fn infer_batch(&self, request: Option<&str>, samples: Vec<Vec<Tensor>>) -> Result<Vec<Prediction>, InferError> {
        let n = samples.len();
        if n == 0 {
            return Err(InferError::Input(RunError::Batch("a request needs at least one sample".into())));
        }
        let picked = self.shadow_picks(&samples);
        let predictions = self.queued(n, || {
            let id = self.request_id(request);
            match &self.shared.batcher {
                Some(queue) if self.batches() => queue.submit(id, samples),
                _ => self.run_served(&id, &samples),
            }
        })?;
        if !picked.is_empty()
            && let Some(r) = lock(&self.shared.shadow).as_ref()
        {
            for (i, sample) in picked {
                if let Some(p) = predictions.get(i) {
                    r.offer(sample, p.outputs.clone());
                }
            }
        }
        Ok(predictions)
    }

    /// Runs a request as [`Inference::infer_batch`] does, on the variant its key routes it to
    /// while an A/B split runs (the key is `key`, or the request id when there is none). Returns
    /// the arm that answered (`None`: no split).
    pub fn infer_routed(
        &self,
        request: Option<&str>,
        key: Option<&str>,
        samples: Vec<Vec<Tensor>>,
    ) -> Result<(Vec<Prediction>, Option<Arm>), InferError> {
        let b_ppm = if self.splitting() { lock(&self.shared.split).as_ref().map(split::Split::b_ppm) } else { None };
        let Some(b_ppm) = b_ppm.filter(|_| !samples.is_empty()) else {
            return self.infer_batch(request, samples).map(|p| (p, None));
        };
        let id = self.request_id(request);
        let arm = split::route(key.unwrap_or(&id), b_ppm);
        let start = Instant::now();
        let result = match arm {
            Arm::A => self.infer_batch(Some(&id), samples),
            Arm::B => self.queued(samples.len(), || self.run_challenger(&id, &samples)),
        };
        let micros = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
        if let Some(s) = lock(&self.shared.split).as_mut() {
            match &result {
                Ok(predictions) => {
                    let answers: Vec<(&str, Option<i64>)> =
                        predictions.iter().map(|p| (p.request.as_str(), p.class)).collect();
                    s.answered(arm, micros, &answers);
                }
                Err(_) => s.failed(arm),
            }
        }
        result.map(|p| (p, Some(arm)))
    }

    /// Runs samples on the served model (no batcher).
    fn run_served(&self, id: &str, samples: &[Vec<Tensor>]) -> Result<Vec<Prediction>, InferError> {
        let mut engine = lock(&self.shared.engine);
        let served = engine.as_mut().ok_or(InferError::NoModel)?;
        let outputs = run_samples(&self.shared, served, samples)?;
        Ok(predictions(&served.model_ref, id, outputs))
    }

    /// Runs samples on the split's challenger (on the served model if the split just ended).
    fn run_challenger(&self, id: &str, samples: &[Vec<Tensor>]) -> Result<Vec<Prediction>, InferError> {
        let mut split = lock(&self.shared.split);
        let Some(s) = split.as_mut() else {
            drop(split);
            return self.run_served(id, samples);
        };
        let (model, model_ref) = s.challenger();
        let outputs = model.run_samples(samples).map_err(classify)?;
        self.shared.engine_calls.fetch_add(1, Ordering::Relaxed);
        Ok(predictions(model_ref, id, outputs))
    }

    fn splitting(&self) -> bool {
        self.shared.splitting.load(Ordering::Acquire)
    }

    /// Splits live traffic from now on: `b_ppm` parts per million of the request keys go to
    /// `challenger` (as `b`), the rest to the served model, which must be `a`. The challenger must
    /// take and return what the served model does (the local API checks and stacks tensors by
    /// the served model's signature). Replaces any split before it.
    pub fn split(&self, a: &ModelRef, challenger: Model, b: ModelRef, b_ppm: u32) -> Result<(), SplitError> {
        let served = self.served().ok_or(SplitError::NotServed(a.clone()))?;
        if served.model != *a {
            return Err(SplitError::NotServed(a.clone()));
        }
        if served.model == b {
            return Err(SplitError::SameModel);
        }
        let sig = challenger.signature();
        if sig.inputs != served.signature.inputs || sig.outputs != served.signature.outputs {
            return Err(SplitError::Signature);
        }
        let memory = self.shared.settings.memory;
        let old = lock(&self.shared.split).replace(split::Split::new(a.clone(), challenger, b, b_ppm, memory));
        self.shared.splitting.store(true, Ordering::Release);
        drop(old);
        Ok(())
    }

    /// Ends the split; returns whether one ran.
    pub fn stop_split(&self) -> bool {
        self.shared.splitting.store(false, Ordering::Release);
        lock(&self.shared.split).take().is_some()
    }

    /// The split's variants and B's share (parts per million), if one runs.
    pub fn split_settings(&self) -> Option<(ModelRef, ModelRef, u32)> {
        lock(&self.shared.split).as_ref().map(|s| {
            let (a, b) = s.models();
            (a.clone(), b.clone(), s.b_ppm())
        })
    }

    /// Each variant's counts over the period (while a split runs); the next period starts empty.
    pub fn take_split(&self) -> Option<drover_wire::telemetry::Split> {
        lock(&self.shared.split).as_mut().map(split::Split::take)
    }

    fn shadowing(&self) -> bool {
        self.shared.shadowing.load(Ordering::Acquire)
    }

    /// The samples of a request picked for the candidate, copied before the request consumes them.
    fn shadow_picks(&self, samples: &[Vec<Tensor>]) -> Vec<(usize, Vec<Tensor>)> {
        if !self.shadowing() {
            return Vec::new();
        }
        let mut runner = lock(&self.shared.shadow);
        let Some(r) = runner.as_mut() else { return Vec::new() };
        samples.iter().enumerate().filter(|_| r.pick()).map(|(i, s)| (i, s.clone())).collect()
    }

    /// Runs `model` as `candidate` in shadow of the served model on `sample_ppm` of the samples
    /// (parts per million), replacing any candidate before it.
    pub fn shadow(&self, model: Model, candidate: ModelRef, sample_ppm: u32) -> std::io::Result<()> {
        let runner = shadow::Runner::start(model, candidate, sample_ppm)?;
        let old = lock(&self.shared.shadow).replace(runner);
        self.shared.shadowing.store(true, Ordering::Release);
        drop(old); // joins the previous candidate's thread outside the lock
        Ok(())
    }

    /// Stops the shadow candidate; returns whether one ran.
    pub fn stop_shadow(&self) -> bool {
        self.shared.shadowing.store(false, Ordering::Release);
        let old = lock(&self.shared.shadow).take();
        old.is_some()
    }

    /// The candidate in shadow, if any.
    pub fn shadow_candidate(&self) -> Option<ModelRef> {
        self.shadow_settings().map(|(candidate, _)| candidate)
    }

    /// The candidate in shadow and its sample rate (parts per million), if any.
    pub fn shadow_settings(&self) -> Option<(ModelRef, u32)> {
        lock(&self.shared.shadow).as_ref().map(|r| (r.candidate().clone(), r.sample_ppm()))
    }

    /// The shadow comparison of the period (while a candidate runs); the next period starts empty.
    pub fn take_shadow(&self) -> Option<drover_wire::telemetry::Shadow> {
        let served_us = self.shared.served_us.swap(0, Ordering::AcqRel);
        let served_samples = self.shared.served_samples.swap(0, Ordering::AcqRel);
        lock(&self.shared.shadow).as_ref().map(|r| r.take(served_us, served_samples))
    }

    /// Whether requests go through the batcher now (it is on and the model can take batches).
    fn batches(&self) -> bool {
        self.shared.batcher.is_some() && self.shared.batchable.load(Ordering::Acquire)
    }

    /// Queue admission and the period's accounting around one request of `n` samples.
    fn queued(
        &self,
        n: usize,
        run: impl FnOnce() -> Result<Vec<Prediction>, InferError>,
    ) -> Result<Vec<Prediction>, InferError> {
        let s = &self.shared;
        let start = Instant::now();
        let depth = s.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        let result = if depth > s.settings.queue.max(1) { Err(InferError::Busy(depth - 1)) } else { run() };
        s.waiting.fetch_sub(1, Ordering::AcqRel);
        let mut reports = lock(&s.reports);
        let p = &mut reports.period;
        p.queue_max = p.queue_max.max(depth.min(s.settings.queue));
        let count = n as u64;
        match &result {
            Ok(predictions) => {
                p.inferences += count;
                let micros = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
                for _ in 0..n {
                    p.latency.record(micros);
                }
                if let Some(q) = &mut reports.quality {
                    for prediction in predictions {
                        if let Some(class) = prediction.class {
                            q.remember(&prediction.request, class);
                        }
                    }
                }
            }
            Err(InferError::Busy(_)) => p.errors.busy += 1,
            Err(InferError::NoModel) => p.errors.no_model += 1,
            Err(InferError::Input(_)) => p.errors.input += 1,
            Err(InferError::Engine(_)) => p.errors.engine += 1,
        }
        result
    }

    fn request_id(&self, request: Option<&str>) -> String {
        match request {
            Some(r) => r.to_string(),
            None => format!("r{}", self.shared.requests.fetch_add(1, Ordering::Relaxed) + 1),
        }
    }

    /// The single-sample hot path: outputs written into reused tensors.
    fn run(&self, request: Option<&str>, sample: &[Tensor]) -> Result<Vec<Prediction>, InferError> {
        let mut engine = lock(&self.shared.engine);
        let served = engine.as_mut().ok_or(InferError::NoModel)?;
        let Served { model, model_ref, observer, outputs, .. } = served;
        let turn = observer.as_mut().is_some_and(Observer::take_turn);
        let engine = turn.then(Instant::now);
        let start = Instant::now();
        model.run_one(sample, outputs).map_err(classify)?;
        count_engine(&self.shared, 1, 1, start);
        if let (Some(o), Some(input), Some(engine)) = (observer.as_mut(), sample.first(), engine) {
            o.observe(input, outputs, engine.elapsed().as_nanos() as u64);
            close_if_due(&self.shared, o, model_ref);
        }
        let class = outputs.first().and_then(class_of).map(|(_, c)| c);
        let request = self.request_id(request);
        Ok(vec![Prediction { request, model: model_ref.clone(), outputs: outputs.clone(), class }])
    }

    /// Counts a request refused before the engine because its tensors do not fit the model (the
    /// local API checks them itself), so telemetry's input errors cover every caller.
    pub fn count_bad_input(&self) {
        lock(&self.shared.reports).period.errors.input += 1;
    }

    /// The model served now, with its signature (what the local API describes and checks).
    pub fn served(&self) -> Option<ServedModel> {
        lock(&self.shared.engine)
            .as_ref()
            .map(|s| ServedModel { model: s.model_ref.clone(), signature: s.signature.clone() })
    }

    /// The drift monitor for `model` against `reference`, with `thresholds` (the config's, or the
    /// bundle's where the config leaves them unset). Build it off the async tasks (it is large and
    /// its construction deep), e.g. where the model is loaded.
    pub fn observer(
        &self,
        model: &Model,
        model_ref: &ModelRef,
        reference: &ReferenceStats,
        thresholds: Thresholds,
    ) -> Option<Observer> {
        let s = &self.shared.settings;
        let now = self.shared.clock.unix_ms();
        Observer::new(reference, model.signature(), s.window, thresholds, s.sustain, s.budget, now)
            .inspect_err(|e| log::warn!("{} v{}: no drift monitoring: {e}", model_ref.name, model_ref.version))
            .ok()
    }

    /// Serves `model` from now on, watching drift with `observer` when there is one. Labels and
    /// windows of the previous model are dropped (they described another model).
    pub fn serve(&self, model: Model, model_ref: ModelRef, observer: Option<Observer>) {
        let signature = Arc::new(model.signature().clone());
        let batchable = matches!(signature.batch, BatchAxis::Symbolic(_));
        let served = Served { model, model_ref, signature, observer, outputs: Vec::new() };
        let mut engine = lock(&self.shared.engine);
        *engine = Some(served);
        self.shared.batchable.store(batchable, Ordering::Release);
        drop(engine);
        let s = &self.shared.settings;
        let mut reports = lock(&self.shared.reports);
        reports.quality = Some(Quality::new(s.memory, s.floors));
    }

    /// Stops serving (the model is gone or failed to load).
    pub fn unload(&self) {
        let mut engine = lock(&self.shared.engine);
        *engine = None;
        self.shared.batchable.store(false, Ordering::Release);
        drop(engine);
        lock(&self.shared.reports).quality = None;
    }

    /// The model served now.
    pub fn model(&self) -> Option<ModelRef> {
        lock(&self.shared.engine).as_ref().map(|s| s.model_ref.clone())
    }

    /// The true label of an earlier prediction. Returns whether the prediction was known.
    pub fn label(&self, request: &str, label: i64) -> bool {
        let in_split = self.splitting() && lock(&self.shared.split).as_mut().is_some_and(|s| s.label(request, label));
        let mut reports = lock(&self.shared.reports);
        let Some(q) = reports.quality.as_mut() else { return in_split };
        match q.label(request, label) {
            Some(events) => {
                reports.events.extend(events);
                true
            }
            None => in_split,
        }
    }

    /// Closes a drift window whose time is up (a quiet device still reports).
    pub fn poll(&self, now_ms: u64) {
        let mut engine = lock(&self.shared.engine);
        if let Some(Served { observer: Some(o), model_ref, .. }) = engine.as_mut()
            && o.due(now_ms)
        {
            let window = closed(o, model_ref, now_ms);
            lock(&self.shared.reports).windows.push(window);
        }
    }

    /// The period's counters (and the rolling quality), starting the next period at `now_ms`.
    pub fn take_period(&self, now_ms: u64) -> (Period, Option<drover_wire::telemetry::Quality>) {
        let mut reports = lock(&self.shared.reports);
        let period = reports.period.take(now_ms);
        let quality = reports.quality.as_mut().and_then(Quality::snapshot);
        (period, quality)
    }

    /// Closed windows and alerts since the last call.
    pub fn take_reports(&self) -> (Vec<ClosedWindow>, Vec<EventKind>) {
        let mut reports = lock(&self.shared.reports);
        (std::mem::take(&mut reports.windows), std::mem::take(&mut reports.events))
    }

    /// Engine calls so far: fewer than inferences when batches ran (dynamic batching at work).
    pub fn engine_calls(&self) -> u64 {
        self.shared.engine_calls.load(Ordering::Relaxed)
    }

    /// The queue's bound.
    pub fn queue_capacity(&self) -> u32 {
        self.shared.settings.queue
    }
}

/// Why a split cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// Variant A must be the model served now.
    #[error("{} v{} is not the served model: A must be the version the device serves", .0.name, .0.version)]
    NotServed(ModelRef),
    /// A and B are the same model.
    #[error("A and B are the same model version")]
    SameModel,
    /// B takes or returns other tensors than A.
    #[error("B's inputs or outputs differ from A's: a split needs two interchangeable models")]
    Signature,
}

/// Engine errors caused by the request versus by the engine.
fn classify(e: RunError) -> InferError {
    match e {
        RunError::InputCount { .. } | RunError::InputType { .. } | RunError::InputShape { .. } => InferError::Input(e),
        e => InferError::Engine(e),
    }
}

/// Runs samples on the served model (one engine call when it has a symbolic batch axis) and
/// feeds the drift monitor.
fn run_samples(shared: &Shared, served: &mut Served, samples: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>, InferError> {
    let Served { model, model_ref, observer, .. } = served;
    let start = Instant::now();
    let calls = match model.signature().batch {
        BatchAxis::Symbolic(_) => 1,
        BatchAxis::FixedOne | BatchAxis::None => samples.len() as u64,
    };
    let outputs = model.run_samples(samples).map_err(classify)?;
    count_engine(shared, calls, samples.len() as u64, start);
    let n = samples.len().max(1);
    if let Some(o) = observer.as_mut() {
        let per_sample = start.elapsed().as_nanos() as u64 / n as u64;
        for (sample, out) in samples.iter().zip(&outputs) {
            if let (true, Some(input)) = (o.take_turn(), sample.first()) {
                o.observe(input, out, per_sample);
            }
        }
        close_if_due(shared, o, model_ref);
    }
    Ok(outputs)
}

/// Counts engine calls and the served model's engine time per sample.
fn count_engine(shared: &Shared, calls: u64, samples: u64, start: Instant) {
    shared.engine_calls.fetch_add(calls, Ordering::Relaxed);
    if shared.shadowing.load(Ordering::Relaxed) {
        shared.served_us.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        shared.served_samples.fetch_add(samples, Ordering::Relaxed);
    }
}

/// One request's predictions; prediction `i` is `{request}/{i}` when there are several.
fn predictions(model: &ModelRef, request: &str, outputs: Vec<Vec<Tensor>>) -> Vec<Prediction> {
    let n = outputs.len();
    outputs
        .into_iter()
        .enumerate()
        .map(|(i, outputs)| Prediction {
            request: if n == 1 { request.to_string() } else { format!("{request}/{i}") },
            model: model.clone(),
            class: outputs.first().and_then(class_of).map(|(_, c)| c),
            outputs,
        })
        .collect()
}

fn close_if_due(shared: &Shared, o: &mut Observer, model_ref: &ModelRef) {
    let now = shared.clock.unix_ms();
    if o.due(now) {
        let window = closed(o, model_ref, now);
        lock(&shared.reports).windows.push(window);
    }
}

fn closed(o: &mut Observer, model: &ModelRef, now_ms: u64) -> ClosedWindow {
    ClosedWindow {
        model: model.clone(),
        report: o.close(now_ms),
        names: o.names(),
        reference_samples: o.reference_samples(),
        thresholds: o.thresholds(),
        every: o.every(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::SystemClock;
    use crate::tensor::TensorData;

    fn service(queue: u32) -> Inference {
        let mut settings = crate::agent::AgentConfig::parse("device = \"t\"\ndata_dir = \"/tmp\"")
            .expect("config")
            .serve_settings(None);
        settings.queue = queue;
        Inference::new(settings, Arc::new(SystemClock::default()))
    }

    fn serve_iris(s: &Inference) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let model = Model::load(&root.join("iris_logreg.onnx")).expect("model");
        s.serve(model, ModelRef { name: "iris".try_into().expect("name"), version: 1 }, None);
    }

    fn flower() -> Vec<Tensor> {
        vec![Tensor::new(vec![4], TensorData::F32(vec![5.1, 3.5, 1.4, 0.2])).expect("tensor")]
    }

    #[test]
    fn every_outcome_is_counted_by_kind() {
        let s = service(4);
        assert!(matches!(s.infer(None, &flower()), Err(InferError::NoModel)));
        serve_iris(&s);
        let wrong = vec![Tensor::new(vec![3], TensorData::F32(vec![1.0; 3])).expect("tensor")];
        assert!(matches!(s.infer(None, &wrong), Err(InferError::Input(_))));
        let p = s.infer(Some("req-1"), &flower()).expect("prediction");
        assert_eq!((p.request.as_str(), p.class, p.model.version), ("req-1", Some(0), 1));
        assert!(s.infer(None, &flower()).expect("prediction").request.starts_with('r'));
        let (period, _) = s.take_period(0);
        assert_eq!(period.inferences, 2);
        assert_eq!(
            (period.errors.no_model, period.errors.input, period.errors.engine, period.errors.busy),
            (1, 1, 0, 0)
        );
        assert_eq!(period.latency.count(), 2);
        assert_eq!(s.take_period(0).0.inferences, 0, "a new period starts empty");
    }

    #[test]
    fn a_full_queue_refuses_at_once_instead_of_waiting() {
        let s = service(1);
        serve_iris(&s);
        let held = lock(&s.shared.engine); // a long inference in progress
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.infer(None, &flower()).map(|p| p.class))
        };
        while s.shared.waiting.load(Ordering::Acquire) < 1 {
            std::thread::yield_now();
        }
        assert!(matches!(s.infer(None, &flower()), Err(InferError::Busy(1))));
        drop(held);
        assert_eq!(waiter.join().expect("thread").expect("served once the engine is free"), Some(0));
        let (period, _) = s.take_period(0);
        assert_eq!((period.inferences, period.errors.busy, period.queue_max), (1, 1, 1));
    }

    /// Waits until the candidate has dealt with `n` samples (it works on its own thread).
    fn shadow_settled(s: &Inference, n: u64) {
        let start = Instant::now();
        loop {
            let done = lock(&s.shared.shadow).as_ref().map_or(0, |r| r.handled());
            if done >= n {
                return;
            }
            assert!(start.elapsed().as_secs() < 30, "the candidate handled {done} of {n} samples");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn a_shadow_candidate_sees_a_sample_of_requests_and_reports_agreement() {
        let s = service(4);
        serve_iris(&s);
        assert_eq!(s.take_shadow(), None, "no candidate, no report");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let candidate = ModelRef { name: "iris".try_into().expect("name"), version: 2 };
        let twin = Model::load(&root.join("iris_logreg.onnx")).expect("model");
        s.shadow(twin, candidate.clone(), 500_000).expect("shadow thread");
        assert_eq!(s.shadow_candidate(), Some(candidate.clone()));
        for _ in 0..10 {
            s.infer(None, &flower()).expect("prediction");
        }
        let batch = vec![flower(), flower()];
        assert_eq!(s.infer_batch(None, batch).expect("predictions").len(), 2);
        shadow_settled(&s, 6);
        let report = s.take_shadow().expect("a report");
        assert_eq!(report.candidate, candidate);
        assert_eq!((report.compared, report.failed, report.skipped), (6, 0, 0), "one sample in two");
        assert_eq!(report.top1_agreement(), Some(1.0), "the same model agrees with itself");
        assert_eq!(report.max_abs_diff, 0.0);
        assert_eq!(report.served_samples, 12);
        assert!(report.latency_ratio().is_some());
        let next = s.take_shadow().expect("still shadowing");
        assert_eq!((next.compared, next.served_samples), (0, 0), "a new period starts empty");

        // A candidate answering another question fails every sample; the caller never sees it.
        let mlp = Model::load(&root.join("mlp.onnx")).expect("model");
        s.shadow(mlp, candidate, 1_000_000).expect("shadow thread");
        assert_eq!(s.infer(None, &flower()).expect("served by the active model").class, Some(0));
        shadow_settled(&s, 1);
        let report = s.take_shadow().expect("a report");
        assert_eq!((report.compared, report.failed), (0, 1));
        assert!(s.stop_shadow());
        assert!(!s.stop_shadow());
        assert_eq!(s.take_shadow(), None);
    }

    #[test]
    fn a_split_routes_each_key_to_one_variant_and_counts_both() {
        let s = service(4);
        serve_iris(&s);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let a = ModelRef { name: "iris".try_into().expect("name"), version: 1 };
        let b = ModelRef { name: "iris".try_into().expect("name"), version: 2 };
        let load = |f: &str| Model::load(&root.join(f)).expect("model");
        assert!(matches!(s.split(&b, load("iris_logreg.onnx"), a.clone(), 1), Err(SplitError::NotServed(_))));
        assert!(matches!(s.split(&a, load("iris_logreg.onnx"), a.clone(), 1), Err(SplitError::SameModel)));
        assert!(matches!(s.split(&a, load("mlp.onnx"), b.clone(), 1), Err(SplitError::Signature)));
        assert_eq!(s.take_split(), None, "no split, no report");
        s.split(&a, load("iris_logreg.onnx"), b.clone(), 300_000).expect("split");
        assert_eq!(s.split_settings(), Some((a.clone(), b.clone(), 300_000)));

        let mut by_arm = [0u64; 2];
        for user in 0..200 {
            let key = format!("user-{user}");
            let (p, arm) = s.infer_routed(Some(&format!("q{user}")), Some(&key), vec![flower()]).expect("answer");
            let arm = arm.expect("a split runs");
            assert_eq!(arm, split::route(&key, 300_000), "the key decides");
            let expected = if arm == Arm::B { &b } else { &a };
            assert_eq!(&p[0].model, expected, "the answer names the variant that gave it");
            by_arm[usize::from(arm == Arm::B)] += 1;
            let (again, arm_again) = s.infer_routed(None, Some(&key), vec![flower()]).expect("answer");
            assert_eq!((arm_again, &again[0].model), (Some(arm), expected), "sticky per key");
        }
        assert!(by_arm[1] > 30 && by_arm[1] < 90, "about 30 % of 200 keys on B: {by_arm:?}");
        // Labels score the variant that answered (setosa is class 0: all right).
        assert!(s.label("q0", 0));
        assert!(s.label("q1", 1));
        let wrong = s.infer_routed(
            None,
            Some("x"),
            vec![vec![Tensor::new(vec![2], TensorData::F32(vec![1.0; 2])).expect("t")]],
        );
        assert!(matches!(wrong, Err(InferError::Input(_))));
        let report = s.take_split().expect("a report");
        assert_eq!(report.b_ppm, 300_000);
        assert_eq!((report.a.model.version, report.b.model.version), (1, 2));
        assert_eq!(report.a.inferences + report.b.inferences, 400);
        assert_eq!(report.b.inferences, 2 * by_arm[1]);
        assert_eq!(report.a.latency.count() + report.b.latency.count(), 400);
        assert_eq!(report.a.class_share(0).or(report.b.class_share(0)), Some(1.0));
        assert_eq!(report.a.labels + report.b.labels, 2);
        assert_eq!(report.a.correct + report.b.correct, 1);
        assert_eq!(report.a.errors + report.b.errors, 1, "the bad request counts against its variant");
        let (period, _) = s.take_period(0);
        assert_eq!(period.inferences, 400, "both variants' answers are the device's");
        assert_eq!(s.take_split().expect("still splitting").a.inferences, 0, "a new period starts empty");

        assert!(s.stop_split());
        assert!(!s.stop_split());
        let (_, arm) = s.infer_routed(None, Some("user-1"), vec![flower()]).expect("answer");
        assert_eq!(arm, None, "after the split, the served model answers everything");
        assert_eq!(s.take_split(), None);
    }

    #[test]
    fn labels_score_remembered_predictions_and_a_new_model_starts_afresh() {
        let s = service(4);
        assert!(!s.label("r1", 0), "no model, nothing to score");
        serve_iris(&s);
        let p = s.infer(None, &flower()).expect("prediction");
        assert!(s.label(&p.request, 0));
        assert!(!s.label(&p.request, 0), "once");
        assert!(!s.label("never-made", 0));
        let (_, quality) = s.take_period(0);
        let q = quality.expect("one label");
        assert_eq!((q.labels, q.window, q.accuracy), (1, 1, 1.0));
        serve_iris(&s);
        assert!(!s.label(&p.request, 0), "predictions of the previous model are gone");
    }
}
