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
    pub(crate) fn run<T: Copy + Ord>(&self, src: &[T], planes: usize, [h, w]: [usize; 2], dst: &mut [T]) {
        self.run_strided(src, planes, [h, w], [h * w, w], dst)
    }

    /// [`Pool::run`] on planes laid out `[plane stride, row stride]` apart in `src` (a conv's
    /// output computed over its padded width, whose rows are longer than `w`).
    pub(crate) fn run_strided<T: Copy + Ord>(
        &self,
        src: &[T],
        planes: usize,
        [h, w]: [usize; 2],
        [plane_stride, row_stride]: [usize; 2],
        dst: &mut [T],
    ) {
        let Some([ph, pw]) = self.output([h, w]) else { return };
        let ([kh, kw], [sy, sx], [dy, dx]) = (self.kernel, self.strides, self.dilations);
        let mut rows: Vec<T> = Vec::with_capacity(w);
        for (p, out) in dst.chunks_exact_mut(ph * pw).enumerate().take(planes) {
            let plane = &src[p * plane_stride..];
            for (py, out) in out.chunks_exact_mut(pw).enumerate() {
                let row = |ky: usize| &plane[(py * sy + ky * dy) * row_stride..][..w];
                rows.clear();
                rows.extend_from_slice(row(0));
                for ky in 1..kh {
                    for (m, v) in rows.iter_mut().zip(row(ky)) {
                        *m = (*m).max(*v);
                    }
                }
                if (kw, sx, dx) == (2, 2, 1) {
                    // The common 2×2 pool: pairs of columns.
                    for (o, pair) in out.iter_mut().zip(rows.chunks_exact(2)) {
                        *o = pair[0].max(pair[1]);
                    }
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

    /// Rows longer than the width (a conv over its padded width) pool like the packed planes.
    #[test]
    fn strided_planes_pool_like_packed_ones() {
        let pool = Pool { kernel: [2, 2], strides: [2, 2], dilations: [1, 1] };
        let (planes, [h, w], row_stride) = (3, [6, 7], 9);
        let plane_stride = (h - 1) * row_stride + w;
        let wide: Vec<i8> = (0..planes * plane_stride).map(|i| ((i * 31 + 5) % 256) as u8 as i8).collect();
        let packed: Vec<i8> = (0..planes)
            .flat_map(|p| (0..h).flat_map(move |y| (0..w).map(move |x| (p, y, x))))
            .map(|(p, y, x)| wide[p * plane_stride + y * row_stride + x])
            .collect();
        let [ph, pw] = pool.output([h, w]).expect("fits");
        let mut dst = vec![0i8; planes * ph * pw];
        pool.run_strided(&wide, planes, [h, w], [plane_stride, row_stride], &mut dst);
        assert_eq!(dst, reference(&pool, &packed, planes, [h, w]));
    }

    #[test]
    fn a_window_larger_than_the_input_has_no_output() {
        let p = Pool { kernel: [3, 3], strides: [1, 1], dilations: [1, 1] };
        assert_eq!(p.output([2, 5]), None);
        assert_eq!(Pool { strides: [0, 1], ..p }.output([5, 5]), None);
    }
}
