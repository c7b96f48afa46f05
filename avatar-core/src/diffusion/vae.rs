//! diffusers' `AutoencoderKL`: images <-> latents, driven by the folder's `config.json`.
//!
//! Module paths follow diffusers' names, so `vae/diffusion_pytorch_model.safetensors` loads as is.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use super::precision::{dtype_of, to_f32};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D, conv1x1, conv3x3, group_norm};
use super::weights::{KeyMap, component_weights, load_strict, load_strict_bytes, read_config};
use crate::error::{AvatarError, Result};
use crate::gemm_conv::conv2d_layer;
use crate::group_norm::group_norm_silu;

/// GroupNorm epsilon of the VAE (diffusers hard-codes 1e-6).
const VAE_NORM_EPS: f64 = 1e-6;

/// `AutoencoderKL` config from diffusers' `vae/config.json` (unknown keys ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels per resolution level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (the decoder has one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latent scale used by the pipelines (0.18215 for SD1.5, 0.13025 for SDXL).
    #[serde(default = "sd15_scale")]
    pub scaling_factor: f64,
    /// Image side the VAE was trained at (512 for SD1.5): the tile size of tiled decoding.
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Whether SDXL pipelines keep this VAE in f32 under half precision (diffusers' default
    /// `true`: SDXL's original VAE overflows in f16).
    #[serde(default = "yes")]
    pub force_upcast: bool,
    /// Latent shift (SD3/Flux VAEs; `None` for SD1.5/SDXL).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Whether the mid blocks have attention.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// Whether the 1x1 `quant_conv` exists.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether the 1x1 `post_quant_conv` exists.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Encoder block types (only `DownEncoderBlock2D` exists).
    #[serde(default)]
    pub down_block_types: Vec<String>,
    /// Decoder block types (only `UpDecoderBlock2D` exists).
    #[serde(default)]
    pub up_block_types: Vec<String>,
}

fn one() -> usize {
    1
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn sd15_scale() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(AvatarError::Config(format!("AutoencoderKL: {m}")));
        if self.block_out_channels.is_empty() {
            return bad("block_out_channels is empty".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| self.norm_num_groups == 0 || !c.is_multiple_of(self.norm_num_groups))
        {
            return bad(format!(
                "{c} channels are not divisible into {} groups",
                self.norm_num_groups
            ));
        }
        for kind in self.down_block_types.iter().chain(&self.up_block_types) {
            if kind != "DownEncoderBlock2D" && kind != "UpDecoderBlock2D" {
                return bad(format!("unsupported block type {kind}"));
            }
        }
        Ok(())
    }

    /// Builds the autoencoder with default-initialised weights.
    pub fn init(&self, device: &Device) -> Result<AutoencoderKL> {
        self.check()?;
        let groups = self.norm_num_groups;
        let resnet =
            |i: usize, o: usize| ResnetBlock2D::new(i, o, None, groups, VAE_NORM_EPS, device);
        let channels = &self.block_out_channels;
        let last = *channels.last().expect("checked");
        let mid = || MidBlock {
            resnets: vec![resnet(last, last), resnet(last, last)],
            attentions: if self.mid_block_add_attention {
                vec![VaeAttention::new(last, groups, device)]
            } else {
                vec![]
            },
        };

        let mut down_blocks = Vec::new();
        let mut input = channels[0];
        for (i, &output) in channels.iter().enumerate() {
            let resnets = (0..self.layers_per_block)
                .map(|j| resnet(if j == 0 { input } else { output }, output))
                .collect();
            let downsamplers = if i + 1 < channels.len() {
                vec![Downsample2D::vae(output, device)]
            } else {
                vec![]
            };
            down_blocks.push(EncoderBlock {
                resnets,
                downsamplers,
            });
            input = output;
        }
        let encoder = Encoder {
            conv_in: conv3x3(self.in_channels, channels[0], device),
            down_blocks,
            mid_block: mid(),
            conv_norm_out: group_norm(groups, last, VAE_NORM_EPS, device),
            conv_out: conv3x3(last, 2 * self.latent_channels, device),
        };

        let mut up_blocks = Vec::new();
        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut input = last;
        for (i, &output) in reversed.iter().enumerate() {
            let resnets = (0..=self.layers_per_block)
                .map(|j| resnet(if j == 0 { input } else { output }, output))
                .collect();
            let upsamplers = if i + 1 < reversed.len() {
                vec![Upsample2D::new(output, device)]
            } else {
                vec![]
            };
            up_blocks.push(DecoderBlock {
                resnets,
                upsamplers,
            });
            input = output;
        }
        let decoder = Decoder {
            conv_in: conv3x3(self.latent_channels, last, device),
            mid_block: mid(),
            up_blocks,
            conv_norm_out: group_norm(groups, channels[0], VAE_NORM_EPS, device),
            conv_out: conv3x3(channels[0], self.out_channels, device),
        };
        let latent = self.latent_channels;
        Ok(AutoencoderKL {
            encoder,
            decoder,
            quant_conv: self
                .use_quant_conv
                .then(|| conv1x1(2 * latent, 2 * latent, device)),
            post_quant_conv: self
                .use_post_quant_conv
                .then(|| conv1x1(latent, latent, device)),
        })
    }
}

/// Single-head self-attention over pixels with a residual (the VAE's mid-block attention).
#[derive(Module, Debug)]
pub struct VaeAttention {
    /// Norm before the projections.
    pub group_norm: GroupNorm,
    /// Query projection.
    pub to_q: Linear,
    /// Key projection.
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection (diffusers' `to_out.0`).
    pub to_out: Vec<Linear>,
}

impl VaeAttention {
    fn new(channels: usize, groups: usize, device: &Device) -> Self {
        let linear = || LinearConfig::new(channels, channels).init(device);
        VaeAttention {
            group_norm: group_norm(groups, channels, VAE_NORM_EPS, device),
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            to_out: vec![linear()],
        }
    }

    /// `[B, C, H, W] -> [B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = crate::group_norm::group_norm(x.clone(), &self.group_norm)
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let heads = |t: Tensor<3>| t.reshape([b, 1, h * w, c]);
        let q = heads(self.to_q.forward(tokens.clone()));
        let k = heads(self.to_k.forward(tokens.clone()));
        let v = heads(self.to_v.forward(tokens));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default()).reshape([
            b,
            h * w,
            c,
        ]);
        let out = self.to_out[0]
            .forward(out)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        out + x
    }
}

/// Resnet, attention, resnet at the lowest resolution.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Two resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// Zero or one attention.
    pub attentions: Vec<VaeAttention>,
}

impl MidBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        if let Some(attention) = self.attentions.first() {
            x = attention.forward(x);
        }
        self.resnets[1].forward(x, None)
    }
}

/// One encoder level (`DownEncoderBlock2D`).
#[derive(Module, Debug)]
pub struct EncoderBlock {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// A downsampler, except at the last level.
    pub downsamplers: Vec<Downsample2D>,
}

/// One decoder level (`UpDecoderBlock2D`).
#[derive(Module, Debug)]
pub struct DecoderBlock {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// An upsampler, except at the last level.
    pub upsamplers: Vec<Upsample2D>,
}

/// Image -> latent moments.
#[derive(Module, Debug)]
pub struct Encoder {
    /// Stem.
    pub conv_in: Conv2d,
    /// Levels.
    pub down_blocks: Vec<EncoderBlock>,
    /// Bottleneck.
    pub mid_block: MidBlock,
    /// Final norm.
    pub conv_norm_out: GroupNorm,
    /// To `2 * latent_channels` (mean and log-variance).
    pub conv_out: Conv2d,
}

impl Encoder {
    /// `[B, 3, H, W] -> [B, 2L, H/f, W/f]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = conv2d_layer(x, &self.conv_in);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            for down in &block.downsamplers {
                x = down.forward(x);
            }
        }
        let x = self.mid_block.forward(x);
        conv2d_layer(group_norm_silu(x, &self.conv_norm_out), &self.conv_out)
    }
}

/// Latent -> image.
#[derive(Module, Debug)]
pub struct Decoder {
    /// Stem.
    pub conv_in: Conv2d,
    /// Bottleneck.
    pub mid_block: MidBlock,
    /// Levels, lowest resolution first.
    pub up_blocks: Vec<DecoderBlock>,
    /// Final norm.
    pub conv_norm_out: GroupNorm,
    /// To image channels.
    pub conv_out: Conv2d,
}

impl Decoder {
    /// `[B, L, h, w] -> [B, 3, h*f, w*f]`.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.mid_block.forward(conv2d_layer(z, &self.conv_in));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(x, None);
            }
            for up in &block.upsamplers {
                x = up.forward(x);
            }
        }
        conv2d_layer(group_norm_silu(x, &self.conv_norm_out), &self.conv_out)
    }
}

/// Linear cross-fade of `next`'s first `extent` rows (`dim` 2) or columns (`dim` 3) with the
/// last ones of `previous` (diffusers' `blend_v` / `blend_h`).
fn blend_seam(previous: Tensor<4>, next: Tensor<4>, extent: usize, dim: usize) -> Tensor<4> {
    let extent = extent.min(previous.dims()[dim]).min(next.dims()[dim]);
    if extent == 0 {
        return next;
    }
    let device = next.device();
    let weights: Vec<f32> = (0..extent).map(|y| y as f32 / extent as f32).collect();
    let mut shape = [1, 1, 1, 1];
    shape[dim] = extent;
    let weight = Tensor::<1>::from_data(burn::tensor::TensorData::new(weights, [extent]), &device)
        .cast(next.dtype())
        .reshape(shape);
    let pd = previous.dims()[dim];
    let nd = next.dims()[dim];
    let tail = previous.narrow(dim, pd - extent, extent);
    let head = next.clone().narrow(dim, 0, extent);
    let blended = tail * (weight.clone().neg().add_scalar(1.0)) + head * weight;
    if nd == extent {
        blended
    } else {
        Tensor::cat(vec![blended, next.narrow(dim, extent, nd - extent)], dim)
    }
}

/// The encoder's diagonal Gaussian over latents.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    /// Mean `[B, L, h, w]`.
    pub mean: Tensor<4>,
    /// Log-variance, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<4>,
}

impl LatentDistribution {
    /// Standard deviation `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<4> {
        self.logvar.clone().mul_scalar(0.5).exp()
    }

    /// `mean + std * noise` (the caller draws `noise` from its own seeded stream).
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std() * noise
    }
}

/// A KL autoencoder.
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    /// Image -> moments.
    pub encoder: Encoder,
    /// Latent -> image.
    pub decoder: Decoder,
    /// 1x1 on the moments.
    pub quant_conv: Option<Conv2d>,
    /// 1x1 on the latents before decoding.
    pub post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    /// Loads `config.json` + `diffusion_pytorch_model.safetensors` from a diffusers `vae/` folder.
    pub fn load(dir: &Path, device: &Device) -> Result<(VaeConfig, Self)> {
        let config: VaeConfig = read_config(&dir.join("config.json"))?;
        let model = load_strict(
            config.init(device)?,
            &component_weights(dir, "diffusion_pytorch_model")?,
            &KeyMap::default(),
        )?;
        Ok((config, model))
    }

    /// Decodes in overlapping tiles of `tile_latent` latent pixels (overlap `overlap`, 0.25 in
    /// diffusers) and blends the seams linearly, as diffusers' `tiled_decode` does: memory stays
    /// bounded by one tile for any image size. `factor` is the VAE's upscaling (8 for SD).
    pub fn decode_tiled(
        &self,
        latents: Tensor<4>,
        tile_latent: usize,
        factor: usize,
        overlap: f64,
    ) -> Tensor<4> {
        let [b, c, h, w] = latents.dims();
        let tile_sample = tile_latent * factor;
        let stride = ((tile_latent as f64) * (1.0 - overlap)) as usize;
        let blend = ((tile_sample as f64) * overlap) as usize;
        let keep = tile_sample - blend;
        let mut rows: Vec<Vec<Tensor<4>>> = Vec::new();
        for i in (0..h).step_by(stride.max(1)) {
            let mut row = Vec::new();
            for j in (0..w).step_by(stride.max(1)) {
                let tile = latents.clone().slice([
                    0..b,
                    0..c,
                    i..(i + tile_latent).min(h),
                    j..(j + tile_latent).min(w),
                ]);
                row.push(self.decode_in_dtype(tile));
            }
            rows.push(row);
        }
        // Blend each tile with the (already blended) tiles above and to the left, in order.
        let mut result_rows = Vec::new();
        for i in 0..rows.len() {
            let mut cropped = Vec::new();
            for j in 0..rows[i].len() {
                let mut tile = rows[i][j].clone();
                if i > 0 {
                    tile = blend_seam(rows[i - 1][j].clone(), tile, blend, 2);
                }
                if j > 0 {
                    tile = blend_seam(rows[i][j - 1].clone(), tile, blend, 3);
                }
                rows[i][j] = tile.clone();
                let [tb, tc, th, tw] = tile.dims();
                cropped.push(tile.slice([0..tb, 0..tc, 0..th.min(keep), 0..tw.min(keep)]));
            }
            result_rows.push(Tensor::cat(cropped, 3));
        }
        to_f32(Tensor::cat(result_rows, 2))
    }

    /// Loads diffusers-layout safetensors bytes (e.g. converted from a single file).
    pub fn load_bytes(
        config: &VaeConfig,
        bytes: Vec<u8>,
        label: &str,
        device: &Device,
    ) -> Result<Self> {
        load_strict_bytes(config.init(device)?, bytes, label, &KeyMap::default())
    }

    /// Images `[B, 3, H, W]` in [-1, 1] -> the latent distribution (unscaled).
    pub fn encode(&self, images: Tensor<4>) -> LatentDistribution {
        let images = images.cast(dtype_of(&self.encoder.conv_in.weight));
        let mut moments = self.encoder.forward(images);
        if let Some(conv) = &self.quant_conv {
            moments = conv2d_layer(moments, conv);
        }
        let moments = to_f32(moments);
        let [b, c, h, w] = moments.dims();
        let half = c / 2;
        let mean = moments.clone().slice([0..b, 0..half, 0..h, 0..w]);
        let logvar = moments
            .slice([0..b, half..c, 0..h, 0..w])
            .clamp(-30.0, 20.0);
        LatentDistribution { mean, logvar }
    }

    /// Latents `[B, L, h, w]` (unscaled) -> images `[B, 3, H, W]` in about [-1, 1].
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        to_f32(self.decode_in_dtype(latents))
    }

    /// [`AutoencoderKL::decode`] in the weights' dtype (tiles are blended in it too).
    fn decode_in_dtype(&self, latents: Tensor<4>) -> Tensor<4> {
        let latents = latents.cast(dtype_of(&self.decoder.conv_in.weight));
        let z = match &self.post_quant_conv {
            Some(conv) => conv2d_layer(latents, conv),
            None => latents,
        };
        self.decoder.forward(z)
    }
}
