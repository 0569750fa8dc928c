//! Slices whose end lies past an axis whose length is known only at run time, bounded as ONNX
//! says: by that length.
//!
//! ONNX `Slice` clamps its bounds to the axis (`x[:300]` of 137 values is those 137). tract
//! 0.23 clamps them only where the axis length is a number: on an axis of run-time length (the
//! detections a NonMaxSuppression kept) it types `x[:300]` as 300 long, and the run then fails
//! (`Invalid range 0..300 for slicing`) whenever fewer remain. torchvision's detectors end so
//! (`keep[:detections_per_img]`), so any image with fewer detections than the cap failed.
//!
//! After typing, each such slice gets `min(bound, length)` as its bound; the graph is wired
//! again so every shape after it follows. Slices whose axis length is a number are left as they
//! are (tract clamped those already).

use std::collections::HashMap;

use tract_onnx::prelude::{SpecialOps, TDim, TVec, TractResult, TypedFact, TypedModel, TypedNode, TypedOp, tvec};
use tract_onnx::tract_core::model::OutletId;
use tract_onnx::tract_core::model::translator::Translate;
use tract_onnx::tract_core::ops::array::Slice;

/// The slice an operator fed `inputs` in `model` should be: its bounds clamped to an axis of
/// run-time length, or `None` when it needs nothing (or is no slice).
fn clamped(model: &TypedModel, op: &dyn TypedOp, inputs: &[OutletId]) -> TractResult<Option<Slice>> {
    let Some(slice) = op.as_op().downcast_ref::<Slice>() else { return Ok(None) };
    let Some(input) = inputs.first() else { return Ok(None) };
    let Some(length) = model.outlet_fact(*input)?.shape.get(slice.axis).cloned() else { return Ok(None) };
    if length.to_i64().is_ok() {
        return Ok(None);
    }
    // Bounds given as numbers past zero are clamped; expressions of the length already are.
    let bound = |b: &TDim| match b.to_i64() {
        Ok(n) if n > 0 => Some(TDim::Min(vec![b.clone(), length.clone()]).simplify()),
        _ => None,
    };
    let (start, end) = (bound(&slice.start), bound(&slice.end));
    if start.is_none() && end.is_none() {
        return Ok(None);
    }
    Ok(Some(Slice {
        axis: slice.axis,
        start: start.unwrap_or_else(|| slice.start.clone()),
        end: end.unwrap_or_else(|| slice.end.clone()),
    }))
}

/// Rewires `model` with every slice [`clamped`] needs bounded; returns how many it bounded
/// (the model is returned as is when none).
pub(crate) fn bound_slices(model: TypedModel) -> TractResult<(TypedModel, usize)> {
    let mut count = 0;
    for node in model.nodes() {
        if clamped(&model, node.op.as_ref(), &node.inputs)?.is_some() {
            count += 1;
        }
    }
    if count == 0 {
        return Ok((model, 0));
    }
    Ok((Bounder.translate_model(&model)?, count))
}

/// Copies every node, facts computed again, with slices bounded on the way.
#[derive(Debug)]
struct Bounder;

impl Translate<TypedFact, Box<dyn TypedOp>, TypedFact, Box<dyn TypedOp>> for Bounder {
    fn translate_node(
        &self,
        _source: &TypedModel,
        node: &TypedNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        if TypedModel::is_source(&node.op) {
            return Ok(tvec!(target.add_source(&node.name, node.outputs[0].fact.clone())?));
        }
        let inputs: TVec<OutletId> = node.inputs.iter().map(|o| mapping[o]).collect();
        // Facts are those of the graph being built, so a bound set upstream reaches here.
        match clamped(target, node.op.as_ref(), &inputs)? {
            Some(slice) => target.wire_node(&node.name, slice, &inputs),
            None => target.wire_node(&node.name, node.op.clone(), &inputs),
        }
    }
}
