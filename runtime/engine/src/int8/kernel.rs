//! The integer multiply-accumulate kernels: `Σ (x − x₀)(w − w₀)` in i32, exactly.
//!
//! Values arrive centered (zero point already subtracted) as i16 and are packed two by two into
//! one i32 ("a pair", [`pair`]), the shape `vpmaddwd` reads: each 32-bit lane multiplies two
//! i16 pairs and adds both products. One instruction thus does 32 multiply-adds on AVX-512 and
//! 16 on AVX2, against 16 and 8 fp32 multiply-adds for tract's fp32 kernels, on a quarter of
//! the bytes. The sums never leave the registers as integers: each vector goes straight to an
//! [`Emit`], which in a model is the layer's epilogue.

use super::lanes::{Isa, Lanes, Task, dispatch, pair};

/// Which output features a vector of sums belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Features {
    /// Every lane is feature `f` (a conv output row).
    One(usize),
    /// Lane `l` is feature `f + l` (a matmul output row).
    From(usize),
}

/// Receives the sums, one vector at a time.
pub(crate) trait Emit {
    /// `acc` holds the sums for output positions `at..at + n` (`n ≤ S::L`; lanes past `n` are
    /// padding) of `features`.
    fn emit<S: Lanes>(&mut self, simd: S, features: Features, at: usize, n: usize, acc: S::V);
}

/// Weights of a fully connected layer packed for [`linear`]: per block of `lanes` outputs, for
/// each input pair, the `lanes` weight pairs side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackedLinear {
    isa: Isa,
    /// Input pairs (`⌈K/2⌉`).
    pairs: usize,
    /// Outputs (before padding to the lane count).
    outputs: usize,
    data: Vec<i32>,
}

impl PackedLinear {
    /// Packs `w(o, k)` (centered) for `outputs × inputs`.
    pub(crate) fn new(isa: Isa, outputs: usize, inputs: usize, w: impl Fn(usize, usize) -> i16) -> PackedLinear {
        let lanes = isa.lanes();
        let pairs = inputs.div_ceil(2);
        let blocks = outputs.div_ceil(lanes);
        let at = |o: usize, k: usize| if o < outputs && k < inputs { w(o, k) } else { 0 };
        let mut data = Vec::with_capacity(blocks * pairs * lanes);
        for b in 0..blocks {
            for p in 0..pairs {
                for l in 0..lanes {
                    let o = b * lanes + l;
                    data.push(pair(at(o, 2 * p), at(o, 2 * p + 1)));
                }
            }
        }
        PackedLinear { isa, pairs, outputs, data }
    }

    /// Input pairs one row must provide.
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }
}

/// For every row of `rows` (each `w.pairs()` pairs), the sums `Σ_k x[r][k] · w[o][k]` of every
/// output `o`, emitted at `r · outputs + o`.
pub(crate) fn linear(w: &PackedLinear, rows: &[i32], emit: &mut impl Emit) {
    dispatch(w.isa, LinearTask { w, rows, emit })
}

struct LinearTask<'a, E> {
    w: &'a PackedLinear,
    rows: &'a [i32],
    emit: &'a mut E,
}

impl<E: Emit> Task for LinearTask<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Lanes>(self, simd: S) {
        let LinearTask { w, rows, emit } = self;
        let pairs = w.pairs;
        let block_len = pairs * S::L;
        // Rows of at least one pair: layers refuse K = 0 at load.
        for (r, x) in rows.chunks_exact(pairs.max(1)).enumerate() {
            for (b, o0) in (0..w.outputs).step_by(S::L).enumerate() {
                let block = &w.data[b * block_len..(b + 1) * block_len];
                // Two accumulators: consecutive pairs do not wait on each other's add.
                let (mut a0, mut a1) = (simd.zero(), simd.zero());
                let mut weights = block.chunks_exact(2 * S::L);
                let mut inputs = x.chunks_exact(2);
                for (wv, xv) in (&mut weights).zip(&mut inputs) {
                    a0 = simd.madd(a0, simd.load(wv), simd.splat(xv[0]));
                    a1 = simd.madd(a1, simd.load(&wv[S::L..]), simd.splat(xv[1]));
                }
                if let ([xv], wv) = (inputs.remainder(), weights.remainder()) {
                    a0 = simd.madd(a0, simd.load(wv), simd.splat(*xv));
                }
                let n = S::L.min(w.outputs - o0);
                emit.emit(simd, Features::From(o0), r * w.outputs + o0, n, simd.add(a0, a1));
            }
        }
    }
}

/// A 2-D convolution's geometry (NCHW, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConvGeometry {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    /// Top, left, bottom, right (ONNX order: begins then ends).
    pub pads: [usize; 4],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
}

impl ConvGeometry {
    /// Output height and width, or `None` when the kernel does not fit.
    pub(crate) fn output(&self) -> Option<[usize; 2]> {
        let dim = |size: usize, pad: usize, k: usize, s: usize, d: usize| {
            let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            let padded = size.checked_add(pad)?;
            (padded >= span && s > 0).then(|| (padded - span) / s + 1)
        };
        Some([
            dim(self.height, self.pads[0] + self.pads[2], self.kernel[0], self.strides[0], self.dilations[0])?,
            dim(self.width, self.pads[1] + self.pads[3], self.kernel[1], self.strides[1], self.dilations[1])?,
        ])
    }
}

/// Conv weights as channel pairs: `w[o][c/2][ky][kx]`, outputs padded to a multiple of
/// [`CONV_OUTPUTS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackedConv {
    isa: Isa,
    geometry: ConvGeometry,
    outputs: usize,
    data: Vec<i32>,
}

/// Output channels computed together: each input load serves this many of them.
const CONV_OUTPUTS: usize = 4;

impl PackedConv {
    /// Packs `w(o, c, ky, kx)` (centered) for `outputs` channels.
    pub(crate) fn new(
        isa: Isa,
        geometry: ConvGeometry,
        outputs: usize,
        w: impl Fn(usize, usize, usize, usize) -> i16,
    ) -> PackedConv {
        let cp = geometry.channels.div_ceil(2);
        let [kh, kw] = geometry.kernel;
        let padded = outputs.div_ceil(CONV_OUTPUTS) * CONV_OUTPUTS;
        let at = |o: usize, c: usize, y: usize, x: usize| {
            if o < outputs && c < geometry.channels { w(o, c, y, x) } else { 0 }
        };
        let mut data = Vec::with_capacity(padded * cp * kh * kw);
        for o in 0..padded {
            for p in 0..cp {
                for y in 0..kh {
                    for x in 0..kw {
                        data.push(pair(at(o, 2 * p, y, x), at(o, 2 * p + 1, y, x)));
                    }
                }
            }
        }
        PackedConv { isa, geometry, outputs, data }
    }
}

/// One image prepared for [`conv`]: channel pairs, zero-padded, rows wide enough for whole
/// vectors: `[c/2][row][col]`.
pub(crate) struct Planes {
    rows: usize,
    cols: usize,
    data: Vec<i32>,
}

impl Planes {
    /// Room for one image of `w`'s geometry, all padding.
    pub(crate) fn new(w: &PackedConv) -> Planes {
        let g = &w.geometry;
        let [oh, ow] = g.output().unwrap_or([0, 0]);
        let lanes = w.isa.lanes();
        // The last vector of a row reads lanes past the output width: room for them, zero.
        let reach = (ow.div_ceil(lanes) * lanes).saturating_sub(1) * g.strides[1]
            + g.dilations[1] * g.kernel[1].saturating_sub(1)
            + 1;
        let cols = (g.width + g.pads[1] + g.pads[3]).max(reach);
        let rows = (g.height + g.pads[0] + g.pads[2])
            .max(oh.saturating_sub(1) * g.strides[0] + g.dilations[0] * g.kernel[0].saturating_sub(1) + 1);
        Planes { rows, cols, data: vec![0; g.channels.div_ceil(2) * rows * cols] }
    }

    /// Centers and pairs one image (`channels × height × width`, row-major; `center` takes an
    /// index into it) into the unpadded part.
    pub(crate) fn fill(&mut self, w: &PackedConv, center: impl Fn(usize) -> i16) {
        let g = &w.geometry;
        let plane = g.height * g.width;
        for p in 0..g.channels.div_ceil(2) {
            for y in 0..g.height {
                let dst = (p * self.rows + y + g.pads[0]) * self.cols + g.pads[1];
                let lo = 2 * p * plane + y * g.width;
                let row = &mut self.data[dst..dst + g.width];
                if 2 * p + 1 < g.channels {
                    for (x, d) in row.iter_mut().enumerate() {
                        *d = pair(center(lo + x), center(lo + plane + x));
                    }
                } else {
                    for (x, d) in row.iter_mut().enumerate() {
                        *d = pair(center(lo + x), 0);
                    }
                }
            }
        }
    }
}

/// Convolves one prepared image: the sums of output channel `o`, row `y`, columns `x..x + n`
/// are emitted at `base + (o · height + y) · width + x` of the output planes.
pub(crate) fn conv(w: &PackedConv, planes: &Planes, base: usize, emit: &mut impl Emit) {
    dispatch(w.isa, ConvTask { w, planes, base, emit })
}

struct ConvTask<'a, E> {
    w: &'a PackedConv,
    planes: &'a Planes,
    base: usize,
    emit: &'a mut E,
}

impl<E: Emit> Task for ConvTask<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Lanes>(self, simd: S) {
        let ConvTask { w, planes, base, emit } = self;
        let g = &w.geometry;
        let Some([oh, ow]) = g.output() else { return };
        let cp = g.channels.div_ceil(2);
        let [kh, kw] = g.kernel;
        let [sy, sx] = g.strides;
        let [dy, dx] = g.dilations;
        let taps = cp * kh * kw;
        // Where each tap reads, from the top-left input of the output position.
        let mut offsets = Vec::with_capacity(taps);
        for p in 0..cp {
            for ky in 0..kh {
                for kx in 0..kw {
                    offsets.push((p * planes.rows + ky * dy) * planes.cols + kx * dx);
                }
            }
        }
        let mut gathered = [0i32; 16];
        for (o0, weights) in (0..w.outputs).step_by(CONV_OUTPUTS).zip(w.data.chunks_exact(CONV_OUTPUTS * taps)) {
            // Four named accumulators (not an array): they must live in registers, which an
            // array indexed in a loop does not at the size-optimised level the agent ships at.
            let (w0, rest) = weights.split_at(taps);
            let (w1, rest) = rest.split_at(taps);
            let (w2, w3) = rest.split_at(taps);
            for y in 0..oh {
                for x0 in (0..ow).step_by(S::L) {
                    let origin = y * sy * planes.cols + x0 * sx;
                    let (mut a0, mut a1, mut a2, mut a3) = (simd.zero(), simd.zero(), simd.zero(), simd.zero());
                    let taps = offsets.iter().zip(w0).zip(w1).zip(w2).zip(w3);
                    for ((((offset, w0), w1), w2), w3) in taps {
                        let start = origin + offset;
                        let v = if sx == 1 {
                            simd.load(&planes.data[start..])
                        } else {
                            for (l, g) in gathered[..S::L].iter_mut().enumerate() {
                                *g = planes.data[start + l * sx];
                            }
                            simd.load(&gathered)
                        };
                        a0 = simd.madd(a0, v, simd.splat(*w0));
                        a1 = simd.madd(a1, v, simd.splat(*w1));
                        a2 = simd.madd(a2, v, simd.splat(*w2));
                        a3 = simd.madd(a3, v, simd.splat(*w3));
                    }
                    let n = S::L.min(ow - x0);
                    for (j, acc) in [a0, a1, a2, a3].into_iter().enumerate().take(w.outputs - o0) {
                        let o = o0 + j;
                        emit.emit(simd, Features::One(o), base + (o * oh + y) * ow + x0, n, acc);
                    }
                }
            }
        }
    }
}

/// Collects raw sums (the kernels' tests, and a reference for the epilogue's).
#[cfg(test)]
pub(crate) struct Sums(pub Vec<i32>);

#[cfg(test)]
impl Emit for Sums {
    fn emit<S: Lanes>(&mut self, simd: S, _: Features, at: usize, n: usize, acc: S::V) {
        let mut lanes = [0i32; 16];
        simd.store(acc, &mut lanes);
        self.0[at..at + n].copy_from_slice(&lanes[..n]);
    }
}

/// Any layout, one lane at a time: the reference the vector kernels are tested against.
#[cfg(test)]
fn linear_scalar(w: &PackedLinear, rows: &[i32]) -> Vec<i32> {
    use super::lanes::madd1;
    let (pairs, lanes) = (w.pairs, w.isa.lanes());
    let mut out = Vec::new();
    for x in rows.chunks_exact(pairs.max(1)) {
        for o in 0..w.outputs {
            let (b, l) = (o / lanes, o % lanes);
            out.push(
                (0..pairs).fold(0i32, |sum, p| sum.wrapping_add(madd1(w.data[(b * pairs + p) * lanes + l], x[p]))),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::lanes::tests::isas;
    use super::*;

    /// A small deterministic generator: the kernels must agree on any values.
    pub(crate) fn values(n: usize, seed: u32, lo: i32, hi: i32) -> Vec<i16> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (lo + (s % (hi - lo + 1) as u32) as i32) as i16
            })
            .collect()
    }

    #[test]
    fn linear_matches_plain_sums_on_every_shape_and_extreme() {
        for isa in isas() {
            for (o, k, m) in [(1, 1, 1), (10, 64, 1), (256, 256, 3), (17, 9, 2), (64, 784, 1), (5, 3, 4)] {
                // Centered u8 inputs reach ±255; centered weights too.
                let w = values(o * k, 7, -255, 255);
                let x = values(m * k, 11, -255, 255);
                let packed = PackedLinear::new(isa, o, k, |i, j| w[i * k + j]);
                let pairs = packed.pairs();
                let mut rows = vec![0i32; m * pairs];
                for r in 0..m {
                    for p in 0..pairs {
                        let at = |j: usize| if j < k { x[r * k + j] } else { 0 };
                        rows[r * pairs + p] = pair(at(2 * p), at(2 * p + 1));
                    }
                }
                let mut sums = Sums(vec![i32::MIN; m * o]);
                linear(&packed, &rows, &mut sums);
                let scalar = linear_scalar(&packed, &rows);
                for r in 0..m {
                    for i in 0..o {
                        let want: i32 = (0..k).map(|j| w[i * k + j] as i32 * x[r * k + j] as i32).sum();
                        assert_eq!(sums.0[r * o + i], want, "{isa:?} o={o} k={k} row {r} out {i}");
                        assert_eq!(scalar[r * o + i], want);
                    }
                }
            }
        }
    }

    fn conv_reference(g: &ConvGeometry, outputs: usize, x: &[i16], w: &[i16]) -> Vec<i32> {
        let [oh, ow] = g.output().expect("fits");
        let [kh, kw] = g.kernel;
        let mut out = vec![0i32; outputs * oh * ow];
        for o in 0..outputs {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut sum = 0i32;
                    for c in 0..g.channels {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * g.strides[0] + ky * g.dilations[0]) as isize - g.pads[0] as isize;
                                let ix = (xo * g.strides[1] + kx * g.dilations[1]) as isize - g.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.height as isize || ix >= g.width as isize {
                                    continue;
                                }
                                let xv = x[(c * g.height + iy as usize) * g.width + ix as usize] as i32;
                                sum += xv * w[((o * g.channels + c) * kh + ky) * kw + kx] as i32;
                            }
                        }
                    }
                    out[(o * oh + y) * ow + xo] = sum;
                }
            }
        }
        out
    }

    #[test]
    fn conv_matches_the_definition_with_padding_strides_and_dilations() {
        let shapes = [
            // (channels, height, width, kernel, pads, strides, dilations, outputs)
            (1, 28, 28, [3, 3], [1, 1, 1, 1], [1, 1], [1, 1], 8),
            (8, 14, 14, [3, 3], [1, 1, 1, 1], [1, 1], [1, 1], 16),
            (3, 9, 11, [2, 3], [0, 2, 1, 0], [2, 3], [1, 1], 5),
            (5, 10, 7, [3, 2], [2, 1, 2, 1], [1, 1], [2, 3], 3),
            (2, 33, 40, [1, 1], [0, 0, 0, 0], [1, 1], [1, 1], 1),
        ];
        for isa in isas() {
            for (c, h, wd, kernel, pads, strides, dilations, outputs) in shapes {
                let g = ConvGeometry { channels: c, height: h, width: wd, kernel, pads, strides, dilations };
                let x = values(c * h * wd, 3, -255, 255);
                let w = values(outputs * c * kernel[0] * kernel[1], 5, -255, 255);
                let [kh, kw] = kernel;
                let packed = PackedConv::new(isa, g, outputs, |o, ci, y, xx| w[((o * c + ci) * kh + y) * kw + xx]);
                let mut planes = Planes::new(&packed);
                planes.fill(&packed, |i| x[i]);
                let [oh, ow] = g.output().expect("fits");
                // Two images' room: the second half must stay untouched at base 0.
                let mut sums = Sums(vec![i32::MIN; 2 * outputs * oh * ow]);
                conv(&packed, &planes, 0, &mut sums);
                let (first, second) = sums.0.split_at(outputs * oh * ow);
                assert_eq!(first, conv_reference(&g, outputs, &x, &w), "{isa:?} {g:?}");
                assert!(second.iter().all(|v| *v == i32::MIN), "{isa:?} {g:?} wrote past its image");
            }
        }
    }

    #[test]
    fn a_kernel_larger_than_the_padded_image_has_no_output() {
        let g = ConvGeometry {
            channels: 1,
            height: 2,
            width: 2,
            kernel: [3, 3],
            pads: [0; 4],
            strides: [1, 1],
            dilations: [1, 1],
        };
        assert_eq!(g.output(), None);
    }
}
