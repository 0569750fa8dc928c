//! The new initializers both formats share: activation scales and zero points, int8 weights and
//! int32 biases, each created once and named as onnxruntime names them (`x_scale`,
//! `w_quantized`…), so that a person comparing the two quantizers' files finds the same things.

use std::collections::BTreeMap;

use tract_onnx::pb::TensorProto;

use super::QuantizeError;
use super::graph::{self, Index, Names};
use super::plan::{Compute, Plan};
use super::scale::{self, ActParams};

/// A quantized constant: its codes, scale and zero point, and the axis for per-channel ones.
#[derive(Debug, Clone)]
pub struct QConst {
    /// The int8/int32 codes.
    pub q: String,
    /// The scale(s).
    pub scale: String,
    /// The zero point(s).
    pub zero_point: String,
    /// `Some(0)` when there is one scale per output channel.
    pub axis: Option<i64>,
}

/// Activation parameters' names.
#[derive(Debug, Clone)]
pub struct QAct {
    /// The scale.
    pub scale: String,
    /// The zero point.
    pub zero_point: String,
    /// The values.
    pub params: ActParams,
}

/// Makes and remembers the new initializers of one rewrite.
pub struct Emitter<'a> {
    /// Fresh names for everything added.
    pub names: Names,
    /// The initializers added so far, in creation order.
    pub initializers: Vec<TensorProto>,
    /// Remarks for the report.
    pub notes: Vec<String>,
    index: Index<'a>,
    plan: &'a Plan,
    params: &'a BTreeMap<String, ActParams>,
    per_channel: bool,
    acts: BTreeMap<String, QAct>,
    weights: BTreeMap<String, (QConst, Vec<f32>)>,
}

impl<'a> Emitter<'a> {
    /// An emitter for `graph` (the normalized fp32 graph).
    pub fn new(
        graph: &'a tract_onnx::pb::GraphProto,
        plan: &'a Plan,
        params: &'a BTreeMap<String, ActParams>,
        per_channel: bool,
    ) -> Emitter<'a> {
        Emitter {
            names: Names::of(graph),
            initializers: Vec::new(),
            notes: Vec::new(),
            index: Index::new(graph),
            plan,
            params,
            per_channel,
            acts: BTreeMap::new(),
            weights: BTreeMap::new(),
        }
    }

    /// The scale and zero point of a quantized activation tensor (shared with the tensor it
    /// takes its range from).
    pub fn act(&mut self, tensor: &str) -> Result<QAct, QuantizeError> {
        let source = self.plan.source_of(tensor).to_string();
        if let Some(a) = self.acts.get(&source) {
            return Ok(a.clone());
        }
        let params = *self
            .params
            .get(&source)
            .ok_or_else(|| QuantizeError::Graph(format!("no calibrated range for '{source}'")))?;
        let scale = self.names.fresh(&format!("{source}_scale"));
        let zero_point = self.names.fresh(&format!("{source}_zero_point"));
        self.initializers.push(graph::f32_tensor(&scale, &[], &[params.scale]));
        self.initializers.push(graph::u8_tensor(&zero_point, &[], &[params.zero_point]));
        let a = QAct { scale, zero_point, params };
        self.acts.insert(source, a.clone());
        Ok(a)
    }

    /// The int8 weight of a compute node, and its scales.
    pub fn weight(&mut self, c: &Compute, op: &str) -> Result<(QConst, Vec<f32>), QuantizeError> {
        if let Some(w) = self.weights.get(&c.weight) {
            return Ok(w.clone());
        }
        let w = self
            .index
            .float(&c.weight)
            .ok_or_else(|| QuantizeError::Graph(format!("weight '{}' is not a float32 constant", c.weight)))?;
        // Per channel for Conv only, on axis 0 (output channels), as onnxruntime does.
        let per_channel = self.per_channel && op == "Conv" && c.channel_axis == 0;
        let channels = per_channel.then(|| w.dims[0]);
        let scales = scale::weight_scales(&w.data, channels);
        let codes = scale::quantize_weights(&w.data, &scales);
        let q = self.names.fresh(&format!("{}_quantized", c.weight));
        let scale_name = self.names.fresh(&format!("{}_scale", c.weight));
        let zp = self.names.fresh(&format!("{}_zero_point", c.weight));
        self.initializers.push(graph::i8_tensor(&q, &w.dims, &codes));
        let (sdims, axis): (Vec<usize>, _) = if per_channel { (vec![scales.len()], Some(0)) } else { (vec![], None) };
        self.initializers.push(graph::f32_tensor(&scale_name, &sdims, &scales));
        self.initializers.push(graph::i8_tensor(&zp, &sdims, &vec![0; scales.len()]));
        let out = (QConst { q, scale: scale_name, zero_point: zp, axis }, scales);
        self.weights.insert(c.weight.clone(), out.clone());
        Ok(out)
    }

    /// The int32 bias of a compute node at scale `input_scale × weight_scale`.
    pub fn bias(
        &mut self,
        c: &Compute,
        input_scale: f32,
        weight_scales: &[f32],
    ) -> Result<Option<QConst>, QuantizeError> {
        let Some(b) = &c.bias else { return Ok(None) };
        let bias =
            self.index.float(b).ok_or_else(|| QuantizeError::Graph(format!("bias '{b}' is not a float32 constant")))?;
        let (codes, scales, clamped) = scale::quantize_bias(&bias.data, input_scale, weight_scales);
        if clamped > 0 {
            let note = format!("bias '{b}': {clamped} value(s) clamped to the int32 range");
            log::warn!("{note}");
            self.notes.push(note);
        }
        let q = self.names.fresh(&format!("{b}_quantized"));
        let scale_name = self.names.fresh(&format!("{b}_quantized_scale"));
        let zp = self.names.fresh(&format!("{b}_quantized_zero_point"));
        self.initializers.push(graph::i32_tensor(&q, &bias.dims, &codes));
        let per_channel = scales.len() > 1;
        let sdims: Vec<usize> = if per_channel { vec![scales.len()] } else { vec![] };
        self.initializers.push(graph::f32_tensor(&scale_name, &sdims, &scales));
        self.initializers.push(graph::i32_tensor(&zp, &sdims, &vec![0; scales.len()]));
        Ok(Some(QConst { q, scale: scale_name, zero_point: zp, axis: per_channel.then_some(0) }))
    }
}

/// An `axis` attribute for per-channel QuantizeLinear/DequantizeLinear.
pub fn axis_attr(axis: Option<i64>) -> Vec<tract_onnx::pb::AttributeProto> {
    axis.map(|a| vec![graph::int_attr("axis", a)]).unwrap_or_default()
}
