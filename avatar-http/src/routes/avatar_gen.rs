//! Seed 002, ModelsLab's avatar generator: `POST /api/v6/image_editing/avatar_gen` draws
//! `samples` InstantID avatars of the face in `init_image` (`key` in the body authenticates when
//! the server requires tokens). The answer is `{status: "success", generationTime, id, output,
//! proxy_links, meta}` when the images are ready within `--avatar-gen-wait-secs`, else
//! `{status: "processing", id, eta, fetch_result, ...}`; `POST /api/v6/images/fetch/{id}` (also
//! under `/api/v6/image_editing/fetch/{id}`) answers the same shapes later.
//!
//! insightface's face models are non-commercial and are not bundled: a request carries the face's
//! `face_embedding` (insightface's 512-value `embedding`) and `face_keypoints` (its five `kps`,
//! in `init_image`'s pixels) along with the photo.

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use avatar_core::diffusion::avatar_gen::{AvatarGenOptions, ControlSelection, FaceReference};
use avatar_core::diffusion::safety_checker::Obfuscation;
use avatar_core::imaging::{ImageFormat, encode};
use avatar_core::{AvatarError, Seed};

use crate::routes::fields::{self, FieldError};
use crate::state::AppState;
use crate::tasks::avatar_gen::{AvatarGenJob, AvatarGenSpec, KIND};
use crate::tasks::{SubmitError, SubmitOptions, TaskRecord, TaskStatus};

/// An error answer in ModelsLab's shape: `{status: "error", message, field?}`.
#[derive(Debug)]
pub struct AvatarGenError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl AvatarGenError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AvatarGenError {
            status,
            message: message.into(),
            field: None,
        }
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        AvatarGenError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("invalid {field}: {}", message.into()),
            field: Some(field.to_string()),
        }
    }
}

impl From<FieldError> for AvatarGenError {
    fn from(error: FieldError) -> Self {
        AvatarGenError::field(&error.field, error.message)
    }
}

impl From<AvatarError> for AvatarGenError {
    fn from(error: AvatarError) -> Self {
        match error {
            AvatarError::InvalidOption { field, message } => AvatarGenError::field(field, message),
            other => AvatarGenError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for AvatarGenError {
    fn into_response(self) -> Response {
        let mut body = json!({ "status": "error", "message": self.message });
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        (self.status, Json(body)).into_response()
    }
}

/// `true`/`false`, also as `"yes"`/`"no"` (ModelsLab's own spelling in `meta`).
fn yes_no(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, FieldError> {
    match fields::present(body, field) {
        Some(Value::String(s)) if s.eq_ignore_ascii_case("yes") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("no") => Ok(Some(false)),
        _ => fields::boolean(body, field),
    }
}

fn ratio(body: &Map<String, Value>, field: &str, default: f32) -> Result<f32, FieldError> {
    Ok(fields::number(body, field)?.map_or(default, |v| v as f32))
}

/// `controlnet_selection`: `"pose"`, `"pose,canny"`, `["pose", "canny"]`, or `"none"`/`""`.
fn selection(body: &Map<String, Value>) -> Result<Option<Vec<ControlSelection>>, AvatarGenError> {
    let names: Vec<String> = match fields::present(body, "controlnet_selection") {
        None => return Ok(None),
        Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    AvatarGenError::field("controlnet_selection", "must hold strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(AvatarGenError::field(
                "controlnet_selection",
                "must be a string or an array of strings",
            ));
        }
    };
    let mut out = Vec::new();
    for name in names {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("none") {
            continue;
        }
        out.push(name.parse::<ControlSelection>()?);
    }
    Ok(Some(out))
}

/// The options of a request (everything but the images), validated by avatar-core.
pub fn parse_options(body: &Map<String, Value>) -> Result<AvatarGenOptions, AvatarGenError> {
    let d = AvatarGenOptions::default();
    let side = |field| -> Result<u32, AvatarGenError> {
        match fields::count(body, field)? {
            None => Ok(if field == "width" { d.width } else { d.height }),
            Some(n) => u32::try_from(n)
                .map_err(|_| AvatarGenError::field(field, format!("{n} is too large"))),
        }
    };
    // Random seeds stay below 2^32, as the seed's example (`4029484891`).
    let seed = match fields::present(body, "seed") {
        None => Seed::random().value() & 0xffff_ffff,
        Some(Value::String(s)) => Seed::from(s.as_str()).value(),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            AvatarGenError::field("seed", format!("{n} is not a non-negative integer"))
        })?,
        Some(_) => return Err(AvatarGenError::field("seed", "must be an integer or null")),
    };
    let options = AvatarGenOptions {
        prompt: fields::string(body, "prompt")?
            .ok_or_else(|| AvatarGenError::field("prompt", "is required"))?,
        negative_prompt: fields::string(body, "negative_prompt")?.unwrap_or_default(),
        width: side("width")?,
        height: side("height")?,
        num_inference_steps: fields::count(body, "num_inference_steps")?
            .map_or(d.num_inference_steps, |n| n as usize),
        guidance_scale: fields::number(body, "guidance_scale")?.unwrap_or(d.guidance_scale),
        s_scale: ratio(body, "s_scale", d.s_scale)?,
        samples: fields::count(body, "samples")?.map_or(d.samples, |n| n as usize),
        seed,
        identitynet_strength_ratio: ratio(
            body,
            "identitynet_strength_ratio",
            d.identitynet_strength_ratio,
        )?,
        adapter_strength_ratio: ratio(body, "adapter_strength_ratio", d.adapter_strength_ratio)?,
        pose_strength: ratio(body, "pose_strength", d.pose_strength)?,
        canny_strength: ratio(body, "canny_strength", d.canny_strength)?,
        controlnet_selection: selection(body)?.unwrap_or(d.controlnet_selection),
    };
    options.validate()?;
    Ok(options)
}

/// Where a request's face comes from.
enum FaceSource {
    /// The caller's `face_embedding` and `face_keypoints`.
    Given(Vec<f32>, Vec<(f32, f32)>),
    /// The largest face the configured analysis finds in `init_image`.
    Detect(
        std::sync::Arc<avatar_core::face_analysis::FaceAnalysis>,
        avatar_core::face_analysis::DetectionOptions,
        std::sync::Arc<avatar_core::diffusion::avatar_gen::InstantId>,
    ),
}

fn face_embedding(body: &Map<String, Value>) -> Result<Vec<f32>, AvatarGenError> {
    let missing = || {
        AvatarGenError::field(
            "face_embedding",
            "is required: insightface's 512-value `embedding` of the face in init_image (or \
             start the server with --face-detector and --face-recognizer to find it)",
        )
    };
    let items = fields::present(body, "face_embedding")
        .ok_or_else(missing)?
        .as_array()
        .ok_or_else(|| AvatarGenError::field("face_embedding", "must be an array of numbers"))?;
    items
        .iter()
        .map(|v| {
            v.as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| AvatarGenError::field("face_embedding", "must hold numbers"))
        })
        .collect()
}

fn face_keypoints(body: &Map<String, Value>) -> Result<Vec<(f32, f32)>, AvatarGenError> {
    let bad = || {
        AvatarGenError::field(
            "face_keypoints",
            "must be five [x, y] points (eyes, nose, mouth corners) in init_image's pixels",
        )
    };
    let items = fields::present(body, "face_keypoints")
        .ok_or_else(|| {
            AvatarGenError::field(
                "face_keypoints",
                "is required: insightface's five `kps` of the face in init_image",
            )
        })?
        .as_array()
        .ok_or_else(bad)?;
    items
        .iter()
        .map(|point| match point.as_array().map(Vec::as_slice) {
            Some([x, y]) => Ok((
                x.as_f64().ok_or_else(bad)? as f32,
                y.as_f64().ok_or_else(bad)? as f32,
            )),
            _ => Err(bad()),
        })
        .collect()
}

/// What an answer needs of a task's spec (read without the images).
#[derive(serde::Deserialize)]
struct SpecSummary {
    face_image: String,
    options: AvatarGenOptions,
    safety_checker: bool,
    safety_checker_type: Obfuscation,
}

/// An `f32` option as its shortest decimal (`0.3`, not `0.30000001192092896`).
fn short(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// The seed's `meta`.
fn meta(
    options: &AvatarGenOptions,
    safety: (bool, Obfuscation),
    base64: bool,
    face_image: &str,
    id: &str,
) -> Value {
    json!({
        "base64": if base64 { "yes" } else { "no" },
        "face_image": face_image,
        "file_prefix": id,
        "guidance_scale": options.guidance_scale,
        "height": options.height,
        "negative_prompt": options.negative_prompt,
        "num_inference_steps": options.num_inference_steps,
        "outdir": "out",
        "prompt": options.prompt,
        "safety_checker": if safety.0 { "yes" } else { "no" },
        "safety_checker_type": safety.1,
        "samples": options.samples,
        "seed": options.seed,
        "temp": "no",
        "width": options.width,
        "s_scale": short(options.s_scale),
        "identitynet_strength_ratio": short(options.identitynet_strength_ratio),
        "adapter_strength_ratio": short(options.adapter_strength_ratio),
        "pose_strength": short(options.pose_strength),
        "canny_strength": short(options.canny_strength),
        "controlnet_selection": options.controlnet_selection,
    })
}

/// The seed's answer for a task (`base64`: outputs inline).
fn respond(app: &AppState, headers: &HeaderMap, record: &TaskRecord, base64: bool) -> Value {
    let base = app.base_url(headers);
    let summary = <SpecSummary as serde::Deserialize>::deserialize(&record.spec).ok();
    let mut meta = summary
        .as_ref()
        .map(|s| {
            meta(
                &s.options,
                (s.safety_checker, s.safety_checker_type),
                base64,
                &s.face_image,
                &record.id,
            )
        })
        .unwrap_or(Value::Null);
    let fetch = format!("{base}/api/v6/images/fetch/{}", record.id);
    match record.status {
        TaskStatus::Success => {
            let urls: Vec<String> = record
                .results
                .iter()
                .map(|r| format!("{base}/tasks/{}/result/{}", record.id, r.index))
                .collect();
            let output: Vec<String> = if base64 {
                record
                    .results
                    .iter()
                    .filter_map(|r| app.tasks.result(&record.id, r.index))
                    .map(|(_, bytes)| base64::engine::general_purpose::STANDARD.encode(bytes))
                    .collect()
            } else {
                urls.clone()
            };
            if let (Value::Object(map), Some(first)) = (&mut meta, record.results.first()) {
                map.insert(
                    "controlnets_used".into(),
                    first.meta.get("controlnets").cloned().unwrap_or(json!([])),
                );
                let flagged: Vec<bool> = record
                    .results
                    .iter()
                    .map(|r| r.meta["nsfw_content_detected"].as_bool().unwrap_or(false))
                    .collect();
                map.insert("nsfw_content_detected".into(), json!(flagged));
            }
            let time = match (record.started_at_ms, record.finished_at_ms) {
                (Some(start), Some(end)) => end.saturating_sub(start) as f64 / 1000.0,
                _ => 0.0,
            };
            json!({
                "status": "success",
                "generationTime": time,
                "id": record.id,
                "output": output,
                "proxy_links": urls,
                "meta": meta,
                "track_id": record.track_id,
            })
        }
        TaskStatus::Failed | TaskStatus::Cancelled => json!({
            "status": if record.status == TaskStatus::Failed { "failed" } else { "cancelled" },
            "id": record.id,
            "message": record.error.clone().unwrap_or_default(),
            "output": [],
            "meta": meta,
            "track_id": record.track_id,
        }),
        _ => {
            // A rough estimate: the remaining steps at the pace of the steps done so far.
            let eta = match (record.started_at_ms, record.step) {
                (Some(start), step) if step > 0 => {
                    let spent = crate::tasks::record::now_ms().saturating_sub(start) as f64;
                    spent / f64::from(step) * f64::from(record.total.saturating_sub(step)) / 1000.0
                }
                _ => f64::from(record.total) * 2.0,
            };
            json!({
                "status": "processing",
                "tip": "the images are being drawn",
                "eta": (eta * 10.0).round() / 10.0,
                "message": "fetch the result from fetch_result after eta seconds",
                "fetch_result": fetch,
                "id": record.id,
                "output": [],
                "future_links": [],
                "meta": meta,
                "track_id": record.track_id,
            })
        }
    }
}

fn describe_image(image: &str) -> String {
    if image.starts_with("data:") || !image.contains("://") {
        format!("<inline image, {} characters>", image.len())
    } else {
        image.to_string()
    }
}

fn join_error(error: tokio::task::JoinError) -> AvatarGenError {
    AvatarGenError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

fn png_base64(image: &image::RgbaImage) -> Result<String, AvatarError> {
    Ok(base64::engine::general_purpose::STANDARD.encode(encode(image, ImageFormat::Png)?))
}

/// Draws InstantID avatars of a face.
#[utoipa::path(post, path = "/api/v6/image_editing/avatar_gen", tag = "avatar-gen",
    request_body(content = Object, description = "The seed's fields: `key`, `prompt`, `negative_prompt`, `init_image` (URL, data URI, or bare base64 with `base64: true`), `width`/`height` (multiples of 8, at most 512x768 pixels), `samples` 1-2, `num_inference_steps` 21/31/41, `guidance_scale` 1-20, `s_scale` 0-2 (scales the IdentityNet's keypoint control), `safety_checker`, `safety_checker_type` (black, blur, sensitive_content_text, pixelate), `pose_image` (a ready OpenPose skeleton), `identitynet_strength_ratio`, `adapter_strength_ratio`, `pose_strength`, `canny_strength` (0-1), `controlnet_selection` (pose, canny), `base64`, `seed`, `webhook`, `track_id`; additions: `face_embedding` (insightface's 512 values) and `face_keypoints` (five [x, y] in init_image's pixels), required unless the server runs face analysis (`--face-detector`, `--face-recognizer`)"),
    responses(
        (status = 200, description = "`status: success` with the outputs, or `processing` with `fetch_result`", body = Object),
        (status = 422, description = "A field is invalid (`field`)", body = Object),
        (status = 429, description = "The queue is full", body = Object),
        (status = 503, description = "InstantID is not configured", body = Object),
    ))]
pub async fn avatar_gen(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AvatarGenError> {
    let started = Instant::now();
    let (Some(lane), Some(model)) = (app.face_lane.clone(), app.diffusion.instant_id().cloned())
    else {
        return Err(AvatarGenError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "InstantID is not configured: start the server with --instantid-model <SDXL folder> \
             --instantid-adapter <ip-adapter.bin> --instantid-identitynet <ControlNet folder> \
             (optionally --instantid-pose / --instantid-canny)",
        ));
    };
    let body = fields::object(&body)?;
    let options = parse_options(&body)?;
    let base64 = fields::boolean(&body, "base64")?.unwrap_or(false);
    let safety_checker = yes_no(&body, "safety_checker")?.unwrap_or(false);
    let safety_checker_type = match fields::string(&body, "safety_checker_type")? {
        Some(name) => name.parse::<Obfuscation>().map_err(|e| match e {
            AvatarError::InvalidOption { message, .. } => {
                AvatarGenError::field("safety_checker_type", message)
            }
            other => other.into(),
        })?,
        None => app.config.safety_checker_type,
    };
    if safety_checker && app.diffusion.safety().is_none() {
        return Err(AvatarGenError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "safety_checker: no safety checker is configured (--safety-checker <folder>)",
        ));
    }
    let init_image = fields::string(&body, "init_image")?
        .ok_or_else(|| AvatarGenError::field("init_image", "is required"))?;
    // The caller's embedding and keypoints, or (with --face-detector/--face-recognizer) the
    // largest face found in init_image once it is loaded.
    let face_source = match app.diffusion.face_analysis() {
        Some((faces, options)) if fields::present(&body, "face_embedding").is_none() => {
            FaceSource::Detect(faces.clone(), *options, model.clone())
        }
        _ => {
            let embedding = face_embedding(&body)?;
            let keypoints = face_keypoints(&body)?;
            model.check_face(&embedding, &keypoints)?;
            FaceSource::Given(embedding, keypoints)
        }
    };
    let submit = SubmitOptions {
        webhook: fields::string(&body, "webhook")?,
        track_id: fields::present(&body, "track_id").cloned(),
    };
    if let Some(url) = &submit.webhook {
        crate::tasks::webhook::validate_url(url)
            .map_err(|e| AvatarGenError::field("webhook", e))?;
    }
    let reference = app
        .fetcher
        .load(&init_image, base64)
        .await
        .map_err(|e| AvatarGenError::field("init_image", e.0))?;
    let pose = match fields::string(&body, "pose_image")? {
        Some(pose) => Some(
            app.fetcher
                .load(&pose, base64)
                .await
                .map_err(|e| AvatarGenError::field("pose_image", e.0))?,
        ),
        None => None,
    };
    let face_image = describe_image(&init_image);
    let spec = tokio::task::spawn_blocking(move || -> Result<AvatarGenSpec, AvatarError> {
        let (embedding, keypoints) = match face_source {
            FaceSource::Given(embedding, keypoints) => (embedding, keypoints),
            FaceSource::Detect(faces, options, model) => {
                let face =
                    FaceReference::from_image(reference.clone(), &faces, &options, "init_image")?;
                model.check_face(&face.embedding, &face.keypoints)?;
                (face.embedding, face.keypoints)
            }
        };
        Ok(AvatarGenSpec {
            face_image,
            reference_png: png_base64(&reference)?,
            pose_png: pose.as_ref().map(png_base64).transpose()?,
            face_embedding: embedding,
            face_keypoints: keypoints,
            options,
            safety_checker,
            safety_checker_type,
        })
    })
    .await
    .map_err(join_error)??;
    let submit_app = app.clone();
    let record = tokio::task::spawn_blocking(move || {
        submit_app
            .tasks
            .submit(&lane, Box::new(AvatarGenJob::new(spec)), submit)
    })
    .await
    .map_err(join_error)?
    .map_err(|error| match error {
        SubmitError::Busy { .. } => AvatarGenError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "the queue is full; retry later",
        ),
        SubmitError::Closed => AvatarGenError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
        SubmitError::Store(message) => {
            AvatarGenError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    })?;
    let deadline = started + Duration::from_secs(app.config.avatar_gen_wait_secs);
    let current = loop {
        match app.tasks.status(&record.id) {
            Some(status) if status.is_final() => match app.tasks.get(&record.id) {
                Some(current) => break current,
                None => continue,
            },
            Some(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Some(_) => break app.tasks.get(&record.id).unwrap_or(record),
            None => {
                return Err(AvatarGenError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the task disappeared",
                ));
            }
        }
    };
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = respond(&app, &headers, &current, base64);
        if answer["status"] == "success" {
            answer["generationTime"] = json!(started.elapsed().as_secs_f64());
        }
        answer
    })
    .await
    .map_err(join_error)?;
    Ok(Json(answer))
}

/// The state (and, once done, the outputs) of an `avatar_gen` request.
#[utoipa::path(post, path = "/api/v6/images/fetch/{id}", tag = "avatar-gen",
    params(("id" = String, Path, description = "The request's id")),
    request_body(content = Object, description = "`{key}`; `base64: true` returns the outputs inline"),
    responses(
        (status = 200, description = "`success`, `processing`, `failed` or `cancelled`", body = Object),
        (status = 404, description = "No such request", body = Object),
    ))]
pub async fn fetch(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AvatarGenError> {
    let base64 = if body.is_empty() {
        false
    } else {
        fields::boolean(&fields::object(&body)?, "base64")?.unwrap_or(false)
    };
    match app.tasks.get(&id) {
        Some(record) if record.kind == KIND => {
            let answer =
                tokio::task::spawn_blocking(move || respond(&app, &headers, &record, base64))
                    .await
                    .map_err(join_error)?;
            Ok(Json(answer))
        }
        _ => Err(AvatarGenError::new(
            StatusCode::NOT_FOUND,
            format!("no avatar_gen request {id:?}"),
        )),
    }
}
