//! The QDQ format: the fp32 graph kept as it is, with each quantized activation passed through a
//! QuantizeLinear → DequantizeLinear pair right where it is produced, and each quantized
//! weight and bias stored as int8/int32 behind a DequantizeLinear.
//!
//! Any ONNX runtime runs it; onnxruntime (and tract, as it learns to) fuses the pairs into
//! integer kernels.

use std::collections::{BTreeMap, BTreeSet};

use tract_onnx::pb::{GraphProto, NodeProto};

use super::QuantizeError;
use super::graph::node;
use super::plan::Plan;
use super::scale::ActParams;
use super::weights::{Emitter, axis_attr};

/// Writes the QDQ graph; returns it with remarks for the report.
pub fn emit(
    graph: &GraphProto,
    plan: &Plan,
    params: &BTreeMap<String, ActParams>,
    per_channel: bool,
) -> Result<(GraphProto, Vec<String>), QuantizeError> {
    let mut em = Emitter::new(graph, plan, params, per_channel);
    let outputs: BTreeSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut prelude: Vec<NodeProto> = Vec::new();
    let mut body: Vec<NodeProto> = Vec::new();
    // What each quantized tensor's readers read instead (its DequantizeLinear output).
    let mut reads: BTreeMap<String, String> = BTreeMap::new();
    // Per compute node: new inputs 1 (weight) and 2 (bias), and its output after folding.
    let mut rewired: BTreeMap<usize, (String, Option<String>, String)> = BTreeMap::new();

    for c in &plan.compute {
        let op = graph.node[c.node].op_type.clone();
        let (w, w_scales) = em.weight(c, &op)?;
        let w_out = em.names.fresh(&format!("{}_DequantizeLinear_Output", c.weight));
        let w_dq_name = em.names.fresh(&format!("{}_DequantizeLinear", c.weight));
        prelude.push(node(
            "DequantizeLinear",
            &w_dq_name,
            &[&w.q, &w.scale, &w.zero_point],
            &[&w_out],
            axis_attr(w.axis),
        ));
        let input_scale = em.act(&c.input)?.params.scale;
        let b_out = match em.bias(c, input_scale, &w_scales)? {
            Some(b) => {
                let base = c.bias.as_deref().unwrap_or("bias");
                let out = em.names.fresh(&format!("{base}_DequantizeLinear_Output"));
                let name = em.names.fresh(&format!("{base}_DequantizeLinear"));
                prelude.push(node(
                    "DequantizeLinear",
                    &name,
                    &[&b.q, &b.scale, &b.zero_point],
                    &[&out],
                    axis_attr(b.axis),
                ));
                Some(out)
            }
            None => None,
        };
        rewired.insert(c.node, (w_out, b_out, c.output.clone()));
    }

    let is_quantized = |t: &str| plan.is_quantized(t);

    // Quantized graph inputs: the pair comes first.
    for input in &graph.input {
        if is_quantized(&input.name) && !outputs.contains(input.name.as_str()) {
            pair(&mut em, &outputs, &input.name, &input.name, &mut body, &mut reads)?;
        }
    }
    for (i, original) in graph.node.iter().enumerate() {
        if plan.folded.contains(&i) {
            continue;
        }
        let mut n = original.clone();
        if let Some((w, b, out)) = rewired.get(&i) {
            n.input[1] = w.clone();
            if let Some(b) = b {
                n.input[2] = b.clone();
            }
            n.output[0] = out.clone();
        }
        for input in n.input.iter_mut() {
            if let Some(r) = reads.get(input.as_str()) {
                *input = r.clone();
            }
        }
        let mut after = Vec::new();
        for k in 0..n.output.len() {
            let out = n.output[k].clone();
            if out.is_empty() || !is_quantized(&out) {
                continue;
            }
            let produced = if outputs.contains(out.as_str()) {
                let renamed = em.names.fresh(&format!("{out}_QuantizeLinear_Input"));
                n.output[k] = renamed.clone();
                renamed
            } else {
                out.clone()
            };
            pair(&mut em, &outputs, &out, &produced, &mut after, &mut reads)?;
        }
        body.push(n);
        body.extend(after);
    }

    let mut g = graph.clone();
    prelude.extend(body);
    g.node = prelude;
    let mut inits = std::mem::take(&mut em.initializers);
    g.initializer.append(&mut inits);
    Ok((g, em.notes))
}

/// Appends `QuantizeLinear(produced) → DequantizeLinear` for `tensor` to `body`, and records
/// what `tensor`'s readers read from now on (a graph output keeps its name on the pair's end).
fn pair(
    em: &mut Emitter<'_>,
    outputs: &BTreeSet<&str>,
    tensor: &str,
    produced: &str,
    body: &mut Vec<NodeProto>,
    reads: &mut BTreeMap<String, String>,
) -> Result<(), QuantizeError> {
    let a = em.act(tensor)?;
    let q_out = em.names.fresh(&format!("{tensor}_QuantizeLinear_Output"));
    let q_name = em.names.fresh(&format!("{tensor}_QuantizeLinear"));
    let dq_name = em.names.fresh(&format!("{tensor}_DequantizeLinear"));
    let dq_out = if outputs.contains(tensor) {
        tensor.to_string()
    } else {
        let out = em.names.fresh(&format!("{tensor}_DequantizeLinear_Output"));
        reads.insert(tensor.to_string(), out.clone());
        out
    };
    body.push(node("QuantizeLinear", &q_name, &[produced, &a.scale, &a.zero_point], &[&q_out], vec![]));
    body.push(node("DequantizeLinear", &dq_name, &[&q_out, &a.scale, &a.zero_point], &[&dq_out], vec![]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::Format;
    use crate::quantize::graph::{f32_tensor, int_attr, value};
    use crate::quantize::plan::plan;
    use crate::quantize::scale::activation;

    #[test]
    fn a_gemm_relu_becomes_dq_weights_and_one_pair_per_activation() {
        let g = GraphProto {
            node: vec![
                node("Gemm", "fc", &["x", "w", "b"], &["g"], vec![int_attr("transB", 1)]),
                node("Relu", "relu", &["g"], &["y"], vec![]),
            ],
            initializer: vec![f32_tensor("w", &[2, 2], &[1.0, -0.5, 0.25, 2.0]), f32_tensor("b", &[2], &[0.5, -0.5])],
            input: vec![value("x")],
            output: vec![value("y")],
            ..GraphProto::default()
        };
        let p = plan(&g, Format::Qdq);
        let params =
            BTreeMap::from([("x".to_string(), activation(-1.0, 1.0)), ("y".to_string(), activation(0.0, 3.0))]);
        let (out, notes) = emit(&g, &p, &params, false).expect("emits");
        assert!(notes.is_empty());
        let ops: Vec<(&str, &str)> = out.node.iter().map(|n| (n.op_type.as_str(), n.name.as_str())).collect();
        assert_eq!(
            ops,
            [
                ("DequantizeLinear", "w_DequantizeLinear"),
                ("DequantizeLinear", "b_DequantizeLinear"),
                ("QuantizeLinear", "x_QuantizeLinear"),
                ("DequantizeLinear", "x_DequantizeLinear"),
                ("Gemm", "fc"),
                ("QuantizeLinear", "y_QuantizeLinear"),
                ("DequantizeLinear", "y_DequantizeLinear"),
            ]
        );
        let gemm = &out.node[4];
        assert_eq!(gemm.input, ["x_DequantizeLinear_Output", "w_DequantizeLinear_Output", "b_DequantizeLinear_Output"]);
        assert_eq!(gemm.output, ["y_QuantizeLinear_Input"], "the Relu is folded, the graph output keeps its name");
        assert_eq!(out.node[6].output, ["y"]);
        // The bias is int32 at scale x_scale × w_scale.
        let index = crate::quantize::graph::Index::new(&out);
        let bias_scale = index.float("b_quantized_scale").expect("bias scale").data[0];
        let w_scale = index.float("w_scale").expect("weight scale").data[0];
        assert_eq!(bias_scale, activation(-1.0, 1.0).scale * w_scale);
        let bias_q = index.initializers["b_quantized"];
        assert_eq!(bias_q.data_type, crate::quantize::graph::dtype::INT32);
    }
}
