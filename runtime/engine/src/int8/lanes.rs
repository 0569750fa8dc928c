//! The vector operations the integer layers are written in, for each instruction set.
//!
//! The kernels and the epilogue are generic over [`Lanes`]; [`dispatch`] runs them with the
//! widest instruction set the CPU has, through `pulp`'s safe wrappers (the workspace forbids
//! `unsafe`): AVX-512 or AVX2 on x86-64, NEON on aarch64 (every aarch64 core has it). Elsewhere
//! (armv7, whose NEON intrinsics Rust does not offer on stable; old x86) the same operations run
//! as plain Rust over lane arrays. The release agent is optimised for size with whole-program
//! LTO, and that pipeline does not run LLVM's loop vectoriser: plain loops stay scalar there, so
//! the vector code is written out. Every path computes the same values bit for bit: i32 sums are exact, and the
//! float steps use the same IEEE operations in the same order (no fused multiply-add).

/// Which kernel family this machine runs; decides the lane count weights are packed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Isa {
    /// x86-64 with AVX-512F/BW (16 lanes of i32).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// x86-64 with AVX2 (8 lanes).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// aarch64 NEON (4 lanes).
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// Plain Rust (8 lanes).
    Portable,
}

impl Isa {
    /// The best family this CPU supports.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V4::try_new().is_some() {
                return Isa::Avx512;
            }
            if pulp::x86::V3::try_new().is_some() {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if pulp::aarch64::Neon::try_new().is_some() {
            return Isa::Neon;
        }
        Isa::Portable
    }

    /// Values computed side by side: weights and rows are padded to a multiple of it.
    pub(crate) fn lanes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 16,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => 8,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => 4,
            Isa::Portable => 8,
        }
    }
}

/// Two centered values as one `vpmaddwd` operand lane: `lo` in the low 16 bits.
pub(crate) fn pair(lo: i16, hi: i16) -> i32 {
    (lo as u16 as u32 | ((hi as u16 as u32) << 16)) as i32
}

/// The operations the layers need from `L` lanes of i32 (`V`) and of f32 (`F`).
pub(crate) trait Lanes: Copy {
    type V: Copy;
    type F: Copy;
    const L: usize;
    fn zero(self) -> Self::V;
    /// Loads `L` values (the slice holds at least `L`).
    fn load(self, pairs: &[i32]) -> Self::V;
    fn splat(self, pair: i32) -> Self::V;
    /// `acc + Σ` over each lane of the two products of its i16 halves (`vpmaddwd`).
    fn madd(self, acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// Stores the `L` lanes into `out` (at least `L` long): the kernels' tests read raw sums.
    #[cfg(test)]
    fn store(self, v: Self::V, out: &mut [i32]);

    fn to_f32(self, v: Self::V) -> Self::F;
    /// Floats that hold integers back to i32 (exact for them).
    fn to_i32(self, v: Self::F) -> Self::V;
    fn fsplat(self, x: f32) -> Self::F;
    /// Loads `L` floats (the slice holds at least `L`).
    fn fload(self, x: &[f32]) -> Self::F;
    fn fadd(self, a: Self::F, b: Self::F) -> Self::F;
    fn fsub(self, a: Self::F, b: Self::F) -> Self::F;
    fn fmul(self, a: Self::F, b: Self::F) -> Self::F;
    fn fdiv(self, a: Self::F, b: Self::F) -> Self::F;
    /// `x` clamped to `[lo, hi]`, and 0 where `x` is NaN.
    fn fclamp(self, x: Self::F, lo: Self::F, hi: Self::F) -> Self::F;
    fn fstore(self, v: Self::F, out: &mut [f32]);
    /// Stores the low byte of each lane (values already in the byte's range).
    fn store_bytes(self, v: Self::V, out: &mut [u8]);
}

/// Lane-wise fallback with the exact arithmetic of the x86 instructions.
#[derive(Clone, Copy)]
pub(crate) struct Portable<const N: usize>;

impl<const N: usize> Lanes for Portable<N> {
    type V = [i32; N];
    type F = [f32; N];
    const L: usize = N;
    #[inline(always)]
    fn zero(self) -> [i32; N] {
        [0; N]
    }
    #[inline(always)]
    fn load(self, pairs: &[i32]) -> [i32; N] {
        let mut v = [0; N];
        v.copy_from_slice(&pairs[..N]);
        v
    }
    #[inline(always)]
    fn splat(self, pair: i32) -> [i32; N] {
        [pair; N]
    }
    #[inline(always)]
    fn madd(self, mut acc: [i32; N], a: [i32; N], b: [i32; N]) -> [i32; N] {
        for ((acc, a), b) in acc.iter_mut().zip(a).zip(b) {
            *acc = acc.wrapping_add(madd1(a, b));
        }
        acc
    }
    #[inline(always)]
    fn add(self, a: [i32; N], b: [i32; N]) -> [i32; N] {
        std::array::from_fn(|i| a[i].wrapping_add(b[i]))
    }
    #[cfg(test)]
    #[inline(always)]
    fn store(self, v: [i32; N], out: &mut [i32]) {
        out[..N].copy_from_slice(&v);
    }
    #[inline(always)]
    fn to_f32(self, v: [i32; N]) -> [f32; N] {
        v.map(|x| x as f32)
    }
    #[inline(always)]
    fn to_i32(self, v: [f32; N]) -> [i32; N] {
        v.map(|x| x as i32)
    }
    #[inline(always)]
    fn fsplat(self, x: f32) -> [f32; N] {
        [x; N]
    }
    #[inline(always)]
    fn fload(self, x: &[f32]) -> [f32; N] {
        let mut v = [0.0; N];
        v.copy_from_slice(&x[..N]);
        v
    }
    #[inline(always)]
    fn fadd(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn fsub(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    fn fmul(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|i| a[i] * b[i])
    }
    #[inline(always)]
    fn fdiv(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|i| a[i] / b[i])
    }
    #[inline(always)]
    fn fclamp(self, x: [f32; N], lo: [f32; N], hi: [f32; N]) -> [f32; N] {
        std::array::from_fn(|i| if x[i].is_nan() { 0.0 } else { x[i].max(lo[i]).min(hi[i]) })
    }
    #[inline(always)]
    fn fstore(self, v: [f32; N], out: &mut [f32]) {
        out[..N].copy_from_slice(&v);
    }
    #[inline(always)]
    fn store_bytes(self, v: [i32; N], out: &mut [u8]) {
        for (o, v) in out[..N].iter_mut().zip(v) {
            *o = v as u8;
        }
    }
}

/// One lane of `vpmaddwd`.
#[inline(always)]
pub(crate) fn madd1(a: i32, b: i32) -> i32 {
    let (a0, a1) = (a as i16 as i32, (a >> 16) as i16 as i32);
    let (b0, b1) = (b as i16 as i32, (b >> 16) as i16 as i32);
    (a0 * b0).wrapping_add(a1 * b1)
}

/// Work generic over the lanes: [`dispatch`] picks them.
pub(crate) trait Task {
    type Output;
    fn run<S: Lanes>(self, simd: S) -> Self::Output;
}

/// Runs `task` with the lanes of `isa` (the one the weights were packed for), compiled for that
/// instruction set. On a CPU without it (never the case for the `isa` [`Isa::detect`] chose)
/// the same lane count runs in plain Rust.
pub(crate) fn dispatch<T: Task>(isa: Isa, task: T) -> T::Output {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 => {
            if let Some(simd) = pulp::x86::V4::try_new() {
                return simd.vectorize(|| task.run(simd));
            }
        }
        Isa::Avx2 => {
            if let Some(simd) = pulp::x86::V3::try_new() {
                return simd.vectorize(|| task.run(simd));
            }
        }
        Isa::Portable => {}
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon
        && let Some(simd) = pulp::aarch64::Neon::try_new()
    {
        return simd.vectorize(|| task.run(simd));
    }
    match isa.lanes() {
        16 => task.run(Portable::<16>),
        4 => task.run(Portable::<4>),
        _ => task.run(Portable::<8>),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::{__m256, __m256i, __m512, __m512i, _CMP_ORD_Q};
    use pulp::x86::{V3, V4};

    impl super::Lanes for V4 {
        type V = __m512i;
        type F = __m512;
        const L: usize = 16;
        #[inline(always)]
        fn zero(self) -> __m512i {
            self.avx512f._mm512_setzero_si512()
        }
        #[inline(always)]
        fn load(self, pairs: &[i32]) -> __m512i {
            let (chunk, _) = pairs.split_first_chunk::<16>().unwrap_or_else(|| unreachable!("16 lanes"));
            pulp::cast(*chunk)
        }
        #[inline(always)]
        fn splat(self, pair: i32) -> __m512i {
            self.avx512f._mm512_set1_epi32(pair)
        }
        #[inline(always)]
        fn madd(self, acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
            self.avx512f._mm512_add_epi32(acc, self.avx512bw._mm512_madd_epi16(a, b))
        }
        #[inline(always)]
        fn add(self, a: __m512i, b: __m512i) -> __m512i {
            self.avx512f._mm512_add_epi32(a, b)
        }
        #[cfg(test)]
        #[inline(always)]
        fn store(self, v: __m512i, out: &mut [i32]) {
            let lanes: [i32; 16] = pulp::cast(v);
            out[..16].copy_from_slice(&lanes);
        }
        #[inline(always)]
        fn to_f32(self, v: __m512i) -> __m512 {
            self.avx512f._mm512_cvtepi32_ps(v)
        }
        #[inline(always)]
        fn to_i32(self, v: __m512) -> __m512i {
            self.avx512f._mm512_cvtps_epi32(v)
        }
        #[inline(always)]
        fn fsplat(self, x: f32) -> __m512 {
            self.avx512f._mm512_set1_ps(x)
        }
        #[inline(always)]
        fn fload(self, x: &[f32]) -> __m512 {
            let (chunk, _) = x.split_first_chunk::<16>().unwrap_or_else(|| unreachable!("16 lanes"));
            pulp::cast(*chunk)
        }
        #[inline(always)]
        fn fadd(self, a: __m512, b: __m512) -> __m512 {
            self.avx512f._mm512_add_ps(a, b)
        }
        #[inline(always)]
        fn fsub(self, a: __m512, b: __m512) -> __m512 {
            self.avx512f._mm512_sub_ps(a, b)
        }
        #[inline(always)]
        fn fmul(self, a: __m512, b: __m512) -> __m512 {
            self.avx512f._mm512_mul_ps(a, b)
        }
        #[inline(always)]
        fn fdiv(self, a: __m512, b: __m512) -> __m512 {
            self.avx512f._mm512_div_ps(a, b)
        }
        #[inline(always)]
        fn fclamp(self, x: __m512, lo: __m512, hi: __m512) -> __m512 {
            let ordered = self.avx512f._mm512_cmp_ps_mask::<_CMP_ORD_Q>(x, x);
            let c = self.avx512f._mm512_min_ps(self.avx512f._mm512_max_ps(x, lo), hi);
            self.avx512f._mm512_maskz_mov_ps(ordered, c)
        }
        #[inline(always)]
        fn fstore(self, v: __m512, out: &mut [f32]) {
            let lanes: [f32; 16] = pulp::cast(v);
            out[..16].copy_from_slice(&lanes);
        }
        #[inline(always)]
        fn store_bytes(self, v: __m512i, out: &mut [u8]) {
            let bytes: [u8; 16] = pulp::cast(self.avx512f._mm512_cvtepi32_epi8(v));
            out[..16].copy_from_slice(&bytes);
        }
    }

    impl super::Lanes for V3 {
        type V = __m256i;
        type F = __m256;
        const L: usize = 8;
        #[inline(always)]
        fn zero(self) -> __m256i {
            self.avx._mm256_setzero_si256()
        }
        #[inline(always)]
        fn load(self, pairs: &[i32]) -> __m256i {
            let (chunk, _) = pairs.split_first_chunk::<8>().unwrap_or_else(|| unreachable!("8 lanes"));
            pulp::cast(*chunk)
        }
        #[inline(always)]
        fn splat(self, pair: i32) -> __m256i {
            self.avx._mm256_set1_epi32(pair)
        }
        #[inline(always)]
        fn madd(self, acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
            self.avx2._mm256_add_epi32(acc, self.avx2._mm256_madd_epi16(a, b))
        }
        #[inline(always)]
        fn add(self, a: __m256i, b: __m256i) -> __m256i {
            self.avx2._mm256_add_epi32(a, b)
        }
        #[cfg(test)]
        #[inline(always)]
        fn store(self, v: __m256i, out: &mut [i32]) {
            let lanes: [i32; 8] = pulp::cast(v);
            out[..8].copy_from_slice(&lanes);
        }
        #[inline(always)]
        fn to_f32(self, v: __m256i) -> __m256 {
            self.avx._mm256_cvtepi32_ps(v)
        }
        #[inline(always)]
        fn to_i32(self, v: __m256) -> __m256i {
            self.avx._mm256_cvtps_epi32(v)
        }
        #[inline(always)]
        fn fsplat(self, x: f32) -> __m256 {
            self.avx._mm256_set1_ps(x)
        }
        #[inline(always)]
        fn fload(self, x: &[f32]) -> __m256 {
            let (chunk, _) = x.split_first_chunk::<8>().unwrap_or_else(|| unreachable!("8 lanes"));
            pulp::cast(*chunk)
        }
        #[inline(always)]
        fn fadd(self, a: __m256, b: __m256) -> __m256 {
            self.avx._mm256_add_ps(a, b)
        }
        #[inline(always)]
        fn fsub(self, a: __m256, b: __m256) -> __m256 {
            self.avx._mm256_sub_ps(a, b)
        }
        #[inline(always)]
        fn fmul(self, a: __m256, b: __m256) -> __m256 {
            self.avx._mm256_mul_ps(a, b)
        }
        #[inline(always)]
        fn fdiv(self, a: __m256, b: __m256) -> __m256 {
            self.avx._mm256_div_ps(a, b)
        }
        #[inline(always)]
        fn fclamp(self, x: __m256, lo: __m256, hi: __m256) -> __m256 {
            let ordered = self.avx._mm256_cmp_ps::<_CMP_ORD_Q>(x, x);
            let c = self.avx._mm256_min_ps(self.avx._mm256_max_ps(x, lo), hi);
            self.avx._mm256_and_ps(ordered, c)
        }
        #[inline(always)]
        fn fstore(self, v: __m256, out: &mut [f32]) {
            let lanes: [f32; 8] = pulp::cast(v);
            out[..8].copy_from_slice(&lanes);
        }
        #[inline(always)]
        fn store_bytes(self, v: __m256i, out: &mut [u8]) {
            let lanes: [i32; 8] = pulp::cast(v);
            for (o, v) in out[..8].iter_mut().zip(lanes) {
                *o = v as u8;
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use core::arch::aarch64::{float32x4_t, int32x4_t};
    use pulp::aarch64::Neon;

    /// Four lanes per NEON register. Every operation is the IEEE one of the other families
    /// (Linux runs aarch64 without flush-to-zero), so the bytes are the same.
    impl super::Lanes for Neon {
        type V = int32x4_t;
        type F = float32x4_t;
        const L: usize = 4;
        #[inline(always)]
        fn zero(self) -> int32x4_t {
            self.neon.vdupq_n_s32(0)
        }
        #[inline(always)]
        fn load(self, pairs: &[i32]) -> int32x4_t {
            let (chunk, _) = pairs.split_first_chunk::<4>().unwrap_or_else(|| unreachable!("4 lanes"));
            pulp::cast(*chunk)
        }
        #[inline(always)]
        fn splat(self, pair: i32) -> int32x4_t {
            self.neon.vdupq_n_s32(pair)
        }
        /// `vpmaddwd` in NEON: the eight i16 products widened (`smull`, `smull2`), then added
        /// pairwise (`addp`) so lane `i` is `a₂ᵢb₂ᵢ + a₂ᵢ₊₁b₂ᵢ₊₁`.
        #[inline(always)]
        fn madd(self, acc: int32x4_t, a: int32x4_t, b: int32x4_t) -> int32x4_t {
            let n = self.neon;
            let (a, b) = (n.vreinterpretq_s16_s32(a), n.vreinterpretq_s16_s32(b));
            let lo = n.vmull_s16(n.vget_low_s16(a), n.vget_low_s16(b));
            let hi = n.vmull_high_s16(a, b);
            n.vaddq_s32(acc, n.vpaddq_s32(lo, hi))
        }
        #[inline(always)]
        fn add(self, a: int32x4_t, b: int32x4_t) -> int32x4_t {
            self.neon.vaddq_s32(a, b)
        }
        #[cfg(test)]
        #[inline(always)]
        fn store(self, v: int32x4_t, out: &mut [i32]) {
            let lanes: [i32; 4] = pulp::cast(v);
            out[..4].copy_from_slice(&lanes);
        }
        #[inline(always)]
        fn to_f32(self, v: int32x4_t) -> float32x4_t {
            self.neon.vcvtq_f32_s32(v)
        }
        #[inline(always)]
        fn to_i32(self, v: float32x4_t) -> int32x4_t {
            self.neon.vcvtq_s32_f32(v)
        }
        #[inline(always)]
        fn fsplat(self, x: f32) -> float32x4_t {
            self.neon.vdupq_n_f32(x)
        }
        #[inline(always)]
        fn fload(self, x: &[f32]) -> float32x4_t {
            let (chunk, _) = x.split_first_chunk::<4>().unwrap_or_else(|| unreachable!("4 lanes"));
            pulp::cast(*chunk)
        }
        #[inline(always)]
        fn fadd(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            self.neon.vaddq_f32(a, b)
        }
        #[inline(always)]
        fn fsub(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            self.neon.vsubq_f32(a, b)
        }
        #[inline(always)]
        fn fmul(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            self.neon.vmulq_f32(a, b)
        }
        #[inline(always)]
        fn fdiv(self, a: float32x4_t, b: float32x4_t) -> float32x4_t {
            self.neon.vdivq_f32(a, b)
        }
        #[inline(always)]
        fn fclamp(self, x: float32x4_t, lo: float32x4_t, hi: float32x4_t) -> float32x4_t {
            let n = self.neon;
            let ordered = n.vceqq_f32(x, x);
            let c = n.vminnmq_f32(n.vmaxnmq_f32(x, lo), hi);
            n.vreinterpretq_f32_u32(n.vandq_u32(ordered, n.vreinterpretq_u32_f32(c)))
        }
        #[inline(always)]
        fn fstore(self, v: float32x4_t, out: &mut [f32]) {
            let lanes: [f32; 4] = pulp::cast(v);
            out[..4].copy_from_slice(&lanes);
        }
        #[inline(always)]
        fn store_bytes(self, v: int32x4_t, out: &mut [u8]) {
            let n = self.neon;
            let half = n.vmovn_s32(v);
            let bytes: [u8; 8] = pulp::cast(n.vmovn_s16(n.vcombine_s16(half, half)));
            out[..4].copy_from_slice(&bytes[..4]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every instruction set this CPU can run, each with the Portable lanes of its width.
    pub(crate) fn isas() -> Vec<Isa> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V4::try_new().is_some() {
                v.push(Isa::Avx512);
            }
            if pulp::x86::V3::try_new().is_some() {
                v.push(Isa::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        if pulp::aarch64::Neon::try_new().is_some() {
            v.push(Isa::Neon);
        }
        v
    }

    /// Every aarch64 core has NEON: the layers must never fall back to plain Rust there.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn aarch64_runs_neon() {
        assert_eq!(Isa::detect(), Isa::Neon);
    }

    struct Clamp;
    impl Task for Clamp {
        type Output = Vec<f32>;
        fn run<S: Lanes>(self, simd: S) -> Vec<f32> {
            let x = [f32::NAN, -1e9, -3.5, 0.0, 2.5, 1e9, f32::INFINITY, f32::NEG_INFINITY];
            let mut padded = vec![0.0; x.len().next_multiple_of(S::L)];
            padded[..8].copy_from_slice(&x);
            let mut out = vec![0.0; padded.len()];
            for (src, dst) in padded.chunks_exact(S::L).zip(out.chunks_exact_mut(S::L)) {
                let v = simd.fclamp(simd.fload(src), simd.fsplat(-3.0), simd.fsplat(2.0));
                simd.fstore(v, dst);
            }
            out.truncate(8);
            out
        }
    }

    #[test]
    fn clamping_sends_nan_to_zero_on_every_isa() {
        for isa in isas() {
            assert_eq!(dispatch(isa, Clamp), [0.0, -3.0, -3.0, 0.0, 2.0, 2.0, 2.0, -3.0], "{isa:?}");
        }
    }

    struct Narrow;
    impl Task for Narrow {
        type Output = Vec<u8>;
        fn run<S: Lanes>(self, simd: S) -> Vec<u8> {
            let v: Vec<f32> = (0..S::L).map(|i| i as f32 * 17.0 - 128.0).collect();
            let mut out = vec![0u8; S::L];
            simd.store_bytes(simd.to_i32(simd.fload(&v)), &mut out);
            out
        }
    }

    #[test]
    fn bytes_are_the_low_byte_of_each_integer() {
        for isa in isas() {
            let got = dispatch(isa, Narrow);
            let want: Vec<u8> = (0..isa.lanes()).map(|i| (i as i32 * 17 - 128) as u8).collect();
            assert_eq!(got, want, "{isa:?}");
        }
    }
}
