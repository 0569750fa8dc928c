//! Reading and building the ONNX protobuf pieces the rewrite needs: initializers as numbers,
//! attributes, new nodes and tensors, and fresh names.
//!
//! The quantizer works on `tract_onnx::pb` (prost) types directly rather than on tract's graph,
//! because its output is a file for any ONNX runtime, not a plan for tract.

use std::collections::{BTreeMap, BTreeSet};

use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, TensorProto, attribute_proto::AttributeType};

use super::QuantizeError;

/// ONNX `TensorProto.DataType` codes the quantizer reads or writes.
pub mod dtype {
    /// float32.
    pub const FLOAT: i32 = 1;
    /// uint8.
    pub const UINT8: i32 = 2;
    /// int8.
    pub const INT8: i32 = 3;
    /// int32.
    pub const INT32: i32 = 6;
}

/// A float initializer decoded into numbers, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatTensor {
    /// Dimensions as the file gives them.
    pub dims: Vec<usize>,
    /// Elements.
    pub data: Vec<f32>,
}

impl FloatTensor {
    /// The transpose of a 2-D tensor (Gemm's `transB` weights become MatMul's).
    pub fn transposed(&self) -> Option<FloatTensor> {
        let [rows, cols] = self.dims[..] else { return None };
        let mut data = Vec::with_capacity(self.data.len());
        for c in 0..cols {
            for r in 0..rows {
                data.push(*self.data.get(r * cols + c)?);
            }
        }
        Some(FloatTensor { dims: vec![cols, rows], data })
    }
}

/// Decodes a float32 initializer kept inside the file; `None` for other types or external data.
pub fn float_tensor(t: &TensorProto) -> Option<FloatTensor> {
    if t.data_type != dtype::FLOAT || !t.external_data.is_empty() {
        return None;
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() != count.checked_mul(4)? {
            return None;
        }
        t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        t.float_data.clone()
    };
    (data.len() == count).then_some(FloatTensor { dims, data })
}

/// A graph input or output known by name only, as the tests' small graphs declare them.
#[cfg(test)]
pub fn value(name: &str) -> tract_onnx::pb::ValueInfoProto {
    tract_onnx::pb::ValueInfoProto { name: name.into(), ..Default::default() }
}

/// A float32 tensor stored as raw little-endian bytes (as onnx.numpy_helper writes it).
pub fn f32_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    raw_tensor(name, dtype::FLOAT, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An int8 tensor (quantized weights and their zero points).
pub fn i8_tensor(name: &str, dims: &[usize], data: &[i8]) -> TensorProto {
    raw_tensor(name, dtype::INT8, dims, data.iter().map(|v| v.to_le_bytes()[0]).collect())
}

/// A uint8 tensor (activation zero points).
pub fn u8_tensor(name: &str, dims: &[usize], data: &[u8]) -> TensorProto {
    raw_tensor(name, dtype::UINT8, dims, data.to_vec())
}

/// An int32 tensor (quantized biases and their zero points).
pub fn i32_tensor(name: &str, dims: &[usize], data: &[i32]) -> TensorProto {
    raw_tensor(name, dtype::INT32, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn raw_tensor(name: &str, data_type: i32, dims: &[usize], raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        data_type,
        dims: dims.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect(),
        raw_data,
        ..TensorProto::default()
    }
}

/// A default-domain node.
pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..NodeProto::default()
    }
}

/// An integer attribute (`axis`).
pub fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.to_string(), r#type: AttributeType::Int as i32, i: value, ..AttributeProto::default() }
}

/// The value of an integer attribute, or `default` when the node does not set it.
pub fn get_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i).unwrap_or(default)
}

/// The value of a float attribute, or `default` when the node does not set it.
pub fn get_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.f).unwrap_or(default)
}

/// Initializers by name, and the names every node and graph output uses, for questions such as
/// "is this input a constant" and "who reads this tensor".
pub struct Index<'a> {
    /// Initializers by name.
    pub initializers: BTreeMap<&'a str, &'a TensorProto>,
    /// For each tensor name, the nodes (by position) that read it, in graph order.
    pub consumers: BTreeMap<&'a str, Vec<usize>>,
    /// Names of the graph outputs.
    pub outputs: BTreeSet<&'a str>,
}

impl<'a> Index<'a> {
    /// Indexes `graph`.
    pub fn new(graph: &'a GraphProto) -> Index<'a> {
        let initializers = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut consumers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for input in n.input.iter().filter(|s| !s.is_empty()) {
                let readers = consumers.entry(input.as_str()).or_default();
                if readers.last() != Some(&i) {
                    readers.push(i);
                }
            }
        }
        let outputs = graph.output.iter().map(|o| o.name.as_str()).collect();
        Index { initializers, consumers, outputs }
    }

    /// The float initializer called `name`, decoded.
    pub fn float(&self, name: &str) -> Option<FloatTensor> {
        self.initializers.get(name).and_then(|t| float_tensor(t))
    }

    /// Whether `name` is an initializer.
    pub fn is_constant(&self, name: &str) -> bool {
        self.initializers.contains_key(name)
    }

    /// The nodes reading `name`.
    pub fn readers(&self, name: &str) -> &[usize] {
        self.consumers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Hands out tensor and node names not yet used in the graph, so that added tensors never
/// shadow the model's own.
#[derive(Debug, Default)]
pub struct Names {
    taken: BTreeSet<String>,
}

impl Names {
    /// Every name `graph` already uses: inputs, outputs, initializers, node outputs and names.
    pub fn of(graph: &GraphProto) -> Names {
        let mut taken = BTreeSet::new();
        taken.extend(graph.input.iter().map(|v| v.name.clone()));
        taken.extend(graph.output.iter().map(|v| v.name.clone()));
        taken.extend(graph.initializer.iter().map(|t| t.name.clone()));
        for n in &graph.node {
            taken.extend(n.output.iter().cloned());
            taken.extend(n.input.iter().cloned());
            taken.insert(n.name.clone());
        }
        Names { taken }
    }

    /// `base` if free, else `base_2`, `base_3`…; the name is taken from then on.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 2;
        while self.taken.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.taken.insert(name.clone());
        name
    }
}

/// The default-domain opset the model imports.
pub fn default_opset(model: &tract_onnx::pb::ModelProto) -> Option<i64> {
    model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version)
}

/// Drops initializers no node reads and no graph output names (replaced fp32 weights).
pub fn drop_unused_initializers(graph: &mut GraphProto) {
    let used: BTreeSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.output.iter().map(|o| o.name.clone()))
        .collect();
    graph.initializer.retain(|t| used.contains(&t.name));
    graph.input.retain(|i| used.contains(&i.name) || !graph.initializer.iter().any(|t| t.name == i.name));
}

/// Fails unless `graph` lists its nodes in an order where each input exists before it is read.
pub fn check_topological(graph: &GraphProto) -> Result<(), QuantizeError> {
    let mut known: BTreeSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    known.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    for n in &graph.node {
        if let Some(missing) = n.input.iter().find(|i| !i.is_empty() && !known.contains(i.as_str())) {
            return Err(QuantizeError::Graph(format!(
                "node '{}' ({}) reads '{missing}' before anything produces it (the graph is not topologically sorted)",
                n.name, n.op_type
            )));
        }
        known.extend(n.output.iter().map(String::as_str));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_typed_float_initializers_decode_alike() {
        let raw = f32_tensor("w", &[2, 2], &[1.0, -2.0, 3.5, 0.0]);
        let typed = TensorProto {
            name: "w".into(),
            data_type: dtype::FLOAT,
            dims: vec![2, 2],
            float_data: vec![1.0, -2.0, 3.5, 0.0],
            ..TensorProto::default()
        };
        assert_eq!(float_tensor(&raw), float_tensor(&typed));
        let short = TensorProto { raw_data: vec![0; 7], ..raw };
        assert_eq!(float_tensor(&short), None, "a size that does not match the dims is no tensor");
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let t = FloatTensor { dims: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        let tt = t.transposed().expect("2-D");
        assert_eq!(tt, FloatTensor { dims: vec![3, 2], data: vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0] });
    }

    #[test]
    fn fresh_names_never_collide() {
        let graph = GraphProto { node: vec![node("Relu", "r", &["x"], &["x_scale"], vec![])], ..GraphProto::default() };
        let mut names = Names::of(&graph);
        assert_eq!(names.fresh("x_scale"), "x_scale_2");
        assert_eq!(names.fresh("x_scale"), "x_scale_3");
        assert_eq!(names.fresh("y"), "y");
    }
}
