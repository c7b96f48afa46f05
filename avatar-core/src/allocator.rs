//! Heap tuning for the CPU backend. Every tensor op of `flex` writes a fresh buffer; with glibc's
//! defaults each buffer over the mmap threshold (at most 32 MiB) is a new mapping, so ops pay page
//! faults and the kernel zeroing pages, and the heap's top is trimmed back to the system as soon as
//! a large buffer at the top is freed, only to be grown again by the next op.
//! [`tune_for_tensors`] serves every buffer from the heap (`M_MMAP_MAX` 0), grows it in 256 MiB
//! steps (`M_TOP_PAD`) and never trims it (`M_TRIM_THRESHOLD` -1): freed buffers are reused, as
//! with a caching allocator. Measured side by side (`benches/RESULTS.md`, 2026-11-30): the SD1.5
//! UNet step 18% faster, the VAE decode 16%, the seed Keras generator at batch 64 about 2x, DCGAN
//! training +15% images/s, at the same peak RSS. The cost: the process keeps its high-water mark
//! of heap memory for reuse instead of returning it.
//!
//! It also keeps one heap for all threads (`M_ARENA_MAX` 1). Models run on rayon's workers
//! (`worker_pool`), so tensors are allocated on one thread and freed on another; with an arena per
//! thread each worker's heap kept its own high-water mark (DCGAN training at 96 px, batch 64:
//! peak RSS 483 MiB before the worker pool, 636 MiB with it, 494 MiB with it and one arena, at the
//! same speed; `benches/RESULTS.md`, session 24). Small allocations still come from per-thread
//! caches (glibc's tcache).
//!
//! Applied once, when a CPU [`crate::DeviceSpec`] is turned into a device (so by every front
//! end); `AVATAR_MALLOC_TUNING=0` leaves the process's allocator as it is. It does nothing on other
//! platforms or C libraries.

use std::sync::OnceLock;

/// How far the heap grows beyond a request.
pub const TOP_PAD: usize = 256 << 20;

/// Sets glibc's `M_MMAP_MAX` to 0, `M_TOP_PAD` to [`TOP_PAD`], `M_TRIM_THRESHOLD` to -1 (no
/// trimming) and `M_ARENA_MAX` to 1 once per process, unless `AVATAR_MALLOC_TUNING=0`; returns
/// whether the tuning is in effect.
pub fn tune_for_tensors() -> bool {
    static APPLIED: OnceLock<bool> = OnceLock::new();
    *APPLIED.get_or_init(|| {
        let disabled = std::env::var("AVATAR_MALLOC_TUNING").is_ok_and(|v| v.trim() == "0");
        !disabled && apply()
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only adjusts allocator parameters; it is thread-safe in glibc.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TOP_PAD, TOP_PAD as libc::c_int) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
            && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn tuning_applies_once_on_glibc() {
        let first = super::tune_for_tensors();
        assert_eq!(first, super::tune_for_tensors());
        if cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var("AVATAR_MALLOC_TUNING").as_deref() != Ok("0")
        {
            assert!(first, "glibc accepts every parameter");
        }
    }
}
