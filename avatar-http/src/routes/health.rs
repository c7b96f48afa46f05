//! `GET /health`.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The health answer: exactly `{"message": "okay"}`, as the seed service.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `okay`.
    #[schema(example = "okay")]
    pub message: &'static str,
}

/// Checks that the server is running.
#[utoipa::path(
    get,
    path = "/health",
    tag = "service",
    responses((status = 200, description = "The server is running", body = Health, example = json!({"message": "okay"})))
)]
pub async fn health() -> Json<Health> {
    Json(Health { message: "okay" })
}
