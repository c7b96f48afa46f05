//! Seed 001, the Face Avatar API: `POST /getImageToImage` draws `batch` avatars from a
//! reference photo with the model `app_id` names, waiting for them (`celery: false`) or
//! answering with a task id at once (`celery: true`); `GET /getImageToImage/{task_id}` is the
//! task status API. Every answer has the seed's shape `{time_required, error, error_data, input,
//! output, app_id, task_id, status}`; `GET /models` lists the configured models.

use avatar_core::segmentation::BackgroundRemoval;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use avatar_core::diffusion::face_avatar::FaceAvatarOptions;
use avatar_core::imaging::{ImageFormat, encode};
use avatar_core::{AvatarError, Seed};

use crate::routes::fields::{self, FieldError};
use crate::state::AppState;
use crate::tasks::face_avatar::{FaceAvatarJob, FaceAvatarSpec};
use crate::tasks::{SubmitError, SubmitOptions, TaskRecord, TaskStatus};

/// The seed's response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FaceAvatarResponse {
    /// Seconds spent, e.g. `"12.84"` (`""` while queued).
    pub time_required: String,
    /// What went wrong (`""` when nothing did).
    pub error: String,
    /// Details of the error: `{field}` for a bad field (`""` when none).
    #[schema(value_type = Object)]
    pub error_data: Value,
    /// The request as understood (the image replaced by a description).
    #[schema(value_type = Object)]
    pub input: Value,
    /// URLs of the PNGs (empty until the task succeeds).
    pub output: Vec<String>,
    /// The model.
    pub app_id: String,
    /// The task (`""` when none was created).
    pub task_id: String,
    /// `queued`, `processing`, `success`, `failed` or `cancelled`.
    pub status: String,
}

/// A refusal in the seed's shape.
#[derive(Debug)]
pub struct FaceAvatarError {
    status: StatusCode,
    body: Box<FaceAvatarResponse>,
}

impl FaceAvatarError {
    fn new(status: StatusCode, message: impl Into<String>, data: Value) -> Self {
        FaceAvatarError {
            status,
            body: Box::new(FaceAvatarResponse {
                time_required: String::new(),
                error: message.into(),
                error_data: data,
                input: Value::Null,
                output: Vec::new(),
                app_id: String::new(),
                task_id: String::new(),
                status: "failed".into(),
            }),
        }
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        FaceAvatarError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid {field}: {message}"),
            json!({ "field": field }),
        )
    }

    fn with(mut self, app_id: &str, input: &Value) -> Self {
        self.body.app_id = app_id.to_string();
        self.body.input = input.clone();
        self
    }
}

impl From<FieldError> for FaceAvatarError {
    fn from(error: FieldError) -> Self {
        FaceAvatarError::field(&error.field, error.message)
    }
}

impl From<AvatarError> for FaceAvatarError {
    fn from(error: AvatarError) -> Self {
        match error {
            AvatarError::InvalidOption { field, message } => FaceAvatarError::field(field, message),
            other => FaceAvatarError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                other.to_string(),
                Value::String(String::new()),
            ),
        }
    }
}

impl IntoResponse for FaceAvatarError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// A request's options (everything but the image), validated by avatar-core.
pub fn parse_options(body: &Map<String, Value>) -> Result<FaceAvatarOptions, FaceAvatarError> {
    let defaults = FaceAvatarOptions::default();
    let side = |field| -> Result<Option<u32>, FaceAvatarError> {
        fields::count(body, field)?
            .map(|n| {
                u32::try_from(n).map_err(|_| {
                    FaceAvatarError::field(field, format!("{n} is outside 256..=1536"))
                })
            })
            .transpose()
    };
    // Random seeds stay below 2^53 so that they survive a round trip through JSON doubles.
    let seed = match fields::present(body, "seed") {
        None => Seed::random().value() & ((1 << 53) - 1),
        Some(Value::String(s)) => Seed::from(s.as_str()).value(),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            FaceAvatarError::field("seed", format!("{n} is not a non-negative integer"))
        })?,
        Some(_) => {
            return Err(FaceAvatarError::field(
                "seed",
                "must be a string or an integer",
            ));
        }
    };
    let options = FaceAvatarOptions {
        prompt: fields::string(body, "prompt")?,
        negative_prompt: fields::string(body, "negative_prompt")?.unwrap_or_default(),
        gender: fields::string(body, "gender")?,
        batch: fields::count(body, "batch")?.map_or(defaults.batch, |n| n as usize),
        width: side("width")?.unwrap_or(defaults.width),
        height: side("height")?.unwrap_or(defaults.height),
        num_inference_steps: fields::count(body, "num_inference_steps")?
            .map_or(defaults.num_inference_steps, |n| n as usize),
        guidance_scale: fields::number(body, "guidance_scale")?.unwrap_or(defaults.guidance_scale),
        strength: fields::number(body, "strength")?.unwrap_or(defaults.strength),
        remove_background: fields::boolean(body, "remove_background")?.unwrap_or(false),
        bg_color: fields::string(body, "bg_color")?,
        seed,
        ip_adapter_scale: fields::number(body, "ip_adapter_scale")?
            .map_or(defaults.ip_adapter_scale, |v| v as f32),
    };
    options.validate()?;
    Ok(options)
}

/// The options as drawn (the prompt resolved) with the model.
fn options_echo(app_id: &str, options: &FaceAvatarOptions) -> Value {
    let mut echo = serde_json::to_value(options).unwrap_or_default();
    if let Value::Object(map) = &mut echo {
        map.insert("prompt".into(), Value::String(options.resolved_prompt()));
        map.insert("app_id".into(), Value::String(app_id.into()));
    }
    echo
}

/// The echo of a request: its options as drawn, the image described rather than copied.
fn input_echo(image: &str, app_id: &str, celery: bool, options: &FaceAvatarOptions) -> Value {
    let image = if image.starts_with("data:") || !image.contains("://") {
        format!("<inline image, {} characters>", image.len())
    } else {
        image.to_string()
    };
    let mut echo = options_echo(app_id, options);
    if let Value::Object(map) = &mut echo {
        map.insert("image".into(), Value::String(image));
        map.insert("celery".into(), Value::Bool(celery));
    }
    echo
}

/// What a status answer needs of a task's spec (read without copying the reference photo).
#[derive(serde::Deserialize)]
struct SpecSummary {
    app_id: String,
    options: FaceAvatarOptions,
}

/// Maps a failed blocking task to a 500 in the seed's shape.
fn join_error(error: tokio::task::JoinError) -> FaceAvatarError {
    FaceAvatarError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        error.to_string(),
        Value::Null,
    )
}

/// The seed's shape for a task.
fn respond(app: &AppState, headers: &HeaderMap, record: &TaskRecord) -> FaceAvatarResponse {
    let base = app.base_url(headers);
    let (app_id, input) = match <SpecSummary as serde::Deserialize>::deserialize(&record.spec) {
        Ok(spec) => {
            let input = options_echo(&spec.app_id, &spec.options);
            (spec.app_id, input)
        }
        Err(_) => (String::new(), Value::Null),
    };
    let time_required = match (record.started_at_ms, record.finished_at_ms) {
        (Some(start), Some(end)) => format!("{:.2}", end.saturating_sub(start) as f64 / 1000.0),
        (Some(start), None) => format!(
            "{:.2}",
            crate::tasks::record::now_ms().saturating_sub(start) as f64 / 1000.0
        ),
        _ => String::new(),
    };
    let output = if record.status == TaskStatus::Success {
        record
            .results
            .iter()
            .map(|r| format!("{base}/tasks/{}/result/{}", record.id, r.index))
            .collect()
    } else {
        Vec::new()
    };
    FaceAvatarResponse {
        time_required,
        error: record.error.clone().unwrap_or_default(),
        error_data: Value::String(String::new()),
        input,
        output,
        app_id,
        task_id: record.id.clone(),
        status: record.status.as_str().into(),
    }
}

/// Cancels the task when a waiting (`celery: false`) request is dropped.
struct CancelIfDropped {
    app: AppState,
    id: String,
    armed: bool,
}

impl Drop for CancelIfDropped {
    fn drop(&mut self) {
        if self.armed {
            // Cancelling persists the record: keep that disk write off the async workers.
            let (app, id) = (self.app.clone(), std::mem::take(&mut self.id));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || app.tasks.cancel(&id));
                }
                Err(_) => {
                    let _ = app.tasks.cancel(&id);
                }
            }
        }
    }
}

/// Draws face avatars from a reference photo.
#[utoipa::path(post, path = "/getImageToImage", tag = "face-avatar",
    request_body(content = Object, description = "The seed's fields: `app_id`, `image` (http(s) URL or data URI; fitted within 1536x1536), `prompt` (null: the default avatar prompt with `gender`), `batch` 1-8, `height`/`width` 256-1536, `celery`, `num_inference_steps` 1-50, `guidance_scale` 1-30, `negative_prompt`, `gender`, `remove_background`, `bg_color`; additions: `strength` (0-1, default 0.6), `ip_adapter_scale` (0-2, default 0.6; with `--sd-ip-adapter`), `seed`, `webhook`, `track_id`"),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Done (`celery: false`) or queued (`celery: true`)", body = FaceAvatarResponse),
        (status = 422, description = "A field is invalid (`error_data.field`)", body = FaceAvatarResponse),
        (status = 429, description = "The queue is full", body = FaceAvatarResponse),
        (status = 503, description = "No Stable Diffusion model is configured", body = FaceAvatarResponse),
    ))]
pub async fn get_image_to_image(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<FaceAvatarResponse>, FaceAvatarError> {
    let started = Instant::now();
    let Some(lane) = app.face_lane.clone() else {
        return Err(FaceAvatarError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no Stable Diffusion model is configured: start the server with --sd-model <folder> \
             (app_id \"default\") or --sd-app ID=<folder>",
            Value::String(String::new()),
        ));
    };
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| FaceAvatarError::field("body", format!("invalid JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(FaceAvatarError::field("body", "must be a JSON object"));
    };
    let app_id = fields::string(&body, "app_id")?
        .ok_or_else(|| FaceAvatarError::field("app_id", "is required"))?;
    if app.diffusion.get(&app_id).is_none() {
        return Err(FaceAvatarError::field(
            "app_id",
            format!(
                "{app_id:?} is not a configured model; configured: {}",
                app.diffusion.ids().join(", ")
            ),
        ));
    }
    let image = fields::string(&body, "image")?
        .ok_or_else(|| FaceAvatarError::field("image", "is required"))?;
    let celery = fields::boolean(&body, "celery")?.unwrap_or(false);
    let options = parse_options(&body).map_err(|e| e.with(&app_id, &Value::Null))?;
    let input = input_echo(&image, &app_id, celery, &options);
    let submit = SubmitOptions {
        webhook: fields::string(&body, "webhook")?,
        track_id: fields::present(&body, "track_id").cloned(),
    };
    if let Some(url) = &submit.webhook {
        crate::tasks::webhook::validate_url(url)
            .map_err(|e| FaceAvatarError::field("webhook", e))?;
    }
    let reference = app
        .fetcher
        .load(&image, true)
        .await
        .map_err(|e| FaceAvatarError::field("image", e.0).with(&app_id, &input))?;
    let spec = tokio::task::spawn_blocking(move || -> Result<FaceAvatarSpec, AvatarError> {
        let fitted = avatar_core::diffusion::face_avatar::fit_reference(reference);
        Ok(FaceAvatarSpec {
            app_id: app_id.clone(),
            reference_png: base64::engine::general_purpose::STANDARD
                .encode(encode(&fitted, ImageFormat::Png)?),
            options,
        })
    })
    .await
    .map_err(join_error)??;
    let app_id = spec.app_id.clone();
    let submit_app = app.clone();
    let record = tokio::task::spawn_blocking(move || {
        submit_app
            .tasks
            .submit(&lane, Box::new(FaceAvatarJob::new(spec)), submit)
    })
    .await
    .map_err(join_error)?
    .map_err(|error| {
        let (status, message) = match error {
            SubmitError::Busy { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "the queue is full; retry later".to_string(),
            ),
            SubmitError::Closed => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down".to_string(),
            ),
            SubmitError::Store(message) => (StatusCode::INTERNAL_SERVER_ERROR, message),
        };
        FaceAvatarError::new(status, message, Value::String(String::new())).with(&app_id, &input)
    })?;
    let mut answer = if celery {
        respond(&app, &headers, &record)
    } else {
        let mut guard = CancelIfDropped {
            app: app.clone(),
            id: record.id.clone(),
            armed: true,
        };
        let finished = loop {
            match app.tasks.status(&record.id) {
                Some(status) if status.is_final() => match app.tasks.get(&record.id) {
                    Some(current) => break current,
                    None => continue,
                },
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                None => {
                    return Err(FaceAvatarError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the task disappeared",
                        Value::Null,
                    ));
                }
            }
        };
        guard.armed = false;
        let mut answer = respond(&app, &headers, &finished);
        answer.time_required = format!("{:.2}", started.elapsed().as_secs_f64());
        answer
    };
    answer.input = input;
    Ok(Json(answer))
}

/// The status of a face-avatar task, in the seed's shape.
#[utoipa::path(get, path = "/getImageToImage/{task_id}", tag = "face-avatar",
    params(("task_id" = String, Path, description = "The task's id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The task", body = FaceAvatarResponse),
        (status = 404, description = "No such task", body = FaceAvatarResponse),
    ))]
pub async fn task_status(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> Result<Json<FaceAvatarResponse>, FaceAvatarError> {
    match app.tasks.get(&task_id) {
        Some(record) if record.kind == crate::tasks::face_avatar::KIND => {
            Ok(Json(respond(&app, &headers, &record)))
        }
        _ => Err(FaceAvatarError::new(
            StatusCode::NOT_FOUND,
            format!("no face-avatar task {task_id:?}"),
            Value::String(String::new()),
        )),
    }
}

/// The configured models.
#[utoipa::path(get, path = "/models", tag = "service",
    responses((status = 200, description = "`{dcgan, diffusion: [{app_id, xl, precision}], text_to_image, instant_id, face_analysis, safety_checker, background_removal, vqgan_clip}`", body = Object)))]
pub async fn models(State(app): State<AppState>) -> Json<Value> {
    let diffusion: Vec<Value> = app
        .diffusion
        .iter()
        .map(|(id, pipeline)| {
            json!({
                "app_id": id,
                "xl": pipeline.is_xl(),
                "precision": pipeline.precision().to_string(),
            })
        })
        .collect();
    Json(json!({
        "dcgan": avatar_core::ModelSize::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "diffusion": diffusion,
        "text_to_image": app.scenes.is_some(),
        "instant_id": app.diffusion.instant_id().is_some(),
        "face_analysis": app.diffusion.face_analysis().is_some(),
        "safety_checker": app.diffusion.safety().is_some(),
        "background_removal": match app.diffusion.background() {
            BackgroundRemoval::Keying(_) => "keying",
            BackgroundRemoval::Segmentation(_) => "u2net",
        },
        "vqgan_clip": app.vqgan.is_some(),
    }))
}
