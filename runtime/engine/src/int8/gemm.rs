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
use tract_core::tract_linalg::mmm::{
    AsInputValue, EagerPackedInput, FusedSpec, MMMInputFormat, MMMInputValue, MatMatMul, PackedExoticFact, Query,
};
use tract_core::tract_linalg::pack::{PackedFormat, PackedI8K4};
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

    /// An empty right operand of `n` columns (`k_padded` rows, all zero) in the layout of the
    /// kernel a product of `n` columns runs on, for the caller to fill row by row or column by
    /// column.
    pub(crate) fn columns(&self, n: usize) -> TractResult<Columns> {
        ensure!(n > 0, "a product of no columns");
        let choice = self.choice(n);
        let (_, format) = &choice.mmm.packings()[choice.packing];
        let k = self.k_padded;
        let packed = |format: Box<dyn MMMInputFormat>, align: usize, panel: usize, panels: usize, layout| {
            let blob = Blob::from_bytes_alignment(&vec![0u8; panel * panels], align)?;
            let fact = PackedExoticFact { format, mn: n.to_dim(), k };
            let value = EagerPackedInput { fact, packed: Arc::new(blob), panel_bytes: panel, mn: n };
            TractResult::Ok(Store::Packed(value, layout))
        };
        let store = if let Some(f) = format.downcast_ref::<PackedFormat>().filter(|f| f.dt == DatumType::I8) {
            let panel = f.single_panel_len(k);
            packed(Box::new(f.clone()), f.alignment(), panel, n.div_ceil(f.r), Layout::Panels { r: f.r, panel })?
        } else if let Some(f) = format.downcast_ref::<PackedI8K4>().filter(|_| k.is_multiple_of(4)) {
            let panel = f.single_panel_len(k);
            packed(Box::new(f.clone()), f.alignment(), panel, n.div_ceil(f.r), Layout::K4 { r: f.r, panel })?
        } else {
            // A layout Drover does not know: a plain matrix, packed by tract at the product.
            Store::Plain(Tensor::zero::<i8>(&[k, n])?)
        };
        Ok(Columns { k, n, store })
    }

    /// `c = weights · b` for `b` of `k_padded × n` int8 values (row-major), written in by rows
    /// (the tests' way in; the layers write their operand as they make it).
    #[cfg(test)]
    pub(crate) fn run(&self, b: &Tensor, c: &mut Tensor, transposed: bool) -> TractResult<()> {
        ensure!(b.datum_type() == DatumType::I8 && b.rank() == 2, "operand of {:?} {:?}", b.datum_type(), b.shape());
        let n = b.shape()[1];
        ensure!(b.shape()[0] == self.k_padded && n > 0, "operand {:?} for k = {}", b.shape(), self.k_padded);
        let mut columns = self.columns(n)?;
        let plain = b.try_as_plain_ram()?;
        for (row, values) in plain.as_slice::<i8>()?.chunks_exact(n).enumerate() {
            columns.row(row, values);
        }
        self.product(&columns, c, transposed)
    }

    /// `c = weights · columns`: into `c` as `m × n` row-major, or as `n × m` when `transposed`.
    pub(crate) fn product(&self, columns: &Columns, c: &mut Tensor, transposed: bool) -> TractResult<()> {
        let n = columns.n;
        ensure!(columns.k == self.k_padded, "operand of {} rows for k = {}", columns.k, self.k_padded);
        let c_shape = if transposed { [n, self.m] } else { [self.m, n] };
        ensure!(
            c.datum_type() == DatumType::I32 && c.shape() == c_shape,
            "output {:?} {:?} for {c_shape:?} i32",
            c.datum_type(),
            c.shape()
        );
        let choice = self.choice(n);
        let a = choice.packed(&self.weights)?;
        let repacked;
        let b: &dyn MMMInputValue = match &columns.store {
            Store::Packed(value, _) => value,
            Store::Plain(t) => {
                let (_, b_format) = &choice.mmm.packings()[choice.packing];
                repacked = b_format.prepare_one(t, 0, 1)?;
                &*repacked
            }
        };
        ensure!(a.k() == b.k() && a.mn() == self.m && b.mn() == n, "packed operands disagree");
        let (m_axis, n_axis) = if transposed { (1, 0) } else { (0, 1) };
        // SAFETY: `c` is an i32 tensor of exactly `m × n` (or `n × m`, with the axes given
        // accordingly), checked above, and is borrowed mutably for the whole call, so the view
        // stays valid and unaliased while the kernel writes it. `a` was packed by this kernel's
        // own format for `packing` over `k_padded` rows; `b` is either packed by the same
        // kernel's format from a `k_padded × n` matrix, or a buffer of that format's exact size
        // for `k_padded` and `n` (made by `columns` for this `n`, so for this kernel) that
        // Drover wrote only through its layout; the k and mn of both are checked equal above,
        // so the kernel reads only inside both packed buffers. The i32 store is one the kernel
        // offers (`store: Some(I32)` in the query that picked it).
        unsafe {
            let store = choice.mmm.c_view(Some(m_axis), Some(n_axis)).wrap(&c.view_mut());
            let specs = [
                FusedSpec::AddMatMul {
                    a: AsInputValue::Borrowed(a),
                    b: AsInputValue::Borrowed(b),
                    packing: choice.packing,
                },
                FusedSpec::Store(store),
            ];
            choice.mmm.run(self.m, n, &specs)
        }
    }
}

/// The right operand of a product, `k_padded × n` int8, written straight into the packed layout
/// of the kernel that reads it. A conv's im2col rows go there in one pass, where a plain matrix
/// cost a second pass through tract's generic packer (as many ARM instructions as the product).
pub(crate) struct Columns {
    k: usize,
    n: usize,
    store: Store,
}

enum Store {
    /// In the kernel's own format.
    Packed(EagerPackedInput, Layout),
    /// Row-major `k × n`, for a format Drover does not lay out itself.
    Plain(Tensor),
}

/// Where value `(row, column)` lives in a packed operand.
#[derive(Clone, Copy)]
enum Layout {
    /// tract's `PackedFormat`: panels of `r` columns, `panel` bytes each; in a panel, row after
    /// row of `r` values.
    Panels { r: usize, panel: usize },
    /// tract's `PackedI8K4` (the `sdot` kernels): panels of `r` columns; in a panel, blocks of 4
    /// rows, and in a block, column after column of 4 values.
    K4 { r: usize, panel: usize },
}

impl Columns {
    fn bytes(&mut self) -> (&mut [u8], Option<Layout>) {
        match &mut self.store {
            Store::Packed(value, layout) => {
                // `columns` made the blob and gives it to no one before the product.
                let blob = Arc::get_mut(&mut value.packed).expect("a fresh operand is not shared");
                (blob.as_bytes_mut(), Some(*layout))
            }
            Store::Plain(t) => (t.as_bytes_mut(), None),
        }
    }

    /// Sets row `row` (`< k_padded`) to `values` (`n` of them).
    pub(crate) fn row(&mut self, row: usize, values: &[i8]) {
        let n = self.n;
        assert!(row < self.k && values.len() == n, "row {row} of {} values", values.len());
        let values: &[u8] = bytemuck::cast_slice(values);
        match self.bytes() {
            (bytes, None) => bytes[row * n..][..n].copy_from_slice(values),
            (bytes, Some(Layout::Panels { r, panel })) => match r {
                4 => panel_rows::<4>(bytes, panel, row, values),
                8 => panel_rows::<8>(bytes, panel, row, values),
                16 => panel_rows::<16>(bytes, panel, row, values),
                _ => {
                    for (j, v) in values.iter().enumerate() {
                        bytes[(j / r) * panel + row * r + j % r] = *v;
                    }
                }
            },
            (bytes, Some(Layout::K4 { r, panel })) => {
                let at = (row / 4) * r * 4 + row % 4;
                for (p, chunk) in values.chunks(r).enumerate() {
                    let dst = &mut bytes[p * panel + at..];
                    for (l, v) in chunk.iter().enumerate() {
                        dst[l * 4] = *v;
                    }
                }
            }
        }
    }

    /// Sets rows `first..first + rows.len()` (each `n` values): as [`Columns::row`] one by one,
    /// but four at a time into the `sdot` layout, whose blocks interleave four rows (a store of
    /// four bytes per column where single rows cost four stores and reads).
    pub(crate) fn rows(&mut self, first: usize, rows: &[&[i8]]) {
        let n = self.n;
        let (bytes, layout) = self.bytes();
        let Some(Layout::K4 { r, panel }) = layout else {
            for (i, values) in rows.iter().enumerate() {
                self.row(first + i, values);
            }
            return;
        };
        // Whole blocks of four rows; the rows before the first block and after the last go one
        // by one.
        let start = first.next_multiple_of(4).min(first + rows.len());
        let blocks = (first + rows.len() - start) / 4;
        for (b, four) in rows[start - first..].chunks_exact(4).take(blocks).enumerate() {
            let [a, b2, c, d] = [four[0], four[1], four[2], four[3]];
            assert!(a.len() == n && b2.len() == n && c.len() == n && d.len() == n, "rows of {n} values");
            let at = ((start / 4) + b) * r * 4;
            for (p, dst) in bytes.chunks_exact_mut(panel).enumerate().take(n.div_ceil(r)) {
                let dst = &mut dst[at..at + r * 4];
                let cols = p * r..(p * r + r).min(n);
                let lanes = a[cols.clone()].iter().zip(&b2[cols.clone()]).zip(&c[cols.clone()]).zip(&d[cols]);
                for (out, (((a, b), c), d)) in dst.chunks_exact_mut(4).zip(lanes) {
                    out.copy_from_slice(&[*a as u8, *b as u8, *c as u8, *d as u8]);
                }
            }
        }
        for (i, values) in rows.iter().enumerate() {
            let row = first + i;
            if row < start || row >= start + 4 * blocks {
                self.row(row, values);
            }
        }
    }

    /// Sets the first `values.len()` (`≤ k_padded`) rows of column `column` (`< n`).
    pub(crate) fn column(&mut self, column: usize, values: &[i8]) {
        let n = self.n;
        assert!(column < n && values.len() <= self.k, "column {column} of {} values", values.len());
        let values: &[u8] = bytemuck::cast_slice(values);
        match self.bytes() {
            (bytes, None) => {
                for (row, v) in values.iter().enumerate() {
                    bytes[row * n + column] = *v;
                }
            }
            (bytes, Some(Layout::Panels { r, panel })) => {
                let base = (column / r) * panel + column % r;
                if r == 1 {
                    bytes[base..][..values.len()].copy_from_slice(values);
                } else {
                    for (row, v) in values.iter().enumerate() {
                        bytes[base + row * r] = *v;
                    }
                }
            }
            (bytes, Some(Layout::K4 { r, panel })) => {
                let base = (column / r) * panel + (column % r) * 4;
                for (block, four) in values.chunks(4).enumerate() {
                    bytes[base + block * r * 4..][..four.len()].copy_from_slice(four);
                }
            }
        }
    }
}

/// One row into panels of `R` columns: a fixed-size copy per panel.
fn panel_rows<const R: usize>(bytes: &mut [u8], panel: usize, row: usize, values: &[u8]) {
    let mut chunks = values.chunks_exact(R);
    for (p, chunk) in (&mut chunks).enumerate() {
        bytes[p * panel + row * R..][..R].copy_from_slice(chunk);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let p = values.len() / R;
        bytes[p * panel + row * R..][..rest.len()].copy_from_slice(rest);
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

    /// `g · columns` equals the definition on `a` and `b` (`m × k`, `k × n`).
    fn assert_product(g: &Gemm, columns: &Columns, a: &[i8], b: &[i8], [m, k, n]: [usize; 3]) {
        let mut c = Tensor::zero::<i32>(&[m, n]).expect("c");
        g.product(columns, &mut c, false).expect("product");
        let got = c.try_as_plain_ram().expect("plain").as_slice::<i32>().expect("i32").to_vec();
        assert_eq!(got, reference(m, k, n, a, b), "{m}×{k}×{n} on {}", g.kernel_name(n));
    }

    /// The same operand written by columns (a linear layer's rows) gives the same products as
    /// written by rows, on every kernel the shapes pick (single column included).
    #[test]
    fn columns_and_rows_lay_the_operand_out_alike() {
        for (m, k, n) in [(3, 5, 1), (17, 33, 9), (8, 8, 8), (65, 300, 70), (10, 64, 1), (24, 4608, 5)] {
            let a = values(m * k, (m * 13 + k) as u32);
            let b = values(k * n, (n * 3 + k) as u32);
            let g = Gemm::new(m, k, &a).expect("gemm");
            let mut columns = g.columns(n).expect("columns");
            for j in 0..n {
                let column: Vec<i8> = (0..k).map(|row| b[row * n + j]).collect();
                columns.column(j, &column);
            }
            assert_product(&g, &columns, &a, &b, [m, k, n]);
        }
    }

    /// Rows written together (four at a time in the `sdot` layout) equal rows written one by
    /// one, from any first row (blocks cut at both ends).
    #[test]
    fn rows_written_together_equal_rows_one_by_one() {
        for (m, k, n) in [(8, 13, 9), (5, 40, 70), (16, 72, 196), (3, 6, 1)] {
            let a = values(m * k, (m + k) as u32);
            let b = values(k * n, (n + 7 * k) as u32);
            let g = Gemm::new(m, k, &a).expect("gemm");
            let lines: Vec<&[i8]> = b.chunks_exact(n).collect();
            let mut columns = g.columns(n).expect("columns");
            let (first, split) = (1.min(k), 3.min(k));
            columns.row(0, lines[0]);
            columns.rows(first, &lines[first..split]);
            columns.rows(split, &lines[split..]);
            assert_product(&g, &columns, &a, &b, [m, k, n]);
        }
    }

    /// Every kernel this machine picks has a layout Drover writes itself: the fast path, not
    /// the plain matrix that tract repacks.
    #[test]
    fn the_operand_is_written_in_the_kernels_own_layout() {
        let g = Gemm::new(16, 72, &values(16 * 72, 5)).expect("gemm");
        for n in [1, 9, 196] {
            let columns = g.columns(n).expect("columns");
            let layout = match &columns.store {
                Store::Packed(_, Layout::Panels { r, .. }) => format!("panels of {r}"),
                Store::Packed(_, Layout::K4 { r, .. }) => format!("blocks of 4 rows, panels of {r}"),
                Store::Plain(_) => panic!("{} took a plain operand", g.kernel_name(n)),
            };
            println!("n = {n}: {} reads {layout}", g.kernel_name(n));
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
