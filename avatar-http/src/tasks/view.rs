//! The client-facing view of a task, shared by the API and the webhook payload.

use serde::Serialize;
use utoipa::ToSchema;

use super::record::{TaskRecord, TaskStatus, WebhookDelivery};

/// Progress of a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    /// Steps done (images stored, for avatar batches).
    pub step: u32,
    /// Steps in all.
    pub total: u32,
    /// `step / total`, 0 to 1.
    pub fraction: f32,
}

/// When things happened (milliseconds since the Unix epoch) and how long they took.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Timings {
    /// Creation.
    pub created_at_ms: u64,
    /// Start on a worker.
    pub started_at_ms: Option<u64>,
    /// End.
    pub finished_at_ms: Option<u64>,
    /// Time spent waiting in the queue.
    pub queued_ms: Option<u64>,
    /// Time spent running.
    pub run_ms: Option<u64>,
}

/// One result of a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResultLink {
    /// Position (0-based).
    pub index: usize,
    /// Where to download it (`GET`).
    #[schema(example = "http://127.0.0.1:8000/tasks/3f2a.../result/0")]
    pub url: String,
    /// MIME type.
    #[schema(example = "image/png")]
    pub content_type: String,
    /// Size in bytes.
    pub bytes: usize,
    /// Job-specific metadata: for avatars, `seed`, `width`, `height`.
    #[schema(value_type = Object)]
    pub meta: serde_json::Value,
}

/// A task as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskView {
    /// The task id.
    #[schema(example = "3f2a6c0d9b8e4f1a2b3c4d5e6f708192")]
    pub task_id: String,
    /// What it runs (`dcgan.batch`).
    #[schema(example = "dcgan.batch")]
    pub kind: String,
    /// `queued`, `processing`, `success`, `failed` or `cancelled`.
    pub status: TaskStatus,
    /// Position in the queue while `queued` (1 = next).
    pub queue_position: Option<usize>,
    /// Progress.
    pub progress: Progress,
    /// Timings.
    pub timings: Timings,
    /// Results stored so far (all of them once `success`).
    pub results: Vec<ResultLink>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The caller's `track_id`, echoed.
    #[schema(value_type = Option<Object>)]
    pub track_id: Option<serde_json::Value>,
    /// Webhook delivery state, when a webhook was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDelivery>,
    /// This task's URL (`GET` for status, `DELETE` to cancel).
    pub status_url: String,
}

impl TaskView {
    /// The view of `record`; links start with `base` (`http://host:port`, no trailing slash).
    pub fn new(record: &TaskRecord, queue_position: Option<usize>, base: &str) -> Self {
        let status_url = format!("{base}/tasks/{}", record.id);
        let started = record.started_at_ms;
        TaskView {
            task_id: record.id.clone(),
            kind: record.kind.clone(),
            status: record.status,
            queue_position,
            progress: Progress {
                step: record.step,
                total: record.total,
                fraction: if record.total == 0 {
                    0.0
                } else {
                    record.step as f32 / record.total as f32
                },
            },
            timings: Timings {
                created_at_ms: record.created_at_ms,
                started_at_ms: started,
                finished_at_ms: record.finished_at_ms,
                queued_ms: started
                    .or(record.finished_at_ms)
                    .map(|s| s.saturating_sub(record.created_at_ms)),
                run_ms: started
                    .zip(record.finished_at_ms)
                    .map(|(s, f)| f.saturating_sub(s)),
            },
            results: record
                .results
                .iter()
                .map(|r| ResultLink {
                    index: r.index,
                    url: format!("{status_url}/result/{}", r.index),
                    content_type: r.content_type.clone(),
                    bytes: r.bytes,
                    meta: r.meta.clone(),
                })
                .collect(),
            error: record.error.clone(),
            track_id: record.track_id.clone(),
            webhook: record.webhook_delivery.clone(),
            status_url,
        }
    }
}
