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

use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto};

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
        let params = (node.op_type == "QuantizeLinear" && node.domain.is_empty() && node.input.len() >= 2)
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
            && n.input.first() == Some(out)
            && params::of_node(graph, n).is_some_and(|d| d.same_as(p))
    });
    let graph_outputs = users.iter().filter(|&&u| is_graph_output(graph, &graph.node[u].output[0])).count();
    (all_dq && graph_outputs <= 1).then_some(users)
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
