//! Optional API-token authentication: `Authorization: Bearer <token>` (seed 001 style) or a
//! `key` field in a JSON body (seed 002 style), compared in constant time.
//!
//! Tokens are compared through their SHA-256 digests with [`subtle`], so neither the content
//! nor the length of a configured token leaks through timing. Every configured token is
//! checked, whatever matches first.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The configured tokens (as digests).
#[derive(Clone)]
pub struct Auth {
    digests: Vec<[u8; 32]>,
    body_limit: usize,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

impl Auth {
    /// Authentication with `tokens`; an empty list turns it off. `body_limit` bounds the JSON
    /// bodies read to find a `key`.
    pub fn new(tokens: &[String], body_limit: usize) -> Self {
        Auth {
            digests: tokens.iter().map(|t| digest(t)).collect(),
            body_limit,
        }
    }

    /// Whether requests must carry a token.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `token` is one of the configured tokens (constant time).
    pub fn check(&self, token: &str) -> bool {
        let candidate = digest(token);
        let mut matched = subtle::Choice::from(0u8);
        for digest in &self.digests {
            matched |= digest.ct_eq(&candidate);
        }
        matched.into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

#[derive(serde::Deserialize)]
struct KeyField {
    key: Option<serde_json::Value>,
}

/// Middleware: lets the request through when authentication is off or a valid token is given.
pub async fn require(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    if !auth.enabled() {
        return next.run(request).await;
    }
    if let Some(token) = bearer(request.headers()) {
        return if auth.check(token) {
            next.run(request).await
        } else {
            ApiError::Unauthorized.into_response()
        };
    }
    if is_json(request.headers()) {
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, auth.body_limit).await {
            Ok(bytes) => bytes,
            Err(_) => {
                return ApiError::BadRequest(format!(
                    "request body over {} bytes",
                    auth.body_limit
                ))
                .into_response();
            }
        };
        let key = serde_json::from_slice::<KeyField>(&bytes)
            .ok()
            .and_then(|k| k.key);
        return match key.as_ref().and_then(|k| k.as_str()) {
            Some(key) if auth.check(key) => {
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            }
            _ => ApiError::Unauthorized.into_response(),
        };
    }
    ApiError::Unauthorized.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_every_token_and_rejects_near_misses() {
        let auth = Auth::new(&["s3cret".into(), "other".into()], 1024);
        assert!(auth.enabled());
        assert!(auth.check("s3cret") && auth.check("other"));
        for wrong in ["", "s3cre", "s3cret ", "S3CRET", "s3crets"] {
            assert!(!auth.check(wrong), "{wrong:?}");
        }
        assert!(!Auth::new(&[], 1).enabled());
    }

    #[test]
    fn parses_bearer_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
