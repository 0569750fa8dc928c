//! ONNX model protobuf facts (`engine::proto`): what Drover reads from a model file before
//! tract builds a graph (operators and the ones tract lacks or would run wrongly, quantisation style, parameter bytes, declared inputs and
//! outputs). The bytes are decoded with tract's own prost types, as `Model::load` does, then
//! every fact is computed. Never panics. Full `Model::from_bytes` (tract's typing and
//! optimisation) is out of scope here: far slower per input, and already contained by
//! `engine/guard.rs`.
#![no_main]

use drover_runtime::engine::{opcheck, proto};
use libfuzzer_sys::fuzz_target;
use tract_onnx::prelude::Framework;

fuzz_target!(|data: &[u8]| {
    let onnx = tract_onnx::onnx();
    let mut reader = data;
    let Ok(model) = onnx.proto_model_for_read(&mut reader) else { return };
    let missing = opcheck::unsupported_ops(&model, &onnx.op_register);
    let _ = (opcheck::hint(&missing), opcheck::describe(&missing));
    let _ = opcheck::describe_attributes(&opcheck::unsupported_attributes(&model));
    let nodes = proto::all_nodes(&model);
    let histogram = proto::op_histogram(&model);
    assert_eq!(histogram.values().sum::<usize>(), nodes.len(), "every node is counted once");
    for node in &nodes {
        let _ = proto::domain_of(node);
    }
    let _ = proto::quant_style(&model).label();
    let _ = proto::parameter_bytes(&model);
    let _ = proto::declared_io(&model);
});
