//! The integer layers' matrix products on tract-linalg's own i8×i8→i32 kernels.
//!
//! tract-linalg ships hand-written integer kernels for every board Drover runs on, chosen at
//! run time: arm64 NEON (`smlal`, and `sdot` where the core has the dot-product extension: Pi 5,
//! Jetson Orin), armv7 NEON (32-bit Pi OS), and x86-64 AVX2 / AVX-512-VNNI. Drover's own lanes
//! ([`super::lanes`]) reach SIMD on x86 only; on ARM they ran as plain Rust and an int8 model
//! executed 9–11× the instructions of its fp32 form. This module hands the products to those
//! kernels and keeps what is Drover's: the zero points, the packing of activations, and the
//! epilogue.
//!
//! The kernels compute `Σ a·b` on raw i8 values. Drover's layers need `Σ (x − x₀)(w − w₀)`
//! with uint8 or int8 on either side, so both operands are first shifted into i8 (uint8 minus
//! 128) and the zero points folded into corrections computed outside the kernel:
//! `Σ (x' − x₀')(w' − w₀') = Σ x'w' − w₀'·Σx' − x₀'·Σw' + K·x₀'·w₀'`. Every term is exact in i32
//! for the sizes the layers accept (K ≤ 32,768), so the sums equal the old kernels' bit for bit.
//!
//! This is the one module of the engine with `unsafe`: tract-linalg's `MatMatMul::run` and
//! its output views are unsafe functions. Each block states what makes it sound.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tract_core::internal::*;
use tract_core::tract_linalg::mmm::{AsInputValue, FusedSpec, MMMInputValue, MatMatMul, Query};
use tract_core::tract_linalg::{MmmDispatch, WeightType};

/// The weights of one layer, `m × k` int8 (already shifted), ready for tract-linalg's kernels:
/// one packing for products of several columns, one for a single column (a batch-1 linear
/// layer, where a matrix-vector kernel does a fraction of the work), each made on first use.
pub(crate) struct Gemm {
    m: usize,
    k: usize,
    /// `k` rounded up to what every chosen packing reads whole (zero-padded on both sides).
    k_padded: usize,
    /// Row-major `m × k_padded`, the source of both packings.
    weights: Arc<Tensor>,
    wide: Choice,
    narrow: Choice,
}

/// A kernel tract-linalg picked, with its packing index and (once made) the packed weights.
struct Choice {
    mmm: Box<dyn MatMatMul>,
    packing: usize,
    packed: OnceLock<Result<Box<dyn MMMInputValue>, String>>,
}

impl Choice {
    fn pick(m: usize, k: usize, n: usize) -> TractResult<Choice> {
        let query = Query {
            weight: WeightType::Plain(DatumType::I8),
            activation: DatumType::I8,
            accumulators: tvec!(DatumType::I32),
            store: Some(DatumType::I32),
            // The weights are packed once for the kernel itself: no per-call extraction.
            allow_extractor: false,
            m: Some(m),
            k: Some(k),
            n: Some(n),
        };
        let (mmm, packing, _) = MmmDispatch::native().pick(&query).context("no i8 matrix kernel on this machine")?;
        Ok(Choice { mmm, packing, packed: OnceLock::new() })
    }

    fn k_alignment(&self) -> usize {
        let (a, b) = &self.mmm.packings()[self.packing];
        a.k_alignment().max(b.k_alignment()).max(1)
    }

    fn packed(&self, weights: &Tensor) -> TractResult<&dyn MMMInputValue> {
        let packed = self.packed.get_or_init(|| {
            let (a, _) = &self.mmm.packings()[self.packing];
            a.prepare_one(weights, 1, 0).map_err(|e| format!("{e:#}"))
        });
        match packed {
            Ok(p) => Ok(&**p),
            Err(e) => bail!("packing the weights for {}: {e}", self.mmm.name()),
        }
    }
}

impl Gemm {
    /// Packs `weights` (`m × k`, row-major, int8 already shifted) for this machine's kernels.
    pub(crate) fn new(m: usize, k: usize, weights: &[i8]) -> TractResult<Gemm> {
        ensure!(m > 0 && k > 0 && weights.len() == m * k, "{} weights for {m} × {k}", weights.len());
        let wide = Choice::pick(m, k, 64)?;
        let narrow = Choice::pick(m, k, 1)?;
        let k_padded = k.next_multiple_of(wide.k_alignment()).next_multiple_of(narrow.k_alignment());
        let mut padded = vec![0i8; m * k_padded];
        for (dst, src) in padded.chunks_exact_mut(k_padded).zip(weights.chunks_exact(k)) {
            dst[..k].copy_from_slice(src);
        }
        let weights = Arc::new(Tensor::from_shape(&[m, k_padded], &padded)?);
        Ok(Gemm { m, k, k_padded, weights, wide, narrow })
    }

    /// Rows of `b` a product needs: `k`, padded with zero rows (they add nothing).
    pub(crate) fn k_padded(&self) -> usize {
        self.k_padded
    }

    /// The kernel a product of `n` columns runs on (for the profile and the tests).
    #[cfg(test)]
    pub(crate) fn kernel_name(&self, n: usize) -> &str {
        self.choice(n).mmm.name()
    }

    fn choice(&self, n: usize) -> &Choice {
        if n == 1 { &self.narrow } else { &self.wide }
    }

    /// `c = weights · b` for `b` of `k_padded × n` int8 values (row-major): into `c` as
    /// `m × n` row-major, or as `n × m` when `transposed` (a linear layer's rows of features).
    pub(crate) fn run(&self, b: &Tensor, c: &mut Tensor, transposed: bool) -> TractResult<()> {
        ensure!(b.datum_type() == DatumType::I8 && b.rank() == 2, "operand of {:?} {:?}", b.datum_type(), b.shape());
        let n = b.shape()[1];
        ensure!(b.shape()[0] == self.k_padded && n > 0, "operand {:?} for k = {}", b.shape(), self.k_padded);
        let c_shape = if transposed { [n, self.m] } else { [self.m, n] };
        ensure!(
            c.datum_type() == DatumType::I32 && c.shape() == c_shape,
            "output {:?} {:?} for {c_shape:?} i32",
            c.datum_type(),
            c.shape()
        );
        let choice = self.choice(n);
        let a = choice.packed(&self.weights)?;
        let (_, b_format) = &choice.mmm.packings()[choice.packing];
        let b = b_format.prepare_one(b, 0, 1)?;
        ensure!(a.k() == b.k() && a.mn() == self.m && b.mn() == n, "packed operands disagree");
        let (m_axis, n_axis) = if transposed { (1, 0) } else { (0, 1) };
        // SAFETY: `c` is an i32 tensor of exactly `m × n` (or `n × m`, with the axes given
        // accordingly), checked above, and is borrowed mutably for the whole call, so the view
        // stays valid and unaliased while the kernel writes it. `a` and `b` were packed by this
        // kernel's own formats for `packing` from operands of `k_padded` rows (the same k,
        // checked), `a` over the `m` rows and `b` over the `n` columns the call names, so the
        // kernel reads only inside both packed buffers. The i32 store is one the kernel offers
        // (`store: Some(I32)` in the query that picked it).
        unsafe {
            let store = choice.mmm.c_view(Some(m_axis), Some(n_axis)).wrap(&c.view_mut());
            let specs = [
                FusedSpec::AddMatMul {
                    a: AsInputValue::Borrowed(a),
                    b: AsInputValue::Borrowed(&*b),
                    packing: choice.packing,
                },
                FusedSpec::Store(store),
            ];
            choice.mmm.run(self.m, n, &specs)
        }
    }
}

impl fmt::Debug for Gemm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gemm({} × {}, {} / {})", self.m, self.k, self.wide.mmm.name(), self.narrow.mmm.name())
    }
}

impl PartialEq for Gemm {
    fn eq(&self, other: &Gemm) -> bool {
        self.m == other.m && self.k == other.k && self.weights == other.weights
    }
}

impl Eq for Gemm {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random i8 values over the whole range, extremes included.
    fn values(n: usize, seed: u32) -> Vec<i8> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                match i % 17 {
                    0 => -128,
                    1 => 127,
                    _ => s as i8,
                }
            })
            .collect()
    }

    fn reference(m: usize, k: usize, n: usize, a: &[i8], b: &[i8]) -> Vec<i32> {
        let mut c = vec![0i32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| i32::from(a[i * k + l]) * i32::from(b[l * n + j])).sum();
            }
        }
        c
    }

    fn product(g: &Gemm, k: usize, n: usize, b: &[i8], transposed: bool) -> Vec<i32> {
        let mut padded = vec![0i8; g.k_padded() * n];
        padded[..k * n].copy_from_slice(b);
        let b = Tensor::from_shape(&[g.k_padded(), n], &padded).expect("b");
        let shape = if transposed { [n, g.m] } else { [g.m, n] };
        let mut c = Tensor::zero::<i32>(&shape).expect("c");
        g.run(&b, &mut c, transposed).expect("run");
        c.try_as_plain_ram().expect("plain").as_slice::<i32>().expect("i32").to_vec()
    }

    /// Every shape class (single column, ragged tiles, k off every alignment, long k) equals
    /// the definition exactly, in both output layouts.
    #[test]
    fn products_equal_the_definition_exactly() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 1), (10, 64, 1), (17, 33, 9), (8, 8, 8), (65, 300, 70), (24, 4608, 5)] {
            let a = values(m * k, (m * 31 + k) as u32);
            let b = values(k * n, (n * 7 + k) as u32);
            let g = Gemm::new(m, k, &a).expect("gemm");
            let want = reference(m, k, n, &a, &b);
            assert_eq!(product(&g, k, n, &b, false), want, "{m}×{k}×{n} on {}", g.kernel_name(n));
            let t = product(&g, k, n, &b, true);
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(t[j * m + i], want[i * n + j], "transposed {m}×{k}×{n} at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn mismatched_operands_are_errors() {
        let g = Gemm::new(4, 6, &values(24, 1)).expect("gemm");
        let b = Tensor::zero::<i8>(&[g.k_padded() + 1, 3]).expect("b");
        let mut c = Tensor::zero::<i32>(&[4, 3]).expect("c");
        assert!(g.run(&b, &mut c, false).is_err());
        let b = Tensor::zero::<i8>(&[g.k_padded(), 3]).expect("b");
        let mut c = Tensor::zero::<i32>(&[3, 4]).expect("c");
        assert!(g.run(&b, &mut c, false).is_err());
        assert!(Gemm::new(4, 6, &values(23, 1)).is_err());
    }
}
