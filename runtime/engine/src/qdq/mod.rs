//! Load-time rewrite of QDQ-quantized ONNX graphs into forms tract 0.23 runs fast.
//!
//! onnxruntime's QDQ format wraps float operators in QuantizeLinear/DequantizeLinear pairs.
//! tract keeps those operators in fp32 and runs every Q and DQ as a separate, scalar operator,
//! which made int8 models ~1.4–2.2× *slower* than their fp32 originals (profile in
//! `docs/int8.md`). This pass works on the ONNX protobuf before tract parses it, with standard
//! operators only, and changes no result:
//!
//! 1. [`movement`]: `DQ → MaxPool/Flatten/… → Q` with equal parameters runs the middle operator
//!    on the integers.
//! 2. [`fuse`]: `DQ → Conv/Gemm/MatMul → Q` (and an MLP's bias after the requantization) becomes
//!    one integer layer Drover runs itself ([`crate::int8`]).
//! 3. [`chain`]: each remaining per-tensor QuantizeLinear becomes branch-free arithmetic tract
//!    vectorises and fuses into the producing matmul; a Q→DQ pair becomes one fp32 chain.
//!
//! Anything not in the exact expected form (per-axis or computed parameters, padded pools,
//! subgraphs) is left as it was.

mod chain;
mod constant;
pub mod dynamic_lstm;
mod fuse;
mod graph;
mod movement;
mod params;
pub mod qop_ms;
#[cfg(test)]
mod test_graph;

use serde::Serialize;
use tract_onnx::pb::ModelProto;

use crate::Int8Kernels;

/// What the QDQ rewrite changed in one model, for logs and `inspect`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QdqRewrites {
    /// Operators (MaxPool, Flatten…) now run on int8 instead of between a DQ and a Q.
    pub integer_ops: usize,
    /// Quantize→dequantize pairs now one vectorised fp32 chain.
    pub fake_quant_chains: usize,
    /// QuantizeLinear nodes now vectorised arithmetic and a Cast.
    pub quantize_chains: usize,
    /// Conv/Gemm/MatMul layers now one integer operator each.
    pub int8_layers: usize,
}

impl QdqRewrites {
    /// Whether the model was changed at all.
    pub fn any(&self) -> bool {
        self.integer_ops + self.fake_quant_chains + self.quantize_chains + self.int8_layers > 0
    }
}

/// Rewrites the main graph of `model` in place. Models without QuantizeLinear are untouched.
pub fn rewrite(model: &mut ModelProto) -> QdqRewrites {
    rewrite_for(model, Int8Kernels::Native)
}

/// [`rewrite`], with the integer layers on the given kernels.
pub fn rewrite_for(model: &mut ModelProto, kernels: Int8Kernels) -> QdqRewrites {
    let Some(graph) = model.graph.as_mut() else { return QdqRewrites::default() };
    if !graph.node.iter().any(|n| n.op_type == "QuantizeLinear" && n.domain.is_empty()) {
        return QdqRewrites::default();
    }
    let integer_ops = movement::run_on_integers(graph);
    let int8_layers = fuse::fuse_layers(graph, kernels);
    let chains = chain::rewrite_quantize(graph);
    let done = QdqRewrites {
        integer_ops,
        fake_quant_chains: chains.fake_quant,
        quantize_chains: chains.quantize,
        int8_layers,
    };
    log::debug!("qdq rewrite: {done:?}");
    done
}

#[cfg(test)]
mod tests {
    use super::params::{FLOAT, INT8};
    use super::test_graph::*;
    use super::*;
    use crate::Model;
    use crate::model::LoadOptions;
    use crate::tensor::{Tensor, TensorData};

    /// Values around every rounding tie of scale 0.5, both clamps, zero and beyond the range.
    fn edge_values() -> Vec<f32> {
        let mut v: Vec<f32> = (-300..300).map(|i| i as f32 * 0.25).collect();
        v.extend([-1e6, 1e6, -0.0, 63.75, 63.5, -64.25, 0.125, -0.125, 1.0e-30]);
        v
    }

    fn run(proto: &tract_onnx::pb::ModelProto, rewrite: bool, x: &[f32]) -> (Tensor, QdqRewrites) {
        let mut model =
            Model::from_proto_for_test(proto, LoadOptions { qdq_rewrite: rewrite, ..LoadOptions::default() })
                .expect("loads");
        let input = Tensor::new(vec![x.len()], TensorData::F32(x.to_vec())).expect("tensor");
        let mut out = model.run(&[input]).expect("runs");
        (out.remove(0), model.qdq_rewrites())
    }

    #[test]
    fn fake_quant_chain_gives_tracts_own_q_dq_results_exactly() {
        let x = edge_values();
        for s in ["s1", "s2"] {
            let proto = model(graph(vec![q("x", "xq", s), dq("xq", "y", s)]), x.len() as i64, FLOAT, FLOAT);
            let (before, none) = run(&proto, false, &x);
            let (after, done) = run(&proto, true, &x);
            assert!(!none.any());
            assert_eq!(done.fake_quant_chains, 1);
            assert_eq!(before, after, "scale {s}");
        }
    }

    #[test]
    fn int8_maxpool_and_quantize_chain_give_the_same_integers() {
        let x = edge_values();
        let proto = model(
            graph(vec![q("x", "xq", "s2"), dq("xq", "xd", "s2"), node("Identity", &["xd"], &["p"]), q("p", "y", "s2")]),
            x.len() as i64,
            FLOAT,
            INT8,
        );
        let (before, _) = run(&proto, false, &x);
        let (after, done) = run(&proto, true, &x);
        assert_eq!(done, QdqRewrites { integer_ops: 1, fake_quant_chains: 0, quantize_chains: 1, int8_layers: 0 });
        assert_eq!(before, after);
    }

    /// Far out of range, tract's own QuantizeLinear overflows (`round(x/s) as i32 + z` wraps for
    /// 1e9 / 0.25 + 3); the chain saturates as the ONNX spec says.
    #[test]
    fn huge_values_saturate() {
        let x = [1e9f32, -1e9, 3e38, -3e38];
        let proto = model(graph(vec![q("x", "y", "s2")]), x.len() as i64, FLOAT, INT8);
        let (after, done) = run(&proto, true, &x);
        assert_eq!(done.quantize_chains, 1);
        assert_eq!(after, Tensor::new(vec![4], TensorData::I8(vec![127, -128, 127, -128])).expect("tensor"));
    }

    #[test]
    fn models_without_quantize_are_untouched() {
        let mut proto = model(graph(vec![node("Relu", &["x"], &["y"])]), 4, FLOAT, FLOAT);
        let copy = proto.clone();
        assert!(!rewrite(&mut proto).any());
        assert_eq!(proto, copy);
    }
}
