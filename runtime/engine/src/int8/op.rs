//! The fused integer layer as tract sees it: parsed from the node the QDQ pass wrote
//! ([`FusedSpec`] in its `spec` attribute, the int8 weights as its second input), typed, and run.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::epilogue::{Add, Epilogue, Output, Quant, Sink, Step, Writer};
use super::gemm::Gemm;
use super::kernel::{self, ConvGeometry, Features, PackedConv, PackedLinear, Planes};
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
    /// The kernels the sums run on.
    #[serde(default)]
    pub kernels: Int8Kernels,
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
        let layer = Int8Layer::new(&self.spec, &x, &w, self.spec.kernels)?;
        model.wire_node(prefix, layer, &inputs[..1])
    }
}

/// The packed weights of either kind, for either family of kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Packed {
    Linear {
        weights: Arc<PackedLinear>,
        inputs: usize,
    },
    Conv {
        weights: Arc<PackedConv>,
        geometry: ConvGeometry,
    },
    /// tract-linalg's kernels ([`Gemm`]) for the product, Drover's epilogue after it; a conv
    /// is lowered to a product by im2col.
    Gemm {
        gemm: Arc<Gemm>,
        zero: Arc<ZeroPoints>,
        conv: Option<ConvGeometry>,
        /// The vectors the epilogue runs in.
        isa: Isa,
    },
}

/// Which kernels run an int8 layer's sums: a load option ([`crate::LoadOptions`]), so the
/// two families can be measured against each other on the same file in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Int8Kernels {
    /// The faster family on this machine: [`Int8Kernels::Linalg`] on ARM (NEON), and on x86
    /// whichever `docs/int8.md` measured faster.
    #[default]
    Native,
    /// Drover's own lanes ([`kernel`]): AVX-512/AVX2 through pulp, plain Rust elsewhere.
    Lanes,
    /// tract-linalg's integer kernels ([`super::gemm`]): NEON (`smlal`/`sdot`) on aarch64,
    /// NEON on armv7, AVX2/VNNI on x86.
    Linalg,
}

impl std::str::FromStr for Int8Kernels {
    type Err = String;

    fn from_str(s: &str) -> Result<Int8Kernels, String> {
        match s {
            "native" => Ok(Int8Kernels::Native),
            "lanes" => Ok(Int8Kernels::Lanes),
            "linalg" => Ok(Int8Kernels::Linalg),
            other => Err(format!("{other:?}: the int8 kernels are native, lanes or linalg")),
        }
    }
}

impl Int8Kernels {
    /// The concrete family `Native` stands for here.
    pub(crate) fn resolve(self) -> Int8Kernels {
        match self {
            Int8Kernels::Native if cfg!(target_arch = "x86_64") => Int8Kernels::Lanes,
            Int8Kernels::Native => Int8Kernels::Linalg,
            other => other,
        }
    }
}

/// The zero points of a layer on tract-linalg's kernels, which multiply raw i8 values: both
/// operands are shifted into i8 (uint8 − 128) and the zero points folded into corrections,
/// `Σ (x' − x₀')(w' − w₀') = Σ x'w' + (K·x₀'·w₀' − x₀'·Σw') − w₀'·Σx'`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ZeroPoints {
    /// The input's zero point, shifted like the input; also what padding is filled with.
    input: i8,
    /// Per feature: `w₀'`.
    weights: Vec<i32>,
    /// Per feature: `K·x₀'·w₀' − x₀'·Σw'`.
    constant: Vec<i32>,
    /// Whether any `w₀'` is non-zero, so that the inputs' column sums are needed.
    column_sums: bool,
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
    fn new(spec: &FusedSpec, x: &TypedFact, w: &Tensor, kernels: Int8Kernels) -> TractResult<Int8Layer> {
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
        // Weights shifted into i8 for tract-linalg's kernels, with their shifted zero points.
        let shift = if w.datum_type() == DatumType::U8 { 128 } else { 0 };
        let packed = match spec.layer {
            _ if kernels.resolve() == Int8Kernels::Linalg => {
                let (k, a): (usize, Vec<i8>) = match spec.layer {
                    Layer::Linear { transposed } => {
                        ensure!(w.rank() == 2, "linear weights of rank {}", w.rank());
                        let (k, stride) = (w.shape()[if transposed { 1 } else { 0 }], w.shape()[1]);
                        let inputs = x.shape.last().context("rank 0 input")?.to_usize().ok();
                        ensure!(inputs.is_none_or(|n| n == k), "input rows of {inputs:?} values for {k} weights");
                        let a = (0..features * k)
                            .map(|i| {
                                let (o, kk) = (i / k, i % k);
                                let (r, c) = if transposed { (o, kk) } else { (kk, o) };
                                (weights[r * stride + c] - shift) as i8
                            })
                            .collect();
                        (k, a)
                    }
                    Layer::Conv { .. } => {
                        let geometry = conv_geometry(spec, x, w, &w_shape)?;
                        (
                            geometry.channels * geometry.kernel[0] * geometry.kernel[1],
                            weights.iter().map(|v| (v - shift) as i8).collect(),
                        )
                    }
                };
                // i32 sums of up to k products of ±255: |Σ| < 2³¹ needs k < 33,000.
                ensure!((1..=32_768).contains(&k), "{k} inputs per feature: none, or the sums could overflow");
                let x0 = spec.input.zero_point - if spec.input.signed { 0 } else { 128 };
                let x0 = i8::try_from(x0)
                    .map_err(|_| format_err!("input zero point {} out of range", spec.input.zero_point))?;
                let w0: Vec<i32> = (0..features).map(|f| at(&zp, f) - i32::from(shift)).collect();
                let constant = a
                    .chunks_exact(k)
                    .zip(&w0)
                    .map(|(row, w0)| {
                        let sum: i32 = row.iter().map(|v| i32::from(*v)).sum();
                        (k as i32)
                            .wrapping_mul(i32::from(x0))
                            .wrapping_mul(*w0)
                            .wrapping_sub(i32::from(x0).wrapping_mul(sum))
                    })
                    .collect();
                let zero = ZeroPoints { input: x0, column_sums: w0.iter().any(|z| *z != 0), weights: w0, constant };
                let conv = match spec.layer {
                    Layer::Conv { .. } => Some(conv_geometry(spec, x, w, &w_shape)?),
                    Layer::Linear { .. } => None,
                };
                Packed::Gemm { gemm: Arc::new(Gemm::new(features, k, &a)?), zero: Arc::new(zero), conv, isa }
            }
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
                let geometry = conv_geometry(spec, x, w, &w_shape)?;
                let taps = geometry.channels * geometry.kernel[0] * geometry.kernel[1];
                ensure!(taps <= 32_768, "{taps} taps per output could overflow the sums");
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
            Packed::Gemm { .. } => bail!("a layer on tract-linalg's kernels runs through run_gemm"),
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

impl Int8Layer {
    /// The layer on tract-linalg's kernels, its input moved into i8 as the weights' zero points
    /// expect ([`IntoI8`]).
    fn run_gemm<T: IntoI8>(&self, x: &[T], shape: &[usize]) -> TractResult<Tensor> {
        let Packed::Gemm { gemm, zero, conv, isa } = &self.packed else { bail!("not a tract-linalg layer") };
        let features = self.epilogue.features();
        let dt = match self.epilogue.output() {
            Output::I8 => DatumType::I8,
            Output::U8 => DatumType::U8,
            Output::F32 => DatumType::F32,
        };
        match conv {
            None => {
                let k = *shape.last().context("rank 0 input")?;
                let rows = x.len().checked_div(k).unwrap_or(0);
                ensure!(
                    k > 0 && gemm.k_padded() >= k && zero.weights.len() == features,
                    "rows of {k} values for a layer of {} inputs",
                    gemm.k_padded()
                );
                let mut out_shape = shape.to_vec();
                if let Some(last) = out_shape.last_mut() {
                    *last = features;
                }
                let mut out = Tensor::zero_dt(dt, &out_shape)?;
                if rows == 0 {
                    return Ok(out);
                }
                // The operand: each row of the input is a column of the product.
                let mut columns = gemm.columns(rows)?;
                let mut shifted = vec![0i8; k];
                let mut column_sums = vec![0i32; rows];
                for (r, row) in x.chunks_exact(k).enumerate() {
                    T::into_i8(row, &mut shifted);
                    if zero.column_sums {
                        column_sums[r] = shifted.iter().map(|v| i32::from(*v)).sum();
                    }
                    columns.column(r, &shifted);
                }
                let mut sums = Tensor::zero::<i32>(&[rows, features])?;
                gemm.product(&columns, &mut sums, true)?;
                let sums = sums.try_as_plain_ram()?;
                let sums = sums.as_slice::<i32>()?;
                let mut add = zero.constant.clone();
                with_sink(&mut out, |mut sink| {
                    for ((r, line), column_sum) in sums.chunks_exact(features).enumerate().zip(&column_sums) {
                        if zero.column_sums {
                            for ((a, c), w0) in add.iter_mut().zip(&zero.constant).zip(&zero.weights) {
                                *a = c.wrapping_sub(w0.wrapping_mul(*column_sum));
                            }
                        }
                        let part = sink.part(r * features, features);
                        self.epilogue.finish(*isa, Features::From(0), line, Add::Each(&add), part);
                    }
                })?;
                Ok(out)
            }
            Some(g) => {
                ensure!(
                    shape.len() == 4 && shape[1..] == [g.channels, g.height, g.width],
                    "input {shape:?}, the layer takes [N, {}, {}, {}]",
                    g.channels,
                    g.height,
                    g.width
                );
                let conv_out = g.output().context("the kernel does not fit the padded image")?;
                let [oh, ow] = self.spec.conv_output(g)?;
                let positions = conv_out[0] * conv_out[1];
                let image = g.channels * g.height * g.width;
                let k = g.channels * g.kernel[0] * g.kernel[1];
                let mut out = Tensor::zero_dt(dt, &[shape[0], features, oh, ow])?;
                let mut padded = PaddedImage::new(g, zero.input);
                // At stride 1 the product runs over the padded width: each output row is as long
                // as a padded input row, so every row of the operand is one run of the padded
                // image, handed to the packing without an im2col copy. The extra columns (up to
                // the kernel's width minus one per row) are computed and dropped.
                let wide = g.strides == [1, 1];
                let (columns_n, row_len) = if wide {
                    ((conv_out[0] - 1) * padded.cols + conv_out[1], padded.cols)
                } else {
                    (positions, conv_out[1])
                };
                let mut sums = Tensor::zero::<i32>(&[features, columns_n])?;
                // The epilogue's values before the pool, or before dropping the extra columns.
                let mut scratch = match self.spec.pool.is_some() || row_len != conv_out[1] {
                    true => Some(Tensor::zero_dt(dt, &[features, columns_n])?),
                    false => None,
                };
                let mut line = vec![0i8; if wide { 0 } else { positions }];
                let mut column_sums = vec![0i32; if zero.column_sums { columns_n } else { 0 }];
                let mut add = vec![0i32; column_sums.len()];
                for (n, img) in x.chunks_exact(image).enumerate() {
                    padded.fill(img);
                    let mut columns = gemm.columns(columns_n)?;
                    column_sums.fill(0);
                    if wide {
                        let rows: Vec<&[i8]> = (0..k).map(|row| padded.wide_row(row, columns_n)).collect();
                        for values in &rows {
                            column_sums.iter_mut().zip(*values).for_each(|(s, v)| *s += i32::from(*v));
                        }
                        columns.rows(0, &rows);
                    } else {
                        for row in 0..k {
                            padded.im2col_row(row, conv_out, &mut line);
                            column_sums.iter_mut().zip(&line).for_each(|(s, v)| *s += i32::from(*v));
                            columns.row(row, &line);
                        }
                    }
                    gemm.product(&columns, &mut sums, false)?;
                    let sview = sums.try_as_plain_ram()?;
                    let sums = sview.as_slice::<i32>()?;
                    let mut emit_into = |t: &mut Tensor, base: usize| {
                        with_sink(t, |mut sink| {
                            for (f, line) in sums.chunks_exact(columns_n).enumerate() {
                                let (c, w0) = (zero.constant[f], zero.weights[f]);
                                let add = if zero.column_sums {
                                    for (a, s) in add.iter_mut().zip(&column_sums) {
                                        *a = c.wrapping_sub(w0.wrapping_mul(*s));
                                    }
                                    Add::Each(&add)
                                } else {
                                    Add::Same(c)
                                };
                                let part = sink.part(base + f * columns_n, columns_n);
                                self.epilogue.finish(*isa, Features::One(f), line, add, part);
                            }
                        })
                    };
                    let at = n * features * oh * ow..(n + 1) * features * oh * ow;
                    let Some(scratch) = scratch.as_mut() else {
                        emit_into(&mut out, at.start)?;
                        continue;
                    };
                    emit_into(scratch, 0)?;
                    let src = scratch.try_as_plain_ram()?;
                    let mut view = out.try_as_plain_ram_mut()?;
                    let strides = [columns_n, row_len];
                    match (&self.spec.pool, dt) {
                        (Some(pool), DatumType::I8) => {
                            let dst = &mut view.as_slice_mut::<i8>()?[at];
                            pool.run_strided(src.as_slice::<i8>()?, features, conv_out, strides, dst)
                        }
                        (Some(pool), _) => {
                            let dst = &mut view.as_slice_mut::<u8>()?[at];
                            pool.run_strided(src.as_slice::<u8>()?, features, conv_out, strides, dst)
                        }
                        (None, DatumType::I8) => {
                            drop_columns(src.as_slice::<i8>()?, conv_out, strides, &mut view.as_slice_mut()?[at])
                        }
                        (None, DatumType::U8) => {
                            drop_columns(src.as_slice::<u8>()?, conv_out, strides, &mut view.as_slice_mut()?[at])
                        }
                        (None, _) => {
                            drop_columns(src.as_slice::<f32>()?, conv_out, strides, &mut view.as_slice_mut()?[at])
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The conv's geometry for input `x` and weights `w`, checked: NCHW and OIHW, one group, a
/// kernel that fits the padded image (and the pool after it).
fn conv_geometry(spec: &FusedSpec, x: &TypedFact, w: &Tensor, w_shape: &[TDim]) -> TractResult<ConvGeometry> {
    let x_shape: Vec<TDim> = x.shape.iter().cloned().collect();
    ensure!(x_shape.len() == 4 && w.rank() == 4, "conv of rank {} on weights of rank {}", x.rank(), w.rank());
    let geometry = spec.geometry(&x_shape, w_shape)?;
    ensure!(w.shape()[1] == geometry.channels && geometry.channels > 0, "one group of channels only");
    spec.conv_output(&geometry)?;
    Ok(geometry)
}

/// The `[h, w]` planes of `src` (rows `row_stride` apart, planes `plane_stride`) packed into
/// `dst`: a conv's output computed over its padded width, without the extra columns.
fn drop_columns<T: Copy>(src: &[T], [h, w]: [usize; 2], [plane_stride, row_stride]: [usize; 2], dst: &mut [T]) {
    for (p, plane) in dst.chunks_exact_mut(h * w).enumerate() {
        for (y, row) in plane.chunks_exact_mut(w).enumerate() {
            row.copy_from_slice(&src[p * plane_stride + y * row_stride..][..w]);
        }
    }
}

/// An input type of the layers on tract-linalg's kernels, moved into i8 as they read it: int8
/// as it is, uint8 minus 128 (its top bit flipped), eight values per instruction.
trait IntoI8: Datum + Copy {
    /// `dst[i]` from `src[i]` (both the same length).
    fn into_i8(src: &[Self], dst: &mut [i8]);
}

impl IntoI8 for i8 {
    fn into_i8(src: &[i8], dst: &mut [i8]) {
        dst.copy_from_slice(src);
    }
}

impl IntoI8 for u8 {
    fn into_i8(src: &[u8], dst: &mut [i8]) {
        let dst = bytemuck::cast_slice_mut::<i8, u8>(dst);
        let mut d = dst.chunks_exact_mut(8);
        let mut s = src.chunks_exact(8);
        for (d, s) in (&mut d).zip(&mut s) {
            let v = u64::from_le_bytes(s.try_into().unwrap_or_default()) ^ 0x8080_8080_8080_8080;
            d.copy_from_slice(&v.to_le_bytes());
        }
        d.into_remainder().iter_mut().zip(s.remainder()).for_each(|(d, s)| *d = s ^ 0x80);
    }
}

/// One image shifted into i8 inside its padding (the input's zero point, i.e. a centered 0),
/// so that every tap of every output position reads inside it and im2col is plain copies.
struct PaddedImage {
    geometry: ConvGeometry,
    rows: usize,
    cols: usize,
    data: Vec<i8>,
}

impl PaddedImage {
    fn new(g: &ConvGeometry, pad: i8) -> PaddedImage {
        let rows = g.height + g.pads[0] + g.pads[2];
        let cols = g.width + g.pads[1] + g.pads[3];
        PaddedImage { geometry: *g, rows, cols, data: vec![pad; g.channels * rows * cols] }
    }

    /// Shifts one image (`channels × height × width`, row-major) into the unpadded part; the
    /// padding keeps the value `new` gave it.
    fn fill<T: IntoI8>(&mut self, img: &[T]) {
        let g = &self.geometry;
        for (c, plane) in img.chunks_exact(g.height * g.width).enumerate().take(g.channels) {
            for (y, src) in plane.chunks_exact(g.width).enumerate() {
                let at = (c * self.rows + y + g.pads[0]) * self.cols + g.pads[1];
                T::into_i8(src, &mut self.data[at..at + g.width]);
            }
        }
    }

    /// Row `(c, ky, kx)` of a stride-1 conv's product operand over the padded width: `n`
    /// values of the padded image from the tap's first input on, read where they lie.
    fn wide_row(&self, row: usize, n: usize) -> &[i8] {
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let (c, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
        let at = (c * self.rows + ky * g.dilations[0]) * self.cols + kx * g.dilations[1];
        &self.data[at..at + n]
    }

    /// Row `(c, ky, kx)` of the conv's product operand: that tap for every position of the
    /// `[oh, ow]` output, into `line` (`oh · ow` values).
    fn im2col_row(&self, row: usize, [oh, ow]: [usize; 2], line: &mut [i8]) {
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let (c, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
        let plane = &self.data[c * self.rows * self.cols..][..self.rows * self.cols];
        for (oy, dst) in line.chunks_exact_mut(ow).enumerate().take(oh) {
            let at = (oy * g.strides[0] + ky * g.dilations[0]) * self.cols + kx * g.dilations[1];
            if g.strides[1] == 1 {
                dst.copy_from_slice(&plane[at..at + ow]);
            } else {
                let src = &plane[at..];
                dst.iter_mut().enumerate().for_each(|(ox, d)| *d = src[ox * g.strides[1]]);
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
            Packed::Linear { .. } | Packed::Gemm { conv: None, .. } => "Int8Linear".into(),
            Packed::Conv { .. } | Packed::Gemm { conv: Some(_), .. } => "Int8Conv".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let kernels = match &self.packed {
            Packed::Gemm { gemm, .. } => format!("{gemm:?}"),
            _ => "Drover's lanes".to_string(),
        };
        Ok(vec![format!("{:?}, {} steps after the sums, on {kernels}", self.spec.layer, self.spec.steps.len())])
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
        let out = match (x.datum_type(), &self.packed) {
            (DatumType::I8, Packed::Gemm { .. }) => self.run_gemm(plain.as_slice::<i8>()?, &shape)?,
            (DatumType::U8, Packed::Gemm { .. }) => self.run_gemm(plain.as_slice::<u8>()?, &shape)?,
            (DatumType::I8, _) => self.run(plain.as_slice::<i8>()?, &shape, |v| v as i16 - zp)?,
            (DatumType::U8, _) => self.run(plain.as_slice::<u8>()?, &shape, |v| v as i16 - zp)?,
            (dt, _) => bail!("input of type {dt:?}"),
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
            Packed::Linear { .. } | Packed::Gemm { conv: None, .. } => {
                let mut s: TVec<TDim> = x.iter().cloned().collect();
                *s.last_mut().context("rank 0 input")? = features;
                s
            }
            Packed::Conv { geometry, .. } | Packed::Gemm { conv: Some(geometry), .. } => {
                let [oh, ow] = self.spec.conv_output(geometry)?;
                ensure!(x.len() == 4, "conv input of rank {}", x.len());
                tvec!(x[0].clone(), features, oh.into(), ow.into())
            }
        };
        Ok(tvec!(self.spec.output().fact(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as u8
            })
            .collect()
    }

    fn tensor(dt: DatumType, shape: &[usize], seed: u32) -> Tensor {
        let b = bytes(shape.iter().product(), seed);
        match dt {
            DatumType::I8 => Tensor::from_shape(shape, &b.iter().map(|v| *v as i8).collect::<Vec<_>>()),
            _ => Tensor::from_shape(shape, &b),
        }
        .expect("tensor")
    }

    fn quant(signed: bool, zero_point: i32, scale: f32) -> Quant {
        Quant { scale, zero_point, signed }
    }

    /// The same layer on both kernel families gives the same bytes.
    fn same_on_both(spec: &FusedSpec, x: &Tensor, w: &Tensor) {
        let fact = TypedFact::dt_shape(x.datum_type(), x.shape());
        let run = |backend| {
            let layer = Int8Layer::new(spec, &fact, w, backend).expect("layer");
            let out = layer.eval(&EvalContext::out_of_plan(), tvec!(x.clone().into_tvalue())).expect("eval");
            out[0].clone().into_tensor()
        };
        let (lanes, linalg) = (run(Int8Kernels::Lanes), run(Int8Kernels::Linalg));
        assert_eq!(lanes, linalg, "{spec:?} on {:?}", x.shape());
    }

    fn steps(features: usize, out_signed: bool, seed: u32) -> Vec<Step> {
        let bias = bytes(features, seed).iter().map(|v| (*v as f32 - 128.0) * 0.37).collect();
        vec![Step::Bias(bias), Step::Quantize(quant(out_signed, if out_signed { -7 } else { 131 }, 0.9))]
    }

    /// Convolutions of every geometry the QDQ pass hands over (pads, strides, dilations, a
    /// pool after), on uint8 and int8 inputs and weights, per-tensor and per-channel zero
    /// points, equal bytes on Drover's lanes and on tract-linalg's kernels.
    #[test]
    fn conv_layers_agree_across_kernel_families() {
        let geometries = [
            ([0, 0, 0, 0], [1, 1], [1, 1], [1, 1], None),
            ([1, 1, 1, 1], [1, 1], [1, 1], [3, 3], None),
            ([1, 0, 2, 1], [2, 2], [1, 1], [3, 3], None),
            ([2, 2, 2, 2], [1, 2], [2, 2], [3, 2], None),
            ([1, 1, 1, 1], [1, 1], [1, 1], [3, 3], Some(Pool { kernel: [2, 2], strides: [2, 2], dilations: [1, 1] })),
            ([1, 2, 0, 1], [1, 1], [2, 2], [3, 2], None),
        ];
        for (i, (pads, strides, dilations, [kh, kw], pool)) in geometries.into_iter().enumerate() {
            for (x_signed, w_signed, per_channel) in
                [(false, true, true), (true, true, false), (false, false, false), (true, false, true)]
            {
                let (c, o) = (5, 11);
                let seed = i as u32 * 8 + u32::from(x_signed) * 4 + u32::from(w_signed) * 2;
                let x = tensor(if x_signed { DatumType::I8 } else { DatumType::U8 }, &[2, c, 9, 8], seed);
                let w = tensor(if w_signed { DatumType::I8 } else { DatumType::U8 }, &[o, c, kh, kw], seed + 1);
                let zp = |f: i32| if w_signed { (f * 3) % 5 - 2 } else { 120 + f };
                let spec = FusedSpec {
                    layer: Layer::Conv { pads, strides, dilations },
                    input: quant(x_signed, if x_signed { 3 } else { 140 }, 0.02),
                    weight_zero_points: if per_channel { (0..o as i32).map(zp).collect() } else { vec![zp(1)] },
                    weight_scales: if per_channel {
                        (0..o).map(|f| 0.01 + f as f32 * 1e-3).collect()
                    } else {
                        vec![0.013]
                    },
                    // A float output (the conv's result dequantized) on the last geometry.
                    steps: match pool.is_none() && i == 5 && per_channel {
                        true => vec![Step::Bias(bytes(o, seed).iter().map(|v| *v as f32 * 0.1).collect())],
                        false => steps(o, !x_signed, seed),
                    },
                    pool,
                    kernels: Int8Kernels::Native,
                };
                same_on_both(&spec, &x, &w);
            }
        }
    }

    /// MatMul and Gemm layers on one row and on several, both weight layouts, equal bytes on
    /// both kernel families; a float output (no quantize step) too.
    #[test]
    fn linear_layers_agree_across_kernel_families() {
        for (rows, k, o) in [(1, 7, 3), (1, 64, 10), (5, 33, 17), (16, 100, 40)] {
            for (transposed, x_signed, w_signed) in [(true, false, true), (false, true, false), (true, true, true)] {
                let seed = (rows * 100 + k) as u32;
                let x = tensor(if x_signed { DatumType::I8 } else { DatumType::U8 }, &[rows, k], seed);
                let w_shape = if transposed { [o, k] } else { [k, o] };
                let w = tensor(if w_signed { DatumType::I8 } else { DatumType::U8 }, &w_shape, seed + 1);
                let mut spec = FusedSpec {
                    layer: Layer::Linear { transposed },
                    input: quant(x_signed, if x_signed { -5 } else { 128 }, 0.05),
                    weight_zero_points: vec![if w_signed { 0 } else { 127 }],
                    weight_scales: vec![0.004],
                    steps: steps(o, x_signed, seed),
                    pool: None,
                    kernels: Int8Kernels::Native,
                };
                same_on_both(&spec, &x, &w);
                spec.steps.truncate(1);
                same_on_both(&spec, &x, &w);
            }
        }
    }
}
