//! Runs a hand-written CPU kernel compiled for the widest vector instructions the machine has.
//!
//! The crate is built for the x86-64 baseline (SSE2: four f32 lanes), so that one binary runs on
//! every x86-64 CPU; loops the compiler vectorises then use four lanes even where the CPU has
//! eight (AVX2) or sixteen (AVX-512). [`widest`] checks the CPU once (std's cached feature
//! detection) and calls the kernel through a copy of it compiled with those instructions enabled,
//! the way the `gemm` crate picks its micro-kernels. The kernel must be a closure marked
//! `#[inline(always)]` whose callees inline too, so that its whole body is compiled inside the
//! feature-enabled function.
//!
//! Results do not depend on the path taken: Rust never contracts `a * b + c` into a fused
//! multiply-add on its own, and the other vector instructions round as the scalar ones do, so
//! every path gives the same bits (tested).

/// Calls `kernel` compiled for AVX-512F, AVX2 or the baseline, the widest the CPU supports.
#[inline(always)]
pub(crate) fn widest<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked above).
            return unsafe { avx512(kernel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked above).
            return unsafe { avx2(kernel) };
        }
    }
    kernel()
}

/// The accumulator width of [`lane_sum`] and the kernels' own sums: eight f32 lanes, which the
/// compiler keeps in vector registers.
pub(crate) const LANES: usize = 8;

/// `Σ f(x)`, in [`LANES`] f32 lanes over blocks of 4,096 values, each block's total added in f64.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    x.chunks(4096)
        .map(|block| {
            let mut lanes = [0.0f32; LANES];
            let mut chunks = block.chunks_exact(LANES);
            for chunk in chunks.by_ref() {
                for (lane, &v) in lanes.iter_mut().zip(chunk) {
                    *lane += f(v);
                }
            }
            let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
            lanes.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(kernel: impl FnOnce() -> R) -> R {
    kernel()
}

#[cfg(test)]
mod tests {
    use super::widest;

    #[test]
    fn every_path_gives_the_baseline_bits() {
        let x: Vec<f32> = (0..10_000)
            .map(|i| (i as f32 * 0.37).sin() * 50.0)
            .collect();
        let kernel =
            |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| v * 1.7 + 0.3 / (1.0 + v * v)).collect() };
        let baseline = kernel(&x);
        let dispatched = widest(
            #[inline(always)]
            || kernel(&x),
        );
        assert_eq!(
            baseline.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            dispatched.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above.
                let avx2 = unsafe { super::avx2(|| kernel(&x)) };
                assert_eq!(baseline, avx2);
            }
        }
    }
}
