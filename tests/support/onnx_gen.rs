//! ONNX models of any size for transfer tests, written with the ONNX protobuf schema (tract's
//! generated `onnx.proto` types): `y = x · W` with `x: float32[N, 64]` and a deterministic
//! `W: float32[64, K]`. Big models cannot be committed to the repository; this makes them.

use std::path::Path;

use prost::Message;
use tract_onnx::pb;

/// Input width of the generated models.
pub const INPUTS: usize = 64;

/// Writes a model whose weights take about `weight_bytes` bytes to `path`.
pub fn write_matmul_model(path: &Path, weight_bytes: usize) {
    let k = (weight_bytes / (INPUTS * 4)).max(1);
    let weights: Vec<f32> =
        (0..INPUTS * k).map(|i| ((i.wrapping_mul(2_654_435_761) % 2001) as f32 - 1000.0) / 1e4).collect();
    let value_info = |name: &str, dims: Vec<pb::tensor_shape_proto::Dimension>| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
        }),
        doc_string: String::new(),
    };
    let dim_param = |p: &str| pb::tensor_shape_proto::Dimension {
        denotation: String::new(),
        value: Some(pb::tensor_shape_proto::dimension::Value::DimParam(p.into())),
    };
    let dim = |v: usize| pb::tensor_shape_proto::Dimension {
        denotation: String::new(),
        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(v as i64)),
    };
    let w = pb::TensorProto {
        dims: vec![INPUTS as i64, k as i64],
        data_type: pb::tensor_proto::DataType::Float as i32,
        name: "W".into(),
        raw_data: weights.iter().flat_map(|f| f.to_le_bytes()).collect(),
        ..Default::default()
    };
    let node = pb::NodeProto {
        input: vec!["x".into(), "W".into()],
        output: vec!["y".into()],
        name: "matmul".into(),
        op_type: "MatMul".into(),
        ..Default::default()
    };
    let graph = pb::GraphProto {
        node: vec![node],
        name: "big".into(),
        initializer: vec![w],
        input: vec![value_info("x", vec![dim_param("N"), dim(INPUTS)])],
        output: vec![value_info("y", vec![dim_param("N"), dim(k)])],
        ..Default::default()
    };
    write_graph(path, graph);
}

/// Writes `n` samples for the generated models (JSON Lines, one `[f32; 64]` per line).
pub fn write_samples(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|s| {
            let v: Vec<String> = (0..INPUTS).map(|i| format!("{:.3}", ((s * 31 + i * 7) % 17) as f32 / 17.0)).collect();
            format!("[{}]", v.join(", "))
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write samples");
}

/// Writes `y = 12 / x` over int64 `x: [N, 1]`: a model that loads and types, and fails only when
/// a run divides by zero (what a trial run on a zero sample must catch before devices do).
pub fn write_divide_by_input_model(path: &Path) {
    let int64 = pb::tensor_proto::DataType::Int64 as i32;
    let value_info = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: int64,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimParam("N".into())),
                        },
                        pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(1)),
                        },
                    ],
                }),
            })),
        }),
        doc_string: String::new(),
    };
    let twelve = pb::TensorProto {
        dims: vec![1],
        data_type: int64,
        name: "twelve".into(),
        int64_data: vec![12],
        ..Default::default()
    };
    let node = pb::NodeProto {
        input: vec!["twelve".into(), "x".into()],
        output: vec!["y".into()],
        name: "divide".into(),
        op_type: "Div".into(),
        ..Default::default()
    };
    let graph = pb::GraphProto {
        node: vec![node],
        name: "divide_by_input".into(),
        initializer: vec![twelve],
        input: vec![value_info("x")],
        output: vec![value_info("y")],
        ..Default::default()
    };
    write_graph(path, graph);
}

/// Writes `graph` as an opset-17 model.
fn write_graph(path: &Path, graph: pb::GraphProto) {
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "drover-tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).expect("write the model");
}
