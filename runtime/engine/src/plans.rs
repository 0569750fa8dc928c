//! Plans specialised to the batch size they run.
//!
//! Exporters give networks a symbolic batch axis (`torch.onnx.export(dynamic_axes=…)`, skl2onnx's
//! `[None, n]`), and a plan tract optimises for `batch = N` cannot choose its kernels, fold its
//! shapes or pre-pack for the sizes it will see: MobileNetV2 ran 3.4× slower than the same file
//! with its batch fixed to 1. The serving path knows its batch size at every call (one sample on
//! `run_one`, the batcher's count on `run_samples`), so the engine keeps the decluttered graph
//! with its batch symbol and builds a plan for each size it is asked for: batch 1 at load (every
//! model serves single samples), other sizes on first use, kept for the next. A plan per size
//! costs its own packed weights, so at most [`KEPT_SIZES`] sizes beyond 1 are kept; any other size
//! runs on the plan optimised for the symbolic batch, built once when first needed.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::prelude::{IntoRunnable, Symbol, TDim, TValue, TVec, TypedModel, TypedSimplePlan, TypedSimpleState};

use super::error::RunError;
use super::guard::contain;

/// Batch sizes above one with a plan of their own, besides the symbolic one: what a batcher
/// under steady load asks for (its maximum, and the remainder of a burst), bounded because each
/// plan holds its own copy of the packed weights.
pub(super) const KEPT_SIZES: usize = 2;

/// One optimised plan and the state that runs it.
pub(super) struct Runner {
    pub(super) plan: Arc<TypedSimplePlan>,
    state: TypedSimpleState,
    /// The plan holds operators with state of their own (`Scan`, `Loop`, and the recurrent
    /// layers tract builds from them), which tract carries from one run to the next, as for
    /// streaming. A request is not the continuation of the one before (skl2onnx's k-NN computes
    /// its distances in a Scan whose state is the query: the second request got the first one's
    /// answer), so these plans get a fresh state for every run; stateless plans keep theirs.
    fresh_state_per_run: bool,
}

impl Runner {
    /// Plans an optimised model and allocates its state.
    pub(super) fn new(mut optimised: TypedModel) -> tract_onnx::prelude::TractResult<Runner> {
        let replaced = crate::int8::dequantize::replace(&mut optimised)?;
        if replaced > 0 {
            log::debug!("{replaced} DequantizeLinear node(s) run in NEON");
        }
        let plan = optimised.into_runnable()?;
        let state = plan.spawn()?;
        let fresh_state_per_run = state.op_states.iter().any(Option::is_some);
        Ok(Runner { plan, state, fresh_state_per_run })
    }

    /// Whether each run starts from a fresh state (see the field).
    pub(super) fn fresh_state_per_run(&self) -> bool {
        self.fresh_state_per_run
    }

    /// The reusable state, for the profiler.
    pub(super) fn state_mut(&mut self) -> &mut TypedSimpleState {
        &mut self.state
    }

    /// Starts over from a fresh state (after a contained panic left this one half-updated).
    pub(super) fn reset(&mut self) {
        if let Ok(fresh) = self.plan.spawn() {
            self.state = fresh;
        }
    }

    /// Evaluates the plan with panics contained; after a panic the state is rebuilt.
    pub(super) fn eval(&mut self, values: TVec<TValue>) -> Result<TVec<TValue>, RunError> {
        if self.fresh_state_per_run {
            self.state = self.plan.spawn().map_err(|e| RunError::Engine(format!("{e:#}")))?;
        }
        match contain(|| self.state.run(values)) {
            Ok(result) => result.map_err(|e| RunError::Engine(format!("{e:#}"))),
            Err(message) => {
                log::error!("tract panicked during inference (contained, state rebuilt): {message}");
                self.reset();
                Err(RunError::Panicked(message))
            }
        }
    }
}

/// What a plan for another batch size is built from: the decluttered graph and its batch symbol.
pub(super) struct Template {
    model: TypedModel,
    batch: Symbol,
}

impl Template {
    /// The template for `model` if `symbol` names one of its symbols (the batch axis the
    /// signature found in the file's inputs).
    pub(super) fn new(model: TypedModel, symbol: &str) -> Option<Template> {
        let batch = model.symbols.get(symbol)?;
        Some(Template { model, batch })
    }

    /// The graph with its batch fixed to `n`, decluttered again (shapes that were expressions of
    /// the batch are now numbers, which lets tract fold them) and optimised.
    pub(super) fn specialise(&self, n: usize) -> tract_onnx::prelude::TractResult<TypedModel> {
        let subs = HashMap::from([(self.batch.clone(), TDim::Val(n as i64))]);
        let mut model = self.model.set_symbols(&subs)?;
        model.declutter()?;
        model.optimize()?;
        Ok(model)
    }

    /// The graph optimised for any batch size.
    fn general(&self) -> tract_onnx::prelude::TractResult<TypedModel> {
        let mut model = self.model.clone();
        model.optimize()?;
        Ok(model)
    }
}

/// The plans of one model: the one that serves single samples, and those for other batch sizes.
pub(super) struct Plans {
    /// Batch 1 for a model with a symbolic batch axis; otherwise the model's only plan.
    one: Runner,
    /// `None` when `one` serves every size (no symbolic batch, or specialising failed at load).
    template: Option<Template>,
    /// Plans for batch sizes above one, in the order they were built.
    sized: Vec<(usize, Runner)>,
    /// The plan for the symbolic batch: sizes without a plan of their own.
    general: Option<Runner>,
}

impl Plans {
    /// Plans that run every batch size on `one`.
    pub(super) fn single(one: Runner) -> Plans {
        Plans { one, template: None, sized: Vec::new(), general: None }
    }

    /// Plans with `one` for batch 1 and `template` to build the others from.
    pub(super) fn specialised(one: Runner, template: Template) -> Plans {
        Plans { one, template: Some(template), sized: Vec::new(), general: None }
    }

    /// The plan single samples run on.
    pub(super) fn one(&mut self) -> &mut Runner {
        &mut self.one
    }

    /// The plan for a batch of `n`: built on first use (its optimisation time is paid by that
    /// call, once), a plan of its own while fewer than [`KEPT_SIZES`] sizes have one, else the
    /// symbolic plan. An error only if no plan can be built for `n` at all.
    pub(super) fn for_batch(&mut self, n: usize) -> Result<&mut Runner, RunError> {
        let Some(template) = &self.template else { return Ok(&mut self.one) };
        if n == 1 {
            return Ok(&mut self.one);
        }
        if let Some(at) = self.sized.iter().position(|(size, _)| *size == n) {
            return Ok(&mut self.sized[at].1);
        }
        if self.sized.len() < KEPT_SIZES {
            match build(|| template.specialise(n)) {
                Ok(runner) => {
                    log::info!("plan for batches of {n} built");
                    self.sized.push((n, runner));
                    let last = self.sized.len() - 1;
                    return Ok(&mut self.sized[last].1);
                }
                Err(e) => log::warn!("no plan of its own for batches of {n} ({e}); using the symbolic one"),
            }
        }
        if self.general.is_none() {
            let runner = build(|| template.general())?;
            log::info!("plan for any batch size built (sizes beyond the {KEPT_SIZES} kept)");
            self.general = Some(runner);
        }
        self.general.as_mut().ok_or_else(|| RunError::Engine("no plan for this batch size".into()))
    }

    /// Batch sizes above one that have a plan of their own, in the order they were built.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> Vec<usize> {
        self.sized.iter().map(|(n, _)| *n).collect()
    }

    /// Whether the plan for the symbolic batch has been built.
    #[cfg(test)]
    pub(super) fn has_general(&self) -> bool {
        self.general.is_some()
    }
}

/// Optimises and plans with panics contained, as load does.
fn build(model: impl FnOnce() -> tract_onnx::prelude::TractResult<TypedModel>) -> Result<Runner, RunError> {
    match contain(|| model().and_then(Runner::new)) {
        Ok(result) => result.map_err(|e| RunError::Engine(format!("planning: {e:#}"))),
        Err(message) => Err(RunError::Panicked(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Model;
    use crate::tensor::{Tensor, TensorData};

    fn mlp() -> Model {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mlp.onnx");
        Model::load(&path).expect("the committed MLP ([N, 64] in)")
    }

    fn sample(seed: usize) -> Vec<Tensor> {
        let data = (0..64).map(|i| ((i * 7 + seed * 13) % 17) as f32 / 8.0 - 1.0).collect();
        vec![Tensor::new(vec![64], TensorData::F32(data)).expect("64 values")]
    }

    fn data(t: &Tensor) -> Vec<f32> {
        match t.data() {
            TensorData::F32(v) => v.clone(),
            other => panic!("float outputs expected, got {other:?}"),
        }
    }

    #[test]
    fn batch_one_runs_on_a_plan_with_no_symbols_left() {
        let mut model = mlp();
        let plan = &model.plans.one().plan;
        for node in plan.model().nodes() {
            for output in &node.outputs {
                assert!(output.fact.shape.is_concrete(), "node {} still has a symbolic shape: {:?}", node, output.fact);
            }
        }
    }

    #[test]
    fn each_batch_size_gets_the_same_answers_as_single_samples() {
        let mut model = mlp();
        let samples: Vec<Vec<Tensor>> = (0..7).map(sample).collect();
        let mut one = Vec::new();
        let singles: Vec<Vec<f32>> = samples
            .iter()
            .map(|s| {
                model.run_one(s, &mut one).expect("one sample");
                data(&one[0])
            })
            .collect();
        // 3 and 5 get plans of their own; 7 is beyond the kept sizes and runs symbolic.
        for n in [3, 5, 7, 3] {
            let outputs = model.run_samples(&samples[..n]).expect("a batch");
            for (got, want) in outputs.iter().zip(&singles) {
                let got = data(&got[0]);
                let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(diff <= 1e-5, "batch of {n} differs from single samples by {diff}");
            }
        }
        assert_eq!(model.plans.sizes(), vec![3, 5]);
        assert!(model.plans.has_general());
    }

    #[test]
    fn without_batch_plans_every_size_runs_on_the_symbolic_plan() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mlp.onnx");
        let options = super::super::LoadOptions { batch_plans: false, ..Default::default() };
        let mut model = Model::load_with(&path, options).expect("loads");
        assert!(
            !model
                .plans
                .one()
                .plan
                .model()
                .nodes()
                .iter()
                .all(|n| n.outputs.iter().all(|o| o.fact.shape.is_concrete()))
        );
        let samples: Vec<Vec<Tensor>> = (0..3).map(sample).collect();
        model.run_samples(&samples).expect("a batch");
        assert!(model.plans.sizes().is_empty() && !model.plans.has_general());
    }

    #[test]
    fn a_full_tensor_run_picks_the_plan_for_its_batch() {
        let mut model = mlp();
        let values: Vec<f32> = (0..4).flat_map(|s| data(&sample(s)[0])).collect();
        let batch = Tensor::new(vec![4, 64], TensorData::F32(values)).expect("4 x 64");
        let outputs = model.run(&[batch]).expect("runs");
        assert_eq!(outputs[0].shape()[0], 4);
        assert_eq!(model.plans.sizes(), vec![4]);
    }
}
