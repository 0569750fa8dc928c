//! What Drover reads from the ONNX protobuf itself, before tract sees the model.
//!
//! Users need answers even for a model tract cannot run (which operators are missing, what the
//! inputs are), so these facts come from the file, not from tract's typed graph.

use std::collections::BTreeMap;

use drover_wire::{DType, DimRef, TensorSpec};
use serde::Serialize;
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, tensor_shape_proto, type_proto};

use super::LoadError;

/// Every node of the model, including those inside subgraphs (`If`, `Loop`, `Scan` bodies).
pub fn all_nodes(model: &ModelProto) -> Vec<&NodeProto> {
    fn walk<'a>(graph: &'a GraphProto, out: &mut Vec<&'a NodeProto>) {
        for node in &graph.node {
            out.push(node);
            for attr in &node.attribute {
                if let Some(g) = &attr.g {
                    walk(g, out);
                }
                for g in &attr.graphs {
                    walk(g, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Some(g) = &model.graph {
        walk(g, &mut out);
    }
    out
}

/// The operator's domain as users write it (`ai.onnx` for the default, empty, domain).
pub fn domain_of(node: &NodeProto) -> &str {
    if node.domain.is_empty() { "ai.onnx" } else { &node.domain }
}

/// Count of each `domain::op` in the model, sorted by name.
pub fn op_histogram(model: &ModelProto) -> BTreeMap<String, usize> {
    let mut hist = BTreeMap::new();
    for node in all_nodes(model) {
        *hist.entry(format!("{}::{}", domain_of(node), node.op_type)).or_insert(0) += 1;
    }
    hist
}

/// How a model is quantized, which decides what speed and accuracy a user can expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantStyle {
    /// No quantization operator: plain floating point.
    Float,
    /// QuantizeLinear/DequantizeLinear pairs around float operators (onnxruntime's QDQ format).
    Qdq,
    /// Integer operators such as QLinearConv, QLinearMatMul, MatMulInteger (QOperator format).
    Qoperator,
    /// Weights quantized ahead of time, activations at run time (DynamicQuantizeLinear).
    Dynamic,
}

impl QuantStyle {
    /// The spelling used in onnxruntime's documentation.
    pub fn label(self) -> &'static str {
        match self {
            QuantStyle::Float => "fp32 (not quantized)",
            QuantStyle::Qdq => "int8 QDQ",
            QuantStyle::Qoperator => "int8 QOperator",
            QuantStyle::Dynamic => "int8 dynamic",
        }
    }
}

/// Classifies the model by the quantization operators it contains.
pub fn quant_style(model: &ModelProto) -> QuantStyle {
    let nodes = all_nodes(model);
    let has = |pred: &dyn Fn(&str) -> bool| nodes.iter().any(|n| pred(&n.op_type));
    if has(&|op| op.starts_with("QLinear") || matches!(op, "ConvInteger" | "MatMulInteger" | "QGemm" | "QAttention")) {
        QuantStyle::Qoperator
    } else if has(&|op| matches!(op, "DynamicQuantizeLinear" | "DynamicQuantizeMatMul" | "MatMulIntegerToFloat")) {
        QuantStyle::Dynamic
    } else if has(&|op| op == "QuantizeLinear") && has(&|op| op == "DequantizeLinear") {
        QuantStyle::Qdq
    } else {
        QuantStyle::Float
    }
}

/// Bytes of parameters: initializers plus tensors held by `Constant` nodes.
pub fn parameter_bytes(model: &ModelProto) -> u64 {
    // Saturating: the sizes are declared by the file, and a hostile one may declare tensors
    // whose sum overflows (a panic in debug builds, a wrong figure in release).
    let mut total = 0u64;
    if let Some(g) = &model.graph {
        total = g.initializer.iter().map(tensor_bytes).fold(total, u64::saturating_add);
    }
    for node in all_nodes(model) {
        if node.op_type == "Constant" {
            total =
                node.attribute.iter().filter_map(|a| a.t.as_ref()).map(tensor_bytes).fold(total, u64::saturating_add);
        }
    }
    total
}

fn tensor_bytes(t: &TensorProto) -> u64 {
    if !t.raw_data.is_empty() {
        return t.raw_data.len() as u64;
    }
    let elem: u64 = match t.data_type {
        2 | 3 | 9 => 1,        // uint8, int8, bool
        4 | 5 | 10 | 16 => 2,  // uint16, int16, float16, bfloat16
        1 | 6 | 12 => 4,       // float, int32, uint32
        7 | 11 | 13 | 14 => 8, // int64, double, uint64, complex64
        15 => 16,              // complex128
        _ => 0,                // strings and exotic types: no fixed size
    };
    let count = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?));
    elem.saturating_mul(count.unwrap_or(0))
}

/// ONNX element type names, for messages about types Drover does not carry.
pub fn onnx_type_name(code: i32) -> &'static str {
    match code {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        0 => "undefined",
        _ => "unknown",
    }
}

/// A declared graph input or output, before Drover decides whether it can carry its type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeclaredValue {
    /// Value name.
    pub name: String,
    /// ONNX element type name (`float32`, `int64`, `float16`…).
    pub dtype: String,
    /// Axes: a number, a symbol, or `?` where the file leaves the axis unnamed.
    pub shape: Vec<String>,
    /// Where Drover can carry the type and shape: the wire form.
    #[serde(skip)]
    pub spec: Option<TensorSpec>,
}

fn declared(v: &ValueInfoProto) -> DeclaredValue {
    let tensor = v.r#type.as_ref().and_then(|t| match &t.value {
        Some(type_proto::Value::TensorType(tt)) => Some(tt),
        _ => None,
    });
    let code = tensor.map(|t| t.elem_type).unwrap_or(0);
    let dims: Vec<Option<tensor_shape_proto::dimension::Value>> = tensor
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| d.value.clone()).collect())
        .unwrap_or_default();
    let shape = dims
        .iter()
        .map(|d| match d {
            Some(tensor_shape_proto::dimension::Value::DimValue(n)) => n.to_string(),
            Some(tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => p.clone(),
            _ => "?".to_string(),
        })
        .collect();
    let spec = DType::from_onnx(code).and_then(|dtype| {
        let refs = dims.iter().map(|d| match d {
            Some(tensor_shape_proto::dimension::Value::DimValue(n)) if *n >= 0 => DimRef::Fixed(*n as u64),
            Some(tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => DimRef::Symbolic(p),
            _ => DimRef::Symbolic("?"),
        });
        TensorSpec::new(&v.name, dtype, refs).ok()
    });
    DeclaredValue { name: v.name.clone(), dtype: onnx_type_name(code).to_string(), shape, spec }
}

/// The graph's real inputs (initializers listed as inputs by old exporters are left out) and
/// its outputs, as the file declares them.
pub fn declared_io(model: &ModelProto) -> Result<(Vec<DeclaredValue>, Vec<DeclaredValue>), LoadError> {
    let graph = model.graph.as_ref().ok_or(LoadError::NoGraph)?;
    let init: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph.input.iter().filter(|v| !init.contains(v.name.as_str())).map(declared).collect();
    let outputs = graph.output.iter().map(declared).collect();
    Ok((inputs, outputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::Framework;

    #[test]
    fn declared_parameter_sizes_that_overflow_saturate() {
        // Found writing the onnx_proto fuzz target (docs/fuzzing.md): a graph with two float initializers of 2^62 elements
        // each, 40 bytes of protobuf.
        let tensor = [0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x10, 0x01];
        let mut graph = Vec::new();
        for _ in 0..2 {
            graph.extend([0x2A, tensor.len() as u8]);
            graph.extend(tensor);
        }
        let mut bytes = vec![0x3A, graph.len() as u8];
        bytes.extend(&graph);
        let model = tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]).expect("decodes");
        assert_eq!(model.graph.as_ref().map(|g| g.initializer.len()), Some(2));
        assert_eq!(parameter_bytes(&model), u64::MAX);
    }
}
