//! Long-running work as tasks: a generic job queue with progress, cancellation, storage and
//! webhooks, and the DCGAN batch job built on it.

pub mod avatar_gen;
pub mod dcgan;
pub mod face_avatar;
pub mod job;
pub mod queue;
pub mod record;
pub mod store;
pub mod view;
pub mod webhook;

pub use job::{Artifact, CancelReason, CancelToken, Job, JobContext, JobError};
pub use queue::{CancelError, Lane, SubmitError, SubmitOptions, TaskEvent, TaskManager};
pub use record::{TaskRecord, TaskStatus};
pub use store::{DiskStore, MemoryStore, TaskStore};
pub use view::TaskView;
