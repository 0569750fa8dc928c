//! QuantizeLinear as branch-free arithmetic tract vectorises, and Q→DQ pairs as one fp32 chain.
//!
//! tract 0.23 evaluates QuantizeLinear one element at a time through a rounding function that
//! branches on the sign (`round_ties_to_even`), about 7 ns per element on random activations:
//! the conv1 output quantization alone took ~44 µs, a third of the fp32 model's whole run.
//! The same result comes from ops tract runs with SIMD and fuses into the preceding matmul:
//!
//! `v = clamp(x · (1/s), lo − z, hi − z)`; `(v + M) − M` with `M = 1.5·2²³` rounds `v` to the
//! nearest integer, ties to even (IEEE round-to-nearest, exact for |v| < 2²²; the clamp keeps
//! |v| ≤ 255). Clamping before rounding is the same as after, since the bounds are integers.
//!
//! * Q followed only by DQs with the same parameters (the usual QDQ "fake quantization" around
//!   a float operator): `… − M` then `· s` gives exactly `(q − z) · s`, in fp32, no integer
//!   tensor at all.
//! * Any other Q (feeding an int8 MaxPool after `movement`, or a graph output): `… − (M − z)`
//!   then a Cast to the integer type gives exactly `q`.
//!
//! `1/s` is computed as tract's own QuantizeLinear does (`f32::recip`), so results are the same
//! integers as before the rewrite, not merely close.

use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, ValueInfoProto, type_proto};

use super::graph::{consumers, fresh, is_graph_output, rename_uses};
use super::params::{self, QuantParams, f32_scalar};

/// 1.5 · 2²³: adding it leaves a float whose unit is 1, so the addition rounds to an integer.
const ROUNDER: f32 = 12_582_912.0;

/// What the chain rewrite did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Chains {
    /// Q→DQ pairs now one fp32 chain.
    pub fake_quant: usize,
    /// Q nodes now arithmetic plus a Cast.
    pub quantize: usize,
}

/// Rewrites every QuantizeLinear with per-tensor constant parameters.
pub(super) fn rewrite_quantize(graph: &mut GraphProto) -> Chains {
    let mut done = Chains::default();
    let mut i = 0;
    while i < graph.node.len() {
        let node = &graph.node[i];
        let params = (node.op_type == "QuantizeLinear"
            && node.domain.is_empty()
            && node.input.len() >= 2
            && node.output.len() == 1
            && worth_rewriting(graph, &node.input[0]))
        .then(|| params::of_node(graph, node))
        .flatten();
        let Some(p) = params else {
            i += 1;
            continue;
        };
        let q = graph.node.remove(i);
        let inserted = match fake_quant_targets(graph, &q, &p) {
            Some(dqs) => {
                done.fake_quant += 1;
                fake_quant(graph, i, q, p, dqs)
            }
            None => {
                done.quantize += 1;
                quantize(graph, i, q, p)
            }
        };
        i += inserted;
    }
    done
}

/// Whether tract will run a chain on `x` in one vectorised pass. With every graph input of fixed
/// shape it fuses the chain into the producing matmul's epilogue or into one `OptBinChain`.
/// With a symbolic axis (an MLP's batch) it does so only right after a Conv, MatMul, Gemm or
/// (bias) Add; elsewhere it runs each of the six operators on its own (~1 µs each on a 64-wide
/// row), which costs more than its scalar QuantizeLinear on such small tensors: those stay.
fn worth_rewriting(graph: &GraphProto, x: &str) -> bool {
    let init: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    if graph.input.iter().filter(|i| !init.contains(i.name.as_str())).all(has_fixed_shape) {
        return true;
    }
    graph.node.iter().find(|n| n.output.iter().any(|o| o == x)).is_some_and(|producer| {
        producer.domain.is_empty() && matches!(producer.op_type.as_str(), "Conv" | "MatMul" | "Gemm" | "Add")
    })
}

fn has_fixed_shape(value: &ValueInfoProto) -> bool {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    let Some(type_proto::Value::TensorType(t)) = value.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return false;
    };
    t.shape.as_ref().is_some_and(|s| s.dim.iter().all(|d| matches!(d.value, Some(Value::DimValue(n)) if n > 0)))
}

/// The DQ nodes reading `q`'s output, when they are its only readers, share its parameters,
/// and at most one of their outputs is a graph output.
fn fake_quant_targets(graph: &GraphProto, q: &NodeProto, p: &QuantParams) -> Option<Vec<usize>> {
    let out = q.output.first()?;
    if is_graph_output(graph, out) {
        return None;
    }
    let users = consumers(graph).remove(out.as_str())?;
    let all_dq = users.iter().all(|&u| {
        let n = &graph.node[u];
        n.op_type == "DequantizeLinear"
            && n.domain.is_empty()
            && n.output.len() == 1
            && n.input.first() == Some(out)
            && params::of_node(graph, n).is_some_and(|d| d.same_as(p))
    });
    if !all_dq {
        return None;
    }
    let graph_outputs = users.iter().filter(|&&u| is_graph_output(graph, &graph.node[u].output[0])).count();
    (graph_outputs <= 1).then_some(users)
}

/// Replaces `q` and its DQ readers with `x · (1/s)`, clamp, round, `· s`. Returns the number of
/// nodes now at `at` in place of `q` (the DQs are removed from later positions).
fn fake_quant(graph: &mut GraphProto, at: usize, q: NodeProto, p: QuantParams, mut dqs: Vec<usize>) -> usize {
    // The chain's output takes the name of the DQ output that is a graph output, if any.
    dqs.sort_by_key(|&u| !is_graph_output(graph, &graph.node[u].output[0]));
    let names: Vec<String> = dqs.iter().map(|&u| graph.node[u].output[0].clone()).collect();
    // `dqs` index the graph with `q` already removed; all are after `at` (they read its output).
    let mut by_index = dqs.clone();
    by_index.sort_unstable();
    for u in by_index.into_iter().rev() {
        graph.node.remove(u);
    }
    let out = names[0].clone();
    for other in &names[1..] {
        rename_uses(graph, other, &out);
    }
    let rounded = rounding_steps(graph, &q, &p, 0);
    let mut nodes = rounded.nodes;
    let scale = constant(graph, &q.name, "scale", p.scale);
    nodes.push(binary(&q.name, "Mul", &rounded.output, &scale, &out));
    insert(graph, at, nodes)
}

/// Replaces `q` with `x · (1/s)`, clamp, round, `+ z`, Cast: the same integers, same name.
fn quantize(graph: &mut GraphProto, at: usize, q: NodeProto, p: QuantParams) -> usize {
    let rounded = rounding_steps(graph, &q, &p, p.zero_point);
    let mut nodes = rounded.nodes;
    let to = AttributeProto { name: "to".into(), r#type: 2, i: p.dtype as i64, ..Default::default() };
    let mut cast = binary(&q.name, "Cast", &rounded.output, "", &q.output[0]);
    cast.input.truncate(1);
    cast.attribute.push(to);
    nodes.push(cast);
    insert(graph, at, nodes)
}

struct Steps {
    nodes: Vec<NodeProto>,
    output: String,
}

/// `round(clamp(x · (1/s), lo − z, hi − z)) + offset`, exactly, as Mul, Max, Min, Add, Sub.
fn rounding_steps(graph: &mut GraphProto, q: &NodeProto, p: &QuantParams, offset: i32) -> Steps {
    let (lo, hi) = p.range();
    let x = q.input[0].clone();
    let inv = constant(graph, &q.name, "inv_scale", p.scale.recip());
    let lo = constant(graph, &q.name, "lo", (lo - p.zero_point) as f32);
    let hi = constant(graph, &q.name, "hi", (hi - p.zero_point) as f32);
    let up = constant(graph, &q.name, "rounder", ROUNDER);
    let down = constant(graph, &q.name, "unrounder", ROUNDER - offset as f32);
    let mut nodes = Vec::new();
    let mut wire = x;
    for (op, operand, step) in
        [("Mul", inv, "mul"), ("Max", lo, "max"), ("Min", hi, "min"), ("Add", up, "round"), ("Sub", down, "unround")]
    {
        let out = fresh_value(graph, &nodes, &format!("{}.drover_{step}", q.name));
        nodes.push(binary(&q.name, op, &wire, &operand, &out));
        wire = out;
    }
    Steps { nodes, output: wire }
}

/// A fresh name, also unused by the nodes about to be inserted.
fn fresh_value(graph: &GraphProto, pending: &[NodeProto], base: &str) -> String {
    let mut name = fresh(graph, base);
    let mut n = 1;
    while pending.iter().any(|p| p.output.contains(&name)) {
        name = fresh(graph, &format!("{base}.p{n}"));
        n += 1;
    }
    name
}

fn constant(graph: &mut GraphProto, prefix: &str, what: &str, value: f32) -> String {
    let name = fresh(graph, &format!("{prefix}.drover_{what}"));
    graph.initializer.push(f32_scalar(name.clone(), value));
    name
}

fn binary(prefix: &str, op: &str, a: &str, b: &str, out: &str) -> NodeProto {
    NodeProto {
        name: format!("{prefix}.{}", out.rsplit('.').next().unwrap_or(op)),
        op_type: op.into(),
        input: vec![a.to_string(), b.to_string()],
        output: vec![out.to_string()],
        ..Default::default()
    }
}

fn insert(graph: &mut GraphProto, at: usize, nodes: Vec<NodeProto>) -> usize {
    let n = nodes.len();
    graph.node.splice(at..at, nodes);
    n
}

#[cfg(test)]
mod tests {
    use super::super::test_graph::*;
    use super::*;

    #[test]
    fn q_dq_pair_becomes_one_fp32_chain_named_like_the_dq_output() {
        let mut g = graph(vec![q("x", "xq", "s1"), dq("xq", "y", "s1")]);
        let done = rewrite_quantize(&mut g);
        assert_eq!(done, Chains { fake_quant: 1, quantize: 0 });
        assert_eq!(ops(&g), ["Mul", "Max", "Min", "Add", "Sub", "Mul"]);
        assert_eq!(g.node.last().map(|n| n.output[0].as_str()), Some("y"));
        assert_eq!(g.node[0].input[0], "x");
    }

    #[test]
    fn q_feeding_an_integer_op_becomes_arithmetic_and_cast() {
        let mut g = graph(vec![q("x", "xq", "s2"), node("MaxPool", &["xq"], &["p"]), dq("p", "y", "s2")]);
        let done = rewrite_quantize(&mut g);
        assert_eq!(done, Chains { fake_quant: 0, quantize: 1 });
        assert_eq!(ops(&g), ["Mul", "Max", "Min", "Add", "Sub", "Cast", "MaxPool", "DequantizeLinear"]);
        assert_eq!(g.node[5].output, ["xq"]);
        assert_eq!(g.node[5].attribute[0].i, 3);
    }

    #[test]
    fn two_dq_readers_share_one_chain() {
        let mut g =
            graph(vec![q("x", "xq", "s1"), dq("xq", "a", "s1"), dq("xq", "b", "s1"), node("Add", &["a", "b"], &["y"])]);
        rewrite_quantize(&mut g);
        assert_eq!(ops(&g), ["Mul", "Max", "Min", "Add", "Sub", "Mul", "Add"]);
        assert_eq!(g.node[6].input, ["a", "a"]);
    }

    #[test]
    fn with_a_symbolic_input_only_quantize_after_a_matmul_is_rewritten() {
        let symbolic = |mut g: GraphProto| {
            g.input[0] = tract_onnx::pb::ValueInfoProto { name: "x".into(), ..Default::default() };
            g
        };
        let mut g = symbolic(graph(vec![q("x", "xq", "s1"), dq("xq", "y", "s1")]));
        assert_eq!(rewrite_quantize(&mut g), Chains::default());
        let mut g = symbolic(graph(vec![node("Relu", &["x"], &["r"]), q("r", "rq", "s1"), dq("rq", "y", "s1")]));
        assert_eq!(rewrite_quantize(&mut g), Chains::default());
        let mut g = symbolic(graph(vec![node("MatMul", &["x", "x"], &["r"]), q("r", "rq", "s1"), dq("rq", "y", "s1")]));
        assert_eq!(rewrite_quantize(&mut g).fake_quant, 1);
        // Fixed shapes: everything is rewritten.
        let mut g = graph(vec![node("Relu", &["x"], &["r"]), q("r", "rq", "s1"), dq("rq", "y", "s1")]);
        assert_eq!(rewrite_quantize(&mut g).fake_quant, 1);
    }

    #[test]
    fn malformed_nodes_without_outputs_are_skipped_not_a_panic() {
        let mut g = graph(vec![q("x", "xq", "s1"), node("DequantizeLinear", &["xq", "s1", "s1_zp"], &[])]);
        assert_eq!(rewrite_quantize(&mut g), Chains { fake_quant: 0, quantize: 1 });
        let mut g = graph(vec![node("QuantizeLinear", &["x", "s1", "s1_zp"], &[])]);
        assert_eq!(rewrite_quantize(&mut g), Chains::default());
    }

    #[test]
    fn mismatched_dq_keeps_the_integer_tensor() {
        let mut g = graph(vec![q("x", "xq", "s1"), dq("xq", "y", "s2")]);
        assert_eq!(rewrite_quantize(&mut g), Chains { fake_quant: 0, quantize: 1 });
        assert_eq!(ops(&g), ["Mul", "Max", "Min", "Add", "Sub", "Cast", "DequantizeLinear"]);
    }

    /// The float identity the chain relies on, checked against tract's own rounding.
    #[test]
    fn adding_and_removing_the_rounder_rounds_half_to_even() {
        for v in [-128.0f32, -2.5, -1.5, -0.5, -0.49999997, 0.0, 0.5, 1.5, 2.5, 126.5, 127.0, 254.5, 255.0, 3.1] {
            let want = tract_onnx::prelude::round_ties_to_even(v);
            let got = (v + ROUNDER) - ROUNDER;
            assert_eq!(got, want, "{v}");
        }
    }
}
