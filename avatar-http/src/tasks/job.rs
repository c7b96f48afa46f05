//! What a task runs: the [`Job`] trait, its context (progress, results, cancellation).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// Why a job was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client cancelled the task (`DELETE /tasks/{id}`).
    User,
    /// The server is shutting down: the task goes back to the queue (on-disk store).
    Shutdown,
}

/// A cheap, cloneable cancellation flag shared by the API and the worker running the job.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicU8>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the job to stop (the first reason wins).
    pub fn cancel(&self, reason: CancelReason) {
        let code = match reason {
            CancelReason::User => 1,
            CancelReason::Shutdown => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Why the job was asked to stop, if it was.
    pub fn reason(&self) -> Option<CancelReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(CancelReason::User),
            2 => Some(CancelReason::Shutdown),
            _ => None,
        }
    }

    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }
}

/// One output of a job (an image), stored as soon as it is pushed.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The encoded bytes.
    pub bytes: Vec<u8>,
    /// Their MIME type.
    pub content_type: String,
    /// Free-form metadata shown with the result (seed, size...).
    pub meta: serde_json::Value,
}

/// Why a job did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// It saw its cancel token and stopped.
    #[error("cancelled")]
    Cancelled,
    /// It failed; the message is shown to the client.
    #[error("{0}")]
    Failed(String),
}

/// The sink a running job reports through (implemented by the task manager).
pub trait JobSink: Send + Sync {
    /// Progress: `step` of `total` done.
    fn progress(&self, task_id: &str, step: u32, total: u32);
    /// Stores one result and returns its index.
    fn push_result(&self, task_id: &str, artifact: Artifact) -> Result<usize, String>;
}

/// What a job sees while it runs: its id, a progress/result sink and its cancel token.
pub struct JobContext {
    task_id: String,
    sink: Arc<dyn JobSink>,
    cancel: CancelToken,
}

impl JobContext {
    /// A context for task `task_id`.
    pub fn new(task_id: String, sink: Arc<dyn JobSink>, cancel: CancelToken) -> Self {
        JobContext {
            task_id,
            sink,
            cancel,
        }
    }

    /// The task's id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Reports `step` of `total` steps done.
    pub fn progress(&self, step: u32, total: u32) {
        self.sink.progress(&self.task_id, step, total);
    }

    /// Stores a result (an image) right away, so it can be fetched before the task ends.
    pub fn push_result(&self, artifact: Artifact) -> Result<usize, JobError> {
        self.sink
            .push_result(&self.task_id, artifact)
            .map_err(JobError::Failed)
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(Cancelled)` once the task was cancelled: call it between steps.
    pub fn checkpoint(&self) -> Result<(), JobError> {
        if self.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Long-running work executed on a model worker thread that owns a model of type `M`.
///
/// Jobs are generic over the model so that every model family (DCGAN today, diffusion and
/// VQGAN+CLIP later) plugs into the same queue, status, storage and webhook machinery.
pub trait Job<M>: Send + 'static {
    /// The task kind (`dcgan.batch`, ...), shown to clients and used to rebuild the job after a
    /// restart.
    fn kind(&self) -> &'static str;

    /// Number of progress steps (for `progress.total` before the job starts).
    fn total_steps(&self) -> u32;

    /// The job's parameters as JSON, persisted so the job can be re-queued after a restart.
    fn spec(&self) -> serde_json::Value;

    /// Runs the job: report progress, push results, call [`JobContext::checkpoint`] between
    /// steps.
    fn run(&mut self, model: &mut M, ctx: &JobContext) -> Result<(), JobError>;
}
