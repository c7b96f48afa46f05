//! Running a model's work on a thread of rayon's pool.
//!
//! flex's kernels and ours split their loops with rayon. A loop started from a thread outside the
//! pool is injected into the pool's queue: it wakes the workers and parks the calling thread until
//! the loop is done, a few futex calls per kernel. A model made of many small kernels (a small
//! DCGAN's training step runs hundreds) spends a share of its time there. A loop started on a
//! worker pushes its halves on that worker's own deque, and the worker runs them itself unless
//! another worker steals them.

use burn::tensor::Device;

/// Runs `work` on a worker of rayon's global pool when `device` computes on the CPU (flex), else
/// on this thread; on a worker already, in place.
///
/// `work` must not hold a lock while it computes that another caller's `work` takes: a worker
/// waiting for its loop to finish may run another caller's queued `work` meanwhile. Keep user
/// callbacks outside.
pub(crate) fn on_worker<R: Send>(device: &Device, work: impl FnOnce() -> R + Send) -> R {
    if crate::gemm_conv::is_flex(device) {
        rayon::scope(|_| work())
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_work_runs_on_a_worker_and_nested_work_stays_there() {
        let outside = rayon::current_thread_index();
        let (worker, nested) = on_worker(&Device::flex().autodiff(), || {
            let worker = rayon::current_thread_index();
            (
                worker,
                on_worker(&Device::flex(), rayon::current_thread_index),
            )
        });
        assert!(
            outside.is_none(),
            "the test harness runs tests outside rayon's pool"
        );
        assert!(worker.is_some());
        assert_eq!(nested, worker);
    }
}
