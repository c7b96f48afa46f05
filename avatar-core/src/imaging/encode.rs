use std::io::Cursor;
use std::str::FromStr;

use image::{DynamicImage, RgbaImage, imageops::FilterType};

use crate::error::{AvatarError, Result};

/// Output encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImageFormat {
    /// PNG (lossless, alpha).
    #[default]
    Png,
    /// WebP, lossless (alpha).
    Webp,
    /// JPEG at quality 90 (no alpha: the image must be opaque).
    Jpeg,
}

impl ImageFormat {
    /// Every format, in the order error messages list them.
    pub const ALL: [ImageFormat; 3] = [ImageFormat::Png, ImageFormat::Webp, ImageFormat::Jpeg];

    /// The name accepted by [`FromStr`] (`png`, `webp`, `jpeg`).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Jpeg => "jpeg",
        }
    }

    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Jpeg => "image/jpeg",
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Jpeg => "jpg",
        }
    }

    /// Whether the format keeps an alpha channel.
    pub fn supports_alpha(self) -> bool {
        !matches!(self, ImageFormat::Jpeg)
    }
}

impl FromStr for ImageFormat {
    type Err = AvatarError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(ImageFormat::Png),
            "webp" => Ok(ImageFormat::Webp),
            "jpeg" | "jpg" => Ok(ImageFormat::Jpeg),
            other => Err(AvatarError::invalid(
                "format",
                format!("{other:?}: expected png, webp or jpeg"),
            )),
        }
    }
}

/// Encodes an image; JPEG drops the alpha channel (composite first).
pub fn encode(image: &RgbaImage, format: ImageFormat) -> Result<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    let result = match format {
        ImageFormat::Png => image.write_to(&mut out, image::ImageFormat::Png),
        ImageFormat::Webp => image.write_to(&mut out, image::ImageFormat::WebP),
        ImageFormat::Jpeg => {
            let rgb = DynamicImage::ImageRgba8(image.clone()).into_rgb8();
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
            rgb.write_with_encoder(encoder)
        }
    };
    result.map_err(|e| AvatarError::Image(e.to_string()))?;
    Ok(out.into_inner())
}

/// Resizes to `size` x `size`: Lanczos3 when shrinking, CatmullRom when enlarging, filtering
/// premultiplied colour so transparent pixels do not bleed into the edges.
pub fn resize(image: &RgbaImage, size: u32) -> RgbaImage {
    if image.width() == size && image.height() == size {
        return image.clone();
    }
    let filter = if size < image.width() {
        FilterType::Lanczos3
    } else {
        FilterType::CatmullRom
    };
    if image.pixels().all(|p| p[3] == 255) {
        return image::imageops::resize(image, size, size, filter);
    }
    let mut premultiplied = image::Rgba32FImage::new(image.width(), image.height());
    for (src, dst) in image.pixels().zip(premultiplied.pixels_mut()) {
        let a = src[3] as f32 / 255.0;
        *dst = image::Rgba([
            src[0] as f32 / 255.0 * a,
            src[1] as f32 / 255.0 * a,
            src[2] as f32 / 255.0 * a,
            a,
        ]);
    }
    let resized = image::imageops::resize(&premultiplied, size, size, filter);
    let mut out = RgbaImage::new(size, size);
    for (src, dst) in resized.pixels().zip(out.pixels_mut()) {
        let a = src[3].clamp(0.0, 1.0);
        let channel = |c: f32| {
            if a > 0.0 {
                (c / a * 255.0).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        };
        *dst = image::Rgba([
            channel(src[0]),
            channel(src[1]),
            channel(src[2]),
            (a * 255.0).round() as u8,
        ]);
    }
    out
}
