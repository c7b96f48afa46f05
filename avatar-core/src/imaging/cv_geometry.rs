//! OpenCV's bilinear `resize` and `warpAffine` on 8-bit RGB images, bit-exact with OpenCV 5
//! (`opencv-python` 4.11+): the resize's fixed-point coefficients (11-bit weights) and the warp's
//! single-precision fused multiply-adds, with the same rounding and borders. Face detectors and aligners trained and
//! published with OpenCV pre-processing (insightface's SCRFD letterbox and ArcFace crop) see the
//! same pixels here as in their reference pipelines.

use image::RgbImage;

/// `INTER_RESIZE_COEF_BITS`: resize weights in 1/2048.
const RESIZE_SCALE: f32 = 2048.0;
/// Source index and 11-bit weights per destination coordinate (OpenCV's `resizeGeneric_` setup).
fn linear_taps(source: u32, destination: u32) -> Vec<(usize, i32, i32)> {
    let scale = 1.0 / (f64::from(destination) / f64::from(source));
    (0..destination)
        .map(|d| {
            let f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut f = f - s as f32;
            if s < 0 {
                f = 0.0;
                s = 0;
            }
            if s + 1 >= i64::from(source) && s >= i64::from(source) - 1 {
                f = 0.0;
                s = i64::from(source) - 1;
            }
            let w0 = ((1.0 - f) * RESIZE_SCALE).round_ties_even() as i32;
            let w1 = (f * RESIZE_SCALE).round_ties_even() as i32;
            (s as usize, w0, w1)
        })
        .collect()
}

/// `cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)`.
pub fn resize_linear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = image.dimensions();
    if (sw, sh) == (width, height) || sw == 0 || sh == 0 {
        return image.clone();
    }
    let (scale_x, scale_y) = (
        1.0 / (f64::from(width) / f64::from(sw)),
        1.0 / (f64::from(height) / f64::from(sh)),
    );
    if (scale_x - 2.0).abs() < f64::EPSILON && (scale_y - 2.0).abs() < f64::EPSILON {
        // OpenCV switches an exact 2x reduction to INTER_AREA: the rounded mean of 2x2 blocks.
        return RgbImage::from_fn(width, height, |x, y| {
            let p = |dx: u32, dy: u32| image.get_pixel(2 * x + dx, 2 * y + dy).0;
            let (a, b, c, d) = (p(0, 0), p(1, 0), p(0, 1), p(1, 1));
            image::Rgb(std::array::from_fn(|k| {
                ((u32::from(a[k]) + u32::from(b[k]) + u32::from(c[k]) + u32::from(d[k]) + 2) >> 2)
                    as u8
            }))
        });
    }
    let xs = linear_taps(sw, width);
    let ys = linear_taps(sh, height);
    let src = image.as_raw();
    let row_len = sw as usize * 3;
    // Horizontal pass of one source row into `width * 3` ints (weights in 1/2048).
    let horizontal = |row: usize| -> Vec<i32> {
        let line = &src[row * row_len..(row + 1) * row_len];
        let mut out = Vec::with_capacity(width as usize * 3);
        for &(s, w0, w1) in &xs {
            for k in 0..3 {
                let a = i32::from(line[s * 3 + k]);
                let b = if w1 != 0 {
                    i32::from(line[(s + 1) * 3 + k])
                } else {
                    0
                };
                out.push(a * w0 + b * w1);
            }
        }
        out
    };
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for &(sy, b0, b1) in &ys {
        let r0 = horizontal(sy);
        let r1 = horizontal((sy + 1).min(sh as usize - 1));
        for (s0, s1) in r0.iter().zip(&r1) {
            // VResizeLinear<uchar>: ((b0*(S0>>4))>>16) + ((b1*(S1>>4))>>16) + 2) >> 2.
            let v = (((b0 * (s0 >> 4)) >> 16) + ((b1 * (s1 >> 4)) >> 16) + 2) >> 2;
            out.push(v.clamp(0, 255) as u8);
        }
    }
    RgbImage::from_raw(width, height, out).expect("width * height * 3 values")
}

/// `cv2.warpAffine(image, m, (width, height))`: bilinear, constant border 0; `m` maps source
/// to destination coordinates (OpenCV inverts it). OpenCV 4.11+/5 computes in single precision
/// with fused multiply-adds: source position `M0 * x + (M1 * y + M2)`, then
/// `v0 = p00 + fx (p01 - p00)`, `v1 = p10 + fx (p11 - p10)`, `v = v0 + fy (v1 - v0)`, rounded
/// half to even.
pub fn warp_affine_linear(image: &RgbImage, m: [[f64; 3]; 2], width: u32, height: u32) -> RgbImage {
    // OpenCV's inversion of the 2x3 matrix, in double, then the coefficients as floats.
    let [[m0, m1, m2], [m3, m4, m5]] = m;
    let det = m0 * m4 - m1 * m3;
    let d = if det != 0.0 { 1.0 / det } else { 0.0 };
    let (a11, a22) = (m4 * d, m0 * d);
    let (a12, a21) = (-m1 * d, -m3 * d);
    let b1 = -a11 * m2 - a12 * m5;
    let b2 = -a21 * m2 - a22 * m5;
    let inv = [a11, a12, b1, a21, a22, b2].map(|v| v as f32);

    let (sw, sh) = (image.width() as i32, image.height() as i32);
    let src = image.as_raw();
    let pixel = |x: i32, y: i32, k: usize| -> f32 {
        if x >= 0 && y >= 0 && x < sw && y < sh {
            f32::from(src[(y as usize * sw as usize + x as usize) * 3 + k])
        } else {
            0.0
        }
    };
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        let yf = y as f32;
        let row_x = yf * inv[1] + inv[2];
        let row_y = yf * inv[4] + inv[5];
        for x in 0..width {
            let xf = x as f32;
            let sx = inv[0].mul_add(xf, row_x);
            let sy = inv[3].mul_add(xf, row_y);
            let (ix, iy) = (sx.floor() as i32, sy.floor() as i32);
            let (fx, fy) = (sx - ix as f32, sy - iy as f32);
            for k in 0..3 {
                let (p00, p01) = (pixel(ix, iy, k), pixel(ix + 1, iy, k));
                let (p10, p11) = (pixel(ix, iy + 1, k), pixel(ix + 1, iy + 1, k));
                let v0 = fx.mul_add(p01 - p00, p00);
                let v1 = fx.mul_add(p11 - p10, p10);
                let v = fy.mul_add(v1 - v0, v0);
                out.push(v.round_ties_even().clamp(0.0, 255.0) as u8);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("width * height * 3 values")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_warps_and_same_size_resizes_copy_the_image() {
        let image = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        assert_eq!(resize_linear(&image, 7, 5), image);
        let warped = warp_affine_linear(&image, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 7, 5);
        assert_eq!(warped, image);
        // Shifted right by 2: the first two columns come from outside (black).
        let shifted = warp_affine_linear(&image, [[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], 7, 5);
        assert_eq!(shifted.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(shifted.get_pixel(4, 3), image.get_pixel(2, 3));
    }
}
