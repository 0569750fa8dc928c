//! tract's DequantizeLinear (`(x − zero point) · scale`, uint8 or int8 to f32) in NEON on aarch64.
//!
//! MobileNetV2's depthwise convolutions still run in fp32 with a DequantizeLinear in front of
//! each. tract's runs one value per instruction on the boards: the release agent is built for
//! size with whole-program LTO, which does not vectorise its loop. On the int8 MobileNetV2 0.35
//! that was 12.8 M of 131 M ARM instructions per inference (Cortex-A72). [`replace`] swaps each
//! such node of an optimised plan for [`Dequantize`]: the same integer subtraction, the same
//! exact conversion and the same IEEE multiplication, 16 values at a time.

use tract_core::internal::*;
use tract_core::ops::quant::DequantizeLinearF32;

/// DequantizeLinearF32 with its loop in NEON (aarch64 only; elsewhere [`replace`] keeps tract's).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dequantize {
    scale: f32,
    zero_point: i32,
}

impl Eq for Dequantize {}

/// Replaces every DequantizeLinearF32 of an int8 or uint8 tensor in `model` (an optimised plan
/// about to run) with [`Dequantize`]; returns how many. On other architectures than aarch64 it
/// changes nothing.
pub(crate) fn replace(model: &mut TypedModel) -> TractResult<usize> {
    if !cfg!(target_arch = "aarch64") {
        return Ok(0);
    }
    let mut replaced = 0;
    for id in 0..model.nodes.len() {
        let Some(dq) = model.nodes[id].op_as::<DequantizeLinearF32>() else { continue };
        let op = Dequantize { scale: dq.scale, zero_point: dq.zero_point };
        let Some(input) = model.nodes[id].inputs.first().copied() else { continue };
        if matches!(model.outlet_fact(input)?.datum_type, DatumType::U8 | DatumType::I8) {
            model.nodes[id].op = Box::new(op);
            replaced += 1;
        }
    }
    Ok(replaced)
}

impl Dequantize {
    fn run<T: Copy + Into<i32>>(&self, x: &[T], y: &mut [f32], wide: impl Fn(&[T], &mut [f32])) {
        let (whole, rest) = (x.len() / 16 * 16, x.len() % 16);
        for (x, y) in x[..whole].chunks_exact(16).zip(y[..whole].chunks_exact_mut(16)) {
            wide(x, y);
        }
        scalar(self, &x[whole..], &mut y[whole..whole + rest]);
    }
}

impl Op for Dequantize {
    fn name(&self) -> StaticName {
        "Int8Dequantize".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale: {} zero_point: {} (NEON)", self.scale, self.zero_point)])
    }

    op_as_typed_op!();
}

impl EvalOp for Dequantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let mut out = Tensor::zero::<f32>(x.shape())?;
        {
            let plain = x.try_as_plain_ram()?;
            let mut view = out.try_as_plain_ram_mut()?;
            let y = view.as_slice_mut::<f32>()?;
            match x.datum_type() {
                DatumType::U8 => self.run(plain.as_slice::<u8>()?, y, |x, y| neon::u8s(self, x, y)),
                DatumType::I8 => self.run(plain.as_slice::<i8>()?, y, |x, y| neon::i8s(self, x, y)),
                dt => bail!("Int8Dequantize of {dt:?}: int8 or uint8 only"),
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Dequantize {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::datum_type().fact(inputs[0].shape.clone())))
    }
}

/// Sixteen values at a time: widened to i32 in two steps, the zero point subtracted, converted
/// and scaled, four lanes per instruction.
#[cfg(target_arch = "aarch64")]
mod neon {
    use core::arch::aarch64::{int32x4_t, uint8x16_t};
    use pulp::aarch64::Neon;

    use super::Dequantize;

    fn finish(op: &Dequantize, simd: Neon, lanes: [int32x4_t; 4], y: &mut [f32]) {
        let n = simd.neon;
        let (zero, scale) = (n.vdupq_n_s32(op.zero_point), n.vdupq_n_f32(op.scale));
        for (v, y) in lanes.into_iter().zip(y.chunks_exact_mut(4)) {
            let f: [f32; 4] = pulp::cast(n.vmulq_f32(n.vcvtq_f32_s32(n.vsubq_s32(v, zero)), scale));
            y.copy_from_slice(&f);
        }
    }

    pub(super) fn u8s(op: &Dequantize, x: &[u8], y: &mut [f32]) {
        let (Some(simd), Ok(x)) = (Neon::try_new(), <[u8; 16]>::try_from(x)) else {
            return super::scalar(op, x, y);
        };
        let n = simd.neon;
        let v: uint8x16_t = pulp::cast(x);
        let (lo, hi) = (n.vmovl_u8(n.vget_low_u8(v)), n.vmovl_high_u8(v));
        let w = |v| n.vreinterpretq_s32_u32(v);
        let lanes = [
            w(n.vmovl_u16(n.vget_low_u16(lo))),
            w(n.vmovl_high_u16(lo)),
            w(n.vmovl_u16(n.vget_low_u16(hi))),
            w(n.vmovl_high_u16(hi)),
        ];
        finish(op, simd, lanes, y)
    }

    pub(super) fn i8s(op: &Dequantize, x: &[i8], y: &mut [f32]) {
        let (Some(simd), Ok(x)) = (Neon::try_new(), <[i8; 16]>::try_from(x)) else {
            return super::scalar(op, x, y);
        };
        let n = simd.neon;
        let v: core::arch::aarch64::int8x16_t = pulp::cast(x);
        let (lo, hi) = (n.vmovl_s8(n.vget_low_s8(v)), n.vmovl_high_s8(v));
        let lanes = [
            n.vmovl_s16(n.vget_low_s16(lo)),
            n.vmovl_high_s16(lo),
            n.vmovl_s16(n.vget_low_s16(hi)),
            n.vmovl_high_s16(hi),
        ];
        finish(op, simd, lanes, y)
    }
}

/// Elsewhere [`replace`] keeps tract's op; the tests still run [`Dequantize`] here.
#[cfg(not(target_arch = "aarch64"))]
mod neon {
    use super::Dequantize;

    pub(super) fn u8s(op: &Dequantize, x: &[u8], y: &mut [f32]) {
        super::scalar(op, x, y)
    }

    pub(super) fn i8s(op: &Dequantize, x: &[i8], y: &mut [f32]) {
        super::scalar(op, x, y)
    }
}

/// tract's own arithmetic, one value at a time.
fn scalar<T: Copy + Into<i32>>(op: &Dequantize, x: &[T], y: &mut [f32]) {
    for (x, y) in x.iter().zip(y) {
        *y = (Into::<i32>::into(*x) - op.zero_point) as f32 * op.scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan's DequantizeLinear of int8 becomes [`Dequantize`] on aarch64 and stays tract's
    /// elsewhere; one of i32 (not a byte type) stays tract's everywhere.
    #[test]
    fn replace_takes_byte_dequantizations_on_aarch64_only() {
        let mut model = TypedModel::default();
        let bytes = model.add_source("bytes", u8::fact([4])).expect("source");
        let ints = model.add_source("ints", i32::fact([4])).expect("source");
        let dq = DequantizeLinearF32 { scale: 0.5, zero_point: 3 };
        let a = model.wire_node("dq_bytes", dq.clone(), &[bytes]).expect("wire")[0];
        let b = model.wire_node("dq_ints", dq, &[ints]).expect("wire")[0];
        model.select_output_outlets(&[a, b]).expect("outputs");
        let replaced = replace(&mut model).expect("replace");
        let ours = |name: &str| model.node_by_name(name).expect("node").op_is::<Dequantize>();
        assert_eq!(replaced, usize::from(cfg!(target_arch = "aarch64")));
        assert_eq!(ours("dq_bytes"), cfg!(target_arch = "aarch64"));
        assert!(!ours("dq_ints"));
    }

    /// Every byte value, at lengths around whole vectors, equals tract's DequantizeLinearF32
    /// bit for bit, for both types and several zero points and scales.
    #[test]
    fn equals_tracts_dequantize_on_every_value() {
        for (zero_point, scale) in [(0, 1.0f32), (128, 0.0235), (-7, 3.1e-3), (255, 1e-7)] {
            let theirs = DequantizeLinearF32 { scale, zero_point };
            let ours = Dequantize { scale, zero_point };
            for n in [1, 15, 16, 17, 256, 300] {
                for dt in [DatumType::U8, DatumType::I8] {
                    let bytes: Vec<u8> = (0..n).map(|i| ((i * 73 + 5) % 256) as u8).collect();
                    let x = match dt {
                        DatumType::U8 => tensor1(&bytes),
                        _ => tensor1(&bytes.iter().map(|b| *b as i8).collect::<Vec<_>>()),
                    };
                    let ctx = EvalContext::out_of_plan();
                    let want = theirs.eval(&ctx, tvec!(x.clone().into_tvalue()));
                    let got = ours.eval(&ctx, tvec!(x.into_tvalue()));
                    assert_eq!(got.expect("ours")[0], want.expect("theirs")[0], "{dt:?} × {n}, zp {zero_point}");
                }
            }
        }
    }
}
