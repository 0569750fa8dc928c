//! `DQ(x) → Conv/Gemm/MatMul(DQ(w), bias) → Q` becomes one integer layer
//! ([`crate::int8`]): the sums run in i32 on the int8 tensors, then the graph's own
//! steps (bias, Q, and an MLP's `DQ → Add(bias) → Q`) run per output value in the same order and
//! float arithmetic. A final `DQ` that is a graph output is folded in too, so the layer writes
//! the float result.
//!
//! Only the exact form is taken: constant int8/uint8 weights with per-tensor or per-output-feature
//! parameters, constant biases, per-tensor activations, one group, attributes Drover knows. The
//! rest stays as it was.

use tract_onnx::pb::{AttributeProto, GraphProto, NodeProto, attribute_proto::AttributeType};

use super::constant::{INT32, floats, initializer, ints};
use super::graph::{consumers, is_graph_output};
use super::params::{self, INT8, QuantParams, UINT8};
use crate::int8::epilogue::{Quant, Step};
use crate::int8::pool::Pool;
use crate::int8::{DOMAIN, FusedSpec, Int8Kernels, Layer, OP_TYPE};

/// Replaces every layer it can; returns how many.
pub(super) fn fuse_layers(graph: &mut GraphProto, kernels: Int8Kernels) -> usize {
    let mut done = 0;
    while let Some(plan) = find(graph, kernels) {
        apply(graph, plan);
        done += 1;
    }
    if done > 0 {
        remove_unread_dequantize(graph);
    }
    done
}

/// One fusion: the node to replace, its replacement, and the nodes it absorbs.
struct Plan {
    at: usize,
    node: NodeProto,
    absorbed: Vec<usize>,
}

fn apply(graph: &mut GraphProto, mut plan: Plan) {
    log::debug!("qdq: '{}' ({}) now one int8 layer", graph.node[plan.at].name, graph.node[plan.at].op_type);
    graph.node[plan.at] = plan.node;
    plan.absorbed.sort_unstable();
    plan.absorbed.dedup();
    for i in plan.absorbed.into_iter().rev() {
        graph.node.remove(i);
    }
}

fn find(graph: &GraphProto, kernels: Int8Kernels) -> Option<Plan> {
    let users = consumers(graph);
    let producer = |name: &str| graph.node.iter().position(|n| n.output.iter().any(|o| o == name));
    let only_reader = |name: &str| match users.get(name).map(Vec::as_slice) {
        Some([one]) if !is_graph_output(graph, name) => Some(*one),
        _ => None,
    };
    for (at, node) in graph.node.iter().enumerate() {
        if !node.domain.is_empty() || node.output.len() != 1 {
            continue;
        }
        let Some(layer) = layer_of(node) else { continue };
        let (Some(x_name), Some(w_name)) = (node.input.first(), node.input.get(1)) else { continue };
        // x: a per-tensor DQ of an integer tensor.
        let Some(x_dq) = producer(x_name).map(|i| &graph.node[i]) else { continue };
        if !is_plain(x_dq, "DequantizeLinear") {
            continue;
        }
        let Some(px) = params::of_node(graph, x_dq) else { continue };
        // w: a DQ of a constant.
        let Some(w_dq) = producer(w_name).map(|i| &graph.node[i]) else { continue };
        if !is_plain(w_dq, "DequantizeLinear") {
            continue;
        }
        let Some(w) = initializer(graph, &w_dq.input[0]) else { continue };
        let rank = if matches!(layer, Layer::Conv { .. }) { 4 } else { 2 };
        if w.dims.len() != rank || !matches!(w.data_type, INT8 | UINT8) {
            continue;
        }
        let features_axis = match layer {
            Layer::Linear { transposed: false } => 1,
            _ => 0,
        };
        let Some(features) = w.dims.get(features_axis).and_then(|d| usize::try_from(*d).ok()) else { continue };
        let Some((w_scales, w_zps)) = weight_params(graph, w_dq, w.data_type, features_axis, features) else {
            continue;
        };
        let mut steps = Vec::new();
        if let Some(bias) = node.input.get(2).filter(|b| !b.is_empty()) {
            let Some(b) = constant_vector(graph, bias, features, &producer) else { continue };
            steps.push(Step::Bias(b));
        }
        // The layer's output: read by one per-tensor Q only.
        let Some(q_at) = only_reader(&node.output[0]) else { continue };
        let Some(mut pq) = quantize_params(graph, &graph.node[q_at]) else { continue };
        steps.push(Step::Quantize(quant(&pq)));
        let mut absorbed = vec![q_at];
        let mut out_at = q_at;
        // An MLP's bias after the requantization: Q → DQ → Add(constant) → Q.
        if matches!(layer, Layer::Linear { .. })
            && let Some((dq_at, add_at, q2_at, bias, p2)) =
                bias_after(graph, out_at, &pq, features, &only_reader, &producer)
        {
            steps.extend([Step::Dequantize(quant(&pq)), Step::Bias(bias), Step::Quantize(quant(&p2))]);
            absorbed.extend([dq_at, add_at, q2_at]);
            out_at = q2_at;
            pq = p2;
        }
        let mut output = graph.node[out_at].output[0].clone();
        // The int8 MaxPool after a conv (`movement` ran first): the layer pools its own output.
        let mut pool = None;
        if matches!(layer, Layer::Conv { .. })
            && let Some(pool_at) = only_reader_any(&users, &output)
            && !is_graph_output(graph, &output)
            && let Some(p) = max_pool(&graph.node[pool_at])
        {
            pool = Some(p);
            absorbed.push(pool_at);
            output = graph.node[pool_at].output[0].clone();
        }
        // A last DQ that is a graph output: the layer writes the floats itself.
        if let Some(dq_at) = only_reader_any(&users, &output)
            && let dq = &graph.node[dq_at]
            && is_plain(dq, "DequantizeLinear")
            && pool.is_none()
            && is_graph_output(graph, &dq.output[0])
            && !is_graph_output(graph, &output)
            && params::of_node(graph, dq).is_some_and(|p| p.same_as(&pq))
        {
            steps.push(Step::Dequantize(quant(&pq)));
            absorbed.push(dq_at);
            output = dq.output[0].clone();
        }
        let spec = FusedSpec {
            layer,
            input: quant(&px),
            weight_zero_points: w_zps,
            weight_scales: w_scales,
            steps,
            pool,
            kernels,
        };
        let Ok(json) = serde_json::to_vec(&spec) else { continue };
        let fused = NodeProto {
            name: node.name.clone(),
            op_type: OP_TYPE.into(),
            domain: DOMAIN.into(),
            input: vec![x_dq.input[0].clone(), w_dq.input[0].clone()],
            output: vec![output],
            attribute: vec![AttributeProto {
                name: "spec".into(),
                r#type: AttributeType::String as i32,
                s: json,
                ..Default::default()
            }],
            ..Default::default()
        };
        return Some(Plan { at, node: fused, absorbed });
    }
    None
}

/// The node's only reader, even when the value is also a graph output.
fn only_reader_any(users: &std::collections::HashMap<&str, Vec<usize>>, name: &str) -> Option<usize> {
    match users.get(name).map(Vec::as_slice) {
        Some([one]) => Some(*one),
        _ => None,
    }
}

/// A default-domain node of this type with one output and its data input present.
fn is_plain(node: &NodeProto, op: &str) -> bool {
    node.op_type == op
        && node.domain.is_empty()
        && node.output.len() == 1
        && node.input.first().is_some_and(|i| !i.is_empty())
}

fn quant(p: &QuantParams) -> Quant {
    Quant { scale: p.scale, zero_point: p.zero_point, signed: p.dtype == INT8 }
}

/// A per-tensor QuantizeLinear's parameters.
fn quantize_params(graph: &GraphProto, q: &NodeProto) -> Option<QuantParams> {
    if !is_plain(q, "QuantizeLinear") || q.attribute.iter().any(|a| a.name == "saturate" || a.name == "output_dtype") {
        return None;
    }
    params::of_node(graph, q)
}

/// Which layer `node` is, when its attributes are all understood.
fn layer_of(node: &NodeProto) -> Option<Layer> {
    match node.op_type.as_str() {
        "MatMul" if node.attribute.is_empty() && node.input.len() == 2 => Some(Layer::Linear { transposed: false }),
        "Gemm" if (2..=3).contains(&node.input.len()) => {
            let mut transposed = false;
            for a in &node.attribute {
                match a.name.as_str() {
                    "alpha" | "beta" if a.f == 1.0 => {}
                    "transA" if a.i == 0 => {}
                    "transB" if a.i == 0 || a.i == 1 => transposed = a.i == 1,
                    _ => return None,
                }
            }
            Some(Layer::Linear { transposed })
        }
        "Conv" if (2..=3).contains(&node.input.len()) => {
            let (mut pads, mut strides, mut dilations) = ([0usize; 4], [1usize; 2], [1usize; 2]);
            let fill = |dst: &mut [usize], v: &[i64]| {
                (v.len() == dst.len()).then(|| {
                    for (d, s) in dst.iter_mut().zip(v) {
                        *d = usize::try_from(*s).ok().filter(|s| *s <= 1 << 16)?;
                    }
                    Some(())
                })?
            };
            for a in &node.attribute {
                match a.name.as_str() {
                    "group" if a.i == 1 => {}
                    "auto_pad" if matches!(a.s.as_slice(), b"" | b"NOTSET") => {}
                    "kernel_shape" if a.ints.len() == 2 => {}
                    "pads" => fill(&mut pads, &a.ints)?,
                    "strides" => fill(&mut strides, &a.ints)?,
                    "dilations" => fill(&mut dilations, &a.ints)?,
                    _ => return None,
                }
            }
            if strides.contains(&0) || dilations.contains(&0) {
                return None;
            }
            Some(Layer::Conv { pads, strides, dilations })
        }
        _ => None,
    }
}

/// An unpadded 2-D MaxPool with one output and only attributes Drover knows.
fn max_pool(node: &NodeProto) -> Option<Pool> {
    if !is_plain(node, "MaxPool") {
        return None;
    }
    let (mut kernel, mut strides, mut dilations) = (None, [1usize; 2], [1usize; 2]);
    let pair = |v: &[i64]| match v {
        [a, b] => Some([usize::try_from(*a).ok()?, usize::try_from(*b).ok()?])
            .filter(|p| p.iter().all(|d| (1..=1 << 16).contains(d))),
        _ => None,
    };
    for a in &node.attribute {
        match a.name.as_str() {
            "kernel_shape" => kernel = Some(pair(&a.ints)?),
            "strides" => strides = pair(&a.ints)?,
            "dilations" => dilations = pair(&a.ints)?,
            "pads" if a.ints.iter().all(|p| *p == 0) => {}
            "auto_pad" if matches!(a.s.as_slice(), b"" | b"NOTSET" | b"VALID") => {}
            "ceil_mode" | "storage_order" if a.i == 0 => {}
            _ => return None,
        }
    }
    Some(Pool { kernel: kernel?, strides, dilations })
}

/// The weight DQ's scales and zero points: one each, or one per feature along `axis`.
fn weight_params(
    graph: &GraphProto,
    dq: &NodeProto,
    dtype: i32,
    axis: usize,
    features: usize,
) -> Option<(Vec<f32>, Vec<i32>)> {
    let mut dq_axis = 1i64;
    for a in &dq.attribute {
        match a.name.as_str() {
            "axis" => dq_axis = a.i,
            "block_size" if a.i == 0 => {}
            _ => return None,
        }
    }
    let scale = initializer(graph, dq.input.get(1)?)?;
    let scales = floats(scale)?;
    if scales.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return None;
    }
    let zps = match dq.input.get(2).filter(|z| !z.is_empty()) {
        Some(z) => {
            let z = initializer(graph, z)?;
            (z.data_type == dtype && z.dims == scale.dims).then_some(())?;
            ints(z)?
        }
        None if dtype == UINT8 || dtype == INT8 => vec![0; scales.len()],
        None => return None,
    };
    let per_tensor = scale.dims.iter().product::<i64>() == 1 && scale.dims.len() <= 1;
    if per_tensor {
        return Some((scales, zps));
    }
    let axis_ok = scale.dims.len() == 1 && (dq_axis == axis as i64 || dq_axis == axis as i64 - 4);
    (axis_ok && scales.len() == features).then_some((scales, zps))
}

/// A constant of `features` floats: an f32 initializer, or a DQ of an integer initializer.
fn constant_vector(
    graph: &GraphProto,
    name: &str,
    features: usize,
    producer: &dyn Fn(&str) -> Option<usize>,
) -> Option<Vec<f32>> {
    let shaped =
        |dims: &[i64]| dims.iter().product::<i64>() == features as i64 && dims.last() == Some(&(features as i64));
    if let Some(t) = initializer(graph, name) {
        return shaped(&t.dims).then(|| floats(t))?;
    }
    let dq = &graph.node[producer(name)?];
    if !is_plain(dq, "DequantizeLinear") || dq.attribute.iter().any(|a| a.name != "axis") {
        return None;
    }
    let q = initializer(graph, &dq.input[0])?;
    if !shaped(&q.dims) || !matches!(q.data_type, INT8 | UINT8 | INT32) {
        return None;
    }
    let values = ints(q)?;
    let scale = floats(initializer(graph, dq.input.get(1)?)?)?;
    let zp = match dq.input.get(2).filter(|z| !z.is_empty()) {
        Some(z) => {
            let z = initializer(graph, z)?;
            (z.data_type == q.data_type).then_some(())?;
            ints(z)?
        }
        None => vec![0],
    };
    // Per tensor, or per feature: onnxruntime's per-channel quantizer writes each int32 bias at
    // x_scale · w_scale[c], so its scale is a vector along the bias's one axis.
    let per_feature = |n: usize| n == 1 || (n == features && q.dims.len() == 1);
    if !per_feature(scale.len()) || !per_feature(zp.len()) || scale.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let at = |v: &[f32], i: usize| v[if v.len() == 1 { 0 } else { i }];
    let zp: Vec<f32> = zp.iter().map(|z| *z as f32).collect();
    // DequantizeLinear's own arithmetic: (q − z) · s, in float.
    Some(values.iter().enumerate().map(|(i, v)| (*v as f32 - at(&zp, i)) * at(&scale, i)).collect())
}

type Reader<'a> = dyn Fn(&str) -> Option<usize> + 'a;

/// `Q(at) → DQ → Add(constant of `features`) → Q2`, each read only by the next:
/// `(dq, add, q2, bias, q2 params)`.
fn bias_after(
    graph: &GraphProto,
    q_at: usize,
    pq: &QuantParams,
    features: usize,
    only_reader: &Reader<'_>,
    producer: &Reader<'_>,
) -> Option<(usize, usize, usize, Vec<f32>, QuantParams)> {
    let dq_at = only_reader(&graph.node[q_at].output[0])?;
    let dq = &graph.node[dq_at];
    if !is_plain(dq, "DequantizeLinear") || !params::of_node(graph, dq)?.same_as(pq) {
        return None;
    }
    let add_at = only_reader(&dq.output[0])?;
    let add = &graph.node[add_at];
    if add.op_type != "Add" || !add.domain.is_empty() || add.input.len() != 2 || add.output.len() != 1 {
        return None;
    }
    let other = if add.input[0] == dq.output[0] { &add.input[1] } else { &add.input[0] };
    if other == &dq.output[0] {
        return None;
    }
    let bias = constant_vector(graph, other, features, producer)?;
    let q2_at = only_reader(&add.output[0])?;
    let p2 = quantize_params(graph, &graph.node[q2_at])?;
    Some((dq_at, add_at, q2_at, bias, p2))
}

/// Drops DequantizeLinear nodes nothing reads any more (the fused layers' weights and inputs).
fn remove_unread_dequantize(graph: &mut GraphProto) {
    loop {
        let users = consumers(graph);
        let unread = graph.node.iter().position(|n| {
            n.op_type == "DequantizeLinear"
                && n.domain.is_empty()
                && n.output.iter().all(|o| !users.contains_key(o.as_str()) && !is_graph_output(graph, o))
        });
        match unread {
            Some(i) => {
                graph.node.remove(i);
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_graph::*;
    use super::params::FLOAT;
    use super::*;
    use tract_onnx::pb::TensorProto;

    fn weights(name: &str, dims: &[i64]) -> TensorProto {
        let n: i64 = dims.iter().product();
        TensorProto {
            name: name.into(),
            data_type: INT8,
            dims: dims.to_vec(),
            int32_data: (0..n).map(|i| (i % 7) as i32 - 3).collect(),
            ..Default::default()
        }
    }

    /// `x → Q → DQ → MatMul(DQ(w)) → Q → DQ(y)`.
    fn matmul_graph() -> GraphProto {
        let mut g = graph(vec![
            q("x", "xq", "s1"),
            dq("xq", "xd", "s1"),
            dq("w", "wd", "s2"),
            node("MatMul", &["xd", "wd"], &["m"]),
            q("m", "mq", "s1"),
            dq("mq", "y", "s1"),
        ]);
        g.initializer.push(weights("w", &[4, 3]));
        g
    }

    /// onnxruntime's per-channel quantizer: each int32 bias value at its own scale.
    #[test]
    fn a_bias_dequantized_per_feature_is_a_constant_vector() {
        let tensor = |name: &str, data_type: i32, int32_data: Vec<i32>, float_data: Vec<f32>| TensorProto {
            name: name.into(),
            data_type,
            dims: vec![3],
            int32_data,
            float_data,
            ..Default::default()
        };
        let mut g = graph(vec![node("DequantizeLinear", &["bq", "bs", "bz"], &["b"])]);
        g.initializer.extend([
            tensor("bq", INT32, vec![10, -20, 30], vec![]),
            tensor("bs", FLOAT, vec![], vec![0.5, 0.25, 0.125]),
            tensor("bz", INT32, vec![0, 0, 0], vec![]),
        ]);
        let producer = |name: &str| g.node.iter().position(|n| n.output.iter().any(|o| o == name));
        assert_eq!(constant_vector(&g, "b", 3, &producer), Some(vec![5.0, -5.0, 3.75]));
        // A scale per feature of a bias of another length is not one.
        assert_eq!(constant_vector(&g, "b", 1, &producer), None);
    }

    #[test]
    fn matmul_between_q_and_dq_becomes_one_layer_with_float_output() {
        let mut g = matmul_graph();
        assert_eq!(fuse_layers(&mut g, Int8Kernels::Native), 1);
        assert_eq!(ops(&g), ["QuantizeLinear", OP_TYPE]);
        let fused = &g.node[1];
        assert_eq!(
            (fused.input.clone(), fused.output.clone()),
            (vec!["xq".to_string(), "w".into()], vec!["y".to_string()])
        );
        let spec: FusedSpec = serde_json::from_slice(&fused.attribute[0].s).expect("spec");
        assert_eq!(spec.layer, Layer::Linear { transposed: false });
        assert_eq!(spec.steps.len(), 2, "{:?}", spec.steps);
    }

    /// `xq → DQ → Conv(DQ(w)) → Q → MaxPool (int8, after `movement`) → DQ(y)`.
    fn conv_pool_graph(pool_attributes: Vec<AttributeProto>) -> GraphProto {
        let mut pool = node("MaxPool", &["cq"], &["pq"]);
        pool.attribute = pool_attributes;
        let mut g = graph(vec![
            dq("xq", "xd", "s1"),
            dq("w", "wd", "s2"),
            node("Conv", &["xd", "wd"], &["c"]),
            q("c", "cq", "s1"),
            pool,
            dq("pq", "y", "s1"),
        ]);
        g.initializer.push(weights("w", &[2, 1, 3, 3]));
        g
    }

    fn ints_attribute(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), ints: v.to_vec(), r#type: 7, ..Default::default() }
    }

    #[test]
    fn an_int8_max_pool_after_a_conv_joins_the_layer() {
        let mut g = conv_pool_graph(vec![ints_attribute("kernel_shape", &[2, 2]), ints_attribute("strides", &[2, 2])]);
        assert_eq!(fuse_layers(&mut g, Int8Kernels::Native), 1);
        assert_eq!(ops(&g), [OP_TYPE, "DequantizeLinear"]);
        assert_eq!(g.node[0].output, ["pq"]);
        let spec: FusedSpec = serde_json::from_slice(&g.node[0].attribute[0].s).expect("spec");
        assert_eq!(spec.pool, Some(Pool { kernel: [2, 2], strides: [2, 2], dilations: [1, 1] }));
        // A padded pool, or one with ceil mode, stays a MaxPool of its own.
        for odd in [
            ints_attribute("pads", &[1, 1, 1, 1]),
            AttributeProto { name: "ceil_mode".into(), i: 1, r#type: 2, ..Default::default() },
        ] {
            let mut g = conv_pool_graph(vec![ints_attribute("kernel_shape", &[2, 2]), odd]);
            assert_eq!(fuse_layers(&mut g, Int8Kernels::Native), 1);
            assert_eq!(ops(&g), [OP_TYPE, "MaxPool", "DequantizeLinear"]);
        }
    }

    #[test]
    fn anything_unusual_is_left_alone() {
        // A weight that is not a constant.
        let mut g = matmul_graph();
        g.initializer.retain(|t| t.name != "w");
        assert_eq!(fuse_layers(&mut g, Int8Kernels::Native), 0);
        // The matmul's float result also read elsewhere.
        let mut g = matmul_graph();
        g.node.push(node("Relu", &["m"], &["other"]));
        assert_eq!(fuse_layers(&mut g, Int8Kernels::Native), 0);
        // A Gemm with alpha ≠ 1.
        let mut g = matmul_graph();
        g.node[3].op_type = "Gemm".into();
        g.node[3].attribute.push(AttributeProto { name: "alpha".into(), f: 2.0, r#type: 1, ..Default::default() });
        assert_eq!(fuse_layers(&mut g, Int8Kernels::Native), 0);
        // A grouped conv.
        let mut conv = node("Conv", &["xd", "wd"], &["m"]);
        conv.attribute.push(AttributeProto { name: "group".into(), i: 2, r#type: 2, ..Default::default() });
        assert_eq!(layer_of(&conv), None);
    }
}
