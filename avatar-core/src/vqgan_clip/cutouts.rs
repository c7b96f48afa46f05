//! VQGAN+CLIP's cutouts: random square crops of the image, sized by `cut_pow`, resampled to CLIP's
//! input size, then optionally augmented (flip, affine, perspective, colour jitter, noise).
//!
//! Sizes and offsets are drawn as in Katherine Crowson's notebook: `size = rand^cut_pow *
//! (max - min) + min` with `max = min(W, H)` and `min = min(W, H, cut)`. Resampling is differentiable:
//! adaptive average pooling (area) when the crop is larger than CLIP's input, bilinear (half-pixel)
//! interpolation when smaller. The geometric augmentations of one cutout are folded into a single
//! homography applied with `grid_sample` (border padding); colour jitter is a 3x3 colour matrix.

use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::ops::{GridSampleOptions, GridSamplePaddingMode, InterpolateMode};
use burn::tensor::{Tensor, TensorData};

use crate::imaging::resize_bilinear;
use crate::seed::{NormalStream, SplitMix64};

/// A square crop: side `size` at column `x`, row `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutout {
    /// Side in pixels.
    pub size: usize,
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
}

/// Draws `n` cutouts of a `width` x `height` image for a CLIP input of side `cut`.
pub fn draw_cutouts(
    rng: &mut SplitMix64,
    width: usize,
    height: usize,
    cut: usize,
    n: usize,
    cut_pow: f64,
) -> Vec<Cutout> {
    let max_size = width.min(height);
    let min_size = max_size.min(cut);
    (0..n)
        .map(|_| {
            let size = (rng.next_f64().powf(cut_pow) * (max_size - min_size) as f64
                + min_size as f64) as usize;
            let size = size.clamp(1, max_size);
            let x = rng.below((width - size + 1) as u64) as usize;
            let y = rng.below((height - size + 1) as u64) as usize;
            Cutout { size, x, y }
        })
        .collect()
}

/// Crops `cutouts` out of `image` `[1, C, H, W]` and resamples each to `cut` x `cut`:
/// `[n, C, cut, cut]`.
pub fn make_cutouts(image: Tensor<4>, cutouts: &[Cutout], cut: usize) -> Tensor<4> {
    let [b, c, _, _] = image.dims();
    let crops = cutouts
        .iter()
        .map(|box_| {
            let crop = image.clone().slice([
                0..b,
                0..c,
                box_.y..box_.y + box_.size,
                box_.x..box_.x + box_.size,
            ]);
            if box_.size >= cut {
                adaptive_avg_pool2d(crop, [cut, cut])
            } else {
                resize_bilinear(crop, [cut, cut])
            }
        })
        .collect();
    Tensor::cat(crops, 0)
}

/// Which augmentations run on the cutouts, and how strongly (defaults: nerdyrodent/VQGAN-CLIP's).
#[derive(Debug, Clone, PartialEq)]
pub struct Augmentations {
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// Probability of a random affine transform.
    pub affine: f64,
    /// Largest rotation, degrees.
    pub degrees: f64,
    /// Largest translation, as a fraction of the side.
    pub translate: f64,
    /// Probability of a random perspective transform.
    pub perspective: f64,
    /// Perspective distortion scale (corners move by up to this fraction of half the side).
    pub distortion: f64,
    /// Probability of colour jitter.
    pub color_jitter: f64,
    /// Largest hue rotation, as a fraction of a full turn.
    pub hue: f64,
    /// Largest saturation change, relative.
    pub saturation: f64,
    /// Largest standard deviation of the Gaussian noise added per cutout (0 disables it).
    pub noise: f64,
}

impl Default for Augmentations {
    fn default() -> Self {
        Augmentations {
            flip: 0.5,
            affine: 0.8,
            degrees: 30.0,
            translate: 0.1,
            perspective: 0.4,
            distortion: 0.2,
            color_jitter: 0.7,
            hue: 0.01,
            saturation: 0.01,
            noise: 0.1,
        }
    }
}

impl Augmentations {
    /// No augmentation at all (the parity tests' setting).
    pub fn none() -> Self {
        Augmentations {
            flip: 0.0,
            affine: 0.0,
            degrees: 0.0,
            translate: 0.0,
            perspective: 0.0,
            distortion: 0.0,
            color_jitter: 0.0,
            hue: 0.0,
            saturation: 0.0,
            noise: 0.0,
        }
    }

    /// Whether any augmentation can change a cutout.
    pub fn is_identity(&self) -> bool {
        self.flip <= 0.0
            && self.affine <= 0.0
            && self.perspective <= 0.0
            && self.color_jitter <= 0.0
            && self.noise <= 0.0
    }

    /// Augments a batch of cutouts `[n, 3, S, S]` with random draws from `rng` / `normal`.
    pub fn apply(
        &self,
        batch: Tensor<4>,
        rng: &mut SplitMix64,
        normal: &mut NormalStream,
    ) -> Tensor<4> {
        if self.is_identity() {
            return batch;
        }
        let [n, c, s, _] = batch.dims();
        let device = batch.device();
        let mut geometric = false;
        let mut grids = Vec::with_capacity(n * s * s * 2);
        let mut colours = Vec::with_capacity(n * 9);
        let mut noise_scales = Vec::with_capacity(n);
        for _ in 0..n {
            let homography = self.draw_homography(rng);
            geometric |= homography != IDENTITY;
            grids.extend(sampling_grid(&homography, s));
            colours.extend(self.draw_colour_matrix(rng));
            noise_scales.push((rng.next_f64() * self.noise) as f32);
        }
        let mut batch = batch;
        if geometric {
            let grid = Tensor::<4>::from_data(TensorData::new(grids, [n, s, s, 2]), &device);
            batch = batch.grid_sample_2d(
                grid,
                GridSampleOptions::new(InterpolateMode::Bilinear)
                    .with_padding_mode(GridSamplePaddingMode::Border)
                    .with_align_corners(false),
            );
        }
        if c == 3 && self.color_jitter > 0.0 {
            let matrices = Tensor::<3>::from_data(TensorData::new(colours, [n, 3, 3]), &device);
            batch = matrices
                .matmul(batch.reshape([n, 3, s * s]))
                .reshape([n, 3, s, s]);
        }
        if self.noise > 0.0 {
            let scales =
                Tensor::<4>::from_data(TensorData::new(noise_scales, [n, 1, 1, 1]), &device);
            let noise = normal.tensor([n, c, s, s], &device);
            batch = batch + noise * scales;
        }
        batch
    }

    /// Flip, affine and perspective as one map from output to input coordinates in [-1, 1].
    fn draw_homography(&self, rng: &mut SplitMix64) -> [f64; 9] {
        let mut h = IDENTITY;
        if rng.next_f64() < self.flip {
            h = compose(&h, &[-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        }
        if rng.next_f64() < self.affine {
            let angle = (rng.next_f64() * 2.0 - 1.0) * self.degrees.to_radians();
            // Translation as a fraction of the side is twice that in [-1, 1] coordinates.
            let tx = (rng.next_f64() * 2.0 - 1.0) * self.translate * 2.0;
            let ty = (rng.next_f64() * 2.0 - 1.0) * self.translate * 2.0;
            let (sin, cos) = angle.sin_cos();
            h = compose(&h, &[cos, -sin, tx, sin, cos, ty, 0.0, 0.0, 1.0]);
        }
        if rng.next_f64() < self.perspective {
            // Move each corner inwards by up to `distortion` of the half side, then map the
            // output square onto that quadrilateral.
            let corners: [(f64, f64); 4] = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)];
            let moved: Vec<(f64, f64)> = corners
                .iter()
                .map(|&(x, y)| {
                    let dx = rng.next_f64() * self.distortion;
                    let dy = rng.next_f64() * self.distortion;
                    (x - x.signum() * dx, y - y.signum() * dy)
                })
                .collect();
            if let Some(p) = square_to_quad(&moved) {
                h = compose(&h, &p);
            }
        }
        h
    }

    /// Saturation then hue rotation about the grey axis, as one 3x3 matrix (row-major).
    fn draw_colour_matrix(&self, rng: &mut SplitMix64) -> [f32; 9] {
        if rng.next_f64() >= self.color_jitter {
            return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        }
        let saturation = 1.0 + (rng.next_f64() * 2.0 - 1.0) * self.saturation;
        let angle = (rng.next_f64() * 2.0 - 1.0) * self.hue * std::f64::consts::TAU;
        // Saturation: mix with the luma grey.
        let luma = [0.299, 0.587, 0.114];
        let mut sat = [0.0; 9];
        for r in 0..3 {
            for c in 0..3 {
                sat[r * 3 + c] =
                    (1.0 - saturation) * luma[c] + if r == c { saturation } else { 0.0 };
            }
        }
        // Hue: rotation about (1, 1, 1) / sqrt(3) (Rodrigues).
        let (sin, cos) = angle.sin_cos();
        let k = 1.0 / 3.0_f64.sqrt();
        let t = 1.0 - cos;
        let a = cos + t / 3.0;
        let b = t / 3.0 - sin * k;
        let c = t / 3.0 + sin * k;
        let hue = [a, b, c, c, a, b, b, c, a];
        let m = compose(&hue, &sat);
        m.map(|v| v as f32)
    }
}

const IDENTITY: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

/// `a * b` for row-major 3x3 matrices.
fn compose(a: &[f64; 9], b: &[f64; 9]) -> [f64; 9] {
    let mut out = [0.0; 9];
    for r in 0..3 {
        for c in 0..3 {
            out[r * 3 + c] = (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum();
        }
    }
    out
}

/// The homography taking the corners of [-1, 1]² (in the order (-1,-1), (1,-1), (1,1), (-1,1))
/// to `quad` (Heckbert's square-to-quad).
fn square_to_quad(quad: &[(f64, f64)]) -> Option<[f64; 9]> {
    // Unit square (0,0),(1,0),(1,1),(0,1) -> quad, then pre-compose [-1,1] -> [0,1].
    let (x0, y0) = quad[0];
    let (x1, y1) = quad[1];
    let (x2, y2) = quad[2];
    let (x3, y3) = quad[3];
    let sx = x0 - x1 + x2 - x3;
    let sy = y0 - y1 + y2 - y3;
    let (dx1, dx2) = (x1 - x2, x3 - x2);
    let (dy1, dy2) = (y1 - y2, y3 - y2);
    let det = dx1 * dy2 - dx2 * dy1;
    if det.abs() < 1e-12 {
        return None;
    }
    let g = (sx * dy2 - dx2 * sy) / det;
    let h = (dx1 * sy - sx * dy1) / det;
    let unit = [
        x1 - x0 + g * x1,
        x3 - x0 + h * x3,
        x0,
        y1 - y0 + g * y1,
        y3 - y0 + h * y3,
        y0,
        g,
        h,
        1.0,
    ];
    let to_unit = [0.5, 0.0, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0, 1.0];
    Some(compose(&unit, &to_unit))
}

/// `grid_sample` coordinates (x, y in [-1, 1], half-pixel centres) for an `s` x `s` output.
fn sampling_grid(h: &[f64; 9], s: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(s * s * 2);
    for row in 0..s {
        for col in 0..s {
            let x = (2 * col + 1) as f64 / s as f64 - 1.0;
            let y = (2 * row + 1) as f64 / s as f64 - 1.0;
            let w = h[6] * x + h[7] * y + h[8];
            out.push(((h[0] * x + h[1] * y + h[2]) / w) as f32);
            out.push(((h[3] * x + h[4] * y + h[5]) / w) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn cutouts_stay_inside_the_image_and_respect_the_size_range() {
        let mut rng = SplitMix64::new(3);
        for (w, h, cut) in [(64, 48, 32), (16, 16, 32), (300, 200, 224)] {
            for c in draw_cutouts(&mut rng, w, h, cut, 50, 1.0) {
                assert!(c.size >= w.min(h).min(cut) && c.size <= w.min(h));
                assert!(c.x + c.size <= w && c.y + c.size <= h);
            }
        }
    }

    #[test]
    fn square_to_quad_maps_the_corners() {
        let quad = [(-0.9, -0.8), (0.85, -0.95), (0.9, 0.8), (-0.7, 0.9)];
        let h = square_to_quad(&quad).unwrap();
        for (&(x, y), &(qx, qy)) in [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
            .iter()
            .zip(&quad)
        {
            let w = h[6] * x + h[7] * y + h[8];
            assert!(((h[0] * x + h[1] * y + h[2]) / w - qx).abs() < 1e-9);
            assert!(((h[3] * x + h[4] * y + h[5]) / w - qy).abs() < 1e-9);
        }
    }

    #[test]
    fn identity_augmentation_leaves_cutouts_unchanged() {
        let device = Device::flex();
        let batch = Tensor::<4>::ones([2, 3, 8, 8], &device);
        let mut rng = SplitMix64::new(1);
        let mut normal = NormalStream::new(1);
        let out = Augmentations::none().apply(batch.clone(), &mut rng, &mut normal);
        assert_eq!(out.into_data(), batch.into_data());
    }

    #[test]
    fn colour_matrices_keep_grey_grey() {
        let aug = Augmentations {
            color_jitter: 1.0,
            hue: 0.2,
            saturation: 0.5,
            ..Augmentations::none()
        };
        let mut rng = SplitMix64::new(9);
        for _ in 0..10 {
            let m = aug.draw_colour_matrix(&mut rng);
            for r in 0..3 {
                let row: f32 = m[r * 3..r * 3 + 3].iter().sum();
                assert!((row - 1.0).abs() < 1e-5, "row sums to {row}");
            }
        }
    }
}
