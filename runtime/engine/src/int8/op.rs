//! The fused integer layer as tract sees it: parsed from the node the QDQ pass wrote
//! ([`FusedSpec`] in its `spec` attribute, the int8 weights as its second input), typed, and run.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::epilogue::{Epilogue, Output, Quant, Sink, Step, Writer};
use super::kernel::{self, ConvGeometry, PackedConv, PackedLinear, Planes};
use super::lanes::{Isa, pair};
use super::pool::Pool;

/// Everything the fused node needs besides its weights, as the QDQ pass found it in the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FusedSpec {
    pub layer: Layer,
    /// The int8/uint8 input's quantization.
    pub input: Quant,
    /// The weights' zero points: one, or one per output feature.
    pub weight_zero_points: Vec<i32>,
    /// The weights' scales: one, or one per output feature.
    pub weight_scales: Vec<f32>,
    /// What the graph did to the matmul's result, in order.
    pub steps: Vec<Step>,
    /// A max pool over the quantized conv output (conv layers with a quantized output only).
    #[serde(default)]
    pub pool: Option<Pool>,
}

/// The matmul the node replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Layer {
    /// MatMul (weights `[K, O]`) or Gemm (weights `[O, K]` when `transposed`) on `[.., K]` rows.
    Linear { transposed: bool },
    /// A 2-D Conv with one group: weights `[O, C, kh, kw]`, input `[N, C, H, W]`.
    Conv { pads: [usize; 4], strides: [usize; 2], dilations: [usize; 2] },
}

impl FusedSpec {
    /// The element type the node outputs, from its last step.
    fn output(&self) -> DatumType {
        match self.steps.last() {
            Some(Step::Quantize(q)) if q.signed => DatumType::I8,
            Some(Step::Quantize(_)) => DatumType::U8,
            _ => DatumType::F32,
        }
    }

    fn input_type(&self) -> DatumType {
        if self.input.signed { DatumType::I8 } else { DatumType::U8 }
    }

    /// Output features given the weights' shape.
    fn features(&self, weights: &[TDim]) -> TractResult<TDim> {
        let axis = match self.layer {
            Layer::Linear { transposed: false } => 1,
            Layer::Linear { transposed: true } | Layer::Conv { .. } => 0,
        };
        weights.get(axis).cloned().context("weights of too low a rank")
    }

    /// The output shape for input `x` and weights `w`.
    fn output_shape(&self, x: &[TDim], w: &[TDim]) -> TractResult<TVec<TDim>> {
        let features = self.features(w)?;
        match self.layer {
            Layer::Linear { .. } => {
                ensure!(w.len() == 2 && !x.is_empty(), "linear layer needs 2-D weights and rows");
                let mut shape: TVec<TDim> = x.iter().cloned().collect();
                *shape.last_mut().context("rank 0")? = features;
                Ok(shape)
            }
            Layer::Conv { .. } => {
                ensure!(x.len() == 4 && w.len() == 4, "conv layer needs NCHW input and OIHW weights");
                let [oh, ow] = self.conv_output(&self.geometry(x, w)?)?;
                Ok(tvec!(x[0].clone(), features, oh.into(), ow.into()))
            }
        }
    }

    /// The conv's output height and width, after the pool when there is one.
    fn conv_output(&self, g: &ConvGeometry) -> TractResult<[usize; 2]> {
        let out = g.output().context("the kernel does not fit the padded image")?;
        match &self.pool {
            Some(pool) => pool.output(out).context("the pool window does not fit the conv output"),
            None => Ok(out),
        }
    }

    fn geometry(&self, x: &[TDim], w: &[TDim]) -> TractResult<ConvGeometry> {
        let Layer::Conv { pads, strides, dilations } = self.layer else { bail!("not a conv layer") };
        let dim = |d: &TDim| d.to_usize();
        Ok(ConvGeometry {
            channels: dim(&x[1])?,
            height: dim(&x[2])?,
            width: dim(&x[3])?,
            kernel: [dim(&w[2])?, dim(&w[3])?],
            pads,
            strides,
            dilations,
        })
    }
}

/// The node's op type, in [`super::DOMAIN`].
pub(crate) const OP_TYPE: &str = "Int8Fused";

/// tract-onnx's builder for the node: reads and checks the spec.
pub(crate) fn build(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!(node.domain == super::DOMAIN, "{OP_TYPE} exists only in {}", super::DOMAIN);
    let spec = node.attribute.iter().find(|a| a.name == "spec").context("no spec attribute")?;
    let spec: FusedSpec = serde_json::from_slice(&spec.s).context("unreadable spec")?;
    ensure!(spec.input.valid(), "invalid input quantization {:?}", spec.input);
    if spec.pool.is_some() {
        ensure!(
            matches!(spec.layer, Layer::Conv { .. }) && spec.output() != DatumType::F32,
            "a pool follows quantized conv outputs only"
        );
    }
    Ok((expand(Fused { spec }), vec![]))
}

/// The inference-time form: checks types and shapes, then packs the weights into [`Int8Layer`].
#[derive(Debug, Clone)]
struct Fused {
    spec: FusedSpec,
}

impl Expansion for Fused {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, self.spec.input_type())?;
        s.equals(&outputs[0].datum_type, self.spec.output())?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, x, w| {
            let shape = self.spec.output_shape(&x, &w)?;
            s.equals(&outputs[0].shape, ShapeFactoid::from(shape.into_iter().collect::<Vec<_>>()))
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let x = model.outlet_fact(inputs[0])?.clone();
        let w = model.outlet_fact(inputs[1])?.konst.clone().context("weights are not a constant")?;
        let layer = Int8Layer::new(&self.spec, &x, &w)?;
        model.wire_node(prefix, layer, &inputs[..1])
    }
}

/// The packed weights of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Packed {
    Linear { weights: Arc<PackedLinear>, inputs: usize },
    Conv { weights: Arc<PackedConv>, geometry: ConvGeometry },
}

/// The typed, runnable layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Int8Layer {
    spec: Arc<FusedSpec>,
    packed: Packed,
    epilogue: Arc<Epilogue>,
}

impl Eq for Int8Layer {}

impl Int8Layer {
    fn new(spec: &FusedSpec, x: &TypedFact, w: &Tensor) -> TractResult<Int8Layer> {
        let w_shape: Vec<TDim> = w.shape().iter().map(|d| TDim::from(*d)).collect();
        let features = spec.features(&w_shape)?.to_usize()?;
        let per_feature = |n: usize, what: &str| {
            ensure!(n == 1 || n == features, "{n} weight {what} for {features} features");
            Ok(())
        };
        per_feature(spec.weight_zero_points.len(), "zero points")?;
        per_feature(spec.weight_scales.len(), "scales")?;
        let at = |v: &[i32], f: usize| v[if v.len() == 1 { 0 } else { f }];
        let weights: Vec<i16> = match w.datum_type() {
            DatumType::I8 => w.try_as_plain_ram()?.as_slice::<i8>()?.iter().map(|v| *v as i16).collect(),
            DatumType::U8 => w.try_as_plain_ram()?.as_slice::<u8>()?.iter().map(|v| *v as i16).collect(),
            dt => bail!("weights of type {dt:?}"),
        };
        let zp: Vec<i32> = spec.weight_zero_points.clone();
        ensure!(zp.iter().all(|z| (-128..=255).contains(z)), "weight zero point out of range");
        let isa = Isa::detect();
        let packed = match spec.layer {
            Layer::Linear { transposed } => {
                ensure!(w.rank() == 2, "linear weights of rank {}", w.rank());
                let k = w.shape()[if transposed { 1 } else { 0 }];
                // i32 sums of up to k products of ±255: |Σ| < 2³¹ needs k < 33,000.
                ensure!((1..=32_768).contains(&k), "{k} inputs per feature: none, or the sums could overflow");
                let stride = w.shape()[1];
                let centered = |o: usize, i: usize| {
                    let (r, c) = if transposed { (o, i) } else { (i, o) };
                    weights[r * stride + c] - at(&zp, o) as i16
                };
                let inputs = x.shape.last().context("rank 0 input")?.to_usize().ok();
                ensure!(inputs.is_none_or(|n| n == k), "input rows of {inputs:?} values for {k} weights");
                Packed::Linear { weights: Arc::new(PackedLinear::new(isa, features, k, centered)), inputs: k }
            }
            Layer::Conv { .. } => {
                let x_shape: Vec<TDim> = x.shape.iter().cloned().collect();
                ensure!(
                    x_shape.len() == 4 && w.rank() == 4,
                    "conv of rank {} on weights of rank {}",
                    x.rank(),
                    w.rank()
                );
                let geometry = spec.geometry(&x_shape, &w_shape)?;
                ensure!(w.shape()[1] == geometry.channels && geometry.channels > 0, "one group of channels only");
                let taps = geometry.channels * geometry.kernel[0] * geometry.kernel[1];
                ensure!(taps <= 32_768, "{taps} taps per output could overflow the sums");
                spec.conv_output(&geometry)?;
                let [kh, kw] = geometry.kernel;
                let c = geometry.channels;
                let centered = |o: usize, ci: usize, y: usize, xx: usize| {
                    weights[((o * c + ci) * kh + y) * kw + xx] - at(&zp, o) as i16
                };
                Packed::Conv { weights: Arc::new(PackedConv::new(isa, geometry, features, centered)), geometry }
            }
        };
        let scale = |f: usize| spec.weight_scales[if spec.weight_scales.len() == 1 { 0 } else { f }];
        ensure!(
            spec.weight_scales.iter().all(|s| s.is_finite() && *s > 0.0),
            "weight scales must be finite and positive"
        );
        let unit = (0..features).map(|f| spec.input.scale * scale(f)).collect();
        let epilogue = Epilogue::new(unit, spec.steps.clone()).map_err(TractError::msg)?;
        Ok(Int8Layer { spec: Arc::new(spec.clone()), packed, epilogue: Arc::new(epilogue) })
    }

    fn run<T: Datum + Copy>(&self, x: &[T], shape: &[usize], center: impl Fn(T) -> i16) -> TractResult<Tensor> {
        let features = self.epilogue.features();
        let dt = match self.epilogue.output() {
            Output::I8 => DatumType::I8,
            Output::U8 => DatumType::U8,
            Output::F32 => DatumType::F32,
        };
        match &self.packed {
            Packed::Linear { weights, inputs } => {
                let k = *inputs;
                ensure!(shape.last() == Some(&k), "rows of {:?} values, the layer takes {k}", shape.last());
                let mut packed_rows = Vec::with_capacity(x.len() / k * weights.pairs());
                for row in x.chunks_exact(k) {
                    let mut it = row.chunks_exact(2);
                    packed_rows.extend((&mut it).map(|p| pair(center(p[0]), center(p[1]))));
                    if let [last] = it.remainder() {
                        packed_rows.push(pair(center(*last), 0));
                    }
                }
                let mut shape = shape.to_vec();
                if let Some(last) = shape.last_mut() {
                    *last = features;
                }
                let mut out = Tensor::zero_dt(dt, &shape)?;
                with_sink(&mut out, |sink| {
                    kernel::linear(weights, &packed_rows, &mut Writer { epilogue: &self.epilogue, sink });
                })?;
                Ok(out)
            }
            Packed::Conv { weights, geometry } => {
                let g = geometry;
                ensure!(
                    shape.len() == 4 && shape[1..] == [g.channels, g.height, g.width],
                    "input {shape:?}, the layer takes [N, {}, {}, {}]",
                    g.channels,
                    g.height,
                    g.width
                );
                let conv_out = g.output().context("the kernel does not fit the padded image")?;
                let [oh, ow] = self.spec.conv_output(g)?;
                let image = g.channels * g.height * g.width;
                let mut out = Tensor::zero_dt(dt, &[shape[0], features, oh, ow])?;
                let mut planes = Planes::new(weights);
                let conv = |planes: &Planes, base: usize, sink: Sink<'_>| {
                    kernel::conv(weights, planes, base, &mut Writer { epilogue: &self.epilogue, sink });
                };
                match &self.spec.pool {
                    None => with_sink(&mut out, |mut sink| {
                        for (n, img) in x.chunks_exact(image).enumerate() {
                            planes.fill(weights, |i| center(img[i]));
                            conv(&planes, n * features * oh * ow, sink.reborrow());
                        }
                    })?,
                    Some(pool) => {
                        // One image's conv output at a time, pooled into the tensor.
                        let mut scratch = Tensor::zero_dt(dt, &[features, conv_out[0], conv_out[1]])?;
                        let mut view = out.try_as_plain_ram_mut()?;
                        for (n, img) in x.chunks_exact(image).enumerate() {
                            planes.fill(weights, |i| center(img[i]));
                            with_sink(&mut scratch, |sink| conv(&planes, 0, sink))?;
                            let src = scratch.try_as_plain_ram()?;
                            let at = n * features * oh * ow..(n + 1) * features * oh * ow;
                            match dt {
                                DatumType::I8 => {
                                    let dst = &mut view.as_slice_mut::<i8>()?[at];
                                    pool.run(src.as_slice::<i8>()?, features, conv_out, dst)
                                }
                                _ => {
                                    let dst = &mut view.as_slice_mut::<u8>()?[at];
                                    pool.run(src.as_slice::<u8>()?, features, conv_out, dst)
                                }
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Runs `write` on the tensor's storage as a [`Sink`] of its type.
fn with_sink(t: &mut Tensor, write: impl FnOnce(Sink<'_>)) -> TractResult<()> {
    let dt = t.datum_type();
    let mut view = t.try_as_plain_ram_mut()?;
    let sink = match dt {
        DatumType::I8 => Sink::I8(view.as_slice_mut::<i8>()?),
        DatumType::U8 => Sink::U8(view.as_slice_mut::<u8>()?),
        DatumType::F32 => Sink::F32(view.as_slice_mut::<f32>()?),
        dt => bail!("output of type {dt:?}"),
    };
    write(sink);
    Ok(())
}

impl Op for Int8Layer {
    fn name(&self) -> StaticName {
        match self.packed {
            Packed::Linear { .. } => "Int8Linear".into(),
            Packed::Conv { .. } => "Int8Conv".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}, {} steps after the sums", self.spec.layer, self.spec.steps.len())])
    }

    op_as_typed_op!();
}

impl EvalOp for Int8Layer {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape().to_vec();
        let plain = x.try_as_plain_ram()?;
        let zp = self.spec.input.zero_point as i16;
        let out = match x.datum_type() {
            DatumType::I8 => self.run(plain.as_slice::<i8>()?, &shape, |v| v as i16 - zp)?,
            DatumType::U8 => self.run(plain.as_slice::<u8>()?, &shape, |v| v as i16 - zp)?,
            dt => bail!("input of type {dt:?}"),
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Int8Layer {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x: Vec<TDim> = inputs[0].shape.iter().cloned().collect();
        let features = TDim::from(self.epilogue.features());
        let shape: TVec<TDim> = match &self.packed {
            Packed::Linear { .. } => {
                let mut s: TVec<TDim> = x.iter().cloned().collect();
                *s.last_mut().context("rank 0 input")? = features;
                s
            }
            Packed::Conv { geometry, .. } => {
                let [oh, ow] = self.spec.conv_output(geometry)?;
                ensure!(x.len() == 4, "conv input of rank {}", x.len());
                tvec!(x[0].clone(), features, oh.into(), ow.into())
            }
        };
        Ok(tvec!(self.spec.output().fact(shape)))
    }
}
