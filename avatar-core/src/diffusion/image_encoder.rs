//! transformers' `CLIPVisionModelWithProjection`: the image encoder of IP-Adapter (ViT-H/14 for
//! SD1.5 and the Plus adapters, ViT-bigG/14 for SDXL's base adapter), loaded from a transformers
//! folder (`config.json` + `model.safetensors`), as diffusers' `load_ip_adapter` does with
//! `image_encoder_folder`.

use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use image::RgbaImage;
use serde::Deserialize;

use super::clip_vision::{ClipVisionConfig, ClipVisionTransformer, clip_preprocess};
use super::precision::to_f32;
use super::weights::{KeyMap, component_weights, load_strict, read_config};
use crate::error::Result;

/// `CLIPVisionModelWithProjection`'s config: the vision tower and the projection width.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImageEncoderConfig {
    /// The vision tower.
    #[serde(flatten)]
    pub vision: ClipVisionConfig,
    /// Width of `image_embeds`.
    pub projection_dim: usize,
}

impl ImageEncoderConfig {
    /// Builds the encoder with default-initialised weights.
    pub fn init(&self, device: &Device) -> Result<ImageEncoder> {
        Ok(ImageEncoder {
            vision_model: self.vision.init(device)?,
            visual_projection: LinearConfig::new(self.vision.hidden_size, self.projection_dim)
                .with_bias(false)
                .init(device),
        })
    }
}

/// A CLIP image encoder with its projection.
#[derive(Module, Debug)]
pub struct ImageEncoder {
    /// The vision tower.
    pub vision_model: ClipVisionTransformer,
    /// Pooled output -> `image_embeds`.
    pub visual_projection: Linear,
}

impl ImageEncoder {
    /// Loads `config.json` + `model.safetensors` from a transformers folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let dir = &*crate::hub::resolve(dir)?;
        let config: ImageEncoderConfig = read_config(&dir.join("config.json"))?;
        load_strict(
            config.init(device)?,
            &component_weights(dir, "model")?,
            &KeyMap::default().ignore("position_ids"),
        )
    }

    /// The input side in pixels.
    pub fn image_size(&self) -> usize {
        self.vision_model.image_size()
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.visual_projection.weight.dims()[0]
    }

    /// Width of `image_embeds`.
    pub fn projection_dim(&self) -> usize {
        self.visual_projection.weight.dims()[1]
    }

    /// `CLIPImageProcessor` at this encoder's input size.
    pub fn preprocess(&self, image: &RgbaImage, device: &Device) -> Tensor<4> {
        clip_preprocess(image, self.image_size(), device)
    }

    /// `image_embeds` `[B, projection_dim]`: the projected, pooled class token.
    pub fn image_embeds(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        let (_, pooled) = self.vision_model.forward(pixel_values);
        to_f32(self.visual_projection.forward(pooled))
    }

    /// `hidden_states[-2]` `[B, 1 + patches, hidden]`: the second-to-last layer's output, which
    /// the Plus and Full-Face adapters take.
    pub fn penultimate_hidden_states(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let layers = self.vision_model.encoder.layers.len();
        to_f32(
            self.vision_model
                .hidden_state(pixel_values, layers.saturating_sub(1)),
        )
    }
}
