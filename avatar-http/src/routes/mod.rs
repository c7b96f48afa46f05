//! HTTP handlers, one file per resource.

pub mod avatar;
pub mod avatar_gen;
pub mod docs;
pub mod face_avatar;
pub mod fields;
pub mod generate;
pub mod health;
pub mod metrics;
pub mod scenes;
pub mod tasks;
pub mod vqgan;
pub mod web;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::inference::SubmitError;
use crate::state::App;
use avatar_core::{EncodedAvatar, GenerateOptions, ModelSize, Seed};

/// Answers unknown routes with a JSON 404.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see /docs".into())
}

/// Draws one avatar through the synchronous pool (micro-batched with concurrent requests).
pub async fn draw(
    app: &App,
    size: ModelSize,
    seed: Seed,
    options: GenerateOptions,
) -> Result<EncodedAvatar, ApiError> {
    let receiver = app
        .pool
        .submit(size, seed, options)
        .map_err(|error| match error {
            SubmitError::Busy { retry_after_secs } => {
                app.metrics.record_rejected("sync");
                ApiError::Busy {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    retry_after_secs,
                    message: format!("the {} model's queue is full; retry later", size.as_str()),
                }
            }
            SubmitError::Closed => ApiError::Unavailable("the server is shutting down".into()),
        })?;
    match receiver.await {
        Ok(Ok(avatar)) => Ok(avatar),
        Ok(Err(error)) => Err(ApiError::from_core(error, crate::error::Location::Query)),
        Err(_) => Err(ApiError::Internal(
            "the model worker stopped before answering".into(),
        )),
    }
}

/// An image response with its content type and seed headers.
pub fn image_response(avatar: EncodedAvatar, cache_control: &'static str) -> Response {
    let seed = crate::params::header_safe(&avatar.seed.to_string());
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(avatar.format.mime()),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            ),
        ],
        avatar.bytes,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&seed) {
        headers.insert("x-avatar-seed", value);
    }
    let file = format!(
        "inline; filename=\"avatar-{}.{}\"",
        seed.replace(['"', '\\', ' '], "_"),
        avatar.format.extension()
    );
    if let Ok(value) = HeaderValue::from_str(&file) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
