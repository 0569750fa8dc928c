//! Which nodes become int8 and which activation tensors need a scale: decided once, before
//! calibration, so that calibration measures exactly the tensors the rewrite will quantize.

use std::collections::{BTreeMap, BTreeSet};

use tract_onnx::pb::{GraphProto, NodeProto};

use super::Format;
use super::graph::{self, Index, Names};

/// How a quantized compute node takes its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Compute {
    /// Position of the node in the (normalized) graph.
    pub node: usize,
    /// The activation input.
    pub input: String,
    /// The weight initializer.
    pub weight: String,
    /// The bias initializer, quantized to int32 (Conv and Gemm).
    pub bias: Option<String>,
    /// The output tensor once a following Relu is folded in (its output name).
    pub output: String,
    /// Output channels: the weight's axis holding them, for per-channel scales and bias length.
    pub channel_axis: usize,
}

/// What the rewrite will do, node by node and tensor by tensor.
#[derive(Debug, Default)]
pub struct Plan {
    /// Conv, Gemm and MatMul nodes that get int8 weights.
    pub compute: Vec<Compute>,
    /// Relu nodes folded into the quantized node before them (by position): the node's output is
    /// quantized with the Relu's range, which clips at zero by itself.
    pub folded: BTreeSet<usize>,
    /// MaxPool and Flatten nodes (by position) that run on the quantized tensor and whose output
    /// reuses their input's scale.
    pub passthrough: BTreeSet<usize>,
    /// Activation tensors that need a scale measured by calibration, in graph order.
    pub measured: Vec<String>,
    /// Tensors that reuse another tensor's scale (output → input of a pass-through node).
    pub shared: BTreeMap<String, String>,
    /// Why other nodes stay fp32, for the report.
    pub notes: Vec<String>,
}

impl Plan {
    /// The tensor whose measured range gives `tensor` its scale.
    pub fn source_of<'a>(&'a self, tensor: &'a str) -> &'a str {
        let mut t = tensor;
        while let Some(s) = self.shared.get(t) {
            t = s;
        }
        t
    }

    /// Whether `tensor` is quantized (measured or sharing a scale).
    pub fn is_quantized(&self, tensor: &str) -> bool {
        self.shared.contains_key(tensor) || self.measured.iter().any(|m| m == tensor)
    }
}

/// Ops that never change how a model is quantized: no note for them.
const NEUTRAL: &[&str] = &["Relu", "MaxPool", "Flatten", "Add", "Identity", "Reshape"];

/// Rewrites the graph into the form the format quantizes: for QOperator, each
/// `Gemm(x, W, b)` becomes `MatMul(x, W') + Add(b)` (the only standard int8 form of a Gemm is
/// QLinearMatMul, which has no bias). The result computes the same function.
pub fn normalize(graph: &mut GraphProto, format: Format) {
    if format != Format::QOperator {
        return;
    }
    let mut names = Names::of(graph);
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut added = Vec::new();
    let index_initializers: BTreeMap<String, graph::FloatTensor> =
        graph.initializer.iter().filter_map(|t| graph::float_tensor(t).map(|f| (t.name.clone(), f))).collect();
    for node in std::mem::take(&mut graph.node) {
        match split_gemm(&node, &index_initializers, &mut names) {
            Some((matmul, add, weight)) => {
                nodes.push(matmul);
                nodes.extend(add);
                added.extend(weight);
            }
            None => nodes.push(node),
        }
    }
    graph.node = nodes;
    graph.initializer.extend(added);
    graph::drop_unused_initializers(graph);
}

fn split_gemm(
    node: &NodeProto,
    floats: &BTreeMap<String, graph::FloatTensor>,
    names: &mut Names,
) -> Option<(NodeProto, Option<NodeProto>, Option<tract_onnx::pb::TensorProto>)> {
    if node.op_type != "Gemm" || !node.domain.is_empty() || node.output.len() != 1 {
        return None;
    }
    let plain = graph::get_float(node, "alpha", 1.0) == 1.0
        && graph::get_float(node, "beta", 1.0) == 1.0
        && graph::get_int(node, "transA", 0) == 0;
    let w = floats.get(node.input.get(1)?)?;
    if !plain || w.dims.len() != 2 {
        return None;
    }
    let trans_b = graph::get_int(node, "transB", 0) != 0;
    let n = if trans_b { w.dims[0] } else { w.dims[1] };
    let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
        Some(b) => Some((b, floats.get(b)?)),
        None => None,
    };
    if bias.is_some_and(|(_, b)| b.dims != [n]) {
        return None;
    }
    let name = if node.name.is_empty() { names.fresh("gemm") } else { node.name.clone() };
    let (weight_name, new_weight) = if trans_b {
        let t = w.transposed()?;
        let wname = names.fresh(&format!("{}_transposed", node.input[1]));
        let proto = graph::f32_tensor(&wname, &t.dims, &t.data);
        (wname, Some(proto))
    } else {
        (node.input[1].clone(), None)
    };
    let out = &node.output[0];
    match bias {
        Some((b, _)) => {
            let mm_out = names.fresh(&format!("{out}_MatMul_Output"));
            let matmul = graph::node("MatMul", &name, &[&node.input[0], &weight_name], &[&mm_out], vec![]);
            let add_name = names.fresh(&format!("{name}_bias"));
            let add = graph::node("Add", &add_name, &[&mm_out, b], &[out], vec![]);
            Some((matmul, Some(add), new_weight))
        }
        None => {
            let matmul = graph::node("MatMul", &name, &[&node.input[0], &weight_name], &[out], vec![]);
            Some((matmul, None, new_weight))
        }
    }
}

/// Decides what to quantize in a normalized graph.
pub fn plan(graph: &GraphProto, format: Format) -> Plan {
    let index = Index::new(graph);
    let mut plan = Plan::default();
    let float_activation = |name: &str| !name.is_empty() && !index.is_constant(name);
    let mut quantized: BTreeSet<String> = BTreeSet::new();
    let mut measured: Vec<String> = Vec::new();
    let mut measure = |t: &str, quantized: &mut BTreeSet<String>| {
        if quantized.insert(t.to_string()) {
            measured.push(t.to_string());
        }
    };
    for (i, node) in graph.node.iter().enumerate() {
        if plan.folded.contains(&i) {
            continue;
        }
        let op = node.op_type.as_str();
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            plan.notes.push(format!("{}::{op} '{}': stays as it is (not a default-domain op)", node.domain, node.name));
            continue;
        }
        match compute(&index, i, node, format) {
            Ok(Some(mut c)) => {
                // Fold a Relu that is the only reader of the output.
                let out = &node.output[0];
                if let [r] = index.readers(out)
                    && graph.node[*r].op_type == "Relu"
                    && graph.node[*r].domain.is_empty()
                    && !index.outputs.contains(out.as_str())
                    && let Some(relu_out) = graph.node[*r].output.first()
                {
                    plan.folded.insert(*r);
                    c.output = relu_out.clone();
                }
                measure(&c.input, &mut quantized);
                measure(&c.output, &mut quantized);
                plan.compute.push(c);
            }
            Ok(None) => {
                let passes = matches!(op, "MaxPool" | "Flatten")
                    && node.output.len() == 1
                    && node.input.first().is_some_and(|x| quantized.contains(x))
                    && float_activation(&node.output[0]);
                if passes {
                    plan.passthrough.insert(i);
                    quantized.insert(node.output[0].clone());
                    plan.shared.insert(node.output[0].clone(), node.input[0].clone());
                } else if !NEUTRAL.contains(&op) {
                    plan.notes
                        .push(format!("{op} '{}': stays fp32 (not an operator the quantizer handles)", node.name));
                }
            }
            Err(why) => plan.notes.push(format!("{op} '{}': stays fp32 ({why})", node.name)),
        }
    }
    // A quantized tensor that is also a pass-through's shared output must not be measured too.
    measured.retain(|t| !plan.shared.contains_key(t));
    plan.measured = measured;
    plan
}

/// The quantizable form of a Conv, Gemm or MatMul node; `Ok(None)` for other ops, `Err` with the
/// reason for one of these ops that cannot be quantized.
fn compute(index: &Index<'_>, i: usize, node: &NodeProto, format: Format) -> Result<Option<Compute>, String> {
    let op = node.op_type.as_str();
    if !matches!(op, "Conv" | "Gemm" | "MatMul") {
        return Ok(None);
    }
    if node.output.len() != 1 || node.input.len() < 2 {
        return Err("unexpected inputs or outputs".into());
    }
    let (x, w) = (&node.input[0], &node.input[1]);
    if x.is_empty() || index.is_constant(x) {
        return Err("its first input is a constant".into());
    }
    let weight = index.float(w).ok_or("its weight is not a float32 constant in the file")?;
    let bias = node.input.get(2).filter(|b| !b.is_empty());
    let channel_axis = match op {
        "Conv" => {
            if weight.dims.len() < 3 {
                return Err("weight rank below 3".into());
            }
            0
        }
        "Gemm" => {
            if format == Format::QOperator {
                return Err(
                    "alpha, beta, transA, or a weight or bias that is not constant, keep it from becoming a MatMul"
                        .into(),
                );
            }
            let plain = graph::get_float(node, "alpha", 1.0) == 1.0
                && graph::get_float(node, "beta", 1.0) == 1.0
                && graph::get_int(node, "transA", 0) == 0;
            if !plain || weight.dims.len() != 2 {
                return Err("alpha, beta or transA other than the defaults".into());
            }
            if graph::get_int(node, "transB", 0) != 0 { 0 } else { 1 }
        }
        _ => {
            if weight.dims.len() != 2 {
                return Err("weight is not 2-D".into());
            }
            1
        }
    };
    let channels = weight.dims[channel_axis];
    if let Some(b) = bias {
        let bt = index.float(b).ok_or("its bias is not a float32 constant in the file")?;
        if bt.dims != [channels] {
            return Err(format!("bias of shape {:?}, not [{channels}]", bt.dims));
        }
    }
    Ok(Some(Compute {
        node: i,
        input: x.clone(),
        weight: w.clone(),
        bias: bias.cloned(),
        output: node.output[0].clone(),
        channel_axis,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::graph::{f32_tensor, node, value};

    /// x → Gemm(transB) → Relu → Softmax → y
    fn gemm_graph() -> GraphProto {
        let mut gemm = node("Gemm", "fc", &["x", "w", "b"], &["g"], vec![graph::int_attr("transB", 1)]);
        gemm.attribute.push(graph::int_attr("transA", 0));
        GraphProto {
            node: vec![
                gemm,
                node("Relu", "relu", &["g"], &["r"], vec![]),
                node("Softmax", "sm", &["r"], &["y"], vec![]),
            ],
            initializer: vec![
                f32_tensor("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                f32_tensor("b", &[3], &[0.1, 0.2, 0.3]),
            ],
            input: vec![value("x")],
            output: vec![value("y")],
            ..GraphProto::default()
        }
    }

    #[test]
    fn qdq_quantizes_the_gemm_folds_its_relu_and_notes_the_softmax() {
        let g = gemm_graph();
        let p = plan(&g, Format::Qdq);
        assert_eq!(p.compute.len(), 1);
        let c = &p.compute[0];
        assert_eq!((c.input.as_str(), c.output.as_str(), c.channel_axis), ("x", "r", 0));
        assert_eq!(p.folded, BTreeSet::from([1]));
        assert_eq!(p.measured, vec!["x".to_string(), "r".to_string()]);
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        assert!(p.notes[0].contains("Softmax 'sm': stays fp32"), "{:?}", p.notes);
    }

    #[test]
    fn qoperator_splits_a_gemm_into_matmul_and_bias_add() {
        let mut g = gemm_graph();
        normalize(&mut g, Format::QOperator);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["MatMul", "Add", "Relu", "Softmax"]);
        assert_eq!(g.node[0].input, ["x", "w_transposed"]);
        assert_eq!(g.node[1].input, ["g_MatMul_Output", "b"]);
        assert_eq!(g.node[1].output, ["g"]);
        let wt = Index::new(&g).float("w_transposed").expect("transposed weight");
        assert_eq!(wt.dims, [2, 3]);
        assert!(!g.initializer.iter().any(|t| t.name == "w"), "the fp32 original is dropped");
        let p = plan(&g, Format::QOperator);
        assert_eq!(p.compute[0].output, "g_MatMul_Output", "the Relu after the Add is not folded");
        assert!(p.folded.is_empty());
        assert_eq!(p.measured, ["x", "g_MatMul_Output"]);
    }

    #[test]
    fn maxpool_after_a_quantized_tensor_shares_its_scale() {
        let g = GraphProto {
            node: vec![
                node("Conv", "c", &["x", "w"], &["c"], vec![]),
                node("Relu", "r", &["c"], &["r"], vec![]),
                node("MaxPool", "p", &["r"], &["p"], vec![]),
                node("Flatten", "f", &["p"], &["y"], vec![]),
            ],
            initializer: vec![f32_tensor("w", &[2, 1, 1, 1], &[1.0, -1.0])],
            input: vec![value("x")],
            output: vec![value("y")],
            ..GraphProto::default()
        };
        let p = plan(&g, Format::QOperator);
        assert_eq!(p.passthrough, BTreeSet::from([2, 3]));
        assert_eq!(p.source_of("y"), "r");
        assert!(p.is_quantized("p"));
        assert_eq!(p.measured, ["x", "r"]);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
    }

    #[test]
    fn a_matmul_with_a_computed_weight_stays_fp32_with_a_note() {
        let g = GraphProto {
            node: vec![node("MatMul", "mm", &["x", "z"], &["y"], vec![])],
            input: vec![value("x"), value("z")],
            output: vec![value("y")],
            ..GraphProto::default()
        };
        let p = plan(&g, Format::Qdq);
        assert!(p.compute.is_empty());
        assert!(p.notes[0].contains("weight is not a float32 constant"), "{:?}", p.notes);
    }
}
