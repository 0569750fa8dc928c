//! onnxruntime's QOperator operators, rewritten into their definitions in standard operators
//! before the operator check.
//!
//! `quantize_static(..., quant_format=QuantFormat.QOperator)` with its defaults (and most int8
//! files in public model zoos) writes `com.microsoft` QLinearAdd, QLinearGlobalAveragePool and
//! QGemm, and for other float operators QLinearMul, QLinearConcat, QLinearSigmoid,
//! QLinearLeakyRelu, QLinearAveragePool and QLinearSoftmax. onnxruntime's contrib operator
//! schemas define each as dequantize → the float operator → quantize; this pass writes exactly
//! that (DequantizeLinear / Add, Gemm… / QuantizeLinear), so tract runs them, and the QDQ pass
//! after it ([`super::rewrite`]) sees the `DQ → Gemm → Q` form it turns into Drover's integer
//! layers. The standard QLinearConv and QLinearMatMul are rewritten the same way: tract runs
//! them as written, but its QLinearConv ran MobileNetV2 ~24× slower than the QDQ form.
//!
//! A node is rewritten only when every input, attribute and quantization parameter is in the
//! form the definition covers (per-tensor scalar activations, a constant bias, known
//! attributes); anything else is left as it was, so the operator check refuses it with its hint.
//! The values differ from onnxruntime's fixed-point and lookup-table kernels only by rounding:
//! an output integer can be one step away.

use std::collections::HashSet;

use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, attribute_proto::AttributeType};

use super::constant::{INT32, floats, initializer, ints, len};
use super::params::{FLOAT, INT8, UINT8};

/// The domain onnxruntime's contrib operators live in.
const MICROSOFT: &str = "com.microsoft";

/// The operators this pass knows how to rewrite.
const OPS: [&str; 9] = [
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearConcat",
    "QLinearLeakyRelu",
    "QLinearSigmoid",
    "QLinearSoftmax",
    "QGemm",
];

/// The standard (`ai.onnx`) QOperator operators rewritten too: tract runs them, but its
/// QLinearConv is ~24× slower on MobileNetV2 than Drover's integer layers, which the QDQ pass
/// builds from their definition.
const STANDARD_OPS: [&str; 2] = ["QLinearConv", "QLinearMatMul"];

/// Whether the main graph has an operator this pass rewrites (so the model needs a copy).
pub fn has_any(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| g.node.iter().any(is_target))
}

fn is_target(node: &NodeProto) -> bool {
    (node.domain == MICROSOFT && OPS.contains(&node.op_type.as_str()))
        || (node.domain.is_empty() && STANDARD_OPS.contains(&node.op_type.as_str()))
}

/// Rewrites every operator of the main graph it can; returns how many. The graph changes only
/// at the end, all at once, so a failure half-way leaves it as it was.
pub fn expand(model: &mut ModelProto) -> usize {
    let opset = default_opset(model);
    let Some(graph) = model.graph.as_mut() else { return 0 };
    if !graph.node.iter().any(is_target) {
        return 0;
    }
    let mut names = Names::of(graph);
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut added = Vec::new();
    let mut done = 0;
    for node in &graph.node {
        let expanded = if is_target(node) {
            let mut out = Expansion { graph, names: &mut names, nodes: Vec::new(), initializers: Vec::new(), opset };
            out.node(node).map(|()| (out.nodes, out.initializers))
        } else {
            None
        };
        match expanded {
            Some((new_nodes, inits)) => {
                log::debug!("qop_ms: '{}' ({}) now {} standard nodes", node.name, node.op_type, new_nodes.len());
                nodes.extend(new_nodes);
                added.extend(inits);
                done += 1;
            }
            None => {
                if is_target(node) {
                    log::debug!("qop_ms: '{}' ({}) left as written", node.name, node.op_type);
                }
                nodes.push(node.clone());
            }
        }
    }
    graph.node = nodes;
    graph.initializer.extend(added);
    done
}

/// The default domain's opset version (0 when the file does not say).
fn default_opset(model: &ModelProto) -> i64 {
    model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(0, |o| o.version)
}

/// Every value name in the graph, to make new ones that collide with none.
struct Names(HashSet<String>);

impl Names {
    fn of(graph: &GraphProto) -> Names {
        let mut set = HashSet::new();
        for n in &graph.node {
            set.extend(n.input.iter().chain(&n.output).cloned());
        }
        set.extend(graph.input.iter().chain(&graph.output).chain(&graph.value_info).map(|v| v.name.clone()));
        set.extend(graph.initializer.iter().map(|t| t.name.clone()));
        Names(set)
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 1;
        while self.0.contains(&name) {
            name = format!("{base}.{n}");
            n += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

/// The replacement of one node under construction.
struct Expansion<'a> {
    graph: &'a GraphProto,
    names: &'a mut Names,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    opset: i64,
}

/// An 8-bit quantized operand: the tensor, its scale and its (optional) zero point.
struct Operand<'n> {
    x: &'n str,
    scale: &'n str,
    zero_point: Option<&'n str>,
}

impl Expansion<'_> {
    fn node(&mut self, node: &NodeProto) -> Option<()> {
        let [output] = node.output.as_slice() else { return None };
        if output.is_empty() {
            return None;
        }
        let input = |i: usize| node.input.get(i).map(String::as_str).filter(|s| !s.is_empty());
        let operand = |i: usize| Some(Operand { x: input(i)?, scale: input(i + 1)?, zero_point: input(i + 2) });
        let result = |i: usize| Some((input(i)?, input(i + 1)));
        match node.op_type.as_str() {
            op @ ("QLinearAdd" | "QLinearMul") => {
                only_attributes(node, &[])?;
                (node.input.len() <= 8).then_some(())?;
                let (a, b) = (operand(0)?, operand(3)?);
                let (cs, cz) = result(6)?;
                let ty = self.integer_type(&[&a, &b], cz)?;
                let a = self.dequantize(&a, ty, None)?;
                let b = self.dequantize(&b, ty, None)?;
                let sum = self.value(output, &op["QLinear".len()..]);
                self.push(&op["QLinear".len()..], vec![a, b], sum.clone(), vec![]);
                self.quantize(sum, cs, cz, ty, output)
            }
            "QLinearLeakyRelu" | "QLinearSigmoid" => {
                let float_op = &node.op_type["QLinear".len()..];
                let attrs = if float_op == "LeakyRelu" {
                    only_attributes(node, &["alpha"])?;
                    let alpha = node.attribute.iter().find(|a| a.name == "alpha").map_or(0.01, |a| a.f);
                    vec![float_attr("alpha", alpha)]
                } else {
                    only_attributes(node, &[])?;
                    vec![]
                };
                self.unary(node, float_op, attrs, output)
            }
            "QLinearSoftmax" => {
                only_attributes(node, &["axis", "opset"])?;
                // Before opset 13 Softmax flattened to 2-D; the graph's own Softmax must follow
                // the same rule as the one onnxruntime's kernel was told.
                let opset = node.attribute.iter().find(|a| a.name == "opset")?.i;
                (opset >= 13 && self.opset >= 13).then_some(())?;
                let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(-1, |a| a.i);
                (node.input.len() <= 5).then_some(())?;
                let x = operand(0)?;
                let (ys, yz) = result(3)?;
                let ty = self.integer_type(&[&x], yz)?;
                // tract 0.23 turns `DequantizeLinear → Softmax → QuantizeLinear` into its
                // fixed-point quantized softmax, which answers 255 for every class of a uint8
                // output: the dequantization is written as its arithmetic instead, the very same
                // floats, which tract keeps in fp32.
                let xf = self.dequantize_as_arithmetic(&x, ty)?;
                let y = self.value(output, "Softmax");
                self.push("Softmax", vec![xf], y.clone(), vec![int_attr("axis", axis)]);
                self.quantize(y, ys, yz, ty, output)
            }
            "QLinearGlobalAveragePool" => {
                only_attributes(node, &["channels_last"])?;
                let channels_last = node.attribute.iter().find(|a| a.name == "channels_last").map_or(0, |a| a.i);
                match channels_last {
                    0 => self.unary(node, "GlobalAveragePool", vec![], output),
                    1 => {
                        let rank = self.rank(input(0)?).filter(|r| (3..=8).contains(r))?;
                        let to_first: Vec<i64> = [0, rank - 1].into_iter().chain(1..rank - 1).collect();
                        let to_last: Vec<i64> = [0].into_iter().chain(2..rank).chain([1]).collect();
                        let x = operand(0)?;
                        let (ys, yz) = result(3)?;
                        let ty = self.integer_type(&[&x], yz)?;
                        let xf = self.dequantize(&x, ty, None)?;
                        let nchw = self.value(output, "nchw");
                        self.push("Transpose", vec![xf], nchw.clone(), vec![ints_attr("perm", &to_first)]);
                        let pooled = self.value(output, "GlobalAveragePool");
                        self.push("GlobalAveragePool", vec![nchw], pooled.clone(), vec![]);
                        let back = self.value(output, "nhwc");
                        self.push("Transpose", vec![pooled], back.clone(), vec![ints_attr("perm", &to_last)]);
                        self.quantize(back, ys, yz, ty, output)
                    }
                    _ => None,
                }
            }
            "QLinearAveragePool" => {
                let known =
                    ["auto_pad", "ceil_mode", "channels_last", "count_include_pad", "kernel_shape", "pads", "strides"];
                only_attributes(node, &known)?;
                if node.attribute.iter().any(|a| a.name == "channels_last" && a.i != 0) {
                    return None;
                }
                let attrs = node.attribute.iter().filter(|a| a.name != "channels_last").cloned().collect();
                self.unary(node, "AveragePool", attrs, output)
            }
            "QLinearConcat" => {
                only_attributes(node, &["axis"])?;
                let axis = node.attribute.iter().find(|a| a.name == "axis")?.clone();
                let n = node.input.len().checked_sub(2)?;
                (n > 0 && n % 3 == 0).then_some(())?;
                let (ys, yz) = (input(0)?, input(1));
                let parts: Vec<Operand> = (0..n / 3).map(|k| operand(2 + 3 * k)).collect::<Option<_>>()?;
                let ty = self.integer_type(&parts.iter().collect::<Vec<_>>(), yz)?;
                let floats = parts.iter().map(|p| self.dequantize(p, ty, None)).collect::<Option<Vec<_>>>()?;
                let joined = self.value(output, "Concat");
                self.push("Concat", floats, joined.clone(), vec![axis]);
                self.quantize(joined, ys, yz, ty, output)
            }
            "QGemm" => self.gemm(node, output),
            "QLinearConv" => self.conv(node, output),
            "QLinearMatMul" => self.matmul(node, output),
            _ => None,
        }
    }

    /// `Q(op(DQ(x)))` for the operators with inputs `X, x_scale, x_zero_point?, y_scale,
    /// y_zero_point?`.
    fn unary(&mut self, node: &NodeProto, op: &str, attrs: Vec<AttributeProto>, output: &str) -> Option<()> {
        (node.input.len() <= 5).then_some(())?;
        let input = |i: usize| node.input.get(i).map(String::as_str).filter(|s| !s.is_empty());
        let x = Operand { x: input(0)?, scale: input(1)?, zero_point: input(2) };
        let (ys, yz) = (input(3)?, input(4));
        let ty = self.integer_type(&[&x], yz)?;
        let xf = self.dequantize(&x, ty, None)?;
        let y = self.value(output, op);
        self.push(op, vec![xf], y.clone(), attrs);
        self.quantize(y, ys, yz, ty, output)
    }

    /// QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C?, y_scale?, y_zp?) → DQ(A), DQ(B) (per column
    /// when b_scale is), Gemm with C dequantized at scale a_scale·b_scale, then Q, or the float
    /// result when y_scale is absent.
    fn gemm(&mut self, node: &NodeProto, output: &str) -> Option<()> {
        only_attributes(node, &["alpha", "transA", "transB"])?;
        let mut trans_b = 0;
        for a in &node.attribute {
            match a.name.as_str() {
                // The int32 bias is quantized with alpha / beta · a_scale · b_scale; only the
                // plain product is taken.
                "alpha" if a.f == 1.0 => {}
                "transA" if a.i == 0 || a.i == 1 => {}
                "transB" if a.i == 0 || a.i == 1 => trans_b = a.i,
                _ => return None,
            }
        }
        (6..=9).contains(&node.input.len()).then_some(())?;
        let input = |i: usize| node.input.get(i).map(String::as_str).filter(|s| !s.is_empty());
        let a = Operand { x: input(0)?, scale: input(1)?, zero_point: input(2) };
        let b = Operand { x: input(3)?, scale: input(4)?, zero_point: input(5) };
        let (c, ys, yz) = (input(6), input(7), input(8));
        // A's type is its zero point's; B's may differ (uint8 activations, int8 weights).
        let a_type = self.integer_type(&[&a], None)?;
        let af = self.dequantize(&a, a_type, None)?;
        // b_scale: a scalar, or one per column of B (N: axis 1 of B, or 0 when transposed).
        let b_scales = floats(initializer(self.graph, b.scale)?)?;
        if initializer(self.graph, b.scale)?.dims.len() > 1 || b_scales.is_empty() {
            return None;
        }
        let per_column = b_scales.len() > 1;
        // Without a zero point (0 by the schema), B's own type.
        let b_type = match b.zero_point {
            Some(_) => self.integer_type(&[&b], None)?,
            None => Some(initializer(self.graph, b.x)?.data_type).filter(|t| matches!(*t, INT8 | UINT8))?,
        };
        let bf = self.dequantize(&b, b_type, per_column.then_some(if trans_b == 1 { 0 } else { 1 }))?;
        let mut inputs = vec![af, bf];
        if let Some(c) = c {
            inputs.push(self.bias(c, a.scale, &b_scales, output)?);
        }
        let attrs: Vec<AttributeProto> = node.attribute.iter().filter(|a| a.name != "alpha").cloned().collect();
        match (ys, yz) {
            (None, None) => {
                self.push("Gemm", inputs, output.to_string(), attrs);
                Some(())
            }
            (Some(ys), Some(yz)) => {
                let y_type = self.integer_type(&[], Some(yz))?;
                let y = self.value(output, "Gemm");
                self.push("Gemm", inputs, y.clone(), attrs);
                self.quantize(y, ys, Some(yz), y_type, output)
            }
            _ => None,
        }
    }

    /// An int32 bias quantized at `x_scale · w_scale` (one per output channel when `w_scales`
    /// has several) as the float initializer `DequantizeLinear(C, x_scale · w_scale)` gives:
    /// `(C − 0) · s` in f32.
    fn bias(&mut self, c: &str, x_scale: &str, w_scales: &[f32], output: &str) -> Option<String> {
        let c = initializer(self.graph, c)?;
        (c.data_type == INT32).then_some(())?;
        let values = ints(c)?;
        let [x_scale] = floats(initializer(self.graph, x_scale)?)?[..] else { return None };
        let per_channel = w_scales.len() > 1;
        if per_channel && c.dims.last() != Some(&(w_scales.len() as i64)) {
            return None;
        }
        let bias: Vec<f32> = values
            .iter()
            .enumerate()
            .map(|(i, v)| *v as f32 * (x_scale * w_scales[if per_channel { i % w_scales.len() } else { 0 }]))
            .collect();
        let name = self.names.fresh(&format!("{output}_bias"));
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: c.dims.clone(),
            data_type: FLOAT,
            float_data: bias,
            ..Default::default()
        });
        Some(name)
    }

    /// A constant weight operand dequantized per tensor, or per `axis` when its scale has
    /// several values: the float value and the scales.
    fn weight(&mut self, w: &Operand, axis: i64) -> Option<(String, Vec<f32>)> {
        let scale = initializer(self.graph, w.scale)?;
        let scales = floats(scale)?;
        if scale.dims.len() > 1 || scales.is_empty() {
            return None;
        }
        let tensor = initializer(self.graph, w.x)?;
        let ty = match w.zero_point {
            Some(_) => self.integer_type(&[w], None)?,
            // Without a zero point (0 by the schema), the weight's own type.
            None => Some(tensor.data_type).filter(|t| matches!(*t, INT8 | UINT8))?,
        };
        let per_axis = scales.len() > 1;
        if per_axis && tensor.dims.get(usize::try_from(axis).ok()?) != Some(&(scales.len() as i64)) {
            return None;
        }
        let wf = self.dequantize(w, ty, per_axis.then_some(axis))?;
        Some((wf, scales))
    }

    /// QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B?) → DQ(x), DQ(w) (per
    /// output channel when w_scale is), Conv with B dequantized at x_scale·w_scale, then Q: the
    /// `DQ → Conv → Q` form the QDQ pass turns into Drover's integer layers. tract's own
    /// QLinearConv ran MobileNetV2 ~24× slower than the same network in QDQ form.
    fn conv(&mut self, node: &NodeProto, output: &str) -> Option<()> {
        only_attributes(node, &["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"])?;
        (8..=9).contains(&node.input.len()).then_some(())?;
        let input = |i: usize| node.input.get(i).map(String::as_str).filter(|s| !s.is_empty());
        let x = Operand { x: input(0)?, scale: input(1)?, zero_point: input(2) };
        let w = Operand { x: input(3)?, scale: input(4)?, zero_point: input(5) };
        let (ys, yz, b) = (input(6)?, input(7)?, input(8));
        let x_type = self.integer_type(&[&x], None)?;
        let y_type = self.integer_type(&[], Some(yz))?;
        let xf = self.dequantize(&x, x_type, None)?;
        let (wf, w_scales) = self.weight(&w, 0)?;
        let mut inputs = vec![xf, wf];
        if let Some(b) = b {
            inputs.push(self.bias(b, x.scale, &w_scales, output)?);
        }
        let y = self.value(output, "Conv");
        self.push("Conv", inputs, y.clone(), node.attribute.clone());
        self.quantize(y, ys, Some(yz), y_type, output)
    }

    /// QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) with a constant 2-D `b`
    /// → DQ(a), DQ(b) (per column when b_scale is), MatMul, Q.
    fn matmul(&mut self, node: &NodeProto, output: &str) -> Option<()> {
        only_attributes(node, &[])?;
        (node.input.len() == 8).then_some(())?;
        let input = |i: usize| node.input.get(i).map(String::as_str).filter(|s| !s.is_empty());
        let a = Operand { x: input(0)?, scale: input(1)?, zero_point: input(2) };
        let b = Operand { x: input(3)?, scale: input(4)?, zero_point: input(5) };
        let (ys, yz) = (input(6)?, input(7)?);
        (initializer(self.graph, b.x)?.dims.len() == 2).then_some(())?;
        let a_type = self.integer_type(&[&a], None)?;
        let y_type = self.integer_type(&[], Some(yz))?;
        let af = self.dequantize(&a, a_type, None)?;
        let (bf, _) = self.weight(&b, 1)?;
        let y = self.value(output, "MatMul");
        self.push("MatMul", vec![af, bf], y.clone(), vec![]);
        self.quantize(y, ys, Some(yz), y_type, output)
    }

    /// The integer type (INT8/UINT8) every operand's zero point and the result's share, read
    /// from the constant zero points; `None` when absent, computed or mixed.
    fn integer_type(&self, operands: &[&Operand], result_zp: Option<&str>) -> Option<i32> {
        let mut ty = None;
        for zp in operands.iter().filter_map(|o| o.zero_point).chain(result_zp) {
            let t = initializer(self.graph, zp)?;
            let known = matches!(t.data_type, INT8 | UINT8) && len(t).is_some_and(|n| n >= 1) && ints(t).is_some();
            if !known || ty.is_some_and(|ty| ty != t.data_type) {
                return None;
            }
            ty = Some(t.data_type);
        }
        ty
    }

    /// A fresh value name derived from the node's output.
    fn value(&mut self, output: &str, what: &str) -> String {
        self.names.fresh(&format!("{output}_{what}"))
    }

    fn push(&mut self, op: &str, input: Vec<String>, output: String, attribute: Vec<AttributeProto>) {
        let name = self.names.fresh(&format!("{output}_node"));
        self.nodes.push(NodeProto {
            name,
            op_type: op.into(),
            input,
            output: vec![output],
            attribute,
            ..Default::default()
        });
    }

    /// `DequantizeLinear(x, scale, zero_point)` → a new float value. Scales must be constant
    /// scalars (or per-`axis` vectors for weights) and zero points of the type `ty`.
    fn dequantize(&mut self, x: &Operand, ty: i32, axis: Option<i64>) -> Option<String> {
        let scale = initializer(self.graph, x.scale)?;
        let n = len(scale)?;
        let scales = floats(scale)?;
        if scales.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return None;
        }
        match axis {
            None => (n == 1).then_some(())?,
            Some(_) => (n >= 1 && scale.dims.len() == 1).then_some(())?,
        }
        let mut inputs = vec![x.x.to_string(), x.scale.to_string()];
        match x.zero_point {
            Some(zp) => {
                let z = initializer(self.graph, zp)?;
                (z.data_type == ty && len(z) == Some(n) && ints(z).is_some()).then_some(())?;
                inputs.push(zp.to_string());
            }
            // No zero point: 0 of the operand's type (DequantizeLinear's own default is uint8).
            None => inputs.push(self.zero(ty, n)),
        }
        let out = self.names.fresh(&format!("{}_dequantized", x.x));
        let attrs = axis.map(|a| vec![int_attr("axis", a)]).unwrap_or_default();
        self.push("DequantizeLinear", inputs, out.clone(), attrs);
        Some(out)
    }

    /// DequantizeLinear's definition, `(float(x) − float(zero_point)) · scale`, as Cast, Sub and
    /// Mul: the same floats (|x − zero_point| ≤ 255 is exact in f32), for a per-tensor operand.
    fn dequantize_as_arithmetic(&mut self, x: &Operand, ty: i32) -> Option<String> {
        let [scale] = floats(initializer(self.graph, x.scale)?)?[..] else { return None };
        (scale.is_finite() && scale > 0.0).then_some(())?;
        let zero_point = match x.zero_point {
            Some(zp) => {
                let z = initializer(self.graph, zp)?;
                (z.data_type == ty).then_some(())?;
                let [z] = ints(z)?[..] else { return None };
                z
            }
            None => 0,
        };
        let as_float = self.value(x.x, "float");
        self.push("Cast", vec![x.x.to_string()], as_float.clone(), vec![int_attr("to", FLOAT as i64)]);
        let zp_name = self.names.fresh(&format!("{}_zero_point_float", x.x));
        self.initializers.push(TensorProto {
            name: zp_name.clone(),
            data_type: FLOAT,
            float_data: vec![zero_point as f32],
            ..Default::default()
        });
        let centred = self.value(x.x, "centred");
        self.push("Sub", vec![as_float, zp_name], centred.clone(), vec![]);
        let out = self.names.fresh(&format!("{}_dequantized", x.x));
        self.push("Mul", vec![centred, x.scale.to_string()], out.clone(), vec![]);
        Some(out)
    }

    /// `QuantizeLinear(y, scale, zero_point)` writing the node's own output.
    fn quantize(&mut self, y: String, scale: &str, zero_point: Option<&str>, ty: i32, output: &str) -> Option<()> {
        let s = initializer(self.graph, scale)?;
        let [s] = floats(s)?[..] else { return None };
        (s.is_finite() && s > 0.0).then_some(())?;
        let zp = match zero_point {
            Some(zp) => {
                let z = initializer(self.graph, zp)?;
                (z.data_type == ty && len(z) == Some(1) && ints(z).is_some()).then_some(())?;
                zp.to_string()
            }
            None => self.zero(ty, 1),
        };
        self.push("QuantizeLinear", vec![y, scale.to_string(), zp], output.to_string(), vec![]);
        Some(())
    }

    /// A new constant zero point of type `ty`: a scalar, or `n` zeros.
    fn zero(&mut self, ty: i32, n: usize) -> String {
        let name = self.names.fresh("qop_ms_zero_point");
        let dims = if n == 1 { vec![] } else { vec![n as i64] };
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims,
            data_type: ty,
            int32_data: vec![0; n],
            ..Default::default()
        });
        name
    }

    /// The rank the file declares for a value (graph input, output or value_info).
    fn rank(&self, name: &str) -> Option<i64> {
        use tract_onnx::pb::type_proto;
        let g = self.graph;
        let info = g.input.iter().chain(&g.value_info).chain(&g.output).find(|v| v.name == name)?;
        let type_proto::Value::TensorType(t) = info.r#type.as_ref()?.value.as_ref()?;
        Some(t.shape.as_ref()?.dim.len() as i64)
    }
}

/// `Some` when the node has no attribute outside `known` (and none twice).
fn only_attributes(node: &NodeProto, known: &[&str]) -> Option<()> {
    let mut seen = HashSet::new();
    node.attribute.iter().all(|a| known.contains(&a.name.as_str()) && seen.insert(a.name.as_str())).then_some(())
}

fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f, ..Default::default() }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::super::params::{FLOAT, f32_scalar};
    use super::super::test_graph::*;
    use super::*;
    use crate::model::LoadOptions;
    use crate::tensor::{Tensor, TensorData};
    use crate::{LoadError, Model};

    fn microsoft(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto { domain: MICROSOFT.into(), ..node(op, inputs, outputs) }
    }

    fn add(inputs: &[&str]) -> NodeProto {
        microsoft("QLinearAdd", inputs, &["y"])
    }

    const ADD: [&str; 8] = ["xq", "s1", "s1_zp", "xq", "s1", "s1_zp", "s2", "s2_zp"];

    /// A `[n]` int8 model: `x` quantized with `s1`, then `last`.
    fn quantized(last: NodeProto, n: i64) -> ModelProto {
        model(graph(vec![q("x", "xq", "s1"), last]), n, FLOAT, INT8)
    }

    fn saturate(v: f32) -> i8 {
        v.clamp(-128.0, 127.0) as i8
    }

    #[test]
    fn qlinear_add_becomes_dq_add_q_and_gives_the_definitions_integers() {
        let x: Vec<f32> = (-200..200).map(|i| i as f32 * 0.37).collect();
        let mut proto = quantized(add(&ADD), x.len() as i64);
        let mut expanded = proto.clone();
        assert_eq!(expand(&mut expanded), 1);
        let g = expanded.graph.as_ref().expect("graph");
        assert_eq!(ops(g), ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Add", "QuantizeLinear"]);
        assert_eq!(g.node.last().map(|n| n.output.clone()), Some(vec!["y".to_string()]), "the output keeps its name");
        // The whole load path: the rewrite runs before the operator check.
        let mut model = Model::from_proto_for_test(&proto, LoadOptions::default()).expect("loads");
        let input = Tensor::new(vec![x.len()], TensorData::F32(x.clone())).expect("tensor");
        let got = model.run(&[input]).expect("runs").remove(0);
        // The definition: C = Q(DQ(A) + DQ(B)), rounding half to even, saturating.
        let want: Vec<i8> = x
            .iter()
            .map(|v| {
                let a = saturate((v / 0.5).round_ties_even() - 128.0);
                let d = (a as f32 + 128.0) * 0.5;
                saturate(((d + d) / 0.25).round_ties_even() + 3.0)
            })
            .collect();
        assert_eq!(got, Tensor::new(vec![x.len()], TensorData::I8(want)).expect("tensor"));
        // Unchanged input model: the rewrite works on the loader's copy.
        assert!(has_any(&proto));
        proto.graph.as_mut().expect("graph").node.truncate(1);
        assert!(!has_any(&proto));
    }

    #[test]
    fn malformed_or_unknown_forms_are_left_for_the_operator_check() {
        let mut unknown_attr = add(&ADD);
        unknown_attr.attribute.push(AttributeProto { name: "fast".into(), i: 1, ..Default::default() });
        let mut alpha = microsoft("QGemm", &["xq", "s1", "s1_zp", "xq", "s1", "s1_zp"], &["y"]);
        alpha.attribute.push(float_attr("alpha", 2.0));
        let mut nhwc = microsoft("QLinearGlobalAveragePool", &["xq", "s1", "s1_zp", "s2", "s2_zp"], &["y"]);
        nhwc.attribute.push(int_attr("channels_last", 1));
        let cases = [
            ("too few inputs", add(&ADD[..5])),
            ("too many inputs", add(&[&ADD[..], &["s2"]].concat())),
            ("unknown attribute", unknown_attr),
            ("scale computed at run time", add(&["xq", "x", "s1_zp", "xq", "s1", "s1_zp", "s2", "s2_zp"])),
            ("mixed zero point types", add(&["xq", "s1", "s1_zp", "xq", "s1", "u8_zp", "s2", "s2_zp"])),
            ("negative scale", add(&["xq", "neg", "s1_zp", "xq", "s1", "s1_zp", "s2", "s2_zp"])),
            ("no output", microsoft("QLinearAdd", &ADD, &[])),
            ("two outputs", microsoft("QLinearAdd", &ADD, &["y", "z"])),
            ("QGemm alpha", alpha),
            ("softmax without opset", microsoft("QLinearSoftmax", &["xq", "s1", "s1_zp", "s2", "s2_zp"], &["y"])),
            ("concat of a pair", microsoft("QLinearConcat", &["s2", "s2_zp", "xq", "s1"], &["y"])),
            ("channels_last, rank unknown", nhwc),
        ];
        for (what, node) in cases {
            let mut proto = quantized(node, 4);
            let g = proto.graph.as_mut().expect("graph");
            g.initializer.push(f32_scalar("neg".into(), -1.0));
            g.initializer.push(TensorProto {
                name: "u8_zp".into(),
                data_type: UINT8,
                int32_data: vec![0],
                ..Default::default()
            });
            let before = proto.clone();
            assert_eq!(expand(&mut proto), 0, "{what}");
            assert_eq!(proto, before, "{what}: left as written");
            match Model::from_proto_for_test(&proto, LoadOptions::default()) {
                Err(LoadError::UnsupportedOps(ops)) => assert_eq!(ops[0].domain, MICROSOFT, "{what}"),
                other => panic!("{what}: expected the operator check's refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn qgemm_per_column_dequantizes_the_bias_at_a_scale_times_b_scale() {
        let w = TensorProto {
            name: "w".into(),
            dims: vec![2, 3],
            data_type: INT8,
            int32_data: vec![1, 2, 3, 4, 5, 6],
            ..Default::default()
        };
        let ws = TensorProto {
            name: "ws".into(),
            dims: vec![2],
            data_type: FLOAT,
            float_data: vec![0.5, 0.25],
            ..Default::default()
        };
        let wz = TensorProto {
            name: "wz".into(),
            dims: vec![2],
            data_type: INT8,
            int32_data: vec![0, 0],
            ..Default::default()
        };
        let c = TensorProto {
            name: "c".into(),
            dims: vec![2],
            data_type: INT32,
            int32_data: vec![10, -10],
            ..Default::default()
        };
        let mut gemm = microsoft("QGemm", &["xq", "s1", "s1_zp", "w", "ws", "wz", "c", "s2", "s2_zp"], &["y"]);
        gemm.attribute.extend([float_attr("alpha", 1.0), int_attr("transB", 1)]);
        let mut proto = quantized(gemm, 3);
        proto.graph.as_mut().expect("graph").initializer.extend([w, ws, wz, c]);
        assert_eq!(expand(&mut proto), 1);
        let g = proto.graph.as_ref().expect("graph");
        assert_eq!(ops(g), ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Gemm", "QuantizeLinear"]);
        assert_eq!(g.node[2].attribute, vec![int_attr("axis", 0)], "per output column of a transposed B");
        assert_eq!(g.node[3].attribute, vec![int_attr("transB", 1)]);
        let bias = initializer(g, &g.node[3].input[2]).expect("bias");
        assert_eq!(floats(bias), Some(vec![10.0 * 0.25, -10.0 * 0.125]));
    }

    fn int8_tensor(name: &str, dims: &[i64], values: &[i32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: INT8,
            int32_data: values.to_vec(),
            ..Default::default()
        }
    }

    fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: FLOAT,
            float_data: values.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn qlinear_conv_becomes_dq_conv_q_with_its_bias_per_output_channel() {
        let conv = node("QLinearConv", &["xq", "s1", "s1_zp", "w", "ws", "wz", "s2", "s2_zp", "b"], &["y"]);
        let mut conv = NodeProto { attribute: vec![int_attr("group", 2), ints_attr("kernel_shape", &[1, 1])], ..conv };
        conv.name = "conv".into();
        let mut proto = quantized(conv, 4);
        proto.graph.as_mut().expect("graph").initializer.extend([
            int8_tensor("w", &[2, 1, 1, 1], &[3, -5]),
            float_tensor("ws", &[2], &[0.5, 0.125]),
            int8_tensor("wz", &[2], &[0, 0]),
            TensorProto {
                name: "b".into(),
                dims: vec![2],
                data_type: INT32,
                int32_data: vec![8, -8],
                ..Default::default()
            },
        ]);
        assert_eq!(expand(&mut proto), 1);
        let g = proto.graph.as_ref().expect("graph");
        assert_eq!(ops(g), ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv", "QuantizeLinear"]);
        assert_eq!(g.node[2].attribute, vec![int_attr("axis", 0)], "weights per output channel");
        assert_eq!(g.node[3].attribute, vec![int_attr("group", 2), ints_attr("kernel_shape", &[1, 1])]);
        let bias = initializer(g, &g.node[3].input[2]).expect("bias");
        assert_eq!(floats(bias), Some(vec![8.0 * 0.5 * 0.5, -8.0 * 0.5 * 0.125]));
        assert_eq!(g.node[4].output, ["y"]);
    }

    #[test]
    fn qlinear_conv_without_its_output_zero_point_is_left_as_written() {
        let conv = node("QLinearConv", &["xq", "s1", "s1_zp", "w", "ws", "wz", "s2"], &["y"]);
        let mut proto = quantized(conv, 4);
        proto.graph.as_mut().expect("graph").initializer.extend([
            int8_tensor("w", &[1, 1, 1, 1], &[3]),
            float_tensor("ws", &[], &[0.5]),
            int8_tensor("wz", &[], &[0]),
        ]);
        assert_eq!(expand(&mut proto), 0);
    }

    #[test]
    fn qlinear_matmul_gives_the_definitions_integers() {
        let x = [1.5f32, -7.0, 20.25];
        let w = [3, -5, 7, 0, 127, -128];
        let matmul = node("QLinearMatMul", &["xq", "s1", "s1_zp", "w", "ws", "wz", "s2", "s2_zp"], &["y"]);
        let mut proto = quantized(matmul, 3);
        {
            let g = proto.graph.as_mut().expect("graph");
            g.initializer.extend([
                int8_tensor("w", &[3, 2], &w),
                float_tensor("ws", &[2], &[0.125, 0.0625]),
                int8_tensor("wz", &[2], &[0, 0]),
            ]);
            g.output = vec![super::super::test_graph::fixed("y", INT8, 2)];
        }
        let mut expanded = proto.clone();
        assert_eq!(expand(&mut expanded), 1);
        let g = expanded.graph.as_ref().expect("graph");
        assert_eq!(ops(g), ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "MatMul", "QuantizeLinear"]);
        let mut model = Model::from_proto_for_test(&proto, LoadOptions::default()).expect("loads");
        let input = Tensor::new(vec![3], TensorData::F32(x.to_vec())).expect("tensor");
        let got = model.run(&[input]).expect("runs").remove(0);
        // The definition: x quantized with s1 (0.5, -128) and back, times W per column, then
        // quantized with s2 (0.25, 3).
        let xd: Vec<f32> =
            x.iter().map(|v| (saturate((v / 0.5).round_ties_even() - 128.0) as f32 + 128.0) * 0.5).collect();
        let want: Vec<i8> = (0..2)
            .map(|j| {
                let scale = [0.125f32, 0.0625][j];
                let y: f32 = (0..3).map(|k| xd[k] * (w[k * 2 + j] as f32 * scale)).sum();
                saturate((y / 0.25).round_ties_even() + 3.0)
            })
            .collect();
        assert_eq!(got, Tensor::new(vec![2], TensorData::I8(want)).expect("tensor"));
    }

    /// tract's own quantized softmax (what it makes of `DQ → Softmax → Q`) answers 255 for every
    /// class of a uint8 output; the softmax input is dequantized by arithmetic instead.
    #[test]
    fn qlinear_softmax_dequantizes_by_arithmetic_and_matches_the_definition() {
        let x: Vec<f32> = (0..6).map(|i| i as f32 * 0.75 - 2.0).collect();
        let mut softmax = microsoft("QLinearSoftmax", &["xq", "s1", "s1_zp", "s2", "s2_zp"], &["y"]);
        softmax.attribute.extend([int_attr("axis", -1), int_attr("opset", 13)]);
        let proto = quantized(softmax, x.len() as i64);
        let mut expanded = proto.clone();
        assert_eq!(expand(&mut expanded), 1);
        let g = expanded.graph.as_ref().expect("graph");
        assert_eq!(ops(g), ["QuantizeLinear", "Cast", "Sub", "Mul", "Softmax", "QuantizeLinear"]);
        let mut model = Model::from_proto_for_test(&proto, LoadOptions::default()).expect("loads");
        let input = Tensor::new(vec![x.len()], TensorData::F32(x.clone())).expect("tensor");
        let got = model.run(&[input]).expect("runs").remove(0);
        let d: Vec<f32> =
            x.iter().map(|v| (saturate((v / 0.5).round_ties_even() - 128.0) as f32 + 128.0) * 0.5).collect();
        let max = d.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = d.iter().map(|v| (v - max).exp()).sum();
        let want = d.iter().map(|v| saturate(((v - max).exp() / sum / 0.25).round_ties_even() + 3.0)).collect();
        assert_eq!(got, Tensor::new(vec![x.len()], TensorData::I8(want)).expect("tensor"));
    }

    #[test]
    fn channels_last_global_average_pool_is_transposed_around_the_pool() {
        use tract_onnx::pb::tensor_shape_proto::Dimension;
        use tract_onnx::pb::{TensorShapeProto, TypeProto, ValueInfoProto, type_proto};
        let mut pool = microsoft("QLinearGlobalAveragePool", &["xq", "s1", "s1_zp", "s2", "s2_zp"], &["y"]);
        pool.attribute.push(int_attr("channels_last", 1));
        let mut proto = quantized(pool, 4);
        let shape = TensorShapeProto { dim: vec![Dimension::default(); 4] };
        let tensor = type_proto::Tensor { elem_type: INT8, shape: Some(shape) };
        proto.graph.as_mut().expect("graph").value_info.push(ValueInfoProto {
            name: "xq".into(),
            r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(expand(&mut proto), 1);
        let g = proto.graph.as_ref().expect("graph");
        assert_eq!(
            ops(g),
            ["QuantizeLinear", "DequantizeLinear", "Transpose", "GlobalAveragePool", "Transpose", "QuantizeLinear"]
        );
        assert_eq!(g.node[2].attribute, vec![ints_attr("perm", &[0, 3, 1, 2])]);
        assert_eq!(g.node[4].attribute, vec![ints_attr("perm", &[0, 2, 3, 1])]);
    }
}
