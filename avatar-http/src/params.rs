//! Query parameters of the image endpoints, parsed with avatar-core's own parsers so the
//! server never re-implements a validation rule.

use avatar_core::imaging::{Color, ImageFormat};
use avatar_core::{GenerateOptions, ModelSize, Seed};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Location};

/// Longest accepted seed, in bytes.
pub const MAX_SEED_LEN: usize = 256;

/// `small` (96x96) or `large` (128x128).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SizeParam {
    /// 96x96 (latent 100).
    Small,
    /// 128x128 (latent 128).
    Large,
}

/// Output encoding.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum FormatParam {
    /// PNG (lossless, alpha).
    Png,
    /// Lossless WebP (alpha).
    Webp,
    /// JPEG quality 90 (no alpha).
    Jpeg,
}

/// Encoded image bytes.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ImageBytes(pub Vec<u8>);

/// Query of `GET /generate-image`: the seed service's `size` and `transparent`, plus extras.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GenerateQuery {
    /// `small` (96x96, the default) or `large` (128x128).
    #[param(value_type = Option<SizeParam>, default = "small")]
    pub size: Option<String>,
    /// `true` for a transparent background (default `false`).
    #[param(value_type = Option<bool>, default = false)]
    pub transparent: Option<String>,
    /// Any text or number: the same seed always gives the same avatar (default: random; the
    /// seed used is returned in `X-Avatar-Seed`).
    #[param(value_type = Option<String>, example = "alice")]
    pub seed: Option<String>,
    /// Background colour `#RRGGBB` or `#RRGGBBAA` (default white; not with `transparent=true`).
    #[param(value_type = Option<String>, example = "#ffcc00")]
    pub bg_color: Option<String>,
    /// `png` (default), `webp` or `jpeg` (`jpeg` cannot be transparent).
    #[param(value_type = Option<FormatParam>, default = "png")]
    pub format: Option<String>,
    /// Output side in pixels, resampled from the model's resolution (16 to the server's limit,
    /// 512 by default).
    #[param(value_type = Option<u32>, minimum = 16, maximum = 1024)]
    pub output_size: Option<String>,
}

/// Query of `GET /avatar/{seed}.{ext}` (the seed and format come from the path).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AvatarQuery {
    /// `small` (96x96, the default) or `large` (128x128).
    #[param(value_type = Option<SizeParam>, default = "small")]
    pub size: Option<String>,
    /// `true` for a transparent background (default `false`).
    #[param(value_type = Option<bool>, default = false)]
    pub transparent: Option<String>,
    /// Background colour `#RRGGBB` or `#RRGGBBAA` (default white).
    #[param(value_type = Option<String>, example = "#ffcc00")]
    pub bg_color: Option<String>,
    /// Output side in pixels.
    #[param(value_type = Option<u32>, minimum = 16, maximum = 1024)]
    pub output_size: Option<String>,
}

/// Parses a boolean as FastAPI does: `true/false`, `1/0`, `yes/no`, `on/off`, `t/f`, `y/n`.
pub fn parse_bool(
    field: &'static str,
    value: Option<&str>,
    location: Location,
) -> Result<bool, ApiError> {
    let Some(value) = value else { return Ok(false) };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err(ApiError::invalid(
            field,
            location,
            format!("{value:?} is not a boolean; use true or false"),
        )),
    }
}

/// Parses `size` (default small).
pub fn parse_size(value: Option<&str>, location: Location) -> Result<ModelSize, ApiError> {
    match value {
        None => Ok(ModelSize::default()),
        Some(text) => text.parse().map_err(|e| ApiError::from_core(e, location)),
    }
}

/// Parses `output_size` and applies the server's limit.
pub fn parse_output_size(
    value: Option<&str>,
    max: u32,
    location: Location,
) -> Result<Option<u32>, ApiError> {
    let Some(text) = value.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let size: u32 = text.trim().parse().map_err(|_| {
        ApiError::invalid(
            "output_size",
            location,
            format!("{text:?} is not a whole number of pixels"),
        )
    })?;
    check_output_size(size, max, location)?;
    Ok(Some(size))
}

/// Applies the server's `--max-output-size` (avatar-core checks its own range afterwards).
pub fn check_output_size(size: u32, max: u32, location: Location) -> Result<(), ApiError> {
    if size > max {
        return Err(ApiError::invalid(
            "output_size",
            location,
            format!("{size} is over this server's limit of {max} pixels"),
        ));
    }
    Ok(())
}

/// Parses a seed: empty means none (random); longer than [`MAX_SEED_LEN`] is refused.
pub fn parse_seed(value: Option<&str>, location: Location) -> Result<Option<Seed>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(text) if text.len() > MAX_SEED_LEN => Err(ApiError::invalid(
            "seed",
            location,
            format!(
                "{} bytes is longer than the {MAX_SEED_LEN}-byte limit",
                text.len()
            ),
        )),
        Some(text) => Ok(Some(Seed::from(text))),
    }
}

/// Builds and validates the options shared by the image endpoints.
pub fn options(
    transparent: Option<&str>,
    bg_color: Option<&str>,
    format: Option<&str>,
    output_size: Option<&str>,
    max_output_size: u32,
    location: Location,
) -> Result<GenerateOptions, ApiError> {
    let core = |e| ApiError::from_core(e, location);
    let options = GenerateOptions {
        seed: None,
        transparent: parse_bool("transparent", transparent, location)?,
        bg_color: bg_color
            .filter(|c| !c.is_empty())
            .map(str::parse::<Color>)
            .transpose()
            .map_err(core)?,
        output_size: parse_output_size(output_size, max_output_size, location)?,
        format: format
            .map(str::parse::<ImageFormat>)
            .transpose()
            .map_err(core)?
            .unwrap_or_default(),
    };
    options.validate().map_err(core)?;
    Ok(options)
}

impl GenerateQuery {
    /// The model size, seed and options.
    pub fn parse(
        &self,
        max_output_size: u32,
    ) -> Result<(ModelSize, Option<Seed>, GenerateOptions), ApiError> {
        let size = parse_size(self.size.as_deref(), Location::Query)?;
        let options = options(
            self.transparent.as_deref(),
            self.bg_color.as_deref(),
            self.format.as_deref(),
            self.output_size.as_deref(),
            max_output_size,
            Location::Query,
        )?;
        let seed = parse_seed(self.seed.as_deref(), Location::Query)?;
        Ok((size, seed, options))
    }
}

/// Makes any text safe for an HTTP header value: visible ASCII stays, the rest is %-encoded.
pub fn header_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if ((0x21..=0x7e).contains(&byte) && byte != b'%') || byte == b' ' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_services() {
        let (size, seed, options) = GenerateQuery::default().parse(512).unwrap();
        assert_eq!(size, ModelSize::Small);
        assert!(seed.is_none());
        assert_eq!(options, GenerateOptions::default());
    }

    #[test]
    fn every_bad_value_names_its_field() {
        let cases: [(&str, GenerateQuery); 6] = [
            (
                "size",
                GenerateQuery {
                    size: Some("huge".into()),
                    ..Default::default()
                },
            ),
            (
                "transparent",
                GenerateQuery {
                    transparent: Some("maybe".into()),
                    ..Default::default()
                },
            ),
            (
                "format",
                GenerateQuery {
                    format: Some("gif".into()),
                    ..Default::default()
                },
            ),
            (
                "bg_color",
                GenerateQuery {
                    bg_color: Some("red".into()),
                    ..Default::default()
                },
            ),
            (
                "output_size",
                GenerateQuery {
                    output_size: Some("2000".into()),
                    ..Default::default()
                },
            ),
            (
                "output_size",
                GenerateQuery {
                    output_size: Some("-1".into()),
                    ..Default::default()
                },
            ),
        ];
        for (field, query) in cases {
            match query.parse(512).unwrap_err() {
                ApiError::Invalid { field: f, .. } => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn header_values_are_made_safe() {
        assert_eq!(header_safe("alice"), "alice");
        assert_eq!(header_safe("zoë\n"), "zo%C3%AB%0A");
        assert_eq!(header_safe("100%"), "100%25");
    }
}
