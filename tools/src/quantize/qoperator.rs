//! The QOperator format: Conv and MatMul replaced by QLinearConv and QLinearMatMul, which read
//! and write uint8 tensors; MaxPool and Flatten run on those tensors directly; QuantizeLinear and
//! DequantizeLinear only where an fp32 operator meets an int8 tensor.
//!
//! Each tensor exists in fp32 (its original name), in uint8 (`<name>_quantized`), or both:
//! a form is made only when a reader needs it, so no conversion is written that nothing reads.

use std::collections::{BTreeMap, BTreeSet};

use tract_onnx::pb::{GraphProto, NodeProto};

use super::QuantizeError;
use super::graph::node;
use super::plan::Plan;
use super::scale::ActParams;
use super::weights::Emitter;

struct Forms<'e, 'a> {
    em: &'e mut Emitter<'a>,
    float: BTreeSet<String>,
    quantized: BTreeMap<String, String>,
    nodes: Vec<NodeProto>,
}

impl Forms<'_, '_> {
    /// The uint8 form of `tensor`, quantizing its fp32 form if that is all there is.
    fn quantized(&mut self, tensor: &str) -> Result<String, QuantizeError> {
        if let Some(q) = self.quantized.get(tensor) {
            return Ok(q.clone());
        }
        if !self.float.contains(tensor) {
            return Err(QuantizeError::Graph(format!("'{tensor}' is read before it is produced")));
        }
        let a = self.em.act(tensor)?;
        let q = self.em.names.fresh(&format!("{tensor}_quantized"));
        let name = self.em.names.fresh(&format!("{tensor}_QuantizeLinear"));
        self.nodes.push(node("QuantizeLinear", &name, &[tensor, &a.scale, &a.zero_point], &[&q], vec![]));
        self.quantized.insert(tensor.to_string(), q.clone());
        Ok(q)
    }

    /// Makes sure the fp32 form of `tensor` exists, dequantizing its uint8 form if needed.
    fn float(&mut self, tensor: &str) -> Result<(), QuantizeError> {
        if self.float.contains(tensor) {
            return Ok(());
        }
        let Some(q) = self.quantized.get(tensor).cloned() else {
            return Err(QuantizeError::Graph(format!("'{tensor}' is read before it is produced")));
        };
        let a = self.em.act(tensor)?;
        let name = self.em.names.fresh(&format!("{tensor}_DequantizeLinear"));
        self.nodes.push(node("DequantizeLinear", &name, &[&q, &a.scale, &a.zero_point], &[tensor], vec![]));
        self.float.insert(tensor.to_string());
        Ok(())
    }

    /// A new uint8 tensor produced for `tensor`.
    fn produce_quantized(&mut self, tensor: &str) -> String {
        let q = self.em.names.fresh(&format!("{tensor}_quantized"));
        self.quantized.insert(tensor.to_string(), q.clone());
        q
    }
}

/// Writes the QOperator graph; returns it with remarks for the report.
pub fn emit(
    graph: &GraphProto,
    plan: &Plan,
    params: &BTreeMap<String, ActParams>,
    per_channel: bool,
) -> Result<(GraphProto, Vec<String>), QuantizeError> {
    let mut em = Emitter::new(graph, plan, params, per_channel);
    let mut float: BTreeSet<String> = graph.input.iter().map(|v| v.name.clone()).collect();
    float.extend(graph.initializer.iter().map(|t| t.name.clone()));
    let computes: BTreeMap<usize, &super::plan::Compute> = plan.compute.iter().map(|c| (c.node, c)).collect();
    let mut f = Forms { em: &mut em, float, quantized: BTreeMap::new(), nodes: Vec::new() };

    for (i, original) in graph.node.iter().enumerate() {
        if plan.folded.contains(&i) {
            continue;
        }
        if let Some(c) = computes.get(&i) {
            let x = f.quantized(&c.input)?;
            let xa = f.em.act(&c.input)?;
            let (w, w_scales) = f.em.weight(c, &original.op_type)?;
            let ya = f.em.act(&c.output)?;
            let y = f.produce_quantized(&c.output);
            let mut inputs: Vec<&str> = vec![
                x.as_str(),
                xa.scale.as_str(),
                xa.zero_point.as_str(),
                w.q.as_str(),
                w.scale.as_str(),
                w.zero_point.as_str(),
                ya.scale.as_str(),
                ya.zero_point.as_str(),
            ];
            let n = if original.op_type == "Conv" {
                let bias = f.em.bias(c, xa.params.scale, &w_scales)?;
                let b = bias.map(|b| b.q);
                if let Some(b) = &b {
                    inputs.push(b);
                }
                let mut n = node("QLinearConv", &original.name, &inputs, &[&y], original.attribute.clone());
                n.doc_string = original.doc_string.clone();
                n
            } else {
                node("QLinearMatMul", &original.name, &inputs, &[&y], vec![])
            };
            f.nodes.push(n);
            continue;
        }
        if plan.passthrough.contains(&i) {
            let x = f.quantized(&original.input[0])?;
            let y = f.produce_quantized(&original.output[0]);
            let mut n = original.clone();
            n.input[0] = x;
            n.output[0] = y;
            f.nodes.push(n);
            continue;
        }
        for input in original.input.iter().filter(|s| !s.is_empty()) {
            f.float(input)?;
        }
        f.nodes.push(original.clone());
        f.float.extend(original.output.iter().filter(|s| !s.is_empty()).cloned());
    }
    for output in &graph.output {
        f.float(&output.name)?;
    }
    let nodes = std::mem::take(&mut f.nodes);
    let mut g = graph.clone();
    g.node = nodes;
    g.initializer.append(&mut em.initializers);
    Ok((g, em.notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::Format;
    use crate::quantize::graph::{f32_tensor, value};
    use crate::quantize::plan::plan;
    use crate::quantize::scale::activation;

    #[test]
    fn conv_relu_pool_flatten_matmul_add_stays_int8_up_to_the_bias_add() {
        let g = GraphProto {
            node: vec![
                node("Conv", "conv", &["x", "cw", "cb"], &["c"], vec![]),
                node("Relu", "relu", &["c"], &["r"], vec![]),
                node("MaxPool", "pool", &["r"], &["p"], vec![]),
                node("Flatten", "flat", &["p"], &["f"], vec![]),
                node("MatMul", "mm", &["f", "mw"], &["m"], vec![]),
                node("Add", "add", &["m", "mb"], &["y"], vec![]),
            ],
            initializer: vec![
                f32_tensor("cw", &[2, 1, 1, 1], &[1.0, -1.0]),
                f32_tensor("cb", &[2], &[0.0, 0.1]),
                f32_tensor("mw", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                f32_tensor("mb", &[3], &[0.0, 0.0, 1.0]),
            ],
            input: vec![value("x")],
            output: vec![value("y")],
            ..GraphProto::default()
        };
        let p = plan(&g, Format::QOperator);
        let params = BTreeMap::from([
            ("x".to_string(), activation(-1.0, 1.0)),
            ("r".to_string(), activation(0.0, 1.0)),
            ("m".to_string(), activation(-4.0, 4.0)),
        ]);
        let (out, _) = emit(&g, &p, &params, true).expect("emits");
        let ops: Vec<&str> = out.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            ["QuantizeLinear", "QLinearConv", "MaxPool", "Flatten", "QLinearMatMul", "DequantizeLinear", "Add"]
        );
        assert_eq!(out.node[1].input.len(), 9, "QLinearConv takes the int32 bias");
        assert_eq!(out.node[1].output, ["r_quantized"]);
        assert_eq!(out.node[2].input, ["r_quantized"]);
        assert_eq!(out.node[4].input[1..3], ["r_scale", "r_zero_point"], "the flattened tensor keeps r's scale");
        assert_eq!(out.node[5].output, ["m"]);
        let index = crate::quantize::graph::Index::new(&out);
        assert_eq!(index.float("cw_scale").expect("per-channel scales").dims, [2]);
    }
}
