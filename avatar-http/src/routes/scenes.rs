//! Seed 003, the Image Generation API: `POST /generate-image` `{prompt}` -> `{image_url}`, and
//! `GET /images/{n}.png` serving the numbered images. Errors are FastAPI's `{detail}` bodies, as
//! the seed service answered them: 422 with `[{loc, msg, type}]` for a bad field, else a string.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use avatar_core::diffusion::pipeline::TextToImageOptions;
use avatar_core::{AvatarError, Seed};

use crate::gallery::{SceneError, SceneRequest, TextToImageService};
use crate::routes::fields::{self, FieldError};
use crate::state::AppState;

/// A generated image.
#[derive(Debug, Serialize, ToSchema)]
pub struct SceneImage {
    /// Where the PNG is served.
    pub image_url: String,
    /// Its counter: pass it as `reference_image` to keep the character.
    pub image_id: u64,
    /// Whether the safety checker flagged (and replaced) the image (`false` without one).
    pub nsfw_content_detected: bool,
    /// The seed it was drawn with (send it back to redraw the same image; a text seed is
    /// reported as the number it hashes to).
    pub seed: u64,
}

/// FastAPI's error body.
#[derive(Debug)]
pub struct Detail {
    status: StatusCode,
    body: Value,
}

impl Detail {
    fn message(status: StatusCode, message: impl Into<String>) -> Self {
        Detail {
            status,
            body: json!({ "detail": message.into() }),
        }
    }

    /// 422 naming the body field, as FastAPI's request validation does.
    fn field(field: &str, message: impl Into<String>) -> Self {
        Detail {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({ "detail": [{
                "loc": ["body", field],
                "msg": message.into(),
                "type": "value_error",
            }] }),
        }
    }
}

impl IntoResponse for Detail {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<FieldError> for Detail {
    fn from(error: FieldError) -> Self {
        Detail::field(&error.field, error.message)
    }
}

impl From<AvatarError> for Detail {
    fn from(error: AvatarError) -> Self {
        match error {
            AvatarError::InvalidOption { field, message } => Detail::field(field, message),
            AvatarError::Cancelled => {
                Detail::message(StatusCode::SERVICE_UNAVAILABLE, "the request was cancelled")
            }
            other => Detail::message(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

fn service(app: &AppState) -> Result<&TextToImageService, Detail> {
    app.scenes.as_deref().ok_or_else(|| {
        Detail::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "text-to-image is not configured: start the server with --sd-model <diffusers folder>",
        )
    })
}

/// Reads a seed 003 body against the service's defaults and gallery.
pub fn parse_scene(
    service: &TextToImageService,
    bytes: &[u8],
) -> Result<(SceneRequest, u64), Detail> {
    let body = fields::object(bytes)?;
    let prompt = fields::string(&body, "prompt")?
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| Detail::field("prompt", "field required"))?;
    let defaults = service.defaults();
    // Random seeds stay below 2^53 so that they survive a round trip through JSON doubles.
    let seed = match body.get("seed") {
        None | Some(Value::Null) => Seed::random().value() & ((1 << 53) - 1),
        Some(Value::String(s)) => Seed::from(s.as_str()).value(),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(exact) => exact,
            None => Seed::from_f64(n.as_f64().unwrap_or(f64::NAN))?.value(),
        },
        Some(_) => return Err(Detail::field("seed", "must be a string or an integer")),
    };
    let size = |field| -> Result<Option<u32>, Detail> {
        fields::count(&body, field)?
            .map(|n| {
                u32::try_from(n).map_err(|_| Detail::field(field, format!("{n} is too large")))
            })
            .transpose()
    };
    let (width, height) = (
        size("width")?.or(defaults.width),
        size("height")?.or(defaults.height),
    );
    let reference = match fields::count(&body, "reference_image")? {
        None => None,
        Some(n) => {
            let png = match service.gallery().read(n) {
                None => {
                    let known = service.gallery().len();
                    return Err(Detail::message(
                        StatusCode::NOT_FOUND,
                        if known == 0 {
                            format!(
                                "reference_image {n} does not exist: no image was generated yet"
                            )
                        } else {
                            format!(
                                "reference_image {n} does not exist: images are numbered 0 to {}",
                                known - 1
                            )
                        },
                    ));
                }
                Some(read) => read.map_err(|e| {
                    Detail::message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })?,
            };
            let image = image::load_from_memory(&png)
                .map_err(|e| Detail::message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .to_rgba8();
            let strength =
                fields::number(&body, "reference_strength")?.unwrap_or(defaults.reference_strength);
            if !(strength > 0.0 && strength <= 1.0) {
                return Err(Detail::field(
                    "reference_strength",
                    format!("{strength} is outside (0, 1]"),
                ));
            }
            // The requested (or default) size wins: cover it and crop, keeping proportions.
            let (w, h) = image.dimensions();
            let (w, h) = (width.unwrap_or(w), height.unwrap_or(h));
            let image = if image.dimensions() == (w, h) {
                image
            } else {
                image::DynamicImage::ImageRgba8(image)
                    .resize_to_fill(w.max(8), h.max(8), image::imageops::FilterType::Lanczos3)
                    .to_rgba8()
            };
            Some((image, strength))
        }
    };
    let options = TextToImageOptions {
        prompt,
        negative_prompt: fields::string(&body, "negative_prompt")?.unwrap_or_default(),
        num_inference_steps: fields::count(&body, "num_inference_steps")?
            .map_or(defaults.steps, |n| n as usize),
        guidance_scale: fields::number(&body, "guidance_scale")?.unwrap_or(defaults.guidance_scale),
        width,
        height,
        num_images: 1,
        seed: Some(Seed::Number(seed)),
        ..Default::default()
    };
    Ok((SceneRequest { options, reference }, seed))
}

/// Draws an image for `prompt` (optionally continuing the character of `reference_image`).
#[utoipa::path(post, path = "/generate-image", tag = "images",
    request_body(content = Object, description = "`{prompt}`; optional: `reference_image` (the counter of an earlier image, from 0), `reference_strength` (0-1, how much of it is redrawn), `negative_prompt`, `num_inference_steps`, `guidance_scale`, `width`, `height`, `seed`"),
    responses(
        (status = 200, description = "The image's URL", body = SceneImage),
        (status = 404, description = "`reference_image` does not exist"),
        (status = 422, description = "A field is invalid (`{detail: [{loc, msg, type}]}`)"),
        (status = 503, description = "No model configured, or too many requests waiting"),
    ))]
pub async fn generate_scene(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SceneImage>, Detail> {
    let service = service(&app)?;
    let parsing = app.scenes.clone();
    let (request, seed) = tokio::task::spawn_blocking(move || match &parsing {
        Some(service) => parse_scene(service, &body),
        None => unreachable!("checked above"),
    })
    .await
    .map_err(|e| Detail::message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let (image_id, nsfw_content_detected) = service.draw(request).await.map_err(|e| match e {
        SceneError::Core(core) => Detail::from(core),
        SceneError::Busy(_) => Detail::message(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        SceneError::Io(_) => Detail::message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    Ok(Json(SceneImage {
        image_url: format!("{}/images/{image_id}.png", app.base_url(&headers)),
        image_id,
        nsfw_content_detected,
        seed,
    }))
}

/// A generated image by counter (`0.png`, `1.png`, ...).
#[utoipa::path(get, path = "/images/{file}", tag = "images",
    params(("file" = String, Path, description = "`<counter>.png`")),
    responses((status = 200, description = "PNG", content_type = "image/png"), (status = 404, description = "No such image")))]
pub async fn scene_image(
    State(app): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, Detail> {
    let service = service(&app)?;
    let missing = || Detail::message(StatusCode::NOT_FOUND, format!("no image {file:?}"));
    let n: u64 = file
        .strip_suffix(".png")
        .and_then(|n| n.parse().ok())
        .ok_or_else(missing)?;
    let gallery = service.gallery().clone();
    let png = tokio::task::spawn_blocking(move || gallery.read(n))
        .await
        .map_err(|e| Detail::message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(missing)?
        .map_err(|e| Detail::message(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        png,
    )
        .into_response())
}
