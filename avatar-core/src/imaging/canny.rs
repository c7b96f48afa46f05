//! OpenCV-exact Canny edges (`cv2.Canny`, aperture 3, L1 gradient) and grey conversion
//! (`cv2.cvtColor(.., COLOR_RGB2GRAY)`), the conditioning image of a canny ControlNet.
//!
//! A port of `modules/imgproc/src/canny.cpp`: 3x3 Sobel derivatives (replicated border),
//! magnitude |dx| + |dy| (for a colour image the channel with the largest magnitude wins, the
//! first one in OpenCV's B, G, R order on ties), non-maximum suppression in four directions with OpenCV's fixed-point
//! tangents, then hysteresis: the edges are the local maxima above `low` that are 8-connected to
//! one above `high`. Checked pixel by pixel against OpenCV 4.14 and 5.0 by
//! `tests/control_images.rs`.

use image::{GrayImage, Rgba, RgbaImage};

const CANNY_SHIFT: u32 = 15;
/// `tan(22.5°)` in OpenCV's 15-bit fixed point (13573), computed as canny.cpp does.
#[allow(clippy::excessive_precision)]
const TG22: i32 = (0.4142135623730950488016887242097 * (1 << CANNY_SHIFT) as f64 + 0.5) as i32;
const _: () = assert!(TG22 == 13573);

/// `cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)` bit-exactly (alpha is ignored): OpenCV's 8-bit
/// fixed point, `(9798 R + 19235 G + 3735 B + 2^14) >> 15`.
pub fn rgb_to_gray(image: &RgbaImage) -> GrayImage {
    let mut gray = GrayImage::new(image.width(), image.height());
    for (out, pixel) in gray.pixels_mut().zip(image.pixels()) {
        let [r, g, b, _] = pixel.0.map(u32::from);
        // At most (255 * 32768 + 16384) >> 15 = 255.
        out.0[0] = ((r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15) as u8;
    }
    gray
}

/// `cv2.Canny(gray, low, high)` (aperture 3, L1 gradient) bit-exactly: 255 on edges, 0 elsewhere.
///
/// As in OpenCV the thresholds are swapped when `low > high` and floored to integers (a NaN
/// counts as 0, values beyond `i32` saturate).
pub fn canny(gray: &GrayImage, low: f64, high: f64) -> GrayImage {
    let (width, height) = gray.dimensions();
    let edges = canny_interleaved(gray.as_raw(), width as usize, height as usize, 1, low, high);
    GrayImage::from_raw(width, height, edges).unwrap_or_else(|| GrayImage::new(width, height))
}

/// The canny conditioning image of InstantID's app (`get_canny_image` in
/// `gradio_demo/controlnet_util.py`, default thresholds 100 and 200): `cv2.Canny` run on the
/// colour image as OpenCV sees it (BGR, 3 channels; alpha is ignored), edges in white on black,
/// the 3 channels equal, opaque.
///
/// Note that this is colour Canny, as InstantID does it (per pixel the channel with the largest
/// gradient wins), not [`canny`] of [`rgb_to_gray`].
pub fn canny_image(image: &RgbaImage, low: f64, high: f64) -> RgbaImage {
    let (width, height) = image.dimensions();
    let bgr: Vec<u8> = image
        .pixels()
        .flat_map(|p| [p.0[2], p.0[1], p.0[0]])
        .collect();
    let edges = canny_interleaved(&bgr, width as usize, height as usize, 3, low, high);
    let mut out = RgbaImage::new(width, height);
    for (pixel, &e) in out.pixels_mut().zip(&edges) {
        *pixel = Rgba([e, e, e, 255]);
    }
    out
}

/// OpenCV's `cvFloor` of a threshold, saturating into `i32` (NaN gives 0).
fn floor_threshold(value: f64) -> i32 {
    value.floor() as i32
}

/// Canny on `channels` interleaved 8-bit channels; returns one byte per pixel (0 or 255).
fn canny_interleaved(
    data: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    low: f64,
    high: f64,
) -> Vec<u8> {
    if width == 0 || height == 0 || data.len() < width * height * channels {
        return vec![0; width * height];
    }
    let (low, high) = if low > high { (high, low) } else { (low, high) };
    let (low, high) = (floor_threshold(low), floor_threshold(high));

    // Sobel derivatives of the winning channel and the magnitude, the latter in a map with a
    // one-pixel border of zeros.
    let stride = width + 2;
    let mut mag = vec![0i32; stride * (height + 2)];
    let mut dxs = vec![0i32; width * height];
    let mut dys = vec![0i32; width * height];
    let at = |y: usize, x: usize, c: usize| i32::from(data[(y * width + x) * channels + c]);
    for y in 0..height {
        let (ym, yp) = (y.saturating_sub(1), (y + 1).min(height - 1));
        for x in 0..width {
            let (xm, xp) = (x.saturating_sub(1), (x + 1).min(width - 1));
            let (mut best, mut bdx, mut bdy) = (-1, 0, 0);
            for c in 0..channels {
                let dx = (at(ym, xp, c) - at(ym, xm, c))
                    + 2 * (at(y, xp, c) - at(y, xm, c))
                    + (at(yp, xp, c) - at(yp, xm, c));
                let dy = (at(yp, xm, c) + 2 * at(yp, x, c) + at(yp, xp, c))
                    - (at(ym, xm, c) + 2 * at(ym, x, c) + at(ym, xp, c));
                let m = dx.abs() + dy.abs();
                if m > best {
                    (best, bdx, bdy) = (m, dx, dy);
                }
            }
            dxs[y * width + x] = bdx;
            dys[y * width + x] = bdy;
            mag[(y + 1) * stride + x + 1] = best;
        }
    }

    // Non-maximum suppression: 0 = may be an edge, 1 = is not, 2 = is (the border is 1).
    const CANDIDATE: u8 = 0;
    const NOT_EDGE: u8 = 1;
    const EDGE: u8 = 2;
    let mut map = vec![NOT_EDGE; stride * (height + 2)];
    let mut stack = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let i = (y + 1) * stride + x + 1;
            let m = mag[i];
            if m <= low {
                continue;
            }
            let (xs, ys) = (dxs[y * width + x], dys[y * width + x]);
            let ax = xs.abs();
            let ay = ys.abs() << CANNY_SHIFT;
            let tg22x = ax * TG22;
            let (up, down) = (i - stride, i + stride);
            let local_max = if ay < tg22x {
                m > mag[i - 1] && m >= mag[i + 1]
            } else {
                let tg67x = tg22x + (ax << (CANNY_SHIFT + 1));
                if ay > tg67x {
                    m > mag[up] && m >= mag[down]
                } else if (xs ^ ys) < 0 {
                    m > mag[up + 1] && m > mag[down - 1]
                } else {
                    m > mag[up - 1] && m > mag[down + 1]
                }
            };
            if local_max {
                if m > high {
                    map[i] = EDGE;
                    stack.push(i);
                } else {
                    map[i] = CANDIDATE;
                }
            }
        }
    }

    // Hysteresis: grow the strong edges through 8-connected candidates.
    let neighbours = [
        -1,
        1,
        -(stride as isize) - 1,
        -(stride as isize),
        -(stride as isize) + 1,
        stride as isize - 1,
        stride as isize,
        stride as isize + 1,
    ];
    while let Some(i) = stack.pop() {
        for offset in neighbours {
            // The border of NOT_EDGE keeps every neighbour of an inner pixel inside the map.
            let j = i.wrapping_add_signed(offset);
            if map[j] == CANDIDATE {
                map[j] = EDGE;
                stack.push(j);
            }
        }
    }

    let mut edges = vec![0u8; width * height];
    for y in 0..height {
        for x in 0..width {
            if map[(y + 1) * stride + x + 1] == EDGE {
                edges[y * width + x] = 255;
            }
        }
    }
    edges
}
