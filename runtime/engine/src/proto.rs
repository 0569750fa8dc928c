//! What Drover reads from the ONNX protobuf itself, before tract sees the model.
//!
//! Users need answers even for a model tract cannot run (which operators are missing, what the
//! inputs are), so these facts come from the file, not from tract's typed graph.

use std::collections::BTreeMap;

use drover_wire::{DType, DimRef, TensorSpec};
use serde::Serialize;
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, tensor_shape_proto, type_proto};

use super::LoadError;

/// Decodes an ONNX file's protobuf without loading the model: what `inspect` reads to describe a
/// file that may not load at all.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, LoadError> {
    use tract_onnx::prelude::Framework;
    crate::onnx().proto_model_for_read(&mut &bytes[..]).map_err(|e| LoadError::Decode(format!("{e:#}")))
}

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
    /// Weights quantized ahead of time, activations at run time (DynamicQuantizeLinear,
    /// onnxruntime's DynamicQuantizeLSTM).
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
    // Dynamic first: `quantize_dynamic` writes DynamicQuantizeLinear feeding MatMulInteger, an
    // integer operator a static QOperator file also uses; what makes it dynamic is the former.
    if has(&|op| {
        matches!(op, "DynamicQuantizeLinear" | "DynamicQuantizeMatMul" | "MatMulIntegerToFloat" | "DynamicQuantizeLSTM")
    }) {
        QuantStyle::Dynamic
    } else if has(&|op| {
        op.starts_with("QLinear") || matches!(op, "ConvInteger" | "MatMulInteger" | "QGemm" | "QAttention")
    }) {
        QuantStyle::Qoperator
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

/// The side files the model's tensors keep their data in (ONNX external data, as MLflow 3 and
/// torch's dynamo exporter write weights), each once, in order of first use. Every one must be
/// a plain file name beside the model: a location with a directory part or `..` is refused, so
/// a model file can never make the agent read anything but its own bundle's files.
pub fn external_data(model: &ModelProto) -> Result<Vec<String>, LoadError> {
    fn tensors<'a>(graph: &'a GraphProto, out: &mut Vec<&'a TensorProto>) {
        out.extend(graph.initializer.iter());
        for node in &graph.node {
            for attr in &node.attribute {
                out.extend(attr.t.iter());
                out.extend(attr.tensors.iter());
                if let Some(g) = &attr.g {
                    tensors(g, out);
                }
                for g in &attr.graphs {
                    tensors(g, out);
                }
            }
        }
    }
    let mut all = Vec::new();
    if let Some(g) = &model.graph {
        tensors(g, &mut all);
    }
    let mut files: Vec<String> = Vec::new();
    for t in all {
        // data_location 1 is EXTERNAL; `location` is the one required key.
        if t.data_location != Some(1) && t.external_data.is_empty() {
            continue;
        }
        let Some(location) = t.external_data.iter().find(|e| e.key == "location").map(|e| e.value.clone()) else {
            continue;
        };
        let plain = !location.is_empty()
            && location != "."
            && location != ".."
            && !location.contains(['/', '\\', '\0'])
            && !location.starts_with('~');
        if !plain {
            return Err(LoadError::ExternalDataLocation { tensor: t.name.clone(), location });
        }
        if !files.contains(&location) {
            files.push(location);
        }
    }
    Ok(files)
}

/// Gives every dimension of the graph's inputs and outputs that has neither a size nor a name
/// a name, and returns how many it named.
///
/// skl2onnx (`to_onnx(model, X[:1])`, its default), onnxmltools and MLflow's sklearn-to-ONNX
/// write the batch axis as `[?, 4]`: a dimension with no `dim_value` and no `dim_param`.
/// onnxruntime reads such a dimension as "any size"; tract cannot type a graph whose input has
/// no known rank-and-symbol fact. A leading unnamed axis becomes `N`, the batch (the name
/// Drover's own models and tools use; several inputs' leading axes share it, as their batch
/// does); any other gets a name of its own (`unk__1`, …, onnxruntime's spelling), so nothing
/// claims two unrelated sizes are equal.
pub fn name_unnamed_dims(model: &mut ModelProto) -> usize {
    use tensor_shape_proto::dimension::Value;
    let Some(graph) = model.graph.as_mut() else { return 0 };
    let init: std::collections::HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    for v in graph.input.iter().chain(graph.output.iter()) {
        for d in shape_dims(v) {
            if let Some(Value::DimParam(p)) = &d.value {
                used.insert(p.clone());
            }
        }
    }
    // `N` for the batch unless the file already names some other axis so.
    let batch = if used.contains("N") { "unk__batch" } else { "N" }.to_string();
    let mut next = 0usize;
    let mut named = 0;
    let values = graph.input.iter_mut().filter(|v| !init.contains(&v.name)).chain(graph.output.iter_mut());
    for v in values {
        for (axis, d) in shape_dims_mut(v).into_iter().enumerate() {
            let unnamed = match &d.value {
                None => true,
                Some(Value::DimParam(p)) => p.is_empty(),
                Some(Value::DimValue(n)) => *n < 0,
            };
            if !unnamed {
                continue;
            }
            let name = if axis == 0 {
                batch.clone()
            } else {
                loop {
                    next += 1;
                    let candidate = format!("unk__{next}");
                    if !used.contains(&candidate) {
                        break candidate;
                    }
                }
            };
            d.value = Some(Value::DimParam(name));
            named += 1;
        }
    }
    named
}

/// Whether [`name_unnamed_dims`] has anything to do (so a model that needs nothing is not copied).
pub fn has_unnamed_dims(model: &ModelProto) -> bool {
    use tensor_shape_proto::dimension::Value;
    let Some(graph) = model.graph.as_ref() else { return false };
    graph.input.iter().chain(graph.output.iter()).flat_map(shape_dims).any(|d| match &d.value {
        None => true,
        Some(Value::DimParam(p)) => p.is_empty(),
        Some(Value::DimValue(n)) => *n < 0,
    })
}

fn shape_dims(v: &ValueInfoProto) -> &[tract_onnx::pb::tensor_shape_proto::Dimension] {
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or_default(),
        _ => &[],
    }
}

fn shape_dims_mut(v: &mut ValueInfoProto) -> Vec<&mut tract_onnx::pb::tensor_shape_proto::Dimension> {
    match v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(type_proto::Value::TensorType(t)) => {
            t.shape.as_mut().map(|s| s.dim.iter_mut().collect()).unwrap_or_default()
        }
        _ => Vec::new(),
    }
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

    #[test]
    fn an_lstm_from_quantize_dynamic_is_dynamic_int8() {
        let node =
            NodeProto { op_type: "DynamicQuantizeLSTM".into(), domain: "com.microsoft".into(), ..Default::default() };
        let model =
            ModelProto { graph: Some(GraphProto { node: vec![node], ..Default::default() }), ..Default::default() };
        assert_eq!(quant_style(&model), QuantStyle::Dynamic);
    }

    #[test]
    fn quantize_dynamics_matmul_integer_is_dynamic_not_qoperator() {
        let node = |op: &str| NodeProto { op_type: op.into(), ..Default::default() };
        let graph = |ops: &[&str]| ModelProto {
            graph: Some(GraphProto { node: ops.iter().map(|op| node(op)).collect(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(
            quant_style(&graph(&["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul"])),
            QuantStyle::Dynamic
        );
        assert_eq!(
            quant_style(&graph(&["QuantizeLinear", "MatMulInteger", "DequantizeLinear"])),
            QuantStyle::Qoperator
        );
    }
}
