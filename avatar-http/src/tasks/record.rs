//! The persisted state of one task.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The life cycle of a task: `queued -> processing -> success | failed | cancelled`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for a worker.
    Queued,
    /// Running on a worker.
    Processing,
    /// Finished; every result is available.
    Success,
    /// Finished with an error (see `error`).
    Failed,
    /// Cancelled by the client.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Queued,
        TaskStatus::Processing,
        TaskStatus::Success,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// Whether the task has finished (successfully or not).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Success | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Processing => "processing",
            TaskStatus::Success => "success",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

/// One stored result of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// Position in the task's results (0-based).
    pub index: usize,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub bytes: usize,
    /// Job-specific metadata (seed, width, height...).
    #[serde(default)]
    pub meta: serde_json::Value,
}

/// The state of a task's webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not sent yet, or being retried.
    Pending,
    /// Answered with a 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// Webhook delivery bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookDelivery {
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last failure (status code or transport error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Everything known about a task; persisted as JSON by the on-disk store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id (32 lowercase hex digits).
    pub id: String,
    /// The job kind (`dcgan.batch`).
    pub kind: String,
    /// The lane (model pool) that runs it.
    pub lane: String,
    /// Current status.
    pub status: TaskStatus,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When a worker started it.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
    /// When it finished.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// Progress: steps done.
    #[serde(default)]
    pub step: u32,
    /// Progress: steps in all.
    #[serde(default)]
    pub total: u32,
    /// Stored results.
    #[serde(default)]
    pub results: Vec<ResultMeta>,
    /// The failure, for `failed`.
    #[serde(default)]
    pub error: Option<String>,
    /// URL to POST to when the task finishes.
    #[serde(default)]
    pub webhook: Option<String>,
    /// The caller's id, echoed in responses and the webhook.
    #[serde(default)]
    pub track_id: Option<serde_json::Value>,
    /// The job's parameters (to re-queue it after a restart).
    #[serde(default)]
    pub spec: serde_json::Value,
    /// How many times a worker started it (restarts re-queue it, up to a limit).
    #[serde(default)]
    pub attempts: u32,
    /// Webhook delivery state, when there is a webhook.
    #[serde(default)]
    pub webhook_delivery: Option<WebhookDelivery>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Whether `id` has the shape of a task id (so it is safe as a file name).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A fresh random task id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
