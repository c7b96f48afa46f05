//! insightface's face alignment (`face_align.norm_crop`): the similarity transform that best maps
//! the five keypoints onto ArcFace's template (least squares, as scikit-image's Umeyama estimate),
//! then OpenCV's bilinear `warpAffine` into a square crop.

use image::RgbImage;

use crate::error::{AvatarError, Result};
use crate::imaging::cv_geometry::warp_affine_linear;

/// ArcFace's five-point template in a 112x112 crop (insightface `arcface_dst`, float32).
pub const ARCFACE_TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// The 2x3 similarity transform from `keypoints` to the template scaled for an `size` crop
/// (`estimate_norm`: multiples of 112, or of 128 with an 8/128 horizontal shift).
pub fn estimate_norm(keypoints: &[[f32; 2]; 5], size: u32) -> Result<[[f64; 3]; 2]> {
    let (ratio, shift) = if size.is_multiple_of(112) && size > 0 {
        (f64::from(size) / 112.0, 0.0)
    } else if size.is_multiple_of(128) && size > 0 {
        let ratio = f64::from(size) / 128.0;
        (ratio, 8.0 * ratio)
    } else {
        return Err(AvatarError::invalid(
            "crop_size",
            format!("{size}: must be a multiple of 112 or 128"),
        ));
    };
    // The template is float32 in insightface, scaled and shifted in float32.
    let (ratio, shift) = (ratio as f32, shift as f32);
    let dst: Vec<[f64; 2]> = ARCFACE_TEMPLATE
        .iter()
        .map(|p| [f64::from(p[0] * ratio + shift), f64::from(p[1] * ratio)])
        .collect();
    let src: Vec<[f64; 2]> = keypoints
        .iter()
        .map(|p| [f64::from(p[0]), f64::from(p[1])])
        .collect();
    Ok(similarity(&src, &dst))
}

/// Least-squares similarity (rotation, uniform scale, translation) from `src` to `dst`.
fn similarity(src: &[[f64; 2]], dst: &[[f64; 2]]) -> [[f64; 3]; 2] {
    let n = src.len() as f64;
    let mean = |p: &[[f64; 2]]| {
        let (x, y) = p.iter().fold((0.0, 0.0), |(x, y), q| (x + q[0], y + q[1]));
        [x / n, y / n]
    };
    let (ms, md) = (mean(src), mean(dst));
    let (mut dot, mut cross, mut var) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (sx, sy) = (s[0] - ms[0], s[1] - ms[1]);
        let (dx, dy) = (d[0] - md[0], d[1] - md[1]);
        dot += dx * sx + dy * sy;
        cross += dy * sx - dx * sy;
        var += sx * sx + sy * sy;
    }
    if var == 0.0 {
        return [[f64::NAN; 3]; 2];
    }
    // scale * [[cos, -sin], [sin, cos]] = [[a, -b], [b, a]].
    let (a, b) = (dot / var, cross / var);
    [
        [a, -b, md[0] - (a * ms[0] - b * ms[1])],
        [b, a, md[1] - (b * ms[0] + a * ms[1])],
    ]
}

/// The aligned `size` x `size` face crop (`norm_crop`), with the transform used.
pub fn norm_crop(
    image: &RgbImage,
    keypoints: &[[f32; 2]; 5],
    size: u32,
) -> Result<(RgbImage, [[f64; 3]; 2])> {
    let m = estimate_norm(keypoints, size)?;
    if m.iter().flatten().any(|v| !v.is_finite()) {
        return Err(AvatarError::invalid(
            "keypoints",
            "the five keypoints coincide: no alignment exists",
        ));
    }
    Ok((warp_affine_linear(image, m, size, size), m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_maps_onto_itself() {
        let m = estimate_norm(&ARCFACE_TEMPLATE, 112).unwrap();
        let expected = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        for (row, want) in m.iter().zip(expected) {
            for (v, w) in row.iter().zip(want) {
                assert!((v - w).abs() < 1e-9, "{m:?}");
            }
        }
        assert!(estimate_norm(&ARCFACE_TEMPLATE, 100).is_err());
    }
}
