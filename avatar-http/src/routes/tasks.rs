//! The task endpoints: create a DCGAN batch, poll, cancel, download results.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody, Location};
use crate::params::{self, ImageBytes};
use crate::routes::fields;
use crate::state::AppState;
use crate::tasks::dcgan::{DcganBatchJob, DcganBatchSpec, batch_seeds};
use crate::tasks::record::is_valid_id;
use crate::tasks::{CancelError, SubmitError, SubmitOptions, TaskView};

/// Most images in one batch task.
pub const MAX_IMAGES: u64 = 64;
/// Longest accepted `track_id`, in bytes.
pub const MAX_TRACK_ID: usize = 256;

/// Body of `POST /tasks/avatars`. Numbers may also be sent as strings, as seed-002 clients do.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct AvatarTaskRequest {
    /// `small` (default) or `large`.
    #[schema(value_type = Option<crate::params::SizeParam>, example = "small")]
    size: Option<String>,
    /// Number of avatars, 1 to 64 (default 1).
    #[schema(minimum = 1, maximum = 64, example = 8)]
    n: Option<u32>,
    /// Seed of the first avatar: a number `s` gives `s, s+1, ...`, a text `t` gives
    /// `t, t-1, t-2, ...`; default random. Each result lists its seed.
    #[schema(value_type = Option<String>, example = "alice")]
    seed: Option<String>,
    /// Transparent background (default false).
    transparent: Option<bool>,
    /// Background colour `#RRGGBB[AA]` (default white).
    #[schema(example = "#ffcc00")]
    bg_color: Option<String>,
    /// `png` (default), `webp` or `jpeg`.
    #[schema(value_type = Option<crate::params::FormatParam>)]
    format: Option<String>,
    /// Output side in pixels.
    output_size: Option<u32>,
    /// URL that receives a POST of the finished task (retried with backoff).
    #[schema(example = "https://example.com/hooks/avatars")]
    webhook: Option<String>,
    /// Your id for this request, echoed in the task and the webhook.
    #[schema(value_type = Option<String>, example = "order-42")]
    track_id: Option<String>,
    /// API key, as an alternative to the `Authorization` header.
    key: Option<String>,
}

pub(crate) fn body_error(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(field, Location::Body, message)
}

/// Parses and validates the body into a job spec and submit options.
pub fn parse_request(
    bytes: &[u8],
    max_output_size: u32,
) -> Result<(DcganBatchSpec, SubmitOptions), ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| body_error("body", format!("invalid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(body_error("body", "must be a JSON object"));
    };
    let size = params::parse_size(fields::string(&body, "size")?.as_deref(), Location::Body)?;
    let n = fields::count(&body, "n")?.unwrap_or(1);
    if !(1..=MAX_IMAGES).contains(&n) {
        return Err(body_error(
            "n",
            format!("{n} is out of range 1..={MAX_IMAGES}"),
        ));
    }
    let seed_text = match body.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        Some(_) => {
            return Err(body_error(
                "seed",
                "must be a string or a non-negative integer",
            ));
        }
    };
    let seed = params::parse_seed(seed_text.as_deref(), Location::Body)?;
    let transparent = match body.get("transparent") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => params::parse_bool("transparent", Some(s), Location::Body)?,
        Some(_) => return Err(body_error("transparent", "must be true or false")),
    };
    let output_size = fields::count(&body, "output_size")?;
    let output_size = match output_size {
        Some(size) => {
            let size = u32::try_from(size)
                .map_err(|_| body_error("output_size", format!("{size} is too large")))?;
            params::check_output_size(size, max_output_size, Location::Body)?;
            Some(size)
        }
        None => None,
    };
    let spec = DcganBatchSpec {
        size: size.as_str().to_string(),
        seeds: batch_seeds(seed.as_ref(), n as usize),
        transparent,
        bg_color: fields::string(&body, "bg_color")?.filter(|c| !c.is_empty()),
        format: fields::string(&body, "format")?.unwrap_or_else(|| "png".into()),
        output_size,
    };
    spec.resolve()
        .map_err(|e| ApiError::from_core(e, Location::Body))?;
    let webhook = fields::string(&body, "webhook")?.filter(|w| !w.is_empty());
    if let Some(url) = &webhook {
        crate::tasks::webhook::validate_url(url).map_err(|e| body_error("webhook", e))?;
    }
    let track_id = match body.get("track_id") {
        None | Some(Value::Null) => None,
        Some(value @ (Value::String(_) | Value::Number(_))) => {
            if value.to_string().len() > MAX_TRACK_ID {
                return Err(body_error(
                    "track_id",
                    format!("longer than {MAX_TRACK_ID} bytes"),
                ));
            }
            Some(value.clone())
        }
        Some(_) => return Err(body_error("track_id", "must be a string or a number")),
    };
    Ok((spec, SubmitOptions { webhook, track_id }))
}

fn view(app: &AppState, headers: &HeaderMap, record: &crate::tasks::TaskRecord) -> TaskView {
    TaskView::new(record, app.tasks.position(record), &app.base_url(headers))
}

/// Queues a batch of DCGAN avatars.
///
/// Answers `202 Accepted` with the task (and its URL in `Location`); poll `GET /tasks/{id}` or
/// pass a `webhook`. When the queue is full, answers `429` with `Retry-After`.
#[utoipa::path(
    post,
    path = "/tasks/avatars",
    tag = "tasks",
    request_body = AvatarTaskRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "Queued", body = TaskView, headers(("Location" = String))),
        (status = 401, description = "Authentication is on and the token is missing or wrong", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
        (status = 429, description = "The task queue is full", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn create_avatar_task(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (spec, options) = parse_request(&body, app.config.max_output_size)?;
    let job = DcganBatchJob::new(spec, app.metrics.clone());
    let submit_app = app.clone();
    let record = tokio::task::spawn_blocking(move || {
        submit_app
            .tasks
            .submit(&submit_app.dcgan, Box::new(job), options)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|error| match error {
        SubmitError::Busy { retry_after_secs } => ApiError::Busy {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after_secs,
            message: "the task queue is full; retry later".into(),
        },
        SubmitError::Closed => ApiError::Unavailable("the server is shutting down".into()),
        SubmitError::Store(message) => ApiError::Internal(message),
    })?;
    let view = view(&app, &headers, &record);
    let location =
        HeaderValue::from_str(&view.status_url).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

fn lookup(app: &AppState, id: &str) -> Result<crate::tasks::TaskRecord, ApiError> {
    if !is_valid_id(id) {
        return Err(ApiError::NotFound(format!("no task {id:?}")));
    }
    app.tasks
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no task {id:?}")))
}

/// A task's status, queue position, progress, timings and result links.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task (or it expired)", body = ErrorBody),
    )
)]
pub async fn get_task(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let record = lookup(&app, &id)?;
    Ok(Json(view(&app, &headers, &record)))
}

/// Cancels a task: a queued one at once, a running one at its next step.
#[utoipa::path(
    delete,
    path = "/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled (or, for a running task, cancelling: poll until `cancelled`)", body = TaskView),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task already finished", body = ErrorBody),
    )
)]
pub async fn cancel_task(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    lookup(&app, &id)?;
    let cancel_app = app.clone();
    let cancel_id = id.clone();
    let record = tokio::task::spawn_blocking(move || cancel_app.tasks.cancel(&cancel_id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|error| match error {
            CancelError::NotFound => ApiError::NotFound(format!("no task {id:?}")),
            CancelError::Finished(status) => {
                ApiError::Conflict(format!("the task already finished ({})", status.as_str()))
            }
        })?;
    Ok(Json(view(&app, &headers, &record)))
}

/// Downloads result `index` of a task (available as soon as it is stored).
#[utoipa::path(
    get,
    path = "/tasks/{id}/result/{index}",
    tag = "tasks",
    params(
        ("id" = String, Path, description = "The task id"),
        ("index" = usize, Path, description = "The result's index (0-based)"),
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The image", content((ImageBytes = "image/png"), (ImageBytes = "image/webp"), (ImageBytes = "image/jpeg"))),
        (status = 404, description = "No such task or result", body = ErrorBody),
    )
)]
pub async fn get_result(
    State(app): State<AppState>,
    Path((id, index)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    lookup(&app, &id)?;
    let missing = || ApiError::NotFound(format!("task {id} has no result {index:?}"));
    let n: usize = index.parse().map_err(|_| missing())?;
    let read_app = app.clone();
    let read_id = id.clone();
    let (meta, bytes) = tokio::task::spawn_blocking(move || read_app.tasks.result(&read_id, n))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(missing)?;
    let content_type = HeaderValue::from_str(&meta.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400, immutable"),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        match parse_request(body.as_bytes(), 512).unwrap_err() {
            ApiError::Invalid { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepts_seed_002_style_bodies() {
        let (spec, options) = parse_request(
            br#"{"key":"k","size":"large","n":"3","seed":7,"transparent":"true","format":"webp","webhook":null,"track_id":12}"#,
            512,
        )
        .unwrap();
        assert_eq!(spec.size, "large");
        assert_eq!(spec.seeds, ["7", "8", "9"]);
        assert!(spec.transparent);
        assert_eq!(options.track_id, Some(serde_json::json!(12)));
        assert_eq!(parse_request(b"{}", 512).unwrap().0.seeds.len(), 1);
    }

    #[test]
    fn names_the_bad_field() {
        assert_eq!(field_of("[1]"), "body");
        assert_eq!(field_of("{"), "body");
        assert_eq!(field_of(r#"{"n":0}"#), "n");
        assert_eq!(field_of(r#"{"n":65}"#), "n");
        assert_eq!(field_of(r#"{"n":-1}"#), "n");
        assert_eq!(field_of(r#"{"size":"huge"}"#), "size");
        assert_eq!(field_of(r#"{"format":"gif"}"#), "format");
        assert_eq!(
            field_of(r#"{"transparent":true,"format":"jpeg"}"#),
            "format"
        );
        assert_eq!(field_of(r##"{"bg_color":"#zz0000"}"##), "bg_color");
        assert_eq!(field_of(r#"{"output_size":4096}"#), "output_size");
        assert_eq!(field_of(r#"{"webhook":"ftp://x"}"#), "webhook");
        assert_eq!(field_of(r#"{"track_id":{"a":1}}"#), "track_id");
        assert_eq!(field_of(r#"{"seed":[1]}"#), "seed");
    }
}
