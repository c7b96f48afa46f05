//! `GET /avatar/{seed}.{ext}`: a permanent, cacheable avatar per seed.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use avatar_core::imaging::ImageFormat;
use avatar_core::{GenerateOptions, ModelSize, Seed};

use crate::error::{ApiError, ErrorBody, Location};
use crate::params::{self, AvatarQuery, ImageBytes};
use crate::state::AppState;

/// `Cache-Control` of permanent avatars.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Splits `alice.png` into the seed and the format (the last dot separates them).
pub fn split_file(file: &str) -> Result<(String, ImageFormat), ApiError> {
    let Some((seed, extension)) = file.rsplit_once('.') else {
        return Err(ApiError::invalid(
            "extension",
            Location::Path,
            format!("{file:?} has no extension; use /avatar/{{seed}}.png or .webp"),
        ));
    };
    let format = extension.parse::<ImageFormat>().map_err(|_| {
        ApiError::invalid(
            "extension",
            Location::Path,
            format!("{extension:?} is not png, webp, jpg or jpeg"),
        )
    })?;
    if seed.is_empty() {
        return Err(ApiError::invalid(
            "seed",
            Location::Path,
            "the seed is empty",
        ));
    }
    Ok((seed.to_string(), format))
}

/// The strong ETag of an avatar: the model's fingerprint and every option that shapes the
/// bytes. Generation is deterministic, so it is known before drawing.
pub fn etag(fingerprint: &str, size: ModelSize, seed: &Seed, options: &GenerateOptions) -> String {
    let canonical = format!(
        "{fingerprint}|{}|{}|{}|{}|{:?}|{}",
        size.as_str(),
        options.transparent,
        options.bg_color.map(|c| c.to_string()).unwrap_or_default(),
        options.output_size.unwrap_or(0),
        options.format,
        match seed {
            Seed::Number(n) => format!("n:{n}"),
            Seed::Text(t) => format!("t:{t}"),
        }
    );
    let digest = Sha256::digest(canonical.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether `If-None-Match` matches `etag` (weak comparison, as RFC 9110 requires for it).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
        })
    })
}

/// A deterministic avatar: the same seed (any text or number) always gives the same bytes.
///
/// Answers with `Cache-Control: public, max-age=31536000, immutable` and a strong `ETag`;
/// `If-None-Match` with that tag gives `304 Not Modified` without drawing anything.
#[utoipa::path(
    get,
    path = "/avatar/{seed}.{ext}",
    tag = "avatars",
    params(
        ("seed" = String, Path, description = "Any text or number (the part before the last dot)", example = "alice"),
        ("ext" = String, Path, description = "`png` or `webp` (`jpg`/`jpeg` also work)", example = "png"),
        AvatarQuery,
    ),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The avatar", content((ImageBytes = "image/png"), (ImageBytes = "image/webp")),
            headers(("ETag" = String), ("Cache-Control" = String), ("X-Avatar-Seed" = String))),
        (status = 304, description = "`If-None-Match` matched: the cached copy is current"),
        (status = 401, description = "Authentication is on and the token is missing or wrong", body = ErrorBody),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
        (status = 503, description = "The model's queue is full", body = ErrorBody),
    )
)]
pub async fn avatar(
    State(app): State<AppState>,
    Path(file): Path<String>,
    query: Result<Query<AvatarQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(super::generate::query_error)?;
    let (seed_text, format) = split_file(&file)?;
    let seed = params::parse_seed(Some(&seed_text), Location::Path)?
        .ok_or_else(|| ApiError::invalid("seed", Location::Path, "the seed is empty"))?;
    let size = params::parse_size(query.size.as_deref(), Location::Query)?;
    let mut options = params::options(
        query.transparent.as_deref(),
        query.bg_color.as_deref(),
        None,
        query.output_size.as_deref(),
        app.config.max_output_size,
        Location::Query,
    )?;
    options.format = format;
    options
        .validate()
        .map_err(|e| ApiError::from_core(e, Location::Path))?;
    let tag = etag(
        &app.catalog.weights(size).fingerprint,
        size,
        &seed,
        &options,
    );
    let tag_value = HeaderValue::from_str(&tag).map_err(|e| ApiError::Internal(e.to_string()))?;
    if not_modified(&headers, &tag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, tag_value),
                (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
            ],
        )
            .into_response());
    }
    let avatar = super::draw(&app, size, seed, options).await?;
    let mut response = super::image_response(avatar, IMMUTABLE);
    response.headers_mut().insert(header::ETAG, tag_value);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_split_at_the_last_dot() {
        assert_eq!(
            split_file("alice.png").unwrap(),
            ("alice".into(), ImageFormat::Png)
        );
        assert_eq!(
            split_file("a.b.webp").unwrap(),
            ("a.b".into(), ImageFormat::Webp)
        );
        assert!(split_file("alice").is_err());
        assert!(split_file("alice.gif").is_err());
        assert!(split_file(".png").is_err());
    }

    #[test]
    fn etags_depend_on_every_option_and_match_if_none_match() {
        let options = GenerateOptions::default();
        let a = etag("f", ModelSize::Small, &Seed::from("7"), &options);
        assert_eq!(a, etag("f", ModelSize::Small, &Seed::from(7u64), &options));
        assert_ne!(a, etag("g", ModelSize::Small, &Seed::from("7"), &options));
        assert_ne!(a, etag("f", ModelSize::Large, &Seed::from("7"), &options));
        let transparent = GenerateOptions {
            transparent: true,
            ..Default::default()
        };
        assert_ne!(
            a,
            etag("f", ModelSize::Small, &Seed::from("7"), &transparent)
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{a}")).unwrap(),
        );
        assert!(not_modified(&headers, &a));
        assert!(!not_modified(&HeaderMap::new(), &a));
    }
}
