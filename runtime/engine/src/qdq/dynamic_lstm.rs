//! onnxruntime's `com.microsoft::DynamicQuantizeLSTM`, rewritten into a standard ONNX `LSTM` over
//! the dequantized weights before the operator check.
//!
//! `quantize_dynamic(model_in, model_out)` with its defaults writes this contrib operator for
//! every LSTM whose weights are initializers. Its inputs are ONNX LSTM's (X, W, R, B,
//! sequence_lens, initial_h, initial_c, P) followed by W_scale, W_zero_point, R_scale and
//! R_zero_point; W and R are 8-bit integers stored transposed relative to ONNX LSTM
//! (`[num_directions, input_size, 4·hidden_size]` and `[num_directions, hidden_size,
//! 4·hidden_size]`, gates in the same i, o, f, c order), with one scale and zero point per
//! direction (`[num_directions]`) or per gate column (`[num_directions, 4·hidden_size]`,
//! `per_channel=True`). onnxruntime's kernel quantizes each step's input on the fly and multiplies
//! in integers; its float meaning is the ONNX LSTM over `(q − zero_point) · scale`. This pass
//! writes exactly that: a standard `LSTM` whose W and R are the dequantized weights, transposed
//! back to `[num_directions, 4·hidden_size, input_size]` and computed once at load (as float
//! initializers; the integer ones go when nothing else reads them). The answers differ from
//! onnxruntime's by the input quantization its kernel adds (the dynamic int8 tolerance,
//! `max|ref|/127`); the weights take four times the file's bytes in memory.
//!
//! A node is rewritten only when tract's LSTM computes what onnxruntime's kernel does: constant
//! weights, scales and zero points of the shapes the schema gives; direction `forward` or
//! `bidirectional` (tract takes the direction from W's shape, so `reverse` would run forward);
//! the default activations; no `clip`, no coupled input and forget gates. Anything else is left as
//! written, so the operator check refuses it with its hint.

use std::collections::HashSet;

use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};

use super::constant::{floats, initializer, ints, len};
use super::params::{FLOAT, INT8, UINT8};

/// The domain onnxruntime's contrib operators live in.
const MICROSOFT: &str = "com.microsoft";

/// The contrib operator this pass rewrites.
const OP: &str = "DynamicQuantizeLSTM";

/// Whether the main graph has a `DynamicQuantizeLSTM` (so the model needs a copy).
pub fn has_any(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| g.node.iter().any(is_target))
}

fn is_target(node: &NodeProto) -> bool {
    node.domain == MICROSOFT && node.op_type == OP
}

/// Rewrites every `DynamicQuantizeLSTM` of the main graph that is in a form the rewrite covers
/// into a standard `LSTM`; returns how many. Each node is replaced at once, with its weights, or
/// left untouched.
pub fn expand(model: &mut ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else { return 0 };
    let mut done = 0;
    let mut replaced: Vec<String> = Vec::new();
    for i in 0..graph.node.len() {
        if !is_target(&graph.node[i]) {
            continue;
        }
        match rewrite(graph, &graph.node[i]) {
            Some((lstm, weights)) => {
                log::debug!("dynamic_lstm: '{}' now a standard LSTM over dequantized weights", lstm.name);
                replaced.extend([1, 2, 8, 9, 10, 11].iter().filter_map(|&k| graph.node[i].input.get(k).cloned()));
                graph.node[i] = lstm;
                graph.initializer.extend(weights);
                done += 1;
            }
            None => log::debug!("dynamic_lstm: '{}' left as written", graph.node[i].name),
        }
    }
    drop_unread(graph, &replaced);
    done
}

/// The standard `LSTM` node and its two float weight initializers for `node`, or `None` when
/// `node` is not in a form the rewrite covers.
fn rewrite(graph: &GraphProto, node: &NodeProto) -> Option<(NodeProto, [TensorProto; 2])> {
    // All twelve inputs: the four quantization parameters are required.
    if node.input.len() != 12 || node.output.len() > 3 || node.output.iter().all(String::is_empty) {
        return None;
    }
    let input = |i: usize| node.input.get(i).map(String::as_str).filter(|s| !s.is_empty());
    let x = input(0)?;
    let w = initializer(graph, input(1)?)?;
    let r = initializer(graph, input(2)?)?;
    // W: [D, I, 4H], R: [D, H, 4H].
    let [d, i, four_h] = dims3(w)?;
    let [rd, h, r_four_h] = dims3(r)?;
    let covered = (d == 1 || d == 2) && rd == d && h.checked_mul(4) == Some(four_h) && r_four_h == four_h;
    if !covered {
        return None;
    }
    covered_attributes(node, d, h)?;
    let w_float = dequantize_transposed(graph, w, input(8)?, input(9)?)?;
    let r_float = dequantize_transposed(graph, r, input(10)?, input(11)?)?;
    let w_name = fresh(graph, &format!("{}_dequantized", w.name), &[]);
    let r_name = fresh(graph, &format!("{}_dequantized", r.name), std::slice::from_ref(&w_name));
    let weights = [
        TensorProto {
            name: w_name.clone(),
            dims: dims(&[d, four_h, i]),
            data_type: FLOAT,
            float_data: w_float,
            ..Default::default()
        },
        TensorProto {
            name: r_name.clone(),
            dims: dims(&[d, four_h, h]),
            data_type: FLOAT,
            float_data: r_float,
            ..Default::default()
        },
    ];
    // X, W, R, then B, sequence_lens, initial_h, initial_c and P as they were (trailing empty
    // optional inputs dropped).
    let mut inputs = vec![x.to_string(), w_name, r_name];
    inputs.extend(node.input[3..8].iter().cloned());
    while inputs.last().is_some_and(String::is_empty) {
        inputs.pop();
    }
    let lstm = NodeProto {
        name: node.name.clone(),
        op_type: "LSTM".into(),
        domain: String::new(),
        input: inputs,
        output: node.output.clone(),
        // The contrib operator's attributes are ONNX LSTM's (less `layout`), with the same meaning.
        attribute: node.attribute.clone(),
        ..Default::default()
    };
    Some((lstm, weights))
}

/// Whether every attribute is one tract's LSTM honours with the value onnxruntime's kernel uses:
/// `hidden_size` matching the weights, a direction matching their `num_directions` (`d`),
/// `input_forget` 0 and the default activations. `clip`, activation parameters and anything
/// unknown are not covered.
fn covered_attributes(node: &NodeProto, d: usize, h: usize) -> Option<()> {
    let mut seen = HashSet::new();
    let mut direction = b"forward".as_slice();
    for a in &node.attribute {
        seen.insert(a.name.as_str()).then_some(())?;
        let ok = match a.name.as_str() {
            "hidden_size" => usize::try_from(a.i).ok() == Some(h),
            "direction" => {
                direction = a.s.as_slice();
                true
            }
            "input_forget" => a.i == 0,
            "activations" => default_activations(&a.strings, d),
            _ => false,
        };
        ok.then_some(())?;
    }
    match (direction, d) {
        (b"forward", 1) | (b"bidirectional", 2) => Some(()),
        _ => None,
    }
}

/// `Sigmoid, Tanh, Tanh` once per direction (onnxruntime reads the names case-insensitively).
fn default_activations(names: &[Vec<u8>], d: usize) -> bool {
    const DEFAULT: [&[u8]; 3] = [b"sigmoid", b"tanh", b"tanh"];
    names.len() == 3 * d && names.iter().zip(DEFAULT.iter().cycle()).all(|(n, want)| n.eq_ignore_ascii_case(want))
}

/// A 3-D initializer's dims, all positive.
fn dims3(t: &TensorProto) -> Option<[usize; 3]> {
    let [a, b, c] = t.dims[..] else { return None };
    let positive = |v: i64| usize::try_from(v).ok().filter(|v| *v > 0);
    Some([positive(a)?, positive(b)?, positive(c)?])
}

fn dims(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&n| n as i64).collect()
}

/// The contrib operator's `[D, K, N]` integer weight `q` as ONNX LSTM's `[D, N, K]` floats:
/// `(q − zero_point) · scale`, the parameters per direction (`[D]`) or per column of N
/// (`[D, N]`), the zero point of `q`'s type. `None` for any other form, or a scale that is not
/// finite and ≥ 0.
fn dequantize_transposed(graph: &GraphProto, q: &TensorProto, scale: &str, zero_point: &str) -> Option<Vec<f32>> {
    let [d, k, n] = dims3(q)?;
    matches!(q.data_type, INT8 | UINT8).then_some(())?;
    let values = ints(q)?;
    let scale = initializer(graph, scale)?;
    let zero_point = initializer(graph, zero_point)?;
    let per_column = match scale.dims[..] {
        [sd] if sd == d as i64 => false,
        [sd, sn] if sd == d as i64 && sn == n as i64 => true,
        _ => return None,
    };
    let scales = floats(scale)?;
    if scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
        return None;
    }
    (zero_point.data_type == q.data_type && zero_point.dims == scale.dims && len(zero_point) == Some(scales.len()))
        .then_some(())?;
    let zero_points = ints(zero_point)?;
    let per_direction = if per_column { n } else { 1 };
    let mut out = Vec::with_capacity(values.len());
    for dir in 0..d {
        for col in 0..n {
            let p = dir * per_direction + if per_column { col } else { 0 };
            let (s, z) = (scales[p], zero_points[p]);
            // DequantizeLinear's arithmetic: |q − z| ≤ 255 is exact in f32.
            out.extend((0..k).map(|row| (values[(dir * k + row) * n + col] - z) as f32 * s));
        }
    }
    Some(out)
}

/// A value name starting with `base` that the graph and `taken` do not use.
fn fresh(graph: &GraphProto, base: &str, taken: &[String]) -> String {
    let mut name = base.to_string();
    let mut n = 1;
    while super::graph::name_taken(graph, &name) || taken.contains(&name) {
        name = format!("{base}.{n}");
        n += 1;
    }
    name
}

/// Removes the initializers in `names` that no node (subgraphs included) reads any more and that
/// are neither graph inputs nor outputs: the integer weights the float ones replaced.
fn drop_unread(graph: &mut GraphProto, names: &[String]) {
    fn read<'a>(graph: &'a GraphProto, out: &mut HashSet<&'a str>) {
        for node in &graph.node {
            out.extend(node.input.iter().map(String::as_str));
            for a in &node.attribute {
                a.g.iter().chain(&a.graphs).for_each(|g| read(g, out));
            }
        }
    }
    let mut used = HashSet::new();
    read(graph, &mut used);
    let unread: HashSet<String> = names
        .iter()
        .filter(|n| !used.contains(n.as_str()))
        .filter(|n| !graph.input.iter().chain(&graph.output).any(|v| &v.name == *n))
        .cloned()
        .collect();
    graph.initializer.retain(|t| !unread.contains(&t.name));
}

#[cfg(test)]
mod tests {
    use tract_onnx::pb::attribute_proto::AttributeType;
    use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
    use tract_onnx::pb::{AttributeProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto};

    use super::*;
    use crate::model::LoadOptions;
    use crate::tensor::{Tensor, TensorData};
    use crate::{LoadError, Model};

    const T: usize = 4;
    const BATCH: usize = 2;
    const I: usize = 3;
    const H: usize = 2;

    fn value(name: &str, dims: &[usize]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|&n| Dimension { value: Some(dimension::Value::DimValue(n as i64)), ..Default::default() })
            .collect();
        let tensor = type_proto::Tensor { elem_type: FLOAT, shape: Some(TensorShapeProto { dim }) };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
            ..Default::default()
        }
    }

    fn integers(name: &str, dims: &[usize], data_type: i32, v: Vec<i32>) -> TensorProto {
        TensorProto { name: name.into(), dims: super::dims(dims), data_type, int32_data: v, ..Default::default() }
    }

    fn reals(name: &str, dims: &[usize], v: Vec<f32>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: super::dims(dims),
            data_type: FLOAT,
            float_data: v,
            ..Default::default()
        }
    }

    fn int_attr(name: &str, i: i64) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
    }

    fn string_attr(name: &str, s: &str) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: AttributeType::String as i32, s: s.into(), ..Default::default() }
    }

    /// How the weights of a test LSTM are quantized.
    #[derive(Clone, Copy)]
    struct Form {
        directions: usize,
        per_column: bool,
        data_type: i32,
    }

    impl Form {
        /// One scale (and zero point) per direction, or per direction and gate column.
        fn params(&self) -> Vec<usize> {
            if self.per_column { vec![self.directions, 4 * H] } else { vec![self.directions] }
        }

        fn weights(&self, rows: usize, salt: usize) -> Vec<i32> {
            let n = self.directions * rows * 4 * H;
            let (lo, span) = if self.data_type == INT8 { (-128, 256) } else { (0, 256) };
            (0..n).map(|k| lo + ((k * 37 + salt * 11 + 5) % span) as i32).collect()
        }

        fn scales(&self, salt: f32) -> Vec<f32> {
            let n: usize = self.params().iter().product();
            (0..n).map(|k| (0.004 + 0.001 * (k % 5) as f32) * salt).collect()
        }

        /// onnxruntime's rules: per-column zero points are 0 (int8) or one value (uint8).
        fn zero_points(&self) -> Vec<i32> {
            let n: usize = self.params().iter().product();
            match (self.per_column, self.data_type) {
                (false, INT8) => (0..n).map(|k| 3 - 5 * k as i32).collect(),
                (false, _) => (0..n).map(|k| 120 + k as i32).collect(),
                (true, INT8) => vec![0; n],
                (true, _) => vec![128; n],
            }
        }
    }

    /// A model `x [T, BATCH, I] → DynamicQuantizeLSTM → y [T, D, BATCH, H]` with a bias.
    fn contrib_model(form: Form) -> ModelProto {
        let d = form.directions;
        let p = form.params();
        let initializer = vec![
            integers("wq", &[d, I, 4 * H], form.data_type, form.weights(I, 1)),
            reals("ws", &p, form.scales(1.0)),
            integers("wz", &p, form.data_type, form.zero_points()),
            integers("rq", &[d, H, 4 * H], form.data_type, form.weights(H, 2)),
            reals("rs", &p, form.scales(2.0)),
            integers("rz", &p, form.data_type, form.zero_points()),
            reals("b", &[d, 8 * H], (0..d * 8 * H).map(|k| (k as f32 * 0.7).sin() * 0.3).collect()),
        ];
        let inputs = ["x", "wq", "rq", "b", "", "", "", "", "ws", "wz", "rs", "rz"];
        let direction = if d == 2 { "bidirectional" } else { "forward" };
        let node = NodeProto {
            name: "lstm".into(),
            op_type: OP.into(),
            domain: MICROSOFT.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["y".into()],
            attribute: vec![
                string_attr("direction", direction),
                int_attr("hidden_size", H as i64),
                int_attr("input_forget", 0),
            ],
            ..Default::default()
        };
        let graph = GraphProto {
            node: vec![node],
            initializer,
            input: vec![value("x", &[T, BATCH, I])],
            output: vec![value("y", &[T, d, BATCH, H])],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![
                OperatorSetIdProto { domain: String::new(), version: 17 },
                OperatorSetIdProto { domain: MICROSOFT.into(), version: 1 },
            ],
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn input() -> Vec<f32> {
        (0..T * BATCH * I).map(|k| (k as f32 * 0.37).sin() * 2.0).collect()
    }

    /// The LSTM equations (ONNX, gates i, o, f, c) computed straight from the contrib operator's
    /// `[D, K, 4H]` integers, dequantized one by one: `Y [T, D, BATCH, H]`.
    fn reference(model: &ModelProto, form: Form, x: &[f32]) -> Vec<f32> {
        let g = model.graph.as_ref().expect("graph");
        let get = |name: &str| initializer(g, name).expect(name);
        let (w, r) = (ints(get("wq")).expect("w"), ints(get("rq")).expect("r"));
        let (ws, rs) = (floats(get("ws")).expect("ws"), floats(get("rs")).expect("rs"));
        let (wz, rz) = (ints(get("wz")).expect("wz"), ints(get("rz")).expect("rz"));
        let b = floats(get("b")).expect("b");
        let param = |dir: usize, col: usize| if form.per_column { dir * 4 * H + col } else { dir };
        let deq = |q: &[i32], s: &[f32], z: &[i32], rows: usize, dir: usize, row: usize, col: usize| {
            let p = param(dir, col);
            (q[(dir * rows + row) * 4 * H + col] - z[p]) as f32 * s[p]
        };
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        let d = form.directions;
        let mut y = vec![0f32; T * d * BATCH * H];
        for dir in 0..d {
            for n in 0..BATCH {
                let (mut h, mut c) = ([0f32; H], [0f32; H]);
                let steps: Vec<usize> = if dir == 0 { (0..T).collect() } else { (0..T).rev().collect() };
                for t in steps {
                    let gate = |col: usize, h: &[f32; H]| {
                        let mut v = b[dir * 8 * H + col] + b[dir * 8 * H + 4 * H + col];
                        for k in 0..I {
                            v += x[(t * BATCH + n) * I + k] * deq(&w, &ws, &wz, I, dir, k, col);
                        }
                        for (m, hm) in h.iter().enumerate() {
                            v += hm * deq(&r, &rs, &rz, H, dir, m, col);
                        }
                        v
                    };
                    let mut next = [0f32; H];
                    for j in 0..H {
                        let i_gate = sigmoid(gate(j, &h));
                        let o_gate = sigmoid(gate(H + j, &h));
                        let f_gate = sigmoid(gate(2 * H + j, &h));
                        let cell = gate(3 * H + j, &h).tanh();
                        c[j] = f_gate * c[j] + i_gate * cell;
                        next[j] = o_gate * c[j].tanh();
                    }
                    h = next;
                    for j in 0..H {
                        y[((t * d + dir) * BATCH + n) * H + j] = h[j];
                    }
                }
            }
        }
        y
    }

    const FORMS: [Form; 4] = [
        Form { directions: 1, per_column: false, data_type: INT8 },
        Form { directions: 1, per_column: true, data_type: INT8 },
        Form { directions: 2, per_column: false, data_type: UINT8 },
        Form { directions: 2, per_column: true, data_type: UINT8 },
    ];

    #[test]
    fn the_rewritten_lstm_computes_the_contrib_definition() {
        for form in FORMS {
            let what =
                format!("{} direction(s), per column {}, type {}", form.directions, form.per_column, form.data_type);
            let proto = contrib_model(form);
            let x = input();
            let want = reference(&proto, form, &x);
            // The whole load path: the rewrite runs before the operator check.
            let mut model = Model::from_proto_for_test(&proto, LoadOptions::default()).expect(&what);
            let got = model.run(&[Tensor::new(vec![T, BATCH, I], TensorData::F32(x)).expect("x")]).expect(&what);
            assert_eq!(got[0].shape(), [T, form.directions, BATCH, H], "{what}");
            for (k, (g, w)) in got[0].to_f64_vec().into_iter().zip(&want).enumerate() {
                assert!((g - *w as f64).abs() < 1e-5, "{what}: y[{k}] = {g}, the definition {w}");
            }
        }
    }

    #[test]
    fn weights_are_dequantized_and_transposed_to_onnx_layout() {
        let form = Form { directions: 1, per_column: false, data_type: INT8 };
        let mut proto = contrib_model(form);
        {
            let g = proto.graph.as_mut().expect("graph");
            g.initializer.retain(|t| !["wq", "ws", "wz"].contains(&t.name.as_str()));
            // W [1, I = 3, 4H = 8]: row k, column j holds 10·k + j.
            g.initializer.push(integers(
                "wq",
                &[1, I, 4 * H],
                INT8,
                (0..I * 4 * H).map(|v| (10 * (v / 8) + v % 8) as i32).collect(),
            ));
            g.initializer.push(reals("ws", &[1], vec![0.5]));
            g.initializer.push(integers("wz", &[1], INT8, vec![1]));
        }
        assert_eq!(expand(&mut proto), 1);
        let g = proto.graph.as_ref().expect("graph");
        assert_eq!(g.node.len(), 1);
        let lstm = &g.node[0];
        assert_eq!((lstm.op_type.as_str(), lstm.domain.as_str()), ("LSTM", ""));
        assert_eq!(lstm.input, ["x", "wq_dequantized", "rq_dequantized", "b"], "trailing empty inputs dropped");
        assert_eq!(lstm.output, ["y"]);
        let w = initializer(g, "wq_dequantized").expect("float W");
        assert_eq!(w.dims, [1, 4 * H as i64, I as i64], "ONNX LSTM's [D, 4H, I]");
        // W'[j][k] = (W[k][j] − 1) · 0.5.
        let want: Vec<f32> = (0..4 * H).flat_map(|j| (0..I).map(move |k| ((10 * k + j) as f32 - 1.0) * 0.5)).collect();
        assert_eq!(floats(w), Some(want));
        assert_eq!(initializer(g, "rq_dequantized").map(|r| r.dims.clone()), Some(vec![1, 4 * H as i64, H as i64]));
        for gone in ["wq", "ws", "wz", "rq", "rs", "rz"] {
            assert!(initializer(g, gone).is_none(), "{gone}: the integers nothing reads any more are dropped");
        }
    }

    #[test]
    fn per_column_parameters_follow_their_gate_column_and_direction() {
        let form = Form { directions: 2, per_column: true, data_type: UINT8 };
        let mut proto = contrib_model(form);
        let original = proto.clone();
        assert_eq!(expand(&mut proto), 1);
        let (before, after) = (original.graph.as_ref().expect("graph"), proto.graph.as_ref().expect("graph"));
        let q = ints(initializer(before, "wq").expect("wq")).expect("ints");
        let s = floats(initializer(before, "ws").expect("ws")).expect("floats");
        let w = floats(initializer(after, "wq_dequantized").expect("float W")).expect("floats");
        for dir in 0..2 {
            for j in 0..4 * H {
                for k in 0..I {
                    let p = dir * 4 * H + j;
                    let want = (q[(dir * I + k) * 4 * H + j] - 128) as f32 * s[p];
                    assert_eq!(w[(dir * 4 * H + j) * I + k], want, "direction {dir}, column {j}, row {k}");
                }
            }
        }
    }

    #[test]
    fn forms_the_rewrite_does_not_cover_are_left_for_the_operator_check() {
        let base = || contrib_model(Form { directions: 1, per_column: false, data_type: INT8 });
        let with = |f: &dyn Fn(&mut GraphProto)| {
            let mut proto = base();
            f(proto.graph.as_mut().expect("graph"));
            proto
        };
        let cases: Vec<(&str, ModelProto)> = vec![
            // W computed at run time: an Identity in front of the integers.
            (
                "computed weight",
                with(&|g| {
                    g.node[0].input[1] = "wq_live".into();
                    let identity = NodeProto {
                        op_type: "Identity".into(),
                        input: vec!["wq".into()],
                        output: vec!["wq_live".into()],
                        ..Default::default()
                    };
                    g.node.insert(0, identity);
                }),
            ),
            (
                "clip",
                with(&|g| {
                    g.node[0].attribute.push(AttributeProto {
                        name: "clip".into(),
                        f: 3.0,
                        r#type: 1,
                        ..Default::default()
                    })
                }),
            ),
            ("reverse", with(&|g| g.node[0].attribute[0] = string_attr("direction", "reverse"))),
            (
                "bidirectional with one direction of weights",
                with(&|g| g.node[0].attribute[0] = string_attr("direction", "bidirectional")),
            ),
            ("wrong hidden_size", with(&|g| g.node[0].attribute[1] = int_attr("hidden_size", 3))),
            ("coupled input and forget gates", with(&|g| g.node[0].attribute[2] = int_attr("input_forget", 1))),
            (
                "other activations",
                with(&|g| {
                    let strings = ["Sigmoid", "Tanh", "Relu"].iter().map(|s| s.as_bytes().to_vec()).collect();
                    g.node[0].attribute.push(AttributeProto {
                        name: "activations".into(),
                        strings,
                        r#type: 8,
                        ..Default::default()
                    });
                }),
            ),
            ("no zero point", with(&|g| g.node[0].input.truncate(11))),
            (
                "scalar scale",
                with(&|g| g.initializer.iter_mut().filter(|t| t.name == "ws").for_each(|t| t.dims.clear())),
            ),
            (
                "uint8 zero point for int8 weights",
                with(&|g| g.initializer.iter_mut().filter(|t| t.name == "wz").for_each(|t| t.data_type = UINT8)),
            ),
            (
                "negative scale",
                with(&|g| g.initializer.iter_mut().filter(|t| t.name == "rs").for_each(|t| t.float_data[0] = -1.0)),
            ),
            (
                "R of a hidden size whose four gates overflow",
                with(&|g| g.initializer.iter_mut().filter(|t| t.name == "rq").for_each(|t| t.dims[1] = i64::MAX / 2)),
            ),
            (
                "W of the wrong shape",
                with(&|g| {
                    g.initializer
                        .iter_mut()
                        .filter(|t| t.name == "wq")
                        .for_each(|t| t.dims = vec![1, 4 * H as i64, I as i64])
                }),
            ),
        ];
        for (what, mut proto) in cases {
            let before = proto.clone();
            assert_eq!(expand(&mut proto), 0, "{what}");
            assert_eq!(proto, before, "{what}: left as written");
            match Model::from_proto_for_test(&proto, LoadOptions::default()) {
                Err(LoadError::UnsupportedOps(ops)) => {
                    assert_eq!((ops[0].domain.as_str(), ops[0].op.as_str()), (MICROSOFT, OP), "{what}")
                }
                other => panic!("{what}: expected the operator check's refusal, got {other:?}"),
            }
        }
        // The unchanged base case is rewritten: the cases above fail for their one change only.
        assert_eq!(expand(&mut base()), 1);
    }
}
