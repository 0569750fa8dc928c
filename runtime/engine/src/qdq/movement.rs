//! `DequantizeLinear → MaxPool/Flatten/… → QuantizeLinear` with the same parameters becomes the
//! middle operator alone, run on the integers.
//!
//! These operators only move or select values, and dequantization is monotonic, so running them
//! on the int8 tensor gives exactly the integers the Q/DQ pair would have produced; tract then
//! skips two conversions and moves a quarter of the bytes (its int8 MaxPool is about twice as
//! fast as its fp32 one).

use tract_onnx::pb::{GraphProto, NodeProto};

use super::graph::{consumers, is_graph_output};
use super::params;

/// Operators that commute with a monotonic per-tensor dequantization. Input 0 is the data.
const MOVEMENT: &[&str] = &["MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"];

/// Applies the rewrite wherever it fits; returns how many operators now run on integers.
pub(super) fn run_on_integers(graph: &mut GraphProto) -> usize {
    let mut done = 0;
    while let Some((dq, op, q, keep_dq)) = find(graph) {
        let data = graph.node[dq].input[0].clone();
        let out = graph.node[q].output[0].clone();
        log::debug!("qdq: {} '{}' now runs on {data}", graph.node[op].op_type, graph.node[op].name);
        graph.node[op].input[0] = data;
        graph.node[op].output[0] = out;
        let mut remove = vec![q];
        if !keep_dq {
            remove.push(dq);
        }
        remove.sort_unstable();
        for i in remove.into_iter().rev() {
            graph.node.remove(i);
        }
        done += 1;
    }
    done
}

/// The next `(dq, op, q, keep_dq)` node indices to rewrite.
fn find(graph: &GraphProto) -> Option<(usize, usize, usize, bool)> {
    let users = consumers(graph);
    let producer = |name: &str| graph.node.iter().position(|n| n.output.iter().any(|o| o == name));
    for (op, node) in graph.node.iter().enumerate() {
        if !fits(node) {
            continue;
        }
        let Some(dq) = producer(&node.input[0]) else { continue };
        let dq_node = &graph.node[dq];
        if dq_node.op_type != "DequantizeLinear" || !dq_node.domain.is_empty() || dq_node.output.len() != 1 {
            continue;
        }
        let out = &node.output[0];
        let [q] = users.get(out.as_str()).map(Vec::as_slice).unwrap_or_default() else { continue };
        let q_node = &graph.node[*q];
        if q_node.op_type != "QuantizeLinear"
            || !q_node.domain.is_empty()
            || q_node.output.len() != 1
            || is_graph_output(graph, out)
        {
            continue;
        }
        let (Some(pd), Some(pq)) = (params::of_node(graph, dq_node), params::of_node(graph, q_node)) else {
            continue;
        };
        if !pd.same_as(&pq) {
            continue;
        }
        let dq_out = &dq_node.output[0];
        let keep_dq = is_graph_output(graph, dq_out) || users.get(dq_out.as_str()).is_some_and(|u| u.len() > 1);
        return Some((dq, op, *q, keep_dq));
    }
    None
}

/// Whether `node` is a movement operator in a form that is exact on integers.
fn fits(node: &NodeProto) -> bool {
    if !node.domain.is_empty() || !MOVEMENT.contains(&node.op_type.as_str()) || node.output.len() != 1 {
        return false;
    }
    if node.input.first().is_none_or(String::is_empty) {
        return false;
    }
    if node.op_type == "MaxPool" {
        // Padding would have to be the integer minimum rather than -inf; dilations and
        // ceil mode are fine, but padded pools are rare in quantized models: leave them.
        let padded = node.attribute.iter().any(|a| match a.name.as_str() {
            "pads" => a.ints.iter().any(|&p| p != 0),
            "auto_pad" => !matches!(a.s.as_slice(), b"" | b"NOTSET" | b"VALID"),
            "storage_order" => a.i != 0,
            _ => false,
        });
        return !padded;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::test_graph::*;
    use super::*;

    #[test]
    fn maxpool_between_matching_q_dq_runs_on_int8() {
        let mut g = graph(vec![
            q("x", "xq", "s1"),
            dq("xq", "xd", "s1"),
            node("MaxPool", &["xd"], &["p"]),
            q("p", "pq", "s1"),
            dq("pq", "y", "s1"),
        ]);
        assert_eq!(run_on_integers(&mut g), 1);
        assert_eq!(ops(&g), ["QuantizeLinear", "MaxPool", "DequantizeLinear"]);
        assert_eq!(g.node[1].input, ["xq"]);
        assert_eq!(g.node[1].output, ["pq"]);
        assert_eq!(g.node[2].input[0], "pq");
    }

    #[test]
    fn different_parameters_or_padding_are_left_alone() {
        let mut g = graph(vec![
            q("x", "xq", "s1"),
            dq("xq", "xd", "s1"),
            node("MaxPool", &["xd"], &["p"]),
            q("p", "pq", "s2"),
            dq("pq", "y", "s2"),
        ]);
        assert_eq!(run_on_integers(&mut g), 0);
        let mut padded = node("MaxPool", &["xd"], &["p"]);
        padded.attribute.push(ints("pads", &[1, 1, 1, 1]));
        let mut g =
            graph(vec![q("x", "xq", "s1"), dq("xq", "xd", "s1"), padded, q("p", "pq", "s1"), dq("pq", "y", "s1")]);
        assert_eq!(run_on_integers(&mut g), 0);
    }

    #[test]
    fn a_dequantized_value_used_elsewhere_is_kept() {
        let mut g = graph(vec![
            q("x", "xq", "s1"),
            dq("xq", "xd", "s1"),
            node("Flatten", &["xd"], &["f"]),
            q("f", "fq", "s1"),
            dq("fq", "y", "s1"),
            node("Relu", &["xd"], &["other"]),
        ]);
        assert_eq!(run_on_integers(&mut g), 1);
        assert_eq!(ops(&g), ["QuantizeLinear", "DequantizeLinear", "Flatten", "DequantizeLinear", "Relu"]);
    }

    #[test]
    fn an_fp32_value_read_by_another_node_is_kept() {
        let mut g = graph(vec![
            q("x", "xq", "s1"),
            dq("xq", "xd", "s1"),
            node("MaxPool", &["xd"], &["p"]),
            q("p", "pq", "s1"),
            dq("pq", "y", "s1"),
            node("Relu", &["p"], &["other"]),
        ]);
        assert_eq!(run_on_integers(&mut g), 0);
    }
}
