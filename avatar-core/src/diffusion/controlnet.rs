//! diffusers' `ControlNetModel`: a copy of the UNet's stem, time embedding, down blocks and mid
//! block that also sees a conditioning image (pose, edges, depth, InstantID's keypoints) through
//! a small convolutional embedding, and returns zero-convolved residuals for the UNet's skip
//! connections and mid block, scaled by the conditioning scale (guess mode off).

use std::path::Path;

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use super::attention::AttentionInjection;
use super::embeddings::TimestepEmbedding;
use super::precision::dtype_of;
use super::resnet::{conv1x1, conv3x3};
use super::unet::{
    AddedConditioning, ControlResiduals, TimeShape, UNet2DConditionModel, UNetBlock, UNetConfig,
    down_pass, embed_time, mid_pass,
};
use super::weights::{component_weights, load_strict, read_config};
use crate::activation::silu;
use crate::error::{AvatarError, Result};
use crate::gemm_conv::conv2d_layer;

/// The ControlNet-only keys of `config.json` (the rest is read as a [`UNetConfig`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ControlNetExtras {
    /// Channels of the conditioning image.
    #[serde(default = "three")]
    pub conditioning_channels: usize,
    /// Widths of the conditioning embedding's convolutions.
    #[serde(default = "embedding_channels")]
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// `"rgb"` or `"bgr"`.
    #[serde(default = "rgb")]
    pub controlnet_conditioning_channel_order: String,
    /// Residuals averaged over space (shuffle ControlNets).
    #[serde(default)]
    pub global_pool_conditions: bool,
}

fn three() -> usize {
    3
}
fn embedding_channels() -> Vec<usize> {
    vec![16, 32, 96, 256]
}
fn rgb() -> String {
    "rgb".into()
}

/// A ControlNet's config: the UNet part and the ControlNet extras.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetConfig {
    /// Stem, time embedding, down and mid blocks (`up_block_types` mirrored from the down ones).
    pub unet: UNetConfig,
    /// Conditioning embedding and channel order.
    pub extras: ControlNetExtras,
}

impl ControlNetConfig {
    /// Parses diffusers' `controlnet/config.json`.
    pub fn from_json(value: serde_json::Value, label: &str) -> Result<Self> {
        let bad = |e: serde_json::Error| AvatarError::Config(format!("{label}: {e}"));
        let mut unet = value.clone();
        if let Some(object) = unet.as_object_mut() {
            let mirrored: Vec<serde_json::Value> = object
                .get("down_block_types")
                .and_then(|v| v.as_array())
                .map(|types| {
                    types
                        .iter()
                        .rev()
                        .map(|t| {
                            let up = t.as_str().unwrap_or("").replace("Down", "Up");
                            serde_json::Value::String(up)
                        })
                        .collect()
                })
                .unwrap_or_default();
            object.insert("up_block_types".into(), mirrored.into());
            let channels = object.get("in_channels").cloned().unwrap_or(4.into());
            object.insert("out_channels".into(), channels);
        }
        let config = ControlNetConfig {
            unet: serde_json::from_value(unet).map_err(bad)?,
            extras: serde_json::from_value(value).map_err(bad)?,
        };
        if !matches!(
            config.extras.controlnet_conditioning_channel_order.as_str(),
            "rgb" | "bgr"
        ) {
            return Err(AvatarError::Config(format!(
                "{label}: unknown controlnet_conditioning_channel_order {}",
                config.extras.controlnet_conditioning_channel_order
            )));
        }
        if config.extras.conditioning_embedding_out_channels.is_empty() {
            return Err(AvatarError::Config(format!(
                "{label}: conditioning_embedding_out_channels is empty"
            )));
        }
        Ok(config)
    }

    /// Builds the ControlNet with default-initialised weights.
    pub fn init(&self, device: &Device) -> Result<ControlNetModel> {
        // The UNet checks (block types, heads, added conditioning) apply as they are.
        self.unet.check()?;
        let down = self.unet.init_down_path(device);
        let widths = &self.extras.conditioning_embedding_out_channels;
        let first = self.unet.block_out_channels[0];
        let mut blocks = Vec::new();
        for pair in widths.windows(2) {
            blocks.push(conv3x3(pair[0], pair[0], device));
            blocks.push(
                Conv2dConfig::new([pair[0], pair[1]], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
        }
        let controlnet_down_blocks = skip_channels(&self.unet)
            .into_iter()
            .map(|c| conv1x1(c, c, device))
            .collect();
        let last = *self.unet.block_out_channels.last().unwrap_or(&first);
        Ok(ControlNetModel {
            conv_in: down.conv_in,
            time_embedding: down.time_embedding,
            add_embedding: down.add_embedding,
            controlnet_cond_embedding: ControlNetConditioningEmbedding {
                conv_in: conv3x3(self.extras.conditioning_channels, widths[0], device),
                blocks,
                conv_out: conv3x3(widths[widths.len() - 1], first, device),
            },
            down_blocks: down.down_blocks,
            controlnet_down_blocks,
            mid_block: down.mid_block,
            controlnet_mid_block: conv1x1(last, last, device),
            time: down.time,
            bgr: self.extras.controlnet_conditioning_channel_order == "bgr",
            global_pool: self.extras.global_pool_conditions,
        })
    }
}

/// Channels of every skip connection of a UNet with this config, `conv_in`'s first.
fn skip_channels(config: &UNetConfig) -> Vec<usize> {
    let channels = &config.block_out_channels;
    let mut out = vec![channels[0]];
    for (i, &c) in channels.iter().enumerate() {
        out.extend(std::iter::repeat_n(c, config.layers_per_block));
        if i + 1 < channels.len() {
            out.push(c);
        }
    }
    out
}

/// The conditioning image's encoder: `conv_in`, pairs of convolutions (the second one halving
/// the size), SiLU after each, and the zero-initialised `conv_out` to the UNet's width.
#[derive(Module, Debug)]
pub struct ControlNetConditioningEmbedding {
    /// First convolution.
    pub conv_in: Conv2d,
    /// The middle convolutions.
    pub blocks: Vec<Conv2d>,
    /// To the UNet's first width.
    pub conv_out: Conv2d,
}

impl ControlNetConditioningEmbedding {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = silu(conv2d_layer(x, &self.conv_in));
        for block in &self.blocks {
            x = silu(conv2d_layer(x, block));
        }
        conv2d_layer(x, &self.conv_out)
    }
}

/// A ControlNet.
#[derive(Module, Debug)]
pub struct ControlNetModel {
    /// Stem.
    pub conv_in: Conv2d,
    /// Timestep MLP.
    pub time_embedding: TimestepEmbedding,
    /// SDXL's `text_time` embedding.
    pub add_embedding: Option<TimestepEmbedding>,
    /// The conditioning image's encoder.
    pub controlnet_cond_embedding: ControlNetConditioningEmbedding,
    /// Down levels (as the UNet's).
    pub down_blocks: Vec<UNetBlock>,
    /// One 1x1 zero convolution per skip connection.
    pub controlnet_down_blocks: Vec<Conv2d>,
    /// Bottleneck.
    pub mid_block: UNetBlock,
    /// 1x1 zero convolution of the mid block's output.
    pub controlnet_mid_block: Conv2d,
    time: TimeShape,
    bgr: bool,
    global_pool: bool,
}

impl ControlNetModel {
    /// Loads `config.json` + `diffusion_pytorch_model.safetensors` from a diffusers ControlNet
    /// folder.
    pub fn load(dir: &Path, device: &Device) -> Result<(ControlNetConfig, Self)> {
        let dir = &*crate::hub::resolve(dir)?;
        let path = dir.join("config.json");
        let value: serde_json::Value = read_config(&path)?;
        let config = ControlNetConfig::from_json(value, &path.display().to_string())?;
        let model = load_strict(
            config.init(device)?,
            &component_weights(dir, "diffusion_pytorch_model")?,
            &UNet2DConditionModel::key_map(),
        )?;
        Ok((config, model))
    }

    /// Residuals for the UNet from latents `sample` `[B, C, h, w]` (already scaled by the
    /// scheduler), `context` `[B, T, D]` (the prompt, or InstantID's face tokens), the
    /// conditioning image `cond` `[B, 3, 8h, 8w]` in [0, 1], at `scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        context: Tensor<3>,
        added: Option<&AddedConditioning>,
        cond: Tensor<4>,
        scale: f32,
    ) -> Result<ControlResiduals> {
        let device = sample.device();
        let [b, _, h, w] = sample.dims();
        let [cb, _, ch, cw] = cond.dims();
        // Each pair of embedding convolutions halves the image (8x for the real models).
        let factor = 1 << (self.controlnet_cond_embedding.blocks.len() / 2);
        if cb != b || ch != factor * h || cw != factor * w {
            return Err(AvatarError::invalid(
                "control_image",
                format!(
                    "conditioning image {:?} does not fit latents {:?}",
                    cond.dims(),
                    sample.dims()
                ),
            ));
        }
        let cond = if self.bgr { cond.flip([1]) } else { cond };
        let temb = embed_time(
            &self.time_embedding,
            self.add_embedding.as_ref(),
            self.time,
            timesteps,
            added,
            &device,
        )?;
        let dtype = dtype_of(&self.conv_in.weight);
        let context = context.cast(dtype);
        let x = conv2d_layer(sample.cast(dtype), &self.conv_in)
            + self.controlnet_cond_embedding.forward(cond.cast(dtype));
        let injection = AttentionInjection::default();
        let (x, skips) = down_pass(&self.down_blocks, x, &temb, &context, &injection);
        let mid = mid_pass(&self.mid_block, x, &temb, &context, &injection);
        let finish = |t: Tensor<4>| {
            let t = t.mul_scalar(scale);
            if self.global_pool {
                t.mean_dim(2).mean_dim(3)
            } else {
                t
            }
        };
        let down = skips
            .into_iter()
            .zip(&self.controlnet_down_blocks)
            .map(|(skip, conv)| finish(conv2d_layer(skip, conv)))
            .collect();
        Ok(ControlResiduals {
            down,
            mid: finish(conv2d_layer(mid, &self.controlnet_mid_block)),
        })
    }

    /// Checks that this ControlNet's residuals fit `unet` (same widths and skip layout, same
    /// cross-attention width), naming the mismatch.
    pub fn check_compatible(
        &self,
        config: &ControlNetConfig,
        unet: &UNetConfig,
        label: &str,
    ) -> Result<()> {
        let mismatch = |what: &str| {
            Err(AvatarError::Config(format!(
                "{label}: the ControlNet's {what} differs from the UNet's: made for another base model?"
            )))
        };
        let c = &config.unet;
        if c.block_out_channels != unet.block_out_channels {
            return mismatch("block_out_channels");
        }
        if c.layers_per_block != unet.layers_per_block {
            return mismatch("layers_per_block");
        }
        if c.in_channels != unet.in_channels {
            return mismatch("in_channels");
        }
        if c.addition_embed_type != unet.addition_embed_type {
            return mismatch("addition_embed_type");
        }
        if c.cross_attention_dim != unet.cross_attention_dim {
            return mismatch("cross_attention_dim");
        }
        Ok(())
    }
}
