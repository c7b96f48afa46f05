//! `GET /generate-image`: the seed service's endpoint.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;

use avatar_core::Seed;

use crate::error::{ApiError, ErrorBody, Location};
use crate::params::{GenerateQuery, ImageBytes};
use crate::state::AppState;

/// Maps a query that cannot be deserialised (a repeated parameter, bad encoding) to a 422.
pub fn query_error(rejection: QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let field = [
        "size",
        "transparent",
        "seed",
        "bg_color",
        "format",
        "output_size",
    ]
    .into_iter()
    .find(|f| text.contains(&format!("`{f}`")))
    .unwrap_or("query");
    ApiError::invalid(field, Location::Query, text)
}

/// Generates a cartoon avatar.
///
/// Returns a PNG by default (96x96 for `small`, 128x128 for `large`). Concurrent requests for
/// the same options are drawn together in one forward pass.
#[utoipa::path(
    get,
    path = "/generate-image",
    tag = "avatars",
    params(GenerateQuery),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The avatar",
            content((ImageBytes = "image/png"), (ImageBytes = "image/webp"), (ImageBytes = "image/jpeg")),
            headers(("X-Avatar-Seed" = String, description = "The seed used (random unless given); %-encoded outside visible ASCII"))),
        (status = 401, description = "Authentication is on and the token is missing or wrong", body = ErrorBody),
        (status = 422, description = "A parameter is invalid; `field` names it and `allowed` lists its values", body = ErrorBody),
        (status = 503, description = "The model's queue is full", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub async fn generate_image(
    State(app): State<AppState>,
    query: Result<Query<GenerateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let (size, seed, options) = query.parse(app.config.max_output_size)?;
    let seed = seed.unwrap_or_else(Seed::random);
    let avatar = super::draw(&app, size, seed, options).await?;
    Ok(super::image_response(avatar, "no-store"))
}
