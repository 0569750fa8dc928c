//! Drover's own integer layers, run inside tract: a quantized Conv, Gemm or MatMul and what the
//! QDQ graph does to its result, as one operator on int8 tensors.
//!
//! tract 0.23 runs a QDQ model's matmuls in fp32 and its int8 matmuls no faster than fp32 at the
//! sizes edge models have (`docs/int8.md`), so an int8 model could not beat its fp32 original.
//! The QDQ pass ([`super::qdq`]) replaces each `DQ → Conv/Gemm/MatMul → Q` it can prove exact
//! with one [`OP_TYPE`] node in [`DOMAIN`]; this module parses that node, packs the weights
//! once, and runs the sums in exact i32 arithmetic ([`kernel`]) followed by the graph's own
//! float steps ([`epilogue`]).
//!
//! Files never contain these nodes: the operator check refuses the domain, so only the pass can
//! create them.

pub(crate) mod dequantize;
pub(crate) mod epilogue;
// tract-linalg's kernels are an unsafe API; this module is the only `unsafe` in the engine.
#[allow(unsafe_code)]
pub(crate) mod gemm;
pub(crate) mod kernel;
pub(crate) mod lanes;
pub(crate) mod op;
pub(crate) mod pool;

pub use op::Int8Kernels;
pub(crate) use op::{FusedSpec, Layer, OP_TYPE};

/// The private operator domain of the fused nodes.
pub(crate) const DOMAIN: &str = "ai.drover.internal";

/// Lets `register`'s tract-onnx parse the fused nodes.
pub(crate) fn register(register: &mut tract_onnx::model::OnnxOpRegister) {
    register.insert(OP_TYPE, op::build);
}
