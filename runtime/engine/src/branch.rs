//! ONNX `If` whose branches give outputs of different shapes, as ONNX allows.
//!
//! torchvision's detectors end in `batched_nms`, which torch's TorchScript exporter writes as
//! `If(boxes.numel() == 0) then <an empty [0] tensor> else <NonMaxSuppression's kept indices, of
//! a length known only at run time>`. ONNX makes the If's output the union of the two shapes.
//! tract 0.23's `If` instead unifies both branches' output shapes with the node's whenever the
//! condition is not known at load time, and its typed `IfThenElse` requires both branches'
//! facts to be equal, so such a model could not load at all (`Unifying shapes 0 and x_179`).
//!
//! The operator here replaces tract's under the same name, parsed the same way. Where the
//! condition is known at load time it behaves as tract's: the taken branch is inlined. Where it
//! is not, the node's output facts are what both branches agree on (element type, rank, the
//! axes of equal size), and every axis where they differ gets a symbol of its own, bound at run
//! time from the tensor the taken branch gives (tract's plan binds such symbols as it goes, as
//! it does for NonZero's count). Nothing about either branch is assumed from the other.

use std::sync::{Arc, OnceLock};

use tract_onnx::model::{ParseResult, ParsingContext};
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

/// tract-onnx's builder for `If`: both branches parsed as subgraphs, the values they take from
/// the enclosing graph becoming the node's inputs after the condition.
pub(crate) fn build(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let graph_then = node.get_attr::<&GraphProto>("then_branch")?;
    let graph_else = node.get_attr::<&GraphProto>("else_branch")?;
    let ParseResult { model: then_body, unresolved_inputs: then_outer, .. } = ctx.parse_graph(graph_then)?;
    let ParseResult { model: else_body, unresolved_inputs: else_outer, .. } = ctx.parse_graph(graph_else)?;
    let mut outer: Vec<String> = then_outer.iter().chain(else_outer.iter()).cloned().collect();
    outer.sort();
    outer.dedup();
    // Input 0 is the condition: the outer values follow it.
    let position = |name: &String| outer.iter().position(|s| s == name).map(|p| p + 1);
    let then_input_mapping = then_outer.iter().filter_map(position).collect();
    let else_input_mapping = else_outer.iter().filter_map(position).collect();
    let op = If { node: node.name.clone(), then_body, then_input_mapping, else_body, else_input_mapping };
    Ok((Box::new(op), outer))
}

/// The operator at inference time: the two branches as inference models.
#[derive(Debug, Clone)]
struct If {
    /// The node's name, for messages.
    node: String,
    then_body: InferenceModel,
    /// For each input of `then_body`, the index of the node input that feeds it.
    then_input_mapping: Vec<usize>,
    else_body: InferenceModel,
    /// For each input of `else_body`, the index of the node input that feeds it.
    else_input_mapping: Vec<usize>,
}

/// Two graphs are not compared: no two `If` nodes are merged.
impl PartialEq for If {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}
impl Eq for If {}

impl Op for If {
    fn name(&self) -> StaticName {
        "If".into()
    }

    not_a_typed_op!();
}

impl EvalOp for If {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let cond = inputs[0].cast_to_scalar::<bool>()?;
        let (mapping, body) = if cond {
            (&self.then_input_mapping, &self.then_body)
        } else {
            (&self.else_input_mapping, &self.else_body)
        };
        let inputs = mapping.iter().map(|&ix| inputs[ix].clone()).collect();
        body.clone().into_runnable()?.run(inputs)
    }
}

/// What a branch output and the other branch's agree on: an axis is known where both know it
/// alike; the rank only where both ranks are known and equal.
fn common_shape(a: &ShapeFactoid, b: &ShapeFactoid) -> ShapeFactoid {
    if a.is_open() || b.is_open() || a.dims().count() != b.dims().count() {
        return ShapeFactoid::default();
    }
    let dims = a
        .dims()
        .zip(b.dims())
        .map(|(x, y)| match (x, y) {
            (GenericFactoid::Only(x), GenericFactoid::Only(y)) if x == y => GenericFactoid::Only(x.clone()),
            _ => GenericFactoid::Any,
        })
        .collect();
    ShapeFactoid::closed(dims)
}

impl InferenceOp for If {
    fn infer_facts(
        &mut self,
        inputs: TVec<&InferenceFact>,
        outputs: TVec<&InferenceFact>,
        observed: TVec<&InferenceFact>,
    ) -> TractResult<(TVec<InferenceFact>, TVec<InferenceFact>, TVec<InferenceFact>)> {
        let mut inputs: TVec<InferenceFact> = inputs.into_iter().cloned().collect();
        let mut outputs: TVec<InferenceFact> = outputs.into_iter().cloned().collect();
        let count = self.nboutputs()?;
        ensure!(outputs.len() == count, "If node '{}': {} outputs for branches of {count}", self.node, outputs.len());
        let inputs_needed =
            self.then_input_mapping.iter().chain(&self.else_input_mapping).copied().max().unwrap_or(0) + 1;
        ensure!(
            inputs.len() >= inputs_needed,
            "If node '{}': {} inputs, {inputs_needed} needed",
            self.node,
            inputs.len()
        );
        loop {
            let mut changed = inputs[0].datum_type.unify_with(&bool::datum_type().into())?;
            for (body_ix, &outer_ix) in self.then_input_mapping.iter().enumerate() {
                changed |= self.then_body.input_fact_mut(body_ix)?.unify_with_mut(&mut inputs[outer_ix])?;
            }
            for (body_ix, &outer_ix) in self.else_input_mapping.iter().enumerate() {
                changed |= self.else_body.input_fact_mut(body_ix)?.unify_with_mut(&mut inputs[outer_ix])?;
            }
            if let Some(cond) = inputs[0].value.concretize() {
                // Known now: the node is the taken branch (tract's behaviour).
                let body = if cond.cast_to_scalar::<bool>()? { &mut self.then_body } else { &mut self.else_body };
                for (ix, output) in outputs.iter_mut().enumerate() {
                    changed |= body.output_fact_mut(ix)?.unify_with_mut(output)?;
                }
            } else {
                for (ix, output) in outputs.iter_mut().enumerate() {
                    // ONNX requires one element type; shapes may differ, so the output takes
                    // what both agree on and gives the branches nothing back.
                    changed |= self.then_body.output_fact_mut(ix)?.datum_type.unify_with_mut(&mut output.datum_type)?;
                    changed |= self.else_body.output_fact_mut(ix)?.datum_type.unify_with_mut(&mut output.datum_type)?;
                    let common = common_shape(
                        &self.then_body.output_fact_mut(ix)?.shape,
                        &self.else_body.output_fact_mut(ix)?.shape,
                    );
                    changed |= output.shape.unify_with(&common)?;
                }
            }
            changed |= self.then_body.analyse(false)?;
            changed |= self.else_body.analyse(false)?;
            if !changed {
                return Ok((inputs, outputs, observed.into_iter().cloned().collect()));
            }
        }
    }

    fn nboutputs(&self) -> TractResult<usize> {
        let (then_outputs, else_outputs) = (self.then_body.outputs.len(), self.else_body.outputs.len());
        ensure!(
            then_outputs == else_outputs,
            "If node '{}': the then branch has {then_outputs} outputs, the else branch {else_outputs}",
            self.node
        );
        Ok(then_outputs)
    }

    fn to_typed(
        &self,
        _source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let inputs: TVec<OutletId> = node.inputs.iter().map(|o| mapping[o]).collect();
        let then_body = typed_body(&self.then_body, &self.then_input_mapping, &inputs, target)?;
        let else_body = typed_body(&self.else_body, &self.else_input_mapping, &inputs, target)?;
        if let Some(cond) = target.outlet_fact(inputs[0])?.konst.clone() {
            let (body, input_mapping) = if cond.cast_to_scalar::<bool>()? {
                (&then_body, &self.then_input_mapping)
            } else {
                (&else_body, &self.else_input_mapping)
            };
            return inline(target, &node.name, body, input_mapping, &inputs);
        }
        let mut facts = tvec!();
        for ix in 0..then_body.outputs.len() {
            let (a, b) = (then_body.output_fact(ix)?, else_body.output_fact(ix)?);
            ensure!(
                a.datum_type == b.datum_type && a.rank() == b.rank(),
                "If node '{}': output {ix} is {a:?} in the then branch and {b:?} in the else branch; \
                 the branches must agree on element type and rank",
                self.node
            );
            let shape: TVec<TDim> = a
                .shape
                .iter()
                .zip(b.shape.iter())
                .map(|(x, y)| if x == y { x.clone() } else { target.symbols.new_with_prefix("if").to_dim() })
                .collect();
            facts.push(a.datum_type.fact(&*shape));
        }
        let op = TypedIf {
            node: self.node.clone(),
            then_body: Arc::new(then_body),
            then_input_mapping: self.then_input_mapping.clone(),
            else_body: Arc::new(else_body),
            else_input_mapping: self.else_input_mapping.clone(),
            facts,
            plans: Default::default(),
        };
        target.wire_node(&node.name, op, &inputs)
    }

    as_op!();
}

/// A branch typed for the values it is given: its inputs take the enclosing graph's typed facts,
/// which know sizes inference could not (a concatenation of run-time lengths is their sum).
fn typed_body(
    body: &InferenceModel,
    input_mapping: &[usize],
    inputs: &[OutletId],
    target: &TypedModel,
) -> TractResult<TypedModel> {
    let mut body = body.clone();
    for (body_ix, &outer_ix) in input_mapping.iter().enumerate() {
        let outer = *inputs.get(outer_ix).context("If: branch input missing")?;
        *body.input_fact_mut(body_ix)? = InferenceFact::from(target.outlet_fact(outer)?);
    }
    body.into_typed()
}

/// Wires `body`'s nodes into `target`, fed from `inputs` as `input_mapping` says; returns the
/// outlets of the body's outputs. Node names are prefixed with the `If`'s.
fn inline(
    target: &mut TypedModel,
    prefix: &str,
    body: &TypedModel,
    input_mapping: &[usize],
    inputs: &[OutletId],
) -> TractResult<TVec<OutletId>> {
    let mut wires: HashMap<OutletId, OutletId> = HashMap::default();
    ensure!(body.inputs.len() == input_mapping.len(), "If node '{prefix}': branch inputs do not match");
    for (&outer, &inner) in input_mapping.iter().zip(body.input_outlets()?) {
        let wire = *inputs.get(outer).with_context(|| format!("If node '{prefix}': input {outer} missing"))?;
        wires.insert(inner, wire);
    }
    for id in body.eval_order()? {
        let node = body.node(id);
        if body.inputs.iter().any(|o| o.node == id) {
            continue;
        }
        let node_inputs: TVec<OutletId> = node
            .inputs
            .iter()
            .map(|o| wires.get(o).copied().with_context(|| format!("If node '{prefix}': unwired {o:?}")))
            .collect::<TractResult<_>>()?;
        let outs = target.wire_node(format!("{prefix}.{}", node.name), node.op.clone(), &node_inputs)?;
        for (slot, outlet) in outs.into_iter().enumerate() {
            wires.insert(OutletId::new(id, slot), outlet);
        }
    }
    body.outputs
        .iter()
        .map(|o| wires.get(o).copied().with_context(|| format!("If node '{prefix}': no output")))
        .collect()
}

/// The typed operator: the condition picks a branch at run time.
#[derive(Debug, Clone)]
struct TypedIf {
    node: String,
    then_body: Arc<TypedModel>,
    then_input_mapping: Vec<usize>,
    else_body: Arc<TypedModel>,
    else_input_mapping: Vec<usize>,
    /// The outputs' facts: what both branches agree on, a symbol of its own for any other axis.
    facts: TVec<TypedFact>,
    /// Each branch's plan (then, else), built on first use and shared by every clone.
    plans: Arc<[OnceLock<Arc<TypedSimplePlan>>; 2]>,
}

/// Two graphs are not compared: no two `If` nodes are merged.
impl PartialEq for TypedIf {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}
impl Eq for TypedIf {}

impl TypedIf {
    /// The plan of branch `which` (0 then, 1 else), built once.
    fn plan(&self, which: usize) -> TractResult<Arc<TypedSimplePlan>> {
        if let Some(plan) = self.plans[which].get() {
            return Ok(plan.clone());
        }
        let body = if which == 0 { &self.then_body } else { &self.else_body };
        let plan = body.clone().into_runnable()?;
        Ok(self.plans[which].get_or_init(|| plan).clone())
    }
}

impl Op for TypedIf {
    fn name(&self) -> StaticName {
        "If".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("outputs {:?}", self.facts)])
    }

    /// The axes where the branches differ are symbols only a run gives a value.
    fn mints_runtime_symbols(&self) -> bool {
        true
    }

    op_as_typed_op!();
}

impl EvalOp for TypedIf {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let cond = inputs[0].cast_to_scalar::<bool>()?;
        let (which, mapping) = if cond { (0, &self.then_input_mapping) } else { (1, &self.else_input_mapping) };
        let inputs = mapping.iter().map(|&ix| inputs[ix].clone()).collect();
        let outputs = self.plan(which)?.run(inputs)?;
        for (ix, (value, fact)) in outputs.iter().zip(&self.facts).enumerate() {
            ensure!(
                value.datum_type() == fact.datum_type && value.rank() == fact.rank(),
                "If node '{}': output {ix} is {value:?}, expected {fact:?}",
                self.node
            );
        }
        Ok(outputs)
    }
}

impl TypedOp for TypedIf {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(!inputs.is_empty() && inputs[0].datum_type == bool::datum_type());
        ensure!(inputs[0].shape.volume() == 1.to_dim(), "If node '{}': the condition is not one value", self.node);
        ensure!(self.then_body.inputs.len() == self.then_input_mapping.len());
        ensure!(self.else_body.inputs.len() == self.else_input_mapping.len());
        Ok(self.facts.clone())
    }

    fn declutter(&self, model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
        // A condition that became a constant since typing: the taken branch replaces the node,
        // where its outputs fit the facts the graph was typed with.
        let Some(cond) = &model.outlet_fact(node.inputs[0])?.konst else { return Ok(None) };
        let (body, input_mapping) = if cond.cast_to_scalar::<bool>()? {
            (&self.then_body, &self.then_input_mapping)
        } else {
            (&self.else_body, &self.else_input_mapping)
        };
        let mut patch = TypedModelPatch::default();
        let mut taps = tvec!();
        for input in &node.inputs {
            taps.push(patch.tap_model(model, *input)?);
        }
        let outputs = inline(&mut patch.model, &node.name, body, input_mapping, &taps)?;
        for (ix, outlet) in outputs.into_iter().enumerate() {
            if patch.model.outlet_fact(outlet)?.without_value() != self.facts[ix].without_value() {
                return Ok(None);
            }
            patch.shunt_outside(model, OutletId::new(node.id, ix), outlet)?;
        }
        Ok(Some(patch))
    }
}

#[cfg(test)]
mod tests {
    use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
    use tract_onnx::pb::{
        AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
        TypeProto, ValueInfoProto, type_proto,
    };

    use crate::Tensor;
    use crate::model::{LoadOptions, Model};
    use crate::tensor::TensorData;

    fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: format!("{op}_{output}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    }

    fn named(name: &str) -> ValueInfoProto {
        ValueInfoProto { name: name.into(), ..Default::default() }
    }

    /// `x`: float `[3]`.
    fn x3() -> ValueInfoProto {
        let dim = Dimension { value: Some(dimension::Value::DimValue(3)), ..Default::default() };
        let tensor = type_proto::Tensor { elem_type: 1, shape: Some(TensorShapeProto { dim: vec![dim] }) };
        ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
            ..Default::default()
        }
    }

    /// `If(cond) then x (from the enclosing graph) else an empty float [0]`: as torchvision's
    /// `batched_nms`, branches of different shapes.
    fn model(cond_nodes: Vec<NodeProto>, initializer: Vec<TensorProto>) -> ModelProto {
        let then_branch = GraphProto {
            node: vec![node("Identity", &["x"], "t", vec![])],
            output: vec![named("t")],
            ..Default::default()
        };
        let empty = TensorProto { dims: vec![0], data_type: 1, ..Default::default() };
        let value = AttributeProto { name: "value".into(), t: Some(empty), r#type: 4, ..Default::default() };
        let else_branch = GraphProto {
            node: vec![node("Constant", &[], "e", vec![value])],
            output: vec![named("e")],
            ..Default::default()
        };
        let graph_attr = |name: &str, g: GraphProto| AttributeProto {
            name: name.into(),
            g: Some(g),
            r#type: 5,
            ..Default::default()
        };
        let mut nodes = cond_nodes;
        nodes.push(node(
            "If",
            &["cond"],
            "y",
            vec![graph_attr("then_branch", then_branch), graph_attr("else_branch", else_branch)],
        ));
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(GraphProto {
                node: nodes,
                initializer,
                input: vec![x3()],
                output: vec![named("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn run(model: &mut Model, x: [f32; 3]) -> Tensor {
        let x = Tensor::new(vec![3], TensorData::F32(x.to_vec())).expect("tensor");
        model.run(&[x]).expect("runs").remove(0)
    }

    #[test]
    fn a_condition_known_only_at_run_time_takes_either_branch_whatever_its_shape() {
        // cond = max(x) > 0.
        let keepdims = AttributeProto { name: "keepdims".into(), i: 0, r#type: 2, ..Default::default() };
        let zero = TensorProto { name: "zero".into(), data_type: 1, float_data: vec![0.0], ..Default::default() };
        let proto = model(
            vec![node("ReduceMax", &["x"], "m", vec![keepdims]), node("Greater", &["m", "zero"], "cond", vec![])],
            vec![zero],
        );
        let mut model = Model::from_proto_for_test(&proto, LoadOptions::default()).expect("loads");
        let taken = run(&mut model, [1.0, -2.0, 3.0]);
        assert_eq!((taken.shape(), taken.data()), (&[3][..], &TensorData::F32(vec![1.0, -2.0, 3.0])));
        let empty = run(&mut model, [-1.0, -2.0, -3.0]);
        assert_eq!(empty.shape(), &[0]);
        // And back: the branches' plans are kept, not spent.
        assert_eq!(run(&mut model, [0.5, 0.0, 0.0]).shape(), &[3]);
    }

    #[test]
    fn a_condition_decided_by_static_shapes_leaves_only_the_taken_branch() {
        // cond = Size(x) == 3, true for the declared [3] input.
        let three = TensorProto { name: "three".into(), data_type: 7, int64_data: vec![3], ..Default::default() };
        let proto =
            model(vec![node("Size", &["x"], "n", vec![]), node("Equal", &["n", "three"], "cond", vec![])], vec![three]);
        let mut model = Model::from_proto_for_test(&proto, LoadOptions::default()).expect("loads");
        assert!(
            model.plans.one().plan.model().nodes().iter().all(|n| !n.op.name().contains("If")),
            "the If is folded into its then branch"
        );
        assert_eq!(model.signature().outputs[0].shape.len(), 1);
        assert_eq!(run(&mut model, [4.0, 5.0, 6.0]).data(), &TensorData::F32(vec![4.0, 5.0, 6.0]));
    }
}
