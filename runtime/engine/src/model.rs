use std::path::Path;
use std::time::Instant;

use drover_wire::{DType, DimRef, TensorSpec};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::{DatumType, Framework, InferenceModelExt, TValue, TVec, TypedFact, TypedModel};

use super::error::{LoadError, RunError};
use super::guard::contain;
use super::int8::Int8Kernels;
use super::opcheck::{unsupported_attributes, unsupported_ops};
use super::plans::{Plans, Runner, Template};
use super::profile::{Profile, profile_state};
use super::proto::{DeclaredValue, declared_io};
use super::qdq::{self, QdqRewrites};
use super::signature::{BatchAxis, Signature, describe_shape, fixed};
use super::stage::{LoadTimings, Stage};
use crate::tensor::Tensor;

/// A model loaded, optimised and ready to run: plans and their reusable states.
///
/// Building a plan costs milliseconds and a fresh state per call costs a microsecond or so; a
/// board answering every few milliseconds cannot pay either per request, so the plan for single
/// samples is built here and plans for other batch sizes on first use ([`Plans`]), each reused by
/// every later run.
pub struct Model {
    signature: Signature,
    pub(super) plans: Plans,
    timings: LoadTimings,
    /// Per input: the full shape and the per-sample shape (`None` = any size), computed once.
    expected: Vec<(ExpectedShape, ExpectedShape)>,
    /// What the QDQ rewrite changed (all zero for other models).
    rewrites: QdqRewrites,
    /// Per output: whether it has the leading batch axis samples are split along. A model fed
    /// one sample as `[1, …]` may give outputs without one (a detector's `[K, 4]` boxes, K found
    /// at run time): such an output is the sample's whole answer.
    output_batched: Vec<bool>,
}

/// Choices for loading a model. The defaults are what the agent uses.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Rewrite QDQ-quantized graphs into forms tract runs fast ([`super::qdq`]). Off only to
    /// measure or debug the rewrite itself.
    pub qdq_rewrite: bool,
    /// Optimise the plan single samples run on for batch 1, and build one per batch size
    /// ([`super::plans`]). Off only to measure what that gains: every size then runs on the
    /// plan for the file's symbolic batch, as tract would.
    pub batch_plans: bool,
    /// The kernels of the integer layers the QDQ rewrite makes. `Native` but to measure.
    pub int8_kernels: Int8Kernels,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { qdq_rewrite: true, batch_plans: true, int8_kernels: Int8Kernels::Native }
    }
}

/// A shape to check against: `None` axes accept any size.
type ExpectedShape = Vec<Option<usize>>;

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("signature", &self.signature).field("timings", &self.timings).finish()
    }
}

/// Runs one load stage: times it, contains panics, and tags failures with the stage.
fn stage<T>(
    timings: &mut LoadTimings,
    stage: Stage,
    f: impl FnOnce() -> tract_onnx::prelude::TractResult<T>,
) -> Result<T, LoadError> {
    let start = Instant::now();
    let result = contain(f).map_err(|message| LoadError::Panicked { stage, message })?;
    let value = result.map_err(|e| LoadError::Stage { stage, message: format!("{e:#}") })?;
    log::debug!("{stage} done in {:?}", start.elapsed());
    timings.record(stage, start.elapsed());
    Ok(value)
}

impl Model {
    /// Loads an ONNX file through every stage: read, operator check, parse, type, optimise, plan.
    pub fn load(path: &Path) -> Result<Model, LoadError> {
        Self::load_with(path, LoadOptions::default())
    }

    /// [`Model::load`] with explicit [`LoadOptions`] (benches compare the rewrite on and off).
    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Model, LoadError> {
        let start = Instant::now();
        let bytes = std::fs::read(path).map_err(|error| LoadError::Read { path: path.to_path_buf(), error })?;
        let proto = decode(&bytes)?;
        let mut timings = LoadTimings::default();
        timings.record(Stage::Read, start.elapsed());
        Self::from_proto(&proto, path.parent(), timings, options)
    }

    /// Loads a model from bytes already in memory (e.g. extracted from a bundle).
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, LoadError> {
        let start = Instant::now();
        let proto = decode(bytes)?;
        let mut timings = LoadTimings::default();
        timings.record(Stage::Read, start.elapsed());
        Self::from_proto(&proto, None, timings, LoadOptions::default())
    }

    /// Loads an in-memory protobuf with explicit options (unit tests of load-time rewrites).
    #[cfg(test)]
    pub(crate) fn from_proto_for_test(proto: &ModelProto, options: LoadOptions) -> Result<Model, LoadError> {
        Self::from_proto(proto, None, LoadTimings::default(), options)
    }

    fn from_proto(
        proto: &ModelProto,
        dir: Option<&Path>,
        mut timings: LoadTimings,
        options: LoadOptions,
    ) -> Result<Model, LoadError> {
        let onnx = super::onnx();

        let check_start = Instant::now();
        let side_files = super::proto::external_data(proto)?;
        if !side_files.is_empty() && dir.is_none() {
            return Err(LoadError::ExternalDataMissing(side_files));
        }
        let normalised = normalise(proto);
        let (proto, class_labels) = match &normalised {
            Some((copy, labels)) => (copy, labels.clone()),
            None => (proto, Vec::new()),
        };
        let missing = unsupported_ops(proto, &onnx.op_register);
        if !missing.is_empty() {
            log::warn!("model refused: {} unsupported operator kind(s)", missing.len());
            return Err(LoadError::UnsupportedOps(missing));
        }
        let ignored = unsupported_attributes(proto);
        if !ignored.is_empty() {
            log::warn!("model refused: {} node attribute(s) the engine would ignore", ignored.len());
            return Err(LoadError::UnsupportedAttributes(ignored));
        }
        let (declared_inputs, declared_outputs) = declared_io(proto)?;
        let mut inputs = Vec::with_capacity(declared_inputs.len());
        for d in declared_inputs {
            match d.spec {
                Some(spec) => inputs.push(spec),
                None if DType::ALL.iter().any(|t| t.name() == d.dtype) => {
                    return Err(LoadError::Schema {
                        role: "input",
                        name: d.name,
                        reason: "name or rank too large".into(),
                    });
                }
                None => {
                    return Err(LoadError::UnsupportedType { role: "input", name: d.name, dtype: d.dtype });
                }
            }
        }
        timings.record(Stage::Check, check_start.elapsed());

        let batch = BatchAxis::of(&inputs);
        let batch_symbol = match &batch {
            BatchAxis::Symbolic(name) if options.batch_plans => Some(name.as_str()),
            BatchAxis::Symbolic(_) | BatchAxis::FixedOne | BatchAxis::None => None,
        };
        let dir = dir.and_then(Path::to_str);
        let rewrite_start = Instant::now();
        // Contained like tract's stages: a rewrite bug on a hostile file must not stop the agent.
        let rewritten = options.qdq_rewrite.then(|| {
            contain(|| {
                let mut copy = proto.clone();
                let done = qdq::rewrite_for(&mut copy, options.int8_kernels);
                done.any().then_some((copy, done))
            })
            .unwrap_or_else(|message| {
                log::warn!("QDQ rewrite crashed (contained), loading the model as written: {message}");
                None
            })
        });
        let mut rewrites = QdqRewrites::default();
        let compiled = match rewritten.flatten() {
            Some((copy, done)) => {
                timings.record(Stage::Rewrite, rewrite_start.elapsed());
                let mut trial = timings.clone();
                match compile(&copy, dir, &declared_outputs, batch_symbol, &mut trial) {
                    Ok(compiled) => {
                        log::info!("QDQ graph rewritten for tract: {done:?}");
                        rewrites = done;
                        timings = trial;
                        compiled
                    }
                    Err(e) => {
                        // The rewrite is an optimisation: a model it cannot serve loads as written.
                        log::warn!("QDQ rewrite not usable for this model ({e}); loading it as written");
                        compile(proto, dir, &declared_outputs, batch_symbol, &mut timings)?
                    }
                }
            }
            None => compile(proto, dir, &declared_outputs, batch_symbol, &mut timings)?,
        };
        let (plans, outputs) = compiled;
        let output_batched = outputs.iter().map(|o| batch.batches_output(o)).collect();
        let signature = Signature { inputs, outputs, batch, class_labels };
        let expected = (0..signature.inputs.len())
            .map(|i| (signature.inputs[i].shape.iter().map(fixed).collect(), signature.sample_shape(i)))
            .collect();
        log::info!(
            "model ready in {:.1} ms: inputs [{}], outputs [{}], batch {:?}",
            timings.total_us() as f64 / 1000.0,
            signature.inputs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            signature.outputs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            signature.batch
        );
        Ok(Model { signature, plans, timings, expected, rewrites, output_batched })
    }

    /// What the model takes and returns.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// What the load-time QDQ rewrite changed in this model.
    pub fn qdq_rewrites(&self) -> QdqRewrites {
        self.rewrites
    }

    /// Time spent in each load stage.
    pub fn timings(&self) -> &LoadTimings {
        &self.timings
    }

    /// Runs the model once on full input tensors (batch axis included), in declared order.
    ///
    /// Inputs are checked against the signature first, so a wrong tensor is a clear error rather
    /// than a shape failure deep inside tract.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RunError> {
        self.check(inputs.iter().map(|t| (t, false)), inputs.len())?;
        let values: TVec<TValue> = inputs.iter().map(|t| t.to_tract().into()).collect();
        let n = match self.signature.batch {
            BatchAxis::Symbolic(_) => inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1),
            BatchAxis::FixedOne | BatchAxis::None => 1,
        };
        let outputs = self.plans.for_batch(n)?.eval(values)?;
        outputs.iter().map(|v| Tensor::from_tract(v).map_err(|e| RunError::Engine(e.to_string()))).collect()
    }

    /// Runs samples (each a list of input tensors without the batch axis) as one batch and
    /// returns each sample's outputs without the batch axis.
    ///
    /// Models with a fixed batch of one, or without a batch axis, run the samples one at a time.
    pub fn run_samples(&mut self, samples: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>, RunError> {
        match self.signature.batch {
            BatchAxis::Symbolic(_) => self.run_batch(samples),
            BatchAxis::FixedOne => samples.iter().map(|s| self.run_batch(std::slice::from_ref(s)).map(first)).collect(),
            BatchAxis::None => samples.iter().map(|s| self.run(s)).collect(),
        }
    }

    /// Runs one sample (input tensors without the batch axis) and writes its outputs into
    /// `outputs`, reusing the tensors already there: the per-sample hot path, which allocates
    /// nothing beyond what tract itself needs once `outputs` has grown.
    pub fn run_one(&mut self, sample: &[Tensor], outputs: &mut Vec<Tensor>) -> Result<(), RunError> {
        let strip = self.signature.batch.strips_leading_axis();
        self.check(sample.iter().map(|t| (t, strip)), sample.len())?;
        let values: TVec<TValue> =
            sample.iter().map(|t| if strip { t.to_tract_one() } else { t.to_tract() }.into()).collect();
        let results = self.plans.one().eval(values)?;
        outputs.truncate(results.len());
        while outputs.len() < results.len() {
            outputs.push(Tensor::empty());
        }
        for (o, (out, result)) in outputs.iter_mut().zip(&results).enumerate() {
            let batched = self.output_batched.get(o).copied().unwrap_or(true);
            out.assign_from_tract(result, strip && batched).map_err(|e| {
                RunError::Batch(format!(
                    "output '{}': {e}",
                    self.signature.outputs.get(o).map(|s| s.name.as_str()).unwrap_or("?")
                ))
            })?;
        }
        Ok(())
    }

    /// One engine call for `samples`: each input's samples are copied once, straight into a
    /// tract tensor with the batch axis in front, and each output is split back per sample.
    fn run_batch(&mut self, samples: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>, RunError> {
        let n = samples.len();
        let count = self.signature.inputs.len();
        for s in samples {
            self.check(s.iter().map(|t| (t, true)), s.len())?;
        }
        let mut values: TVec<TValue> = TVec::with_capacity(count);
        let mut column: Vec<&Tensor> = Vec::with_capacity(n);
        for input in 0..count {
            column.clear();
            column.extend(samples.iter().map(|s| &s[input]));
            let batched = Tensor::batch_to_tract(&column)
                .map_err(|e| RunError::Batch(format!("input '{}': {e}", self.signature.inputs[input].name)))?;
            values.push(batched.into());
        }
        let outputs = self.plans.for_batch(n)?.eval(values)?;
        let mut per_sample: Vec<Vec<Tensor>> = (0..n).map(|_| Vec::with_capacity(outputs.len())).collect();
        for (o, out) in outputs.iter().enumerate() {
            if n == 1 && !self.output_batched.get(o).copied().unwrap_or(true) {
                let whole = Tensor::from_tract(out).map_err(|e| RunError::Engine(e.to_string()))?;
                per_sample[0].push(whole);
                continue;
            }
            let parts = Tensor::split_tract(out, n).map_err(|e| {
                RunError::Batch(format!(
                    "output '{}' has no batch axis of {n} ({e}); run with a batch of 1",
                    self.signature.outputs.get(o).map(|s| s.name.as_str()).unwrap_or("?")
                ))
            })?;
            for (sample, part) in per_sample.iter_mut().zip(parts) {
                sample.push(part);
            }
        }
        Ok(per_sample)
    }

    /// Times every node of the optimised plan over `runs` calls on one sample (input tensors
    /// without the batch axis, as [`Model::run_one`] takes them).
    ///
    /// A diagnostic for benches and `docs/int8.md`: per-node timing costs a clock read per node,
    /// so the hot path never goes through here.
    pub fn profile(&mut self, sample: &[Tensor], runs: usize) -> Result<Profile, RunError> {
        let strip = self.signature.batch.strips_leading_axis();
        self.check(sample.iter().map(|t| (t, strip)), sample.len())?;
        let values: TVec<TValue> =
            sample.iter().map(|t| if strip { t.to_tract_one() } else { t.to_tract() }.into()).collect();
        let runner = self.plans.one();
        match contain(|| profile_state(runner.state_mut(), &values, runs)) {
            Ok(result) => result.map_err(RunError::Engine),
            Err(message) => {
                runner.reset();
                Err(RunError::Panicked(message))
            }
        }
    }

    /// Checks tensors against the declared inputs: full tensors, or samples (`true`: the
    /// tensor lacks the batch axis).
    fn check<'a>(&self, tensors: impl Iterator<Item = (&'a Tensor, bool)>, count: usize) -> Result<(), RunError> {
        let specs = &self.signature.inputs;
        if count != specs.len() {
            return Err(RunError::InputCount { expected: specs.len(), actual: count });
        }
        for ((t, is_sample), (spec, (full, sample))) in tensors.zip(specs.iter().zip(&self.expected)) {
            if t.dtype() != spec.dtype {
                return Err(RunError::InputType {
                    name: spec.name.to_string(),
                    expected: spec.dtype.to_string(),
                    actual: t.dtype().to_string(),
                });
            }
            let expected = if is_sample { sample } else { full };
            let fits = t.shape().len() == expected.len()
                && t.shape().iter().zip(expected).all(|(have, want)| want.is_none_or(|w| w == *have));
            if !fits {
                return Err(RunError::InputShape {
                    name: spec.name.to_string(),
                    expected: describe_shape(expected),
                    actual: t.shape().to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// Parses, types, optimises and plans `proto`: the tract half of loading, run once more on the
/// original model when a rewritten one fails. With a symbolic batch axis (`batch_symbol`), the
/// plan for single samples is optimised for batch 1 and the decluttered graph is kept to plan
/// other sizes ([`Plans`]).
fn compile(
    proto: &ModelProto,
    dir: Option<&str>,
    declared_outputs: &[DeclaredValue],
    batch_symbol: Option<&str>,
    timings: &mut LoadTimings,
) -> Result<(Plans, Vec<TensorSpec>), LoadError> {
    compile_as(proto, dir, declared_outputs, batch_symbol, timings, Unoptimisable::TryBarriers)
}

/// What [`compile_as`] does when tract's optimiser fails on a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unoptimisable {
    /// Retry with barriers in front of the recurrent layers ([`super::barrier`]), then run it
    /// unoptimised.
    TryBarriers,
    /// Fail: the caller falls back itself.
    Fail,
}

fn compile_as(
    proto: &ModelProto,
    dir: Option<&str>,
    declared_outputs: &[DeclaredValue],
    batch_symbol: Option<&str>,
    timings: &mut LoadTimings,
    unoptimisable: Unoptimisable,
) -> Result<(Plans, Vec<TensorSpec>), LoadError> {
    let onnx = super::onnx();
    let inference = stage(timings, Stage::Parse, || {
        let parsed = onnx.parse(proto, dir)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(tract_onnx::prelude::TractError::msg(format!(
                "values used but never produced: {:?}",
                parsed.unresolved_inputs
            )));
        }
        Ok(parsed.model)
    })?;
    let typed = stage(timings, Stage::Type, || {
        let mut typed = inference.into_typed()?;
        int64_outputs(&mut typed)?;
        Ok(typed)
    })?;
    let mut outputs = output_specs(&typed, declared_outputs.iter().map(|d| d.name.as_str()))?;
    // tract's optimiser has bugs of its own on some real graphs (an LSTM decoder fed a repeated
    // encoder state fails in its declutter pass): such a model still runs, unoptimised, rather
    // than not at all. The typed graph is cheap to keep (weights are shared, not copied).
    let fallback = typed.clone();
    let optimise = || {
        let mut model = typed;
        model.declutter()?;
        // Decluttering turns ONNX slices whose bounds are constants into tract's `Slice`.
        let (mut model, bounded) = super::slice_bounds::bound_slices(model)?;
        if bounded > 0 {
            model.declutter()?;
        }
        let decluttered = model;
        let template = batch_symbol.and_then(|symbol| Template::new(decluttered.clone(), symbol));
        let optimised = match template.as_ref().map(|t| t.specialise(1)) {
            Some(Ok(one)) => one,
            Some(Err(e)) => {
                log::warn!("no plan of its own for batch 1 ({e}); planning for the symbolic batch");
                let mut model = decluttered.clone();
                model.optimize()?;
                return Ok((model, None, decluttered, bounded));
            }
            None => {
                let mut model = decluttered.clone();
                model.optimize()?;
                model
            }
        };
        Ok((optimised, template, decluttered, bounded))
    };
    let (optimised, template) = match stage(timings, Stage::Optimise, optimise) {
        Ok((optimised, template, decluttered, bounded)) => {
            if bounded > 0 {
                log::info!("{bounded} slice(s) bounded by an axis whose length is known only at run time");
                // Their lengths, and those of what follows, changed: the outputs say so.
                outputs = output_specs(&decluttered, declared_outputs.iter().map(|d| d.name.as_str()))?;
            }
            (optimised, template)
        }
        Err(e @ LoadError::Panicked { .. }) => return Err(e),
        Err(e) if unoptimisable == Unoptimisable::Fail => return Err(e),
        Err(e) => {
            // tract's message goes on with a dump of its patch: the first line says what failed.
            let text = e.to_string();
            let first: String = text.lines().next().unwrap_or_default().chars().take(300).collect();
            let mut guarded = proto.clone();
            if super::barrier::guard_recurrent_inputs(&mut guarded) > 0 {
                let mut trial = timings.clone();
                let retry = compile_as(&guarded, dir, declared_outputs, batch_symbol, &mut trial, Unoptimisable::Fail);
                match retry {
                    Ok(compiled) => {
                        log::info!("{first}; optimised with barriers in front of its recurrent layers instead");
                        *timings = trial;
                        return Ok(compiled);
                    }
                    Err(again) => log::debug!("barriers in front of the recurrent layers did not help: {again}"),
                }
            }
            log::warn!("{first}; running the model unoptimised (slower, same results)");
            (fallback, None)
        }
    };
    let one = stage(timings, Stage::Plan, || Runner::new(optimised))?;
    if one.fresh_state_per_run() {
        log::info!("the model has stateful operators: each run starts from a fresh state");
    }
    let plans = match template {
        Some(template) => Plans::specialised(one, template),
        None => Plans::single(one),
    };
    Ok((plans, outputs))
}

/// What converters write that tract cannot take as is, made servable on a copy, or `None` when
/// there is nothing to do (a big CNN is not copied for nothing): `[?, 4]` (skl2onnx's and
/// onnxmltools' default batch axis) typed as `[N, 4]`; a classifier's ZipMap served as its
/// probability tensor, with the class labels for the signature; onnxruntime's Microsoft-only
/// QOperator operators (QGemm, QLinearAdd…) as their definition in standard operators, and its
/// DynamicQuantizeLSTM (`quantize_dynamic` on an LSTM) as a standard LSTM over the dequantized
/// weights. Loading and `inspect`'s operator check both see the model so.
pub(crate) fn normalise(proto: &ModelProto) -> Option<(ModelProto, Vec<super::zipmap::ClassLabels>)> {
    let zipmaps = super::proto::all_nodes(proto).iter().any(|n| n.op_type == "ZipMap");
    let microsoft = qdq::qop_ms::has_any(proto);
    let dynamic_lstm = qdq::dynamic_lstm::has_any(proto);
    if !(super::proto::has_unnamed_dims(proto) || zipmaps || microsoft || dynamic_lstm) {
        return None;
    }
    let mut copy = proto.clone();
    let n = super::proto::name_unnamed_dims(&mut copy);
    if n > 0 {
        log::info!("named {n} input/output dimension(s) the file left without a size or a name");
    }
    let labels = super::zipmap::rewrite(&mut copy);
    for l in &labels {
        log::info!("output '{}': ZipMap served as a [N, {}] probability tensor", l.output, l.labels.len());
    }
    if microsoft {
        // `expand` changes the graph only once it is done: a contained crash leaves the copy as
        // written, and the operator check then refuses it.
        match contain(|| qdq::qop_ms::expand(&mut copy)) {
            Ok(n) => {
                log::info!("{n} com.microsoft QOperator node(s) rewritten as DequantizeLinear → op → QuantizeLinear")
            }
            Err(message) => log::warn!("com.microsoft operator rewrite crashed (contained): {message}"),
        }
    }
    if dynamic_lstm {
        // Each node is replaced whole or not at all: a contained crash leaves the rest as written.
        match contain(|| qdq::dynamic_lstm::expand(&mut copy)) {
            Ok(n) => {
                log::info!("{n} com.microsoft DynamicQuantizeLSTM node(s) rewritten as LSTM over dequantized weights")
            }
            Err(message) => log::warn!("DynamicQuantizeLSTM rewrite crashed (contained): {message}"),
        }
    }
    Some((copy, labels))
}

/// The side files (ONNX external data) the model in `bytes` keeps weights in, as file names
/// beside it; an error for a location that is not a plain file name.
pub fn external_data_of(bytes: &[u8]) -> Result<Vec<String>, LoadError> {
    super::proto::external_data(&decode(bytes)?)
}

/// Casts outputs tract typed as `TDim` back to int64.
///
/// tract-onnx reads every ONNX `Cast(to=INT64)` as a cast to its symbolic dimension type, so a
/// graph ending in one (onnxmltools' LightGBM classifiers cast their labels so) would give
/// outputs no caller can read. The values are plain integers: a cast at the output restores them.
fn int64_outputs(typed: &mut TypedModel) -> tract_onnx::prelude::TractResult<()> {
    let mut outputs = typed.output_outlets()?.to_vec();
    let mut changed = false;
    for (ix, outlet) in outputs.iter_mut().enumerate() {
        if typed.outlet_fact(*outlet)?.datum_type == DatumType::TDim {
            use tract_onnx::prelude::SpecialOps;
            let cast = tract_onnx::tract_core::ops::cast::cast(DatumType::I64);
            *outlet = typed.wire_node(format!("drover.output_{ix}_as_i64"), cast, &[*outlet])?[0];
            changed = true;
        }
    }
    if changed {
        typed.select_output_outlets(&outputs)?;
    }
    Ok(())
}

/// Takes the only sample of a one-sample batch.
fn first(mut v: Vec<Vec<Tensor>>) -> Vec<Tensor> {
    v.pop().unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<ModelProto, LoadError> {
    let onnx = tract_onnx::onnx();
    let mut reader = bytes;
    let proto = contain(|| onnx.proto_model_for_read(&mut reader))
        .map_err(LoadError::Decode)?
        .map_err(|e| LoadError::Decode(format!("{e:#}")))?;
    let Some(graph) = &proto.graph else { return Err(LoadError::NoGraph) };
    if proto.opset_import.is_empty() {
        return Err(LoadError::Decode("the file declares no operator set (truncated, or not an ONNX model)".into()));
    }
    if graph.output.is_empty() {
        return Err(LoadError::Decode("the graph declares no outputs (truncated, or not an ONNX model)".into()));
    }
    Ok(proto)
}

/// Output specs from tract's typed facts (authoritative: the file may omit output shapes).
fn output_specs<'a>(typed: &TypedModel, names: impl Iterator<Item = &'a str>) -> Result<Vec<TensorSpec>, LoadError> {
    let mut specs = Vec::new();
    for (ix, name) in names.enumerate() {
        let fact: TypedFact = typed
            .output_fact(ix)
            .map_err(|e| LoadError::Stage { stage: Stage::Type, message: format!("output '{name}': {e:#}") })?
            .clone();
        let dtype = dtype_of(fact.datum_type).ok_or_else(|| LoadError::UnsupportedType {
            role: "output",
            name: name.to_string(),
            dtype: format!("{:?}", fact.datum_type).to_lowercase(),
        })?;
        let dims: Vec<String> = fact.shape.iter().map(|d| d.to_string()).collect();
        let refs = fact.shape.iter().zip(&dims).map(|(d, text)| match d.to_i64() {
            Ok(n) if n >= 0 => DimRef::Fixed(n as u64),
            _ => DimRef::Symbolic(text),
        });
        let spec = TensorSpec::new(name, dtype, refs).map_err(|e| LoadError::Schema {
            role: "output",
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        specs.push(spec);
    }
    Ok(specs)
}

fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::I64 => DType::I64,
        DatumType::I32 => DType::I32,
        DatumType::U8 => DType::U8,
        DatumType::I8 => DType::I8,
        _ => return None,
    })
}
