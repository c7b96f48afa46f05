//! Previews of an image while it is denoised: every `every` steps, the scheduler's estimate of the
//! clean latents (x₀; the current latents for schedulers without one) decoded either exactly by
//! the VAE or approximately by a linear map from the four latent channels to RGB (at latent
//! resolution, 1/8 of the output; nearly free).

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use image::RgbaImage;

use crate::error::{AvatarError, Result};
use crate::imaging::tensor_to_rgba;

/// How a preview is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreviewMode {
    /// A linear latent-to-RGB map at latent resolution (1/8 of the output side): cheap.
    #[default]
    Approximate,
    /// The VAE decoder at full resolution: exact, as costly as the final decode.
    Vae,
}

impl std::str::FromStr for PreviewMode {
    type Err = AvatarError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "approximate" | "approx" => Ok(PreviewMode::Approximate),
            "vae" | "full" => Ok(PreviewMode::Vae),
            other => Err(AvatarError::invalid(
                "preview_mode",
                format!("{other:?} is not one of approximate, vae"),
            )),
        }
    }
}

/// One preview: the images being drawn after `step` of `total`.
#[derive(Debug, Clone)]
pub struct Preview {
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
    /// One image per image being drawn.
    pub images: Vec<RgbaImage>,
}

/// Where previews go.
#[derive(Clone)]
pub struct PreviewCallback(pub Arc<dyn Fn(Preview) + Send + Sync>);

impl std::fmt::Debug for PreviewCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreviewCallback")
    }
}

/// Preview settings of a generation.
#[derive(Debug, Clone)]
pub struct PreviewOptions {
    /// A preview after every `every` steps (and after the last one); at least 1.
    pub every: usize,
    /// How previews are decoded.
    pub mode: PreviewMode,
    /// Called with each preview (on the generating thread).
    pub callback: PreviewCallback,
}

impl PreviewOptions {
    /// Previews every `every` steps, decoded by `mode`, passed to `callback`.
    pub fn new(
        every: usize,
        mode: PreviewMode,
        callback: impl Fn(Preview) + Send + Sync + 'static,
    ) -> Self {
        PreviewOptions {
            every,
            mode,
            callback: PreviewCallback(Arc::new(callback)),
        }
    }

    /// Whether step `step` (1-based) of `total` gets a preview.
    pub fn due(&self, step: usize, total: usize) -> bool {
        step == total || step.is_multiple_of(self.every.max(1))
    }
}

/// Latent-to-RGB factors (rows: latent channels; columns: R, G, B) and biases of the SD 1.x /
/// 2.x and SDXL latent spaces, as used by common UIs for cheap previews.
const SD15_FACTORS: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];
const SDXL_FACTORS: [[f32; 3]; 4] = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
];
const SDXL_BIAS: [f32; 3] = [0.1084, -0.0175, -0.0011];

/// The approximate RGB of `latents` `[B, 4, h, w]` (the UNet's scaled latent space) as images
/// of `w` x `h` pixels.
pub fn approximate_rgb(latents: Tensor<4>, xl: bool) -> Result<Vec<RgbaImage>> {
    let [_, channels, _, _] = latents.dims();
    if channels != 4 {
        return Err(AvatarError::invalid(
            "preview_mode",
            format!("approximate previews need 4 latent channels, not {channels}"),
        ));
    }
    let device = latents.device();
    let (factors, bias) = if xl {
        (SDXL_FACTORS, SDXL_BIAS)
    } else {
        (SD15_FACTORS, [0.0; 3])
    };
    // [3, 4] x [B, 4, h*w] -> [B, 3, h*w].
    let weights: Vec<f32> = (0..3)
        .flat_map(|c| factors.iter().map(move |row| row[c]))
        .collect();
    let weights = Tensor::<2>::from_data(TensorData::new(weights, [3, 4]), &device);
    let bias = Tensor::<1>::from_data(TensorData::new(bias.to_vec(), [3]), &device);
    let [b, _, h, w] = latents.dims();
    let flat: Tensor<3> = latents.reshape([b, 4, h * w]);
    let rgb = weights.unsqueeze::<3>().matmul(flat) + bias.reshape([1, 3, 1]);
    let rgb: Tensor<4> = rgb.reshape([b, 3, h, w]);
    tensor_to_rgba(rgb.add_scalar(1.0).div_scalar(2.0).clamp(0.0, 1.0))
}
