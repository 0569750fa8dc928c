//! A MaxPool run by the conv layer on its own quantized output, before the tensor leaves it.
//!
//! After the QDQ pass the CNN's pools run on int8 tensors (`qdq::movement`); tract's generic
//! `OptMaxPool` then costs more than the convolution that feeds it. The maximum of quantized
//! values is the quantized maximum (quantization is monotonic), so taking it here on the bytes
//! is exact and skips a tensor and an operator.

use serde::{Deserialize, Serialize};

/// An unpadded 2-D max pool (no ceil mode): the only form the QDQ pass hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Pool {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
}

impl Pool {
    /// Output height and width for an `[h, w]` input, or `None` when the window does not fit.
    pub(crate) fn output(&self, [h, w]: [usize; 2]) -> Option<[usize; 2]> {
        let dim = |size: usize, k: usize, s: usize, d: usize| {
            let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            (size >= span && s > 0).then(|| (size - span) / s + 1)
        };
        Some([
            dim(h, self.kernel[0], self.strides[0], self.dilations[0])?,
            dim(w, self.kernel[1], self.strides[1], self.dilations[1])?,
        ])
    }

    /// Pools `planes` planes of `[h, w]` values from `src` into `dst` (`planes × output`): the
    /// window's rows are reduced first (element-wise, contiguous), then its columns.
    pub(crate) fn run<T: Byte>(&self, src: &[T], planes: usize, [h, w]: [usize; 2], dst: &mut [T]) {
        self.run_strided(src, planes, [h, w], [h * w, w], dst)
    }

    /// [`Pool::run`] on planes laid out `[plane stride, row stride]` apart in `src` (a conv's
    /// output computed over its padded width, whose rows are longer than `w`).
    pub(crate) fn run_strided<T: Byte>(
        &self,
        src: &[T],
        planes: usize,
        [h, w]: [usize; 2],
        [plane_stride, row_stride]: [usize; 2],
        dst: &mut [T],
    ) {
        let Some([ph, pw]) = self.output([h, w]) else { return };
        let ([kh, kw], [sy, sx], [dy, dx]) = (self.kernel, self.strides, self.dilations);
        if ([kh, kw], [sy, sx], [dy, dx]) == ([2, 2], [2, 2], [1, 1]) && w % 2 == 0 {
            // The common 2×2 pool on an even width: each pair of rows reduced into one row,
            // then the whole plane's column pairs at once (no pair straddles two rows).
            let mut rows: Vec<T> = Vec::with_capacity(ph * w);
            for (p, out) in dst.chunks_exact_mut(ph * pw).enumerate().take(planes) {
                let plane = &src[p * plane_stride..];
                rows.clear();
                for py in 0..ph {
                    let row = |ky: usize| &plane[(2 * py + ky) * row_stride..][..w];
                    T::max_two(&mut rows, row(0), row(1));
                }
                T::max_pairs(out, &rows);
            }
            return;
        }
        let mut rows: Vec<T> = Vec::with_capacity(w);
        for (p, out) in dst.chunks_exact_mut(ph * pw).enumerate().take(planes) {
            let plane = &src[p * plane_stride..];
            for (py, out) in out.chunks_exact_mut(pw).enumerate() {
                let row = |ky: usize| &plane[(py * sy + ky * dy) * row_stride..][..w];
                rows.clear();
                rows.extend_from_slice(row(0));
                for ky in 1..kh {
                    T::max_rows(&mut rows, row(ky));
                }
                if (kw, sx, dx) == (2, 2, 1) {
                    // The common 2×2 pool: pairs of columns.
                    T::max_pairs(out, &rows);
                    continue;
                }
                for (px, o) in out.iter_mut().enumerate() {
                    let window = rows[px * sx..].iter().step_by(dx).take(kw);
                    *o = window.copied().max().unwrap_or(rows[px * sx]);
                }
            }
        }
    }
}

/// The integer types a pool runs on, with the two reductions it spends its time in: in NEON
/// on aarch64 (16 bytes per instruction; the release agent's size-optimised LTO leaves plain
/// loops scalar), plain Rust elsewhere.
pub(crate) trait Byte: Copy + Ord {
    /// Appends `max(a[i], b[i])` to `out`.
    fn max_two(out: &mut Vec<Self>, a: &[Self], b: &[Self]) {
        out.extend(a.iter().zip(b).map(|(x, y)| *x.max(y)));
    }

    /// `acc[i] = max(acc[i], row[i])`.
    fn max_rows(acc: &mut [Self], row: &[Self]) {
        max_rows(acc, row)
    }

    /// `out[i] = max(row[2i], row[2i + 1])`, for as many `i` as both allow.
    fn max_pairs(out: &mut [Self], row: &[Self]) {
        max_pairs(out, row)
    }
}

/// [`Byte::max_rows`] in plain Rust.
fn max_rows<T: Copy + Ord>(acc: &mut [T], row: &[T]) {
    acc.iter_mut().zip(row).for_each(|(m, v)| *m = (*m).max(*v));
}

/// [`Byte::max_pairs`] in plain Rust.
fn max_pairs<T: Copy + Ord>(out: &mut [T], row: &[T]) {
    out.iter_mut().zip(row.chunks_exact(2)).for_each(|(o, pair)| *o = pair[0].max(pair[1]));
}

#[cfg(not(target_arch = "aarch64"))]
impl Byte for u8 {}

#[cfg(not(target_arch = "aarch64"))]
impl Byte for i8 {}

#[cfg(target_arch = "aarch64")]
mod neon {
    use pulp::aarch64::Neon;

    /// Both reductions for one byte type, 16 lanes at a time; a ragged end is done again as
    /// the last 16 values, overlapping (both reductions give the same value twice).
    macro_rules! neon_byte {
        ($t:ty, $max:ident, $pmax:ident) => {
            impl super::Byte for $t {
                fn max_two(out: &mut Vec<$t>, a: &[$t], b: &[$t]) {
                    let n = a.len().min(b.len());
                    let at = out.len();
                    out.extend_from_slice(&a[..n]);
                    Self::max_rows(&mut out[at..], &b[..n]);
                }

                fn max_rows(acc: &mut [$t], row: &[$t]) {
                    let n = acc.len().min(row.len());
                    let Some(simd) = Neon::try_new().filter(|_| n >= 16) else {
                        return super::max_rows(acc, row);
                    };
                    // `acc[at..at + 16] = max(acc[at..], row[at..])`.
                    let step = |acc: &mut [$t], at: usize| {
                        let x: [$t; 16] = acc[at..at + 16].try_into().unwrap_or_default();
                        let y: [$t; 16] = row[at..at + 16].try_into().unwrap_or_default();
                        let m: [$t; 16] = pulp::cast(simd.neon.$max(pulp::cast(x), pulp::cast(y)));
                        acc[at..at + 16].copy_from_slice(&m);
                    };
                    for at in (0..n - 15).step_by(16) {
                        step(acc, at);
                    }
                    if n % 16 != 0 {
                        step(acc, n - 16);
                    }
                }

                fn max_pairs(out: &mut [$t], row: &[$t]) {
                    let n = out.len().min(row.len() / 2);
                    let Some(simd) = Neon::try_new().filter(|_| n >= 16) else {
                        return super::max_pairs(out, row);
                    };
                    // `out[at..at + 16]` from `row[2·at..2·at + 32]`.
                    let step = |out: &mut [$t], at: usize| {
                        let x: [$t; 16] = row[2 * at..2 * at + 16].try_into().unwrap_or_default();
                        let y: [$t; 16] = row[2 * at + 16..2 * at + 32].try_into().unwrap_or_default();
                        let m: [$t; 16] = pulp::cast(simd.neon.$pmax(pulp::cast(x), pulp::cast(y)));
                        out[at..at + 16].copy_from_slice(&m);
                    };
                    for at in (0..n - 15).step_by(16) {
                        step(out, at);
                    }
                    if n % 16 != 0 {
                        step(out, n - 16);
                    }
                }
            }
        };
    }

    neon_byte!(u8, vmaxq_u8, vpmaxq_u8);
    neon_byte!(i8, vmaxq_s8, vpmaxq_s8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(p: &Pool, src: &[i8], planes: usize, [h, w]: [usize; 2]) -> Vec<i8> {
        let [ph, pw] = p.output([h, w]).expect("fits");
        let mut out = Vec::new();
        for c in 0..planes {
            for py in 0..ph {
                for px in 0..pw {
                    let mut m = i8::MIN;
                    for ky in 0..p.kernel[0] {
                        for kx in 0..p.kernel[1] {
                            let (y, x) =
                                (py * p.strides[0] + ky * p.dilations[0], px * p.strides[1] + kx * p.dilations[1]);
                            m = m.max(src[(c * h + y) * w + x]);
                        }
                    }
                    out.push(m);
                }
            }
        }
        out
    }

    #[test]
    fn pools_match_the_definition_with_strides_dilations_and_odd_sizes() {
        let cases = [
            (Pool { kernel: [2, 2], strides: [2, 2], dilations: [1, 1] }, 3, [28, 28]),
            (Pool { kernel: [2, 2], strides: [2, 2], dilations: [1, 1] }, 2, [7, 9]),
            (Pool { kernel: [2, 2], strides: [2, 2], dilations: [1, 1] }, 2, [9, 70]),
            (Pool { kernel: [3, 2], strides: [1, 2], dilations: [1, 2] }, 2, [8, 11]),
            (Pool { kernel: [1, 1], strides: [3, 1], dilations: [1, 1] }, 1, [5, 4]),
        ];
        for (pool, planes, hw) in cases {
            let n = planes * hw[0] * hw[1];
            let src: Vec<i8> = (0..n).map(|i| ((i * 7919 + 13) % 256) as u8 as i8).collect();
            let [ph, pw] = pool.output(hw).expect("fits");
            let mut dst = vec![0i8; planes * ph * pw];
            pool.run(&src, planes, hw, &mut dst);
            assert_eq!(dst, reference(&pool, &src, planes, hw), "{pool:?} {hw:?}");
        }
    }

    /// The two reductions (NEON on aarch64) against the definition, on lengths around whole
    /// vectors, both byte types.
    #[test]
    fn reductions_equal_the_definition_on_every_length() {
        for n in [0, 1, 2, 15, 16, 17, 31, 32, 33, 64, 100] {
            let a: Vec<u8> = (0..n).map(|i| ((i * 37 + 11) % 256) as u8).collect();
            let b: Vec<u8> = (0..n).map(|i| ((i * 101 + 3) % 256) as u8).collect();
            let mut m = a.clone();
            u8::max_rows(&mut m, &b);
            let m_u8 = m.clone();
            assert_eq!(m, a.iter().zip(&b).map(|(x, y)| *x.max(y)).collect::<Vec<_>>(), "u8 rows of {n}");
            let (ai, bi): (Vec<i8>, Vec<i8>) =
                (a.iter().map(|v| *v as i8).collect(), b.iter().map(|v| *v as i8).collect());
            let mut m = ai.clone();
            i8::max_rows(&mut m, &bi);
            assert_eq!(m, ai.iter().zip(&bi).map(|(x, y)| *x.max(y)).collect::<Vec<_>>(), "i8 rows of {n}");
            let mut two = vec![7u8];
            u8::max_two(&mut two, &a, &b);
            assert_eq!(two[1..], m_u8[..], "u8 two of {n}");
            let mut out = vec![0u8; n / 2];
            u8::max_pairs(&mut out, &a);
            assert_eq!(out, a.chunks_exact(2).map(|p| p[0].max(p[1])).collect::<Vec<_>>(), "u8 pairs of {n}");
            let mut out = vec![0i8; n / 2];
            i8::max_pairs(&mut out, &ai);
            assert_eq!(out, ai.chunks_exact(2).map(|p| p[0].max(p[1])).collect::<Vec<_>>(), "i8 pairs of {n}");
        }
    }

    /// Rows longer than the width (a conv over its padded width) pool like the packed planes.
    #[test]
    fn strided_planes_pool_like_packed_ones() {
        let pool = Pool { kernel: [2, 2], strides: [2, 2], dilations: [1, 1] };
        for (planes, [h, w], row_stride) in [(3, [6, 7], 9), (2, [6, 40], 43), (2, [4, 8], 10)] {
            strided_case(&pool, planes, [h, w], row_stride);
        }
    }

    fn strided_case(pool: &Pool, planes: usize, [h, w]: [usize; 2], row_stride: usize) {
        let plane_stride = (h - 1) * row_stride + w;
        let wide: Vec<i8> = (0..planes * plane_stride).map(|i| ((i * 31 + 5) % 256) as u8 as i8).collect();
        let packed: Vec<i8> = (0..planes)
            .flat_map(|p| (0..h).flat_map(move |y| (0..w).map(move |x| (p, y, x))))
            .map(|(p, y, x)| wide[p * plane_stride + y * row_stride + x])
            .collect();
        let [ph, pw] = pool.output([h, w]).expect("fits");
        let mut dst = vec![0i8; planes * ph * pw];
        pool.run_strided(&wide, planes, [h, w], [plane_stride, row_stride], &mut dst);
        assert_eq!(dst, reference(pool, &packed, planes, [h, w]), "{h}×{w} rows {row_stride} apart");
    }

    #[test]
    fn a_window_larger_than_the_input_has_no_output() {
        let p = Pool { kernel: [3, 3], strides: [1, 1], dilations: [1, 1] };
        assert_eq!(p.output([2, 5]), None);
        assert_eq!(Pool { strides: [0, 1], ..p }.output([5, 5]), None);
    }
}
