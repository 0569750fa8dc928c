//! A barrier in front of recurrent layers, for the graphs tract's optimiser breaks on.
//!
//! An LSTM autoencoder (the usual PyTorch one: encode, repeat the last hidden state over the
//! sequence with `Tile`/`expand`, decode) fails tract 0.23.9's declutter pass: it sees that the
//! decoder's input is uniform along the time axis, pulls the input projection `Xt·Wᵀ` out of the
//! scan, and then substitutes the one-step result for the whole sequence (`Trying to substitute
//! a batch,128,32 by batch,128,1`). The model then had to run unoptimised, ~180× slower than
//! onnxruntime. A barrier is an identity that tells tract nothing about its input beyond type
//! and shape: in front of each recurrent node's sequence input, it stops that reasoning, and the
//! rest of the graph is optimised as usual. Loading inserts barriers only after an optimisation
//! has failed on a graph with recurrent nodes ([`guard_recurrent_inputs`]).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{ModelProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

/// The operator type the inserted nodes carry; registered with tract-onnx by [`super::onnx`].
pub(crate) const OP_TYPE: &str = "DroverBarrier";

/// Inserts a barrier in front of the sequence input (X) of every `LSTM`, `GRU` and `RNN` node of
/// the main graph; returns how many.
pub(crate) fn guard_recurrent_inputs(model: &mut ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else { return 0 };
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut inserted = 0;
    for mut node in std::mem::take(&mut graph.node) {
        let recurrent = matches!(node.op_type.as_str(), "LSTM" | "GRU" | "RNN") && node.domain.is_empty();
        if let Some(x) = node.input.first_mut().filter(|x| recurrent && !x.is_empty()) {
            let guarded = format!("{x}.drover_barrier_{inserted}");
            nodes.push(NodeProto {
                name: format!("{}.barrier", node.name),
                op_type: OP_TYPE.into(),
                input: vec![x.clone()],
                output: vec![guarded.clone()],
                ..Default::default()
            });
            *x = guarded;
            inserted += 1;
        }
        nodes.push(node);
    }
    graph.node = nodes;
    inserted
}

/// tract-onnx's builder for [`OP_TYPE`].
pub(crate) fn build(_ctx: &ParsingContext, _node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(Barrier), vec![]))
}

/// The identity tract cannot see through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Barrier;

impl Expansion for Barrier {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for Barrier {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    op_as_typed_op!();
}

impl EvalOp for Barrier {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(inputs)
    }
}

impl TypedOp for Barrier {
    as_op!();

    /// Type and shape only: no constant value, no uniformity, nothing to reason from.
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::GraphProto;

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            name: output.into(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    #[test]
    fn only_recurrent_sequence_inputs_are_guarded() {
        let graph = GraphProto {
            node: vec![
                node("Tile", &["z", "reps"], "seq"),
                node("LSTM", &["seq", "W", "R", "B"], "y"),
                node("MatMul", &["y", "M"], "out"),
                node("GRU", &["", "W2", "R2"], "g"),
            ],
            ..Default::default()
        };
        let mut model = ModelProto { graph: Some(graph), ..Default::default() };
        assert_eq!(guard_recurrent_inputs(&mut model), 1);
        let nodes = &model.graph.as_ref().expect("graph").node;
        let ops: Vec<&str> = nodes.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Tile", OP_TYPE, "LSTM", "MatMul", "GRU"]);
        assert_eq!(nodes[1].input, ["seq"]);
        assert_eq!(nodes[2].input[0], nodes[1].output[0]);
        assert_eq!(&nodes[2].input[1..], ["W", "R", "B"]);
    }

    #[test]
    fn a_barrier_passes_its_input_and_hides_its_value() -> TractResult<()> {
        let x = tensor1(&[1f32, 2., 3.]);
        let out = Barrier.eval(&EvalContext::out_of_plan(), tvec!(x.clone().into_tvalue()))?;
        assert_eq!(*out[0], x);
        let known = TypedFact::try_from(x.into_arc_tensor())?;
        let fact = Barrier.output_facts(&[&known])?.remove(0);
        assert!(fact.konst.is_none());
        assert_eq!(fact.shape, known.shape);
        Ok(())
    }
}
