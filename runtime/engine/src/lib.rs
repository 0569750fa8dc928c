//! Drover's inference engine: ONNX models through tract, behind Drover's own types.
//!
//! Its own crate because it is the one layer that uses tract, and the one whose speed the
//! boards feel: the workspace builds it optimised even in the test profile (the zoo and parity
//! tests run it under qemu), while the agent's I/O layers stay quick to compile.
//!
//! Loading is a pipeline of named stages (read → operator check → parse → type → optimise →
//! plan), each failing with its own error and each timed. tract is contained here: the rest of
//! the agent sees [`Model`], [`Signature`] and [`tensor::Tensor`] only. Beside the engine live
//! the types every caller feeds it with: tensors ([`tensor`]), sample files ([`samples`]) and
//! the reference statistics computed through it ([`reference`]).

mod barrier;
mod branch;
mod error;
mod guard;
mod int8;
mod ml;
mod model;
mod nms;
pub mod opcheck;
mod plans;
mod profile;
pub mod proto;
pub mod qdq;
mod recurrent;
pub mod reference;
pub mod samples;
mod signature;
mod slice_bounds;
mod stage;
pub mod tensor;
pub mod zipmap;

pub use error::{LoadError, RunError};
pub use int8::Int8Kernels;
pub use model::{LoadOptions, Model, external_data_of};
pub use profile::{NodeTime, Profile};
pub use qdq::QdqRewrites;
pub use signature::{BatchAxis, Signature, describe_shape};
pub use stage::{LoadTimings, Stage};
pub use tensor::{Tensor, TensorData};
pub use zipmap::ClassLabels;

/// tract-onnx with every operator Drover adds: tract's own, the fused int8 layers of the QDQ
/// rewrite, the `ai.onnx.ml` operators of scikit-learn/XGBoost/LightGBM models, and an `If`
/// whose branches may give outputs of different shapes ([`branch`]), and a `NonMaxSuppression`
/// that follows onnxruntime's kernel at a fraction of tract's cost ([`nms`]), and the identity
/// loading puts in front of recurrent layers when tract's optimiser fails on them ([`barrier`]).
///
/// The one place the operator set is decided: the operator check ([`opcheck::unsupported_ops`]),
/// loading and `inspect` all use it, so what the check accepts is what loading can parse.
pub(crate) fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    int8::register(&mut onnx.op_register);
    ml::register(&mut onnx.op_register);
    onnx.op_register.insert("If", branch::build);
    onnx.op_register.insert("NonMaxSuppression", nms::build);
    onnx.op_register.insert(barrier::OP_TYPE, barrier::build);
    onnx
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    fn model_bytes(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(name);
        std::fs::read(path).expect("committed reference model")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A corrupted model file (a flipped byte anywhere) loads or fails with an error; the
        /// process survives either way.
        #[test]
        fn corrupted_model_loads_or_errors(which in 0usize..2, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = model_bytes(["iris_logreg.onnx", "dtypes.onnx"][which]);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = Model::from_bytes(&bytes);
        }

        /// Protobuf has no end marker: a cut at a field boundary can still decode (bundles carry
        /// a size and hash for that). What must hold is that no cut brings the process down.
        #[test]
        fn truncated_model_loads_or_errors(cut in any::<prop::sample::Index>()) {
            let bytes = model_bytes("iris_logreg.onnx");
            let cut = cut.index(bytes.len());
            let _ = Model::from_bytes(&bytes[..cut]);
        }
    }
}
