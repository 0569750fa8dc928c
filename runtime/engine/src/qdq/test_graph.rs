//! Hand-built ONNX graphs for the rewrites' unit tests.

use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};

use super::params::{INT8, f32_scalar};

pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("{op}_{}", outputs.first().copied().unwrap_or("")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Q with scale `s` and the zero point `{s}_zp`.
pub fn q(x: &str, y: &str, s: &str) -> NodeProto {
    node("QuantizeLinear", &[x, s, &format!("{s}_zp")], &[y])
}

pub fn dq(x: &str, y: &str, s: &str) -> NodeProto {
    node("DequantizeLinear", &[x, s, &format!("{s}_zp")], &[y])
}

pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: v.to_vec(), r#type: 7, ..Default::default() }
}

/// A graph over `nodes` with input `x`, output `y`, and the parameters `s1` (0.5, zp -128) and
/// `s2` (0.25, zp 3).
pub fn graph(nodes: Vec<NodeProto>) -> GraphProto {
    let zp = |name: &str, v: i32| TensorProto {
        name: name.into(),
        data_type: INT8,
        int32_data: vec![v],
        ..Default::default()
    };
    GraphProto {
        node: nodes,
        initializer: vec![
            f32_scalar("s1".into(), 0.5),
            zp("s1_zp", -128),
            f32_scalar("s2".into(), 0.25),
            zp("s2_zp", 3),
        ],
        input: vec![fixed("x", 1, 4)],
        output: vec![ValueInfoProto { name: "y".into(), ..Default::default() }],
        ..Default::default()
    }
}

/// A value of ONNX element type `elem_type` and shape `[n]`.
pub fn fixed(name: &str, elem_type: i32, n: i64) -> ValueInfoProto {
    use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
    use tract_onnx::pb::{TensorShapeProto, TypeProto, type_proto};
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: vec![Dimension { value: Some(dimension::Value::DimValue(n)), ..Default::default() }],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn ops(g: &GraphProto) -> Vec<&str> {
    g.node.iter().map(|n| n.op_type.as_str()).collect()
}

/// A runnable model: `graph` with `x` and `y` typed as `[n]` tensors of the given ONNX types.
pub fn model(mut graph: GraphProto, n: i64, x_type: i32, y_type: i32) -> tract_onnx::pb::ModelProto {
    use tract_onnx::pb::OperatorSetIdProto;
    graph.input = vec![fixed("x", x_type, n)];
    graph.output = vec![fixed("y", y_type, n)];
    tract_onnx::pb::ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(graph),
        ..Default::default()
    }
}
