//! The API's error type and its JSON body.
//!
//! Every error answers `{"error": CODE, "message": TEXT, "detail": ...}`. Validation errors
//! (422) also name the `field` and its `allowed` values, and their `detail` is the list FastAPI
//! returns (`[{"loc": ["query", "size"], "msg": ..., "type": "value_error"}]`), so clients of
//! the original Python service keep working.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use avatar_core::AvatarError;

/// Where an invalid value came from (FastAPI's `loc[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// The query string.
    Query,
    /// A path segment.
    Path,
    /// The JSON body.
    Body,
}

impl Location {
    fn as_str(self) -> &'static str {
        match self {
            Location::Query => "query",
            Location::Path => "path",
            Location::Body => "body",
        }
    }
}

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 422: a parameter is missing, malformed or out of range.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The parameter's name.
        field: String,
        /// Where it came from.
        location: Location,
        /// What is wrong.
        message: String,
        /// The accepted values, when they can be listed.
        allowed: Option<Vec<String>>,
    },
    /// 400: the request cannot be read at all (bad JSON, ...).
    #[error("{0}")]
    BadRequest(String),
    /// 401: authentication is on and the token is missing or wrong.
    #[error("missing or invalid API token")]
    Unauthorized,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the resource is in a state that forbids the operation.
    #[error("{0}")]
    Conflict(String),
    /// 429 or 503 with `Retry-After`: a queue is full.
    #[error("{message}")]
    Busy {
        /// 429 (task queue) or 503 (synchronous generation).
        status: StatusCode,
        /// Seconds after which a retry is likely to be accepted.
        retry_after_secs: u64,
        /// Which queue is full.
        message: String,
    },
    /// 503: the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code: `invalid_parameter`, `unauthorized`, `not_found`,
    /// `conflict`, `busy`, `unavailable`, `bad_request`, `internal`.
    #[schema(example = "invalid_parameter")]
    pub error: &'static str,
    /// A human-readable explanation.
    #[schema(example = "invalid size: \"huge\": expected small or large")]
    pub message: String,
    /// The offending parameter (422 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "size")]
    pub field: Option<String>,
    /// The values the parameter accepts (422 only, when they can be listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["small", "large"]))]
    pub allowed: Option<Vec<String>>,
    /// FastAPI-compatible detail: a list of `{loc, msg, type}` for 422, else the message.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// Seconds to wait before retrying (429/503 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl From<crate::routes::fields::FieldError> for ApiError {
    fn from(error: crate::routes::fields::FieldError) -> Self {
        ApiError::invalid(error.field, Location::Body, error.message)
    }
}

impl ApiError {
    /// A 422 for `field`, listing `allowed` values when known.
    pub fn invalid(
        field: impl Into<String>,
        location: Location,
        message: impl Into<String>,
    ) -> Self {
        let field = field.into();
        let allowed = allowed_values(&field);
        ApiError::Invalid {
            field,
            location,
            message: message.into(),
            allowed,
        }
    }

    /// Maps a core error: user errors become 422 naming their field, the rest 500.
    pub fn from_core(error: AvatarError, location: Location) -> Self {
        match error {
            AvatarError::InvalidOption { field, message } => {
                ApiError::invalid(field, location, message)
            }
            AvatarError::Cancelled => ApiError::Unavailable("the request was cancelled".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Busy { status, .. } => *status,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid { .. } => "invalid_parameter",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Busy { .. } => "busy",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        let message = self.to_string();
        match self {
            ApiError::Invalid {
                field,
                location,
                message: msg,
                allowed,
            } => ErrorBody {
                error: self.code(),
                detail: serde_json::json!([{
                    "loc": [location.as_str(), field],
                    "msg": msg,
                    "type": "value_error",
                }]),
                message,
                field: Some(field.clone()),
                allowed: allowed.clone(),
                retry_after: None,
            },
            ApiError::Busy {
                retry_after_secs, ..
            } => ErrorBody {
                error: self.code(),
                detail: serde_json::Value::String(message.clone()),
                message,
                field: None,
                allowed: None,
                retry_after: Some(*retry_after_secs),
            },
            _ => ErrorBody {
                error: self.code(),
                detail: serde_json::Value::String(message.clone()),
                message,
                field: None,
                allowed: None,
                retry_after: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(message) = &self {
            tracing::error!(%message, "internal error");
        }
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        match &self {
            ApiError::Busy {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(5u64));
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// The documented accepted values of each parameter, for 422 bodies.
pub fn allowed_values(field: &str) -> Option<Vec<String>> {
    use avatar_core::ModelSize;
    use avatar_core::imaging::ImageFormat;
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    Some(match field {
        "size" => ModelSize::ALL
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        "format" => ImageFormat::ALL
            .iter()
            .map(|f| f.as_str().to_string())
            .collect(),
        "transparent" => owned(&["true", "false"]),
        "bg_color" => owned(&["#RRGGBB", "#RRGGBBAA"]),
        "extension" => owned(&["png", "webp", "jpg", "jpeg"]),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_user_errors_become_422_naming_the_field() {
        let error = ApiError::from_core(
            "huge".parse::<avatar_core::ModelSize>().unwrap_err(),
            Location::Query,
        );
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = error.body();
        assert_eq!(body.field.as_deref(), Some("size"));
        assert_eq!(body.allowed.unwrap(), ["small", "large"]);
        assert_eq!(body.detail[0]["loc"], serde_json::json!(["query", "size"]));
    }

    #[test]
    fn busy_carries_retry_after() {
        let error = ApiError::Busy {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after_secs: 3,
            message: "full".into(),
        };
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
