//! transformers' CLIP vision tower (`CLIPVisionTransformer`): patch embedding, class token,
//! learned positions, `pre_layrnorm`, the shared CLIP encoder (full attention) and
//! `post_layernorm` on the class token. Used by the safety checker (and the image encoders of
//! the face adapters).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Int, Tensor};
use image::RgbaImage;
use serde::Deserialize;

use super::clip_text::{ClipActivation, ClipEncoder, ClipEncoderShape};
use super::precision::dtype_of;
use crate::error::{AvatarError, Result};
use crate::imaging::pil_resize::{PilFilter, resize_rgb};
use crate::imaging::{clip_normalize, rgb_to_tensor};

/// A CLIP vision tower's config: transformers' `CLIPVisionConfig` (unknown keys ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "three")]
    pub num_channels: usize,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// MLP activation.
    #[serde(default = "quick_gelu")]
    pub hidden_act: ClipActivation,
}

fn three() -> usize {
    3
}

fn eps() -> f64 {
    1e-5
}

fn quick_gelu() -> ClipActivation {
    ClipActivation::QuickGelu
}

impl ClipVisionConfig {
    /// Checks the shape.
    pub fn check(&self) -> Result<()> {
        let bad = |message: String| Err(AvatarError::Config(format!("CLIP vision: {message}")));
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        Ok(())
    }

    /// Builds the tower with default-initialised weights.
    pub fn init(&self, device: &Device) -> Result<ClipVisionTransformer> {
        self.check()?;
        let h = self.hidden_size;
        let grid = self.image_size / self.patch_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        Ok(ClipVisionTransformer {
            embeddings: ClipVisionEmbeddings {
                class_embedding: Param::from_tensor(Tensor::zeros([h], device)),
                patch_embedding: Conv2dConfig::new(
                    [self.num_channels, h],
                    [self.patch_size, self.patch_size],
                )
                .with_stride([self.patch_size, self.patch_size])
                .with_bias(false)
                .init(device),
                position_embedding: EmbeddingConfig::new(grid * grid + 1, h).init(device),
            },
            pre_layrnorm: norm(),
            encoder: ClipEncoder::new(
                &ClipEncoderShape {
                    hidden_size: h,
                    intermediate_size: self.intermediate_size,
                    num_hidden_layers: self.num_hidden_layers,
                    num_attention_heads: self.num_attention_heads,
                    layer_norm_eps: self.layer_norm_eps,
                    hidden_act: self.hidden_act,
                    causal: false,
                },
                device,
            ),
            post_layernorm: norm(),
            image_size: self.image_size,
        })
    }
}

/// Class token, patch embedding and learned positions.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    /// `[hidden]`.
    pub class_embedding: Param<Tensor<1>>,
    /// Patches to the residual stream (no bias).
    pub patch_embedding: Conv2d,
    /// `[patches + 1, hidden]`.
    pub position_embedding: Embedding,
}

/// The vision tower (`vision_model.*`).
#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    /// Embeddings.
    pub embeddings: ClipVisionEmbeddings,
    /// Norm before the layers (transformers' spelling).
    pub pre_layrnorm: LayerNorm,
    /// The layers.
    pub encoder: ClipEncoder,
    /// Norm of the pooled class token.
    pub post_layernorm: LayerNorm,
    image_size: usize,
}

impl ClipVisionTransformer {
    /// The input side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// `[B, C, S, S]` normalised pixels -> (last hidden state `[B, 1 + patches, H]`, pooled
    /// output `[B, H]` = `post_layernorm` of the class token).
    pub fn forward(&self, pixel_values: Tensor<4>) -> (Tensor<3>, Tensor<2>) {
        let x = self.embed(pixel_values);
        let x = self.encoder.forward(x);
        let pooled = self.pool(x.clone());
        (x, pooled)
    }

    /// transformers' `hidden_states[n]` `[B, 1 + patches, H]`: the encoder input (after
    /// `pre_layrnorm`) through the first `n` layers only.
    pub fn hidden_state(&self, pixel_values: Tensor<4>, n: usize) -> Tensor<3> {
        let mut x = self.embed(pixel_values);
        for layer in self.encoder.layers.iter().take(n) {
            x = layer.forward(x);
        }
        x
    }

    /// `post_layernorm` of the class token `[B, H]`.
    pub fn pool(&self, last_hidden_state: Tensor<3>) -> Tensor<2> {
        let [b, _, h] = last_hidden_state.dims();
        self.post_layernorm
            .forward(last_hidden_state.narrow(1, 0, 1))
            .reshape([b, h])
    }

    /// Patch and class embeddings with positions, through `pre_layrnorm`.
    fn embed(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let device = pixel_values.device();
        let pixel_values = pixel_values.cast(dtype_of(&self.embeddings.patch_embedding.weight));
        let patches = self.embeddings.patch_embedding.forward(pixel_values);
        let [b, h, gh, gw] = patches.dims();
        let tokens = patches.reshape([b, h, gh * gw]).swap_dims(1, 2);
        let class = self
            .embeddings
            .class_embedding
            .val()
            .reshape([1, 1, h])
            .expand([b, 1, h]);
        let x = Tensor::cat(vec![class, tokens], 1);
        let positions =
            Tensor::<1, Int>::arange(0..(gh * gw + 1) as i64, &device).reshape([1, gh * gw + 1]);
        let x = x + self.embeddings.position_embedding.forward(positions);
        self.pre_layrnorm.forward(x)
    }
}

/// transformers' `CLIPImageProcessor` on one image: shortest side resized to `size`
/// (bicubic), centre crop to `size` x `size`, CLIP normalisation -> `[1, 3, size, size]`.
/// The resize is Pillow's bicubic, bit-exact (`imaging::pil_resize`), as the processor's.
pub fn clip_preprocess(image: &RgbaImage, size: usize, device: &Device) -> Tensor<4> {
    let side = size as u32;
    let rgb = image::DynamicImage::ImageRgba8(image.clone()).to_rgb8();
    let (w, h) = rgb.dimensions();
    // transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
    // becomes `size`, the long one `int(size * long / short)`.
    let (short, long) = (w.min(h).max(1), w.max(h));
    let long = ((f64::from(side) * f64::from(long) / f64::from(short)) as u32).max(side);
    let (nw, nh) = if w <= h { (side, long) } else { (long, side) };
    let resized = resize_rgb(&rgb, nw, nh, PilFilter::Bicubic);
    let cropped = image::imageops::crop_imm(&resized, (nw - side) / 2, (nh - side) / 2, side, side)
        .to_image();
    let cropped = image::DynamicImage::ImageRgb8(cropped).to_rgba8();
    clip_normalize(rgb_to_tensor(&cropped, device))
}
