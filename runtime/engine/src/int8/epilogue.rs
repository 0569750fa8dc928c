//! From the exact integer sums to the tensor the QDQ graph would have produced: the scale, the
//! bias, and each QuantizeLinear/DequantizeLinear the graph had after the matmul, in its order,
//! with its float arithmetic.

use serde::{Deserialize, Serialize};

use super::kernel::{Emit, Features};
use super::lanes::{Isa, Lanes, Task, dispatch};

/// A per-tensor quantization, as ONNX's QuantizeLinear/DequantizeLinear read it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Quant {
    /// Finite and > 0.
    pub scale: f32,
    /// Within the integer type's range.
    pub zero_point: i32,
    /// int8 (`true`) or uint8.
    pub signed: bool,
}

impl Quant {
    /// The integer type's range as floats, for clamping.
    pub(crate) fn range(&self) -> (f32, f32) {
        if self.signed { (-128.0, 127.0) } else { (0.0, 255.0) }
    }

    /// Whether the parameters can be used as they are.
    pub(crate) fn valid(&self) -> bool {
        let (lo, hi) = self.range();
        self.scale.is_finite() && self.scale > 0.0 && (lo..=hi).contains(&(self.zero_point as f32))
    }
}

/// One operation after the matmul, in graph order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Step {
    /// Adds a float per output feature (a Conv/Gemm bias, or an Add of a dequantized constant).
    Bias(Vec<f32>),
    /// QuantizeLinear: `clamp(round_half_even(v / scale) + zero_point)`; the value becomes that
    /// integer.
    Quantize(Quant),
    /// DequantizeLinear of the integer the previous Quantize made: `(q − zero_point) · scale`.
    Dequantize(Quant),
}

/// What the fused operator outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    I8,
    U8,
    F32,
}

/// The steps after a matmul, checked and laid out once at load for the vector code.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Epilogue {
    features: usize,
    /// Per feature: input scale × weight scale, the float value of one unit of the sum. Padded
    /// with zeros to a whole vector, like every per-feature list here.
    unit: Vec<f32>,
    ops: Vec<Op>,
    output: Output,
}

/// One step in the form the vector code runs it.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Bias(Vec<f32>),
    /// `clamp(x / scale, lo, hi)` rounded half to even, plus `zero`: `lo` and `hi` are the type's
    /// range minus the zero point, so clamping before rounding is the same as after.
    Quantize {
        scale: f32,
        lo: f32,
        hi: f32,
        zero: f32,
    },
    Dequantize {
        zero: f32,
        scale: f32,
    },
}

/// `(x + ROUND) − ROUND` rounds `x` half to even, exactly for `|x| ≤ 2²²`: the sum lands where
/// the float spacing is 1 and the addition rounds with the FPU's mode (ties to even). Quantized
/// values are clamped to ±255 first.
const ROUND: f32 = 12_582_912.0;

/// Per-feature lists are padded to this many values (the widest vector).
const PAD: usize = 16;

fn padded(mut v: Vec<f32>) -> Vec<f32> {
    v.resize(v.len().div_ceil(PAD) * PAD, 0.0);
    v
}

impl Epilogue {
    /// `unit[f]` turns feature `f`'s integer sum into the matmul's float value. Fails when a bias
    /// does not have one value per feature, a parameter is out of range, or a Dequantize does not
    /// follow a Quantize with the same integer type.
    pub(crate) fn new(unit: Vec<f32>, steps: Vec<Step>) -> Result<Epilogue, String> {
        let features = unit.len();
        if unit.iter().any(|u| !u.is_finite()) {
            return Err("a scale product is not finite".into());
        }
        let mut last: Option<Quant> = None;
        let mut ops = Vec::with_capacity(steps.len());
        for step in &steps {
            match step {
                Step::Bias(b) if b.len() != features => {
                    return Err(format!("a bias has {} values for {features} features", b.len()));
                }
                Step::Bias(b) => {
                    last = None;
                    ops.push(Op::Bias(padded(b.clone())));
                }
                Step::Quantize(q) if !q.valid() => return Err(format!("invalid quantization {q:?}")),
                Step::Quantize(q) => {
                    last = Some(*q);
                    let (lo, hi) = q.range();
                    let zero = q.zero_point as f32;
                    ops.push(Op::Quantize { scale: q.scale, lo: lo - zero, hi: hi - zero, zero });
                }
                Step::Dequantize(q) if !q.valid() => return Err(format!("invalid dequantization {q:?}")),
                Step::Dequantize(q) => match last {
                    Some(prev) if prev.signed == q.signed => {
                        last = None;
                        ops.push(Op::Dequantize { zero: q.zero_point as f32, scale: q.scale });
                    }
                    _ => return Err("a dequantization does not read a quantized value".into()),
                },
            }
        }
        let output = match steps.last() {
            Some(Step::Quantize(q)) if q.signed => Output::I8,
            Some(Step::Quantize(_)) => Output::U8,
            _ => Output::F32,
        };
        Ok(Epilogue { features, unit: padded(unit), ops, output })
    }

    /// The output element type.
    pub(crate) fn output(&self) -> Output {
        self.output
    }

    /// Output features.
    pub(crate) fn features(&self) -> usize {
        self.features
    }

    /// The output values of a vector of sums of `features`.
    #[inline(always)]
    pub(crate) fn apply<S: Lanes>(&self, simd: S, features: Features, acc: S::V) -> S::F {
        let param = |v: &[f32]| match features {
            Features::One(f) => simd.fsplat(v[f]),
            Features::From(f) => simd.fload(&v[f..]),
        };
        let mut x = simd.fmul(simd.to_f32(acc), param(&self.unit));
        for op in &self.ops {
            x = match op {
                Op::Bias(b) => simd.fadd(x, param(b)),
                Op::Quantize { scale, lo, hi, zero } => {
                    let c = simd.fclamp(simd.fdiv(x, simd.fsplat(*scale)), simd.fsplat(*lo), simd.fsplat(*hi));
                    let r = simd.fsub(simd.fadd(c, simd.fsplat(ROUND)), simd.fsplat(ROUND));
                    simd.fadd(r, simd.fsplat(*zero))
                }
                Op::Dequantize { zero, scale } => simd.fmul(simd.fsub(x, simd.fsplat(*zero)), simd.fsplat(*scale)),
            };
        }
        x
    }
}

/// Values per block of [`Epilogue::finish`]: a multiple of every lane count, and small
/// enough to stay in L1 (512 bytes of floats).
const BLOCK: usize = 128;

impl Epilogue {
    /// The output values of a row of exact sums, for the layers on tract-linalg's kernels,
    /// whose sums come back as a matrix: plus `add` (the zero points' corrections), then the
    /// steps of [`Epilogue::apply`], in `isa`'s vectors. `features` says whose sums these are:
    /// one feature for the whole row (a conv's plane) or consecutive features from `f` on (a
    /// linear layer's row of features). `out` holds one value per sum.
    ///
    /// Each step runs over a block of values at a time (one pass per step, its constants in
    /// registers), where [`Epilogue::apply`] walks the steps for every vector: equal bytes, a
    /// third of the ARM instructions on the reference CNN.
    pub(crate) fn finish(&self, isa: Isa, features: Features, sums: &[i32], add: Add<'_>, out: Sink<'_>) {
        dispatch(isa, Finish { epilogue: self, features, sums, add, out })
    }
}

/// One vector of the fused chain: `acc · unit (+ bias)`, quantized with `[scale, lo, hi, zero]`,
/// stored as bytes; the operations and their order are [`Epilogue::apply`]'s.
#[inline(always)]
fn fused_quantize<S: Lanes>(simd: S, acc: S::V, unit: S::F, bias: Option<S::F>, q: [S::F; 4], out: &mut [u8]) {
    let [scale, lo, hi, zero] = q;
    let mut x = simd.fmul(simd.to_f32(acc), unit);
    if let Some(bias) = bias {
        x = simd.fadd(x, bias);
    }
    let c = simd.fclamp(simd.fdiv(x, scale), lo, hi);
    let round = simd.fsplat(ROUND);
    simd.store_bytes(simd.to_i32(simd.fadd(simd.fsub(simd.fadd(c, round), round), zero)), out);
}

/// What [`Epilogue::finish`] adds to each sum first.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Add<'a> {
    /// The same value to every sum.
    Same(i32),
    /// One value per sum.
    Each(&'a [i32]),
}

struct Finish<'a, 'o> {
    epilogue: &'a Epilogue,
    features: Features,
    sums: &'a [i32],
    add: Add<'a>,
    out: Sink<'o>,
}

impl Task for Finish<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Lanes>(self, simd: S) {
        let Finish { epilogue, features, sums, add, mut out } = self;
        let mut x = [0f32; BLOCK];
        let mut ints = [0i32; BLOCK];
        let mut bytes = [0u8; BLOCK];
        // The usual chain, run fused: a quantize, after a bias or not.
        let fused = match epilogue.ops.as_slice() {
            _ if out.bytes().is_none() => None,
            [q @ Op::Quantize { .. }] => Some((None, q)),
            [Op::Bias(b), q @ Op::Quantize { .. }] => Some((Some(b), q)),
            _ => None,
        };
        for (b, chunk) in sums.chunks(BLOCK).enumerate() {
            let (at, n) = (b * BLOCK, chunk.len());
            // Whole vectors: the block's tail is padded (its lanes are never stored).
            let lanes = n.next_multiple_of(S::L);
            ints[..n].copy_from_slice(chunk);
            ints[n..lanes].fill(0);
            if let Add::Each(v) = add {
                ints.iter_mut().zip(&v[at..at + n]).for_each(|(i, v)| *i = i.wrapping_add(*v));
            }
            let same = match add {
                Add::Same(c) => simd.splat(c),
                Add::Each(_) => simd.splat(0),
            };
            // A per-feature list for the vector at `i` of this block.
            let param = |list: &[f32], i: usize| match features {
                Features::One(f) => simd.fsplat(list[f]),
                Features::From(f) => simd.fload(&list[f + at + i..]),
            };
            if let Some((bias, Op::Quantize { scale, lo, hi, zero })) = fused {
                // The usual chain (bias, quantize) in one pass: no floats stored in between.
                let q = [simd.fsplat(*scale), simd.fsplat(*lo), simd.fsplat(*hi), simd.fsplat(*zero)];
                let vectors = ints[..lanes].chunks_exact(S::L).zip(bytes.chunks_exact_mut(S::L));
                match features {
                    // One feature: its scale and bias are the same for every vector, in registers.
                    Features::One(f) => {
                        let (unit, bias) = (simd.fsplat(epilogue.unit[f]), bias.map(|b| simd.fsplat(b[f])));
                        for (v, b) in vectors {
                            fused_quantize(simd, simd.add(simd.load(v), same), unit, bias, q, b);
                        }
                    }
                    Features::From(_) => {
                        for (i, (v, b)) in vectors.enumerate() {
                            let bias = bias.map(|bias| param(bias, i * S::L));
                            let unit = param(&epilogue.unit, i * S::L);
                            fused_quantize(simd, simd.add(simd.load(v), same), unit, bias, q, b);
                        }
                    }
                }
                if let Some(o) = out.bytes() {
                    o[at..at + n].copy_from_slice(&bytes[..n]);
                }
                continue;
            }
            for (i, (x, v)) in x[..lanes].chunks_exact_mut(S::L).zip(ints.chunks_exact(S::L)).enumerate() {
                let acc = simd.add(simd.load(v), same);
                simd.fstore(simd.fmul(simd.to_f32(acc), param(&epilogue.unit, i * S::L)), x);
            }
            for op in &epilogue.ops {
                let vectors = x[..lanes].chunks_exact_mut(S::L);
                match op {
                    Op::Bias(bias) => vectors
                        .enumerate()
                        .for_each(|(i, x)| simd.fstore(simd.fadd(simd.fload(x), param(bias, i * S::L)), x)),
                    Op::Quantize { scale, lo, hi, zero } => {
                        let (scale, lo, hi, zero) =
                            (simd.fsplat(*scale), simd.fsplat(*lo), simd.fsplat(*hi), simd.fsplat(*zero));
                        let round = simd.fsplat(ROUND);
                        vectors.for_each(|x| {
                            let c = simd.fclamp(simd.fdiv(simd.fload(x), scale), lo, hi);
                            simd.fstore(simd.fadd(simd.fsub(simd.fadd(c, round), round), zero), x);
                        })
                    }
                    Op::Dequantize { zero, scale } => {
                        let (zero, scale) = (simd.fsplat(*zero), simd.fsplat(*scale));
                        vectors.for_each(|x| simd.fstore(simd.fmul(simd.fsub(simd.fload(x), zero), scale), x))
                    }
                }
            }
            let mut narrow = |out: &mut [u8]| {
                for (x, b) in x[..lanes].chunks_exact(S::L).zip(bytes.chunks_exact_mut(S::L)) {
                    simd.store_bytes(simd.to_i32(simd.fload(x)), b);
                }
                out[at..at + n].copy_from_slice(&bytes[..n]);
            };
            match &mut out {
                Sink::I8(o) => narrow(bytemuck::cast_slice_mut::<i8, u8>(o)),
                Sink::U8(o) => narrow(o),
                Sink::F32(o) => o[at..at + n].copy_from_slice(&x[..n]),
            }
        }
    }
}

/// Where a layer writes its values: the output tensor's storage (or the conv's scratch before
/// a pool), in the output type.
pub(crate) enum Sink<'a> {
    I8(&'a mut [i8]),
    U8(&'a mut [u8]),
    F32(&'a mut [f32]),
}

impl Sink<'_> {
    /// The same storage for a shorter while (one image of several).
    pub(crate) fn reborrow(&mut self) -> Sink<'_> {
        match self {
            Sink::I8(v) => Sink::I8(v),
            Sink::U8(v) => Sink::U8(v),
            Sink::F32(v) => Sink::F32(v),
        }
    }

    /// The storage as bytes, when the values are integers.
    fn bytes(&mut self) -> Option<&mut [u8]> {
        match self {
            Sink::I8(v) => Some(bytemuck::cast_slice_mut::<i8, u8>(v)),
            Sink::U8(v) => Some(v),
            Sink::F32(_) => None,
        }
    }

    /// The values at `at..at + n` (a conv's plane, a linear layer's row).
    pub(crate) fn part(&mut self, at: usize, n: usize) -> Sink<'_> {
        match self {
            Sink::I8(v) => Sink::I8(&mut v[at..at + n]),
            Sink::U8(v) => Sink::U8(&mut v[at..at + n]),
            Sink::F32(v) => Sink::F32(&mut v[at..at + n]),
        }
    }
}

/// The [`Emit`] of a model's layers: runs the epilogue on each vector of sums and stores it.
pub(crate) struct Writer<'a> {
    pub epilogue: &'a Epilogue,
    pub sink: Sink<'a>,
}

impl Emit for Writer<'_> {
    #[inline(always)]
    fn emit<S: Lanes>(&mut self, simd: S, features: Features, at: usize, n: usize, acc: S::V) {
        let x = self.epilogue.apply(simd, features, acc);
        match &mut self.sink {
            Sink::I8(out) => store_bytes(simd, bytemuck::cast_slice_mut::<i8, u8>(&mut out[..]), at, n, x),
            Sink::U8(out) => store_bytes(simd, out, at, n, x),
            Sink::F32(out) => match out.get_mut(at..at + S::L) {
                Some(dst) if n == S::L => simd.fstore(x, dst),
                _ => {
                    let mut tmp = [0f32; PAD];
                    simd.fstore(x, &mut tmp);
                    out[at..at + n].copy_from_slice(&tmp[..n]);
                }
            },
        }
    }
}

/// Integral floats `x` as bytes at `out[at..at + n]`.
#[inline(always)]
fn store_bytes<S: Lanes>(simd: S, out: &mut [u8], at: usize, n: usize, x: S::F) {
    let v = simd.to_i32(x);
    match out.get_mut(at..at + S::L) {
        Some(dst) if n == S::L => simd.store_bytes(v, dst),
        _ => {
            let mut tmp = [0u8; PAD];
            simd.store_bytes(v, &mut tmp);
            out[at..at + n].copy_from_slice(&tmp[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::tests::isas;
    use super::super::lanes::{Task, dispatch};
    use super::*;

    const S8: Quant = Quant { scale: 0.5, zero_point: -3, signed: true };

    /// The ONNX definition, one value at a time: what the vector code must equal bit for bit.
    fn reference(unit: f32, steps: &[Step], f: usize, acc: i32) -> f32 {
        let mut v = acc as f32 * unit;
        for step in steps {
            v = match step {
                Step::Bias(b) => v + b[f],
                Step::Quantize(q) => {
                    let (lo, hi) = q.range();
                    let r = (v / q.scale).round_ties_even() + q.zero_point as f32;
                    if r.is_nan() { q.zero_point as f32 } else { r.clamp(lo, hi) }
                }
                Step::Dequantize(q) => (v - q.zero_point as f32) * q.scale,
            };
        }
        v
    }

    /// The `n` values `write` stores through a sink of the epilogue's output type, as floats.
    fn outputs(e: &Epilogue, n: usize, write: impl FnOnce(Sink<'_>)) -> Vec<f32> {
        let (mut i8s, mut u8s, mut f32s) = (vec![0i8; n], vec![0u8; n], vec![0f32; n]);
        write(match e.output() {
            Output::I8 => Sink::I8(&mut i8s),
            Output::U8 => Sink::U8(&mut u8s),
            Output::F32 => Sink::F32(&mut f32s),
        });
        match e.output() {
            Output::I8 => i8s.iter().map(|v| *v as f32).collect(),
            Output::U8 => u8s.iter().map(|v| *v as f32).collect(),
            Output::F32 => f32s,
        }
    }

    /// Sums around every rounding tie of scale 0.5 and far past the clamps, a scale per feature,
    /// and every chain of steps the QDQ pass hands over.
    fn cases() -> (Vec<i32>, Vec<f32>, Vec<Vec<Step>>) {
        let mut acc: Vec<i32> = (-700..700).collect();
        acc.extend([i32::MIN, i32::MAX, -(1 << 24) - 1, 1 << 24, 3]);
        let features = acc.len();
        let unit: Vec<f32> = (0..features).map(|f| 0.25 + (f % 7) as f32 * 0.125).collect();
        let bias: Vec<f32> = (0..features).map(|f| (f % 5) as f32 * 0.5 - 1.0).collect();
        let u8q = Quant { scale: 0.75, zero_point: 128, signed: false };
        let chains: Vec<Vec<Step>> = vec![
            vec![],
            vec![Step::Bias(bias.clone())],
            vec![Step::Quantize(S8)],
            vec![Step::Bias(bias.clone()), Step::Quantize(u8q)],
            vec![Step::Quantize(S8), Step::Dequantize(S8), Step::Bias(bias.clone()), Step::Quantize(S8)],
            vec![Step::Bias(bias), Step::Quantize(u8q), Step::Dequantize(u8q)],
        ];
        (acc, unit, chains)
    }

    /// Runs `acc` (one value per feature, or all of feature `one`) through the vector code.
    struct Run<'a> {
        epilogue: &'a Epilogue,
        acc: &'a [i32],
        one: Option<usize>,
    }

    impl Task for Run<'_> {
        type Output = Vec<f32>;
        fn run<S: Lanes>(self, simd: S) -> Vec<f32> {
            outputs(self.epilogue, self.acc.len(), |sink| {
                let mut writer = Writer { epilogue: self.epilogue, sink };
                for (i, chunk) in self.acc.chunks(S::L).enumerate() {
                    let mut lanes = [0i32; 16];
                    lanes[..chunk.len()].copy_from_slice(chunk);
                    let at = i * S::L;
                    let features = self.one.map_or(Features::From(at), Features::One);
                    writer.emit(simd, features, at, chunk.len(), simd.load(&lanes));
                }
            })
        }
    }

    #[test]
    fn vectors_equal_the_definition_on_ties_extremes_and_every_isa() {
        let (acc, unit, chains) = cases();
        for steps in chains {
            let e = Epilogue::new(unit.clone(), steps.clone()).expect("valid");
            let want: Vec<f32> = acc.iter().enumerate().map(|(f, a)| reference(unit[f], &steps, f, *a)).collect();
            let want_one: Vec<f32> = acc.iter().map(|a| reference(unit[5], &steps, 5, *a)).collect();
            for isa in isas() {
                let got = dispatch(isa, Run { epilogue: &e, acc: &acc, one: None });
                assert_eq!(got, want, "{isa:?} {steps:?}");
                let got = dispatch(isa, Run { epilogue: &e, acc: &acc, one: Some(5) });
                assert_eq!(got, want_one, "{isa:?} {steps:?}, one feature");
            }
        }
    }

    /// `finish` (tract-linalg's layers) over the same sums as `apply`, with a correction.
    fn finish(e: &Epilogue, isa: Isa, acc: &[i32], one: Option<usize>, add: Add<'_>) -> Vec<f32> {
        let features = one.map_or(Features::From(0), Features::One);
        outputs(e, acc.len(), |sink| e.finish(isa, features, acc, add, sink))
    }

    #[test]
    fn blocks_equal_the_definition_on_ties_extremes_and_corrections() {
        let (acc, unit, chains) = cases();
        let features = acc.len();
        for steps in chains {
            let e = Epilogue::new(unit.clone(), steps.clone()).expect("valid");
            let each: Vec<i32> = (0..features as i32).map(|i| i % 11 - 5).collect();
            for isa in isas() {
                for add in [Add::Same(0), Add::Same(-7), Add::Each(&each)] {
                    let corrected: Vec<i32> = match add {
                        Add::Same(c) => acc.iter().map(|a| a.wrapping_add(c)).collect(),
                        Add::Each(v) => acc.iter().zip(v).map(|(a, c)| a.wrapping_add(*c)).collect(),
                    };
                    let want: Vec<f32> =
                        corrected.iter().enumerate().map(|(f, a)| reference(unit[f], &steps, f, *a)).collect();
                    assert_eq!(finish(&e, isa, &acc, None, add), want, "{isa:?} {steps:?} + {add:?}");
                    let want: Vec<f32> = corrected.iter().map(|a| reference(unit[5], &steps, 5, *a)).collect();
                    assert_eq!(finish(&e, isa, &acc, Some(5), add), want, "{isa:?} {steps:?} + {add:?}, one");
                }
            }
        }
    }

    #[test]
    fn quantize_rounds_half_to_even_saturates_and_sends_nan_to_the_zero_point() {
        // unit 1 then bias: 0.25·2 = 0.5 → 0 (even), 1.5 → 2, 2.5 → 2, −0.5 → −0; + zero point −3.
        let bias = vec![0.25, 0.75, 1.25, -0.25, 1000.0, -1000.0, f32::NAN, f32::INFINITY];
        let e = Epilogue::new(vec![1.0; 8], vec![Step::Bias(bias), Step::Quantize(S8)]).expect("valid");
        for isa in isas() {
            let got = dispatch(isa, Run { epilogue: &e, acc: &[0; 8], one: None });
            assert_eq!(got, [-3.0, -1.0, -1.0, -3.0, 127.0, -128.0, -3.0, 127.0], "{isa:?}");
        }
        for isa in isas() {
            let got = finish(&e, isa, &[0; 8], None, Add::Same(0));
            assert_eq!(got, [-3.0, -1.0, -1.0, -3.0, 127.0, -128.0, -3.0, 127.0], "rows, {isa:?}");
        }
    }

    #[test]
    fn malformed_steps_are_refused() {
        assert!(Epilogue::new(vec![1.0], vec![Step::Bias(vec![1.0, 2.0])]).is_err());
        assert!(Epilogue::new(vec![1.0], vec![Step::Dequantize(S8)]).is_err());
        let bad = Quant { scale: 0.0, ..S8 };
        assert!(Epilogue::new(vec![1.0], vec![Step::Quantize(bad)]).is_err());
        let bad = Quant { zero_point: 300, ..S8 };
        assert!(Epilogue::new(vec![1.0], vec![Step::Quantize(bad)]).is_err());
        assert!(Epilogue::new(vec![f32::NAN], vec![]).is_err());
        let u8q = Quant { signed: false, zero_point: 0, ..S8 };
        assert!(Epilogue::new(vec![1.0], vec![Step::Quantize(S8), Step::Dequantize(u8q)]).is_err());
        assert_eq!(Epilogue::new(vec![1.0], vec![]).expect("valid").output(), Output::F32);
    }
}
