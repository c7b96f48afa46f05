//! Seed 004, the AI Art Generator API: `POST /text2img` and `POST /textimg2img` start a
//! VQGAN+CLIP run in the background; `GET /text2img/{id}/progress` (the progress bar),
//! `GET /text2img/{id}/progress-image` (the latest intermediate image), `GET /text2img/{id}/image`
//! (the final image) and `DELETE /text2img/{id}` (cancel) follow it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use avatar_core::Seed;
use avatar_core::vqgan_clip::{PromptSpec, RunOptions};

use crate::error::{ApiError, ErrorBody, Location};
use crate::routes::fields;
use crate::routes::tasks::body_error;
use crate::state::AppState;
use crate::vqgan::{RunStatus, RunView, SubmitError, VqganService};

/// A started run and where to follow it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    /// The run's id.
    pub id: String,
    /// `queued` or `running`.
    pub status: RunStatus,
    /// Iterations asked for.
    pub total: usize,
    /// The progress bar: `{iteration, total, percent}`.
    pub progress_url: String,
    /// The latest intermediate PNG.
    pub progress_image_url: String,
    /// The final PNG (404 until the run succeeds).
    pub image_url: String,
}

fn service(app: &AppState) -> Result<&VqganService, ApiError> {
    app.vqgan.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "VQGAN+CLIP is not configured: start the server with --vqgan-config, --vqgan-weights \
             and --clip-weights (and --clip-config for a CLIP other than ViT-B/32)"
                .into(),
        )
    })
}

/// Reads the fields of both start endpoints; `init_image` is the decoded `image`.
pub fn parse_run(
    body: &serde_json::Map<String, Value>,
    init_image: Option<image::RgbaImage>,
) -> Result<RunOptions, ApiError> {
    let prompt =
        fields::string(body, "prompt")?.ok_or_else(|| body_error("prompt", "is required"))?;
    let prompts = PromptSpec::parse_list(&prompt).map_err(|e| match e {
        avatar_core::AvatarError::InvalidOption { message, .. } => body_error("prompt", message),
        other => ApiError::from_core(other, Location::Body),
    })?;
    if prompts.is_empty() {
        return Err(body_error("prompt", "is empty"));
    }
    let defaults = RunOptions::default();
    let size = fields::count(body, "size")?.map(|s| s as usize);
    let width = fields::count(body, "width")?.map(|s| s as usize);
    let height = fields::count(body, "height")?.map(|s| s as usize);
    let seed = match body.get("seed") {
        None | Some(Value::Null) => Seed::random(),
        Some(Value::String(s)) => Seed::from(s.as_str()),
        Some(Value::Number(n)) => Seed::from_f64(n.as_f64().unwrap_or(f64::NAN))
            .map_err(|e| ApiError::from_core(e, Location::Body))?,
        Some(_) => return Err(body_error("seed", "must be a string or an integer")),
    };
    Ok(RunOptions {
        prompts,
        init_image,
        init_weight: fields::number(body, "init_weight")?.unwrap_or(0.0) as f32,
        width: width.or(size).unwrap_or(defaults.width),
        height: height.or(size).unwrap_or(defaults.height),
        iterations: fields::count(body, "iterations")?.map_or(defaults.iterations, |n| n as usize),
        step_size: fields::number(body, "step_size")?.unwrap_or(defaults.step_size),
        cutn: fields::count(body, "cutn")?.map_or(defaults.cutn, |n| n as usize),
        cut_pow: fields::number(body, "cut_pow")?.unwrap_or(defaults.cut_pow),
        display_every: fields::count(body, "display_every")?
            .map_or(defaults.display_every, |n| n as usize),
        seed: Some(seed),
        ..defaults
    })
}

async fn start(
    app: AppState,
    headers: HeaderMap,
    body: Bytes,
    with_image: bool,
) -> Result<Response, ApiError> {
    let service = service(&app)?.clone();
    let body = fields::object(&body)?;
    let image = fields::string(&body, "image")?;
    let init_image = match (image, with_image) {
        (Some(_), false) => return Err(body_error("image", "belongs to /textimg2img")),
        (None, true) => return Err(body_error("image", "is required")),
        (None, false) => None,
        (Some(input), true) => Some(
            app.fetcher
                .load(&input, true)
                .await
                .map_err(|e| body_error("image", e.0))?,
        ),
    };
    let options = parse_run(&body, init_image)?;
    let total = options.iterations;
    let id = service.submit(options).map_err(|e| match e {
        SubmitError::Busy(_) => ApiError::Busy {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after_secs: 30,
            message: e.to_string(),
        },
        SubmitError::Invalid(e) => ApiError::from_core(e, Location::Body),
    })?;
    let base = format!("{}/text2img/{id}", app.base_url(&headers));
    let status = service.view(&id).map_or(RunStatus::Queued, |v| v.status);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("{base}/progress"))],
        Json(RunStarted {
            id,
            status,
            total,
            progress_url: format!("{base}/progress"),
            progress_image_url: format!("{base}/progress-image"),
            image_url: format!("{base}/image"),
        }),
    )
        .into_response())
}

/// Starts a text -> image run.
#[utoipa::path(post, path = "/text2img", tag = "vqgan-clip",
    request_body(content = Object, description = "`{prompt, size | width + height, iterations, seed, step_size, cutn, cut_pow, display_every}`; prompts are `text:weight:stop` separated by `|`"),
    responses(
        (status = 202, description = "Started", body = RunStarted),
        (status = 422, description = "A field is invalid", body = ErrorBody),
        (status = 429, description = "Too many runs are waiting", body = ErrorBody),
        (status = 503, description = "VQGAN+CLIP is not configured", body = ErrorBody),
    ))]
pub async fn text2img(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    start(app, headers, body, false).await
}

/// Starts a text + image -> image run from `image` (base64 or a data URI).
#[utoipa::path(post, path = "/textimg2img", tag = "vqgan-clip",
    request_body(content = Object, description = "The fields of /text2img plus `image` (an http(s) URL, a data URI or base64) and `init_weight`"),
    responses(
        (status = 202, description = "Started", body = RunStarted),
        (status = 422, description = "A field is invalid", body = ErrorBody),
        (status = 429, description = "Too many runs are waiting", body = ErrorBody),
        (status = 503, description = "VQGAN+CLIP is not configured", body = ErrorBody),
    ))]
pub async fn textimg2img(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    start(app, headers, body, true).await
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no run {id:?}"))
}

/// The progress bar of a run.
#[utoipa::path(get, path = "/text2img/{id}/progress", tag = "vqgan-clip",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, description = "The run", body = RunView), (status = 404, description = "No such run", body = ErrorBody)))]
pub async fn progress(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    service(&app)?
        .view(&id)
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

fn png(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

/// The latest intermediate image of a run (404 before the first one is drawn).
#[utoipa::path(get, path = "/text2img/{id}/progress-image", tag = "vqgan-clip",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, description = "PNG", content_type = "image/png"), (status = 404, description = "No such run, or no image yet", body = ErrorBody)))]
pub async fn progress_image(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let service = service(&app)?.clone();
    let lookup = id.clone();
    let image = tokio::task::spawn_blocking(move || service.progress_png(&lookup))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| not_found(&id))?;
    image
        .map(png)
        .ok_or_else(|| ApiError::NotFound(format!("run {id:?} has no intermediate image yet")))
}

/// The final image of a run (409 while it runs, or when it failed or was cancelled).
#[utoipa::path(get, path = "/text2img/{id}/image", tag = "vqgan-clip",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, description = "PNG", content_type = "image/png"), (status = 404, description = "No such run", body = ErrorBody), (status = 409, description = "Not finished", body = ErrorBody)))]
pub async fn image(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match service(&app)?.result_png(&id) {
        None => Err(not_found(&id)),
        Some((_, Some(bytes))) => Ok(png(bytes.as_ref().clone())),
        Some((status, None)) => Err(ApiError::Conflict(format!(
            "run {id:?} is {status:?}; its image exists once it has succeeded"
        ))),
    }
}

/// Cancels a run.
#[utoipa::path(delete, path = "/text2img/{id}", tag = "vqgan-clip",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, description = "The run after the request", body = RunView), (status = 404, description = "No such run", body = ErrorBody)))]
pub async fn cancel(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    let service = service(&app)?;
    service.cancel(&id).ok_or_else(|| not_found(&id))?;
    service.view(&id).map(Json).ok_or_else(|| not_found(&id))
}
