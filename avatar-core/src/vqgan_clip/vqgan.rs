//! taming-transformers' `VQModel` (VQGAN): encoder, decoder and vector quantiser with its codebook.
//!
//! Module paths follow taming's names (`encoder.down.0.block.0.conv1`, `decoder.up.1.attn.0.q`,
//! `quantize.embedding`, ...), so the official Lightning `.ckpt` files (a `state_dict` inside,
//! training-loss keys ignored) and safetensors conversions load as they are. The residual blocks and
//! resamplers are the diffusion VAE's (same layers; taming's `nin_shortcut` is diffusers'
//! `conv_shortcut`).

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, EmbeddingConfig, GroupNorm};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor};
use serde::Deserialize;

use crate::diffusion::resnet::{
    Downsample2D, ResnetBlock2D, Upsample2D, conv1x1, conv3x3, group_norm,
};
use crate::diffusion::weights::{KeyMap, is_safetensors, load_strict, load_strict_pytorch};
use crate::error::{AvatarError, Result};
use crate::gemm_conv::conv2d_layer;
use crate::group_norm::group_norm_silu;

/// taming's `Normalize`: GroupNorm(32, eps 1e-6).
const GROUPS: usize = 32;
const NORM_EPS: f64 = 1e-6;

/// A VQGAN's architecture: taming's `ddconfig` plus the codebook size (`n_embed` x `embed_dim`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VqganConfig {
    /// Base channel count.
    pub ch: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_ch: usize,
    /// Channel multiplier per resolution level (`[1, 1, 2, 2, 4]`: 5 levels, downsampling 16x).
    pub ch_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Resolutions (relative to `resolution`) whose levels have self-attention.
    #[serde(default)]
    pub attn_resolutions: Vec<usize>,
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Training resolution: only decides where the attention layers sit.
    pub resolution: usize,
    /// Channels of the encoder output / decoder input.
    pub z_channels: usize,
    /// Whether the encoder outputs twice `z_channels` (a KL model, not a VQGAN).
    #[serde(default)]
    pub double_z: bool,
    /// Width of a codebook entry.
    pub embed_dim: usize,
    /// Number of codebook entries.
    pub n_embed: usize,
}

fn three() -> usize {
    3
}

/// The parts of taming's yaml we read: `model: {target, params: {embed_dim, n_embed, ddconfig}}`.
#[derive(Deserialize)]
struct TamingYaml {
    model: TamingModel,
}

#[derive(Deserialize)]
struct TamingModel {
    #[serde(default)]
    target: Option<String>,
    params: TamingParams,
}

#[derive(Deserialize)]
struct TamingParams {
    embed_dim: usize,
    n_embed: usize,
    ddconfig: serde_yaml_ng::Value,
}

impl VqganConfig {
    /// taming's `vqgan_imagenet_f16_16384.yaml` (the model VQGAN+CLIP notebooks use).
    pub fn imagenet_f16_16384() -> Self {
        VqganConfig {
            ch: 128,
            out_ch: 3,
            ch_mult: vec![1, 1, 2, 2, 4],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            in_channels: 3,
            resolution: 256,
            z_channels: 256,
            double_z: false,
            embed_dim: 256,
            n_embed: 16384,
        }
    }

    /// Parses taming's model yaml (`model.params.{embed_dim, n_embed, ddconfig}`).
    pub fn from_taming_yaml(text: &str) -> Result<Self> {
        let bad = |m: String| AvatarError::Config(format!("VQGAN yaml: {m}"));
        let yaml: TamingYaml = serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(target) = &yaml.model.target
            && !target.ends_with(".VQModel")
        {
            return Err(bad(format!(
                "model.target {target} is not supported (only taming.models.vqgan.VQModel)"
            )));
        }
        let mut dd = match yaml.model.params.ddconfig {
            serde_yaml_ng::Value::Mapping(m) => m,
            _ => return Err(bad("model.params.ddconfig is not a mapping".into())),
        };
        dd.insert("embed_dim".into(), yaml.model.params.embed_dim.into());
        dd.insert("n_embed".into(), yaml.model.params.n_embed.into());
        let config: VqganConfig = serde_yaml_ng::from_value(serde_yaml_ng::Value::Mapping(dd))
            .map_err(|e| bad(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// Reads [`VqganConfig::from_taming_yaml`] from a file.
    pub fn from_taming_yaml_file(path: &Path) -> Result<Self> {
        let path = &*crate::hub::resolve(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| AvatarError::io(path, e))?;
        Self::from_taming_yaml(&text)
            .map_err(|e| AvatarError::Config(format!("{}: {e}", path.display())))
    }

    /// The downsampling factor between image and latent (`2^(levels - 1)`, 16 for f16 models).
    pub fn factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(AvatarError::Config(format!("VQGAN: {m}")));
        if self.double_z {
            return bad("double_z is set: this is a KL autoencoder, not a VQGAN".into());
        }
        if self.ch_mult.is_empty() || self.num_res_blocks == 0 {
            return bad("ch_mult is empty or num_res_blocks is 0".into());
        }
        if let Some(m) = self
            .ch_mult
            .iter()
            .find(|&&m| m == 0 || !(self.ch * m).is_multiple_of(GROUPS))
        {
            return bad(format!(
                "{} channels (ch {} x {m}) do not split into {GROUPS} groups",
                self.ch * m,
                self.ch
            ));
        }
        if self.n_embed == 0 || self.embed_dim == 0 || self.z_channels == 0 {
            return bad("n_embed, embed_dim and z_channels must be positive".into());
        }
        Ok(())
    }

    /// Builds the model with default-initialised weights.
    pub fn init(&self, device: &Device) -> Result<VqModel> {
        self.check()?;
        let resnet = |i: usize, o: usize| ResnetBlock2D::new(i, o, None, GROUPS, NORM_EPS, device);
        let levels = self.ch_mult.len();
        let mid = |c: usize| MidBlock {
            block_1: resnet(c, c),
            attn_1: AttnBlock::new(c, device),
            block_2: resnet(c, c),
        };

        let mut down = Vec::new();
        let mut resolution = self.resolution;
        let mut block_in = self.ch;
        for (level, &mult) in self.ch_mult.iter().enumerate() {
            let block_out = self.ch * mult;
            let attention = self.attn_resolutions.contains(&resolution);
            let block = (0..self.num_res_blocks)
                .map(|j| resnet(if j == 0 { block_in } else { block_out }, block_out))
                .collect();
            let attn = if attention {
                (0..self.num_res_blocks)
                    .map(|_| AttnBlock::new(block_out, device))
                    .collect()
            } else {
                vec![]
            };
            let downsample = (level + 1 < levels).then(|| Downsample2D::vae(block_out, device));
            down.push(EncoderLevel {
                block,
                attn,
                downsample,
            });
            block_in = block_out;
            if level + 1 < levels {
                resolution /= 2;
            }
        }
        let encoder = Encoder {
            conv_in: conv3x3(self.in_channels, self.ch, device),
            down,
            mid: mid(block_in),
            norm_out: group_norm(GROUPS, block_in, NORM_EPS, device),
            conv_out: conv3x3(block_in, self.z_channels, device),
        };

        // taming builds the decoder's levels from the lowest resolution up but stores them by
        // level index (up.0 is the full-resolution level): build in that order, then reverse.
        let top = self.ch * self.ch_mult[levels - 1];
        let mut block_in = top;
        let mut resolution = self.resolution >> (levels - 1);
        let mut up = Vec::new();
        for level in (0..levels).rev() {
            let block_out = self.ch * self.ch_mult[level];
            let attention = self.attn_resolutions.contains(&resolution);
            let block = (0..=self.num_res_blocks)
                .map(|j| resnet(if j == 0 { block_in } else { block_out }, block_out))
                .collect();
            let attn = if attention {
                (0..=self.num_res_blocks)
                    .map(|_| AttnBlock::new(block_out, device))
                    .collect()
            } else {
                vec![]
            };
            let upsample = (level != 0).then(|| Upsample2D::new(block_out, device));
            up.push(DecoderLevel {
                block,
                attn,
                upsample,
            });
            block_in = block_out;
            if level != 0 {
                resolution *= 2;
            }
        }
        up.reverse();
        let decoder = Decoder {
            conv_in: conv3x3(self.z_channels, top, device),
            mid: mid(top),
            up,
            norm_out: group_norm(GROUPS, block_in, NORM_EPS, device),
            conv_out: conv3x3(block_in, self.out_ch, device),
        };
        Ok(VqModel {
            encoder,
            decoder,
            quantize: VectorQuantizer {
                embedding: EmbeddingConfig::new(self.n_embed, self.embed_dim).init(device),
            },
            quant_conv: conv1x1(self.z_channels, self.embed_dim, device),
            post_quant_conv: conv1x1(self.embed_dim, self.z_channels, device),
        })
    }
}

/// taming's single-head spatial self-attention with 1x1 convolution projections and a residual.
#[derive(Module, Debug)]
pub struct AttnBlock {
    /// Norm before the projections.
    pub norm: GroupNorm,
    /// Query projection.
    pub q: Conv2d,
    /// Key projection.
    pub k: Conv2d,
    /// Value projection.
    pub v: Conv2d,
    /// Output projection.
    pub proj_out: Conv2d,
}

impl AttnBlock {
    fn new(channels: usize, device: &Device) -> Self {
        AttnBlock {
            norm: group_norm(GROUPS, channels, NORM_EPS, device),
            q: conv1x1(channels, channels, device),
            k: conv1x1(channels, channels, device),
            v: conv1x1(channels, channels, device),
            proj_out: conv1x1(channels, channels, device),
        }
    }

    /// `[B, C, H, W] -> [B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let normed = crate::group_norm::group_norm(x.clone(), &self.norm);
        let tokens = |t: Tensor<4>| t.reshape([b, 1, c, h * w]).swap_dims(2, 3);
        let q = tokens(conv2d_layer(normed.clone(), &self.q));
        let k = tokens(conv2d_layer(normed.clone(), &self.k));
        let v = tokens(conv2d_layer(normed, &self.v));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default())
            .swap_dims(2, 3)
            .reshape([b, c, h, w]);
        x + conv2d_layer(out, &self.proj_out)
    }
}

/// Resnet, attention, resnet at the lowest resolution.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// First resnet.
    pub block_1: ResnetBlock2D,
    /// Attention.
    pub attn_1: AttnBlock,
    /// Second resnet.
    pub block_2: ResnetBlock2D,
}

impl MidBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.block_1.forward(x, None);
        let x = self.attn_1.forward(x);
        self.block_2.forward(x, None)
    }
}

/// Residual blocks, each followed by an attention when the level has them.
fn blocks_with_attention(
    blocks: &[ResnetBlock2D],
    attention: &[AttnBlock],
    mut x: Tensor<4>,
) -> Tensor<4> {
    for (i, block) in blocks.iter().enumerate() {
        x = block.forward(x, None);
        if let Some(attn) = attention.get(i) {
            x = attn.forward(x);
        }
    }
    x
}

/// One encoder level (`encoder.down.N`).
#[derive(Module, Debug)]
pub struct EncoderLevel {
    /// Residual blocks.
    pub block: Vec<ResnetBlock2D>,
    /// One attention per block at attention resolutions, else none.
    pub attn: Vec<AttnBlock>,
    /// Halves the resolution, except at the last level.
    pub downsample: Option<Downsample2D>,
}

/// One decoder level (`decoder.up.N`; `up.0` is the full-resolution one).
#[derive(Module, Debug)]
pub struct DecoderLevel {
    /// Residual blocks.
    pub block: Vec<ResnetBlock2D>,
    /// One attention per block at attention resolutions, else none.
    pub attn: Vec<AttnBlock>,
    /// Doubles the resolution, except at level 0.
    pub upsample: Option<Upsample2D>,
}

/// Image -> latent.
#[derive(Module, Debug)]
pub struct Encoder {
    /// Stem.
    pub conv_in: Conv2d,
    /// Levels, full resolution first.
    pub down: Vec<EncoderLevel>,
    /// Bottleneck.
    pub mid: MidBlock,
    /// Final norm.
    pub norm_out: GroupNorm,
    /// To `z_channels`.
    pub conv_out: Conv2d,
}

impl Encoder {
    /// `[B, 3, H, W] -> [B, z_channels, H/f, W/f]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = conv2d_layer(x, &self.conv_in);
        for level in &self.down {
            x = blocks_with_attention(&level.block, &level.attn, x);
            if let Some(down) = &level.downsample {
                x = down.forward(x);
            }
        }
        let x = self.mid.forward(x);
        conv2d_layer(group_norm_silu(x, &self.norm_out), &self.conv_out)
    }
}

/// Latent -> image.
#[derive(Module, Debug)]
pub struct Decoder {
    /// Stem.
    pub conv_in: Conv2d,
    /// Bottleneck.
    pub mid: MidBlock,
    /// Levels by index (run from the last, lowest resolution, to `up.0`).
    pub up: Vec<DecoderLevel>,
    /// Final norm.
    pub norm_out: GroupNorm,
    /// To image channels.
    pub conv_out: Conv2d,
}

impl Decoder {
    /// `[B, z_channels, h, w] -> [B, 3, h*f, w*f]`.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.mid.forward(conv2d_layer(z, &self.conv_in));
        for level in self.up.iter().rev() {
            x = blocks_with_attention(&level.block, &level.attn, x);
            if let Some(up) = &level.upsample {
                x = up.forward(x);
            }
        }
        conv2d_layer(group_norm_silu(x, &self.norm_out), &self.conv_out)
    }
}

/// The codebook (`quantize.embedding.weight`, `[n_embed, embed_dim]`).
#[derive(Module, Debug)]
pub struct VectorQuantizer {
    /// Codebook entries.
    pub embedding: Embedding,
}

impl VectorQuantizer {
    /// The codebook `[n_embed, embed_dim]`.
    pub fn codebook(&self) -> Tensor<2> {
        self.embedding.weight.val()
    }

    /// Index of the nearest entry (squared Euclidean distance) for each vector of `[N, D]`.
    pub fn nearest(&self, vectors: Tensor<2>) -> Tensor<1, Int> {
        let codebook = self.codebook();
        let distances = vectors.clone().square().sum_dim(1)
            + codebook.clone().square().sum_dim(1).transpose()
            - vectors.matmul(codebook.transpose()).mul_scalar(2.0);
        distances.argmin(1).squeeze_dim(1)
    }

    /// Replaces every vector of `[B, D, h, w]` by its nearest entry. Gradients pass straight
    /// through to the input (VQGAN+CLIP's `vector_quantize`); also returns the indices `[B, h, w]`.
    pub fn quantize(&self, z: Tensor<4>) -> (Tensor<4>, Tensor<3, Int>) {
        let [b, d, h, w] = z.dims();
        let flat = z.clone().permute([0, 2, 3, 1]).reshape([b * h * w, d]);
        let indices = self.nearest(flat.detach());
        let quantized = self
            .codebook()
            .select(0, indices.clone())
            .reshape([b, h, w, d])
            .permute([0, 3, 1, 2]);
        let straight_through = z.clone() + (quantized - z).detach();
        (straight_through, indices.reshape([b, h, w]))
    }

    /// Entries by index: `[B, h, w]` -> `[B, D, h, w]`.
    pub fn lookup(&self, indices: Tensor<3, Int>) -> Tensor<4> {
        let [b, h, w] = indices.dims();
        let d = self.codebook().dims()[1];
        self.codebook()
            .select(0, indices.reshape([b * h * w]))
            .reshape([b, h, w, d])
            .permute([0, 3, 1, 2])
    }

    /// Per-channel minimum and maximum over the codebook, `[1, D, 1, 1]` each (the range z is
    /// clamped to during optimisation).
    pub fn range(&self) -> (Tensor<4>, Tensor<4>) {
        let codebook = self.codebook();
        let d = codebook.dims()[1];
        (
            codebook.clone().min_dim(0).reshape([1, d, 1, 1]),
            codebook.max_dim(0).reshape([1, d, 1, 1]),
        )
    }
}

/// A VQGAN.
#[derive(Module, Debug)]
pub struct VqModel {
    /// Image -> latent.
    pub encoder: Encoder,
    /// Latent -> image.
    pub decoder: Decoder,
    /// The codebook.
    pub quantize: VectorQuantizer,
    /// `z_channels -> embed_dim` before quantising.
    pub quant_conv: Conv2d,
    /// `embed_dim -> z_channels` before decoding.
    pub post_quant_conv: Conv2d,
}

impl VqModel {
    /// Loads weights for `config`: a taming Lightning `.ckpt` (its `state_dict`), a PyTorch state
    /// dict (`.pt`, `.pth`, `.bin`) or safetensors; the training loss's keys (`loss.*`) are ignored,
    /// anything else missing, unexpected or mis-shaped is an error listing the keys.
    pub fn load(config: &VqganConfig, weights: &Path, device: &Device) -> Result<Self> {
        let weights = &*crate::hub::resolve(weights)?;
        let model = config.init(device)?;
        let keys = KeyMap::default()
            .remap(r"\.nin_shortcut\.", ".conv_shortcut.")
            .ignore_prefix("loss.");
        if is_safetensors(weights) {
            return load_strict(model, weights, &keys);
        }
        if !weights.is_file() {
            return Err(AvatarError::io(
                weights,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        // Lightning checkpoints nest the weights under `state_dict`; plain state dicts do not.
        match load_strict_pytorch(model, weights, Some("state_dict"), &keys) {
            Err(AvatarError::Weights(_)) => {
                load_strict_pytorch(config.init(device)?, weights, None, &keys)
            }
            other => other,
        }
    }

    /// Images `[B, 3, H, W]` in [-1, 1] -> the encoder's latent `[B, embed_dim, H/f, W/f]` after
    /// `quant_conv`, before quantisation.
    pub fn encode_unquantized(&self, images: Tensor<4>) -> Tensor<4> {
        conv2d_layer(self.encoder.forward(images), &self.quant_conv)
    }

    /// Images -> quantised latents and their codebook indices.
    pub fn encode(&self, images: Tensor<4>) -> (Tensor<4>, Tensor<3, Int>) {
        self.quantize.quantize(self.encode_unquantized(images))
    }

    /// Latents `[B, embed_dim, h, w]` -> images `[B, 3, h*f, w*f]` in about [-1, 1].
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        self.decoder
            .forward(conv2d_layer(latents, &self.post_quant_conv))
    }
}
