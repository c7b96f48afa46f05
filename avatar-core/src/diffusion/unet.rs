//! diffusers' `UNet2DConditionModel` for SD1.5 and SDXL, driven by `unet/config.json`: down
//! blocks (`CrossAttnDownBlock2D` / `DownBlock2D`), `UNetMidBlock2DCrossAttn`, up blocks
//! (`CrossAttnUpBlock2D` / `UpBlock2D`), and SDXL's `text_time` added conditioning.
//!
//! Module paths follow diffusers' names (the GEGLU projections are remapped at load time).

use std::path::Path;

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use super::attention::AttentionInjection;
use super::embeddings::{TimestepEmbedding, timestep_features};
use super::precision::{dtype_of, to_f32};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D, conv3x3, group_norm};
use super::transformer_2d::{BasicTransformerBlock, Transformer2DModel};
use super::weights::{KeyMap, component_weights, load_strict, load_strict_bytes, read_config};
use crate::error::{AvatarError, Result};
use crate::gemm_conv::conv2d_layer;
use crate::group_norm::group_norm_silu;

/// A config value given once for all blocks or once per block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same for every block.
    All(usize),
    /// One per block, in down-block order.
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::All(v) => *v,
            PerBlock::Each(values) => values[i.min(values.len() - 1)],
        }
    }
}

/// `UNet2DConditionModel` config from diffusers' `unet/config.json` (unknown keys ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Native latent side (64 for SD1.5, 128 for SDXL): the default image size / VAE factor.
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Latent channels out.
    pub out_channels: usize,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// Down block types.
    pub down_block_types: Vec<String>,
    /// Up block types.
    pub up_block_types: Vec<String>,
    /// Mid block type (`UNetMidBlock2DCrossAttn`).
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    /// Resnets per down level (up levels have one more).
    pub layers_per_block: usize,
    /// Despite its name, the number of attention heads per block (diffusers' legacy naming)
    /// unless `num_attention_heads` is set.
    pub attention_head_dim: PerBlock,
    /// Attention heads per block, when given.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Width of the text tokens.
    pub cross_attention_dim: usize,
    /// Transformer blocks per attention (SDXL: 1, 2, 10).
    #[serde(default = "default_one")]
    pub transformer_layers_per_block: PerBlock,
    /// Linear (SDXL) or 1x1-convolution (SD1.5) projections in the transformers.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// GroupNorm groups.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of the resnets and the output norm.
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Whether the timestep features are `[cos, sin]`.
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep features.
    #[serde(default)]
    pub freq_shift: usize,
    /// `"text_time"` for SDXL's added conditioning.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each embedded `time_ids` value (SDXL: 256).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of `add_embedding` (pooled text + 6 embedded time ids).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
}

fn default_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_one() -> PerBlock {
    PerBlock::All(1)
}
fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

impl UNetConfig {
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |m: String| Err(AvatarError::Config(format!("UNet2DConditionModel: {m}")));
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad("block_out_channels, down_block_types and up_block_types must have the same, non-zero length".into());
        }
        for kind in self.down_block_types.iter().chain(&self.up_block_types) {
            if !matches!(
                kind.as_str(),
                "CrossAttnDownBlock2D" | "DownBlock2D" | "CrossAttnUpBlock2D" | "UpBlock2D"
            ) {
                return bad(format!("unsupported block type {kind}"));
            }
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            other => return bad(format!("unsupported mid block {other:?}")),
        }
        if !self.flip_sin_to_cos {
            return bad("flip_sin_to_cos=false is not supported".into());
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time")
                if self.addition_time_embed_dim.is_none()
                    || self.projection_class_embeddings_input_dim.is_none() =>
            {
                return bad("text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim".into());
            }
            Some("text_time") => {}
            Some(other) => return bad(format!("unsupported addition_embed_type {other}")),
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let heads = self.heads(i);
            if heads == 0 || !c.is_multiple_of(heads) || !c.is_multiple_of(self.norm_num_groups) {
                return bad(format!(
                    "block {i}: {c} channels do not split into {heads} heads and {} groups",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }

    fn heads(&self, block: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(block)
    }

    fn resnet(&self, input: usize, output: usize, device: &Device) -> ResnetBlock2D {
        let time_dim = 4 * self.block_out_channels[0];
        ResnetBlock2D::new(
            input,
            output,
            Some(time_dim),
            self.norm_num_groups,
            self.norm_eps,
            device,
        )
    }

    fn transformer(&self, channels: usize, block: usize, device: &Device) -> Transformer2DModel {
        Transformer2DModel::new(
            channels,
            self.heads(block),
            self.transformer_layers_per_block.get(block),
            self.cross_attention_dim,
            self.norm_num_groups,
            self.use_linear_projection,
            device,
        )
    }

    /// The parts a UNet shares with a ControlNet: stem, time embeddings, down blocks and mid
    /// block (checked config assumed).
    pub(crate) fn init_down_path(&self, device: &Device) -> DownPath {
        let channels = &self.block_out_channels;
        let n = channels.len();
        let time_dim = 4 * channels[0];
        let mut down_blocks = Vec::new();
        let mut input = channels[0];
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let output = channels[i];
            let cross = kind == "CrossAttnDownBlock2D";
            down_blocks.push(UNetBlock {
                resnets: (0..self.layers_per_block)
                    .map(|j| self.resnet(if j == 0 { input } else { output }, output, device))
                    .collect(),
                attentions: if cross {
                    (0..self.layers_per_block)
                        .map(|_| self.transformer(output, i, device))
                        .collect()
                } else {
                    vec![]
                },
                downsamplers: if i + 1 < n {
                    vec![Downsample2D::unet(output, device)]
                } else {
                    vec![]
                },
                upsamplers: vec![],
            });
            input = output;
        }
        let last = channels[n - 1];
        let mid_block = UNetBlock {
            resnets: vec![
                self.resnet(last, last, device),
                self.resnet(last, last, device),
            ],
            attentions: vec![self.transformer(last, n - 1, device)],
            downsamplers: vec![],
            upsamplers: vec![],
        };
        let add_embedding = match (
            self.addition_embed_type.as_deref(),
            self.projection_class_embeddings_input_dim,
        ) {
            (Some("text_time"), Some(input)) => {
                Some(TimestepEmbedding::new(input, time_dim, device))
            }
            _ => None,
        };
        DownPath {
            conv_in: conv3x3(self.in_channels, channels[0], device),
            time_embedding: TimestepEmbedding::new(channels[0], time_dim, device),
            add_embedding,
            down_blocks,
            mid_block,
            time: TimeShape {
                time_features: channels[0],
                freq_shift: self.freq_shift,
                add_time_features: self.addition_time_embed_dim.unwrap_or(0),
            },
        }
    }

    /// Builds the UNet with default-initialised weights.
    pub fn init(&self, device: &Device) -> Result<UNet2DConditionModel> {
        self.check()?;
        let channels = &self.block_out_channels;
        let n = channels.len();
        let down = self.init_down_path(device);
        let mut up_blocks = Vec::new();
        let mut previous = channels[n - 1];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let block = n - 1 - i;
            let output = channels[block];
            let input = channels[block.saturating_sub(1)];
            let cross = kind == "CrossAttnUpBlock2D";
            let count = self.layers_per_block + 1;
            up_blocks.push(UNetBlock {
                resnets: (0..count)
                    .map(|j| {
                        let skip = if j == count - 1 { input } else { output };
                        let from = if j == 0 { previous } else { output };
                        self.resnet(from + skip, output, device)
                    })
                    .collect(),
                attentions: if cross {
                    (0..count)
                        .map(|_| self.transformer(output, block, device))
                        .collect()
                } else {
                    vec![]
                },
                downsamplers: vec![],
                upsamplers: if i + 1 < n {
                    vec![Upsample2D::new(output, device)]
                } else {
                    vec![]
                },
            });
            previous = output;
        }
        let mut unet = UNet2DConditionModel {
            conv_in: down.conv_in,
            time_embedding: down.time_embedding,
            add_embedding: down.add_embedding,
            down_blocks: down.down_blocks,
            mid_block: down.mid_block,
            up_blocks,
            conv_norm_out: group_norm(self.norm_num_groups, channels[0], self.norm_eps, device),
            conv_out: conv3x3(channels[0], self.out_channels, device),
            time: down.time,
        };
        for (k, block) in unet.transformer_blocks_mut().into_iter().enumerate() {
            block.processor = 2 * k;
        }
        Ok(unet)
    }
}

/// The parts a UNet shares with a ControlNet.
pub(crate) struct DownPath {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub add_embedding: Option<TimestepEmbedding>,
    pub down_blocks: Vec<UNetBlock>,
    pub mid_block: UNetBlock,
    pub time: TimeShape,
}

/// Widths of the sinusoidal time features (a module without parameters, so that the UNet and
/// the ControlNet keep it as one field).
#[derive(Module, Debug, Copy)]
pub(crate) struct TimeShape {
    pub time_features: usize,
    pub freq_shift: usize,
    pub add_time_features: usize,
}

/// The time embedding (plus SDXL's added conditioning) of a batch of `batch`.
pub(crate) fn embed_time(
    time_embedding: &TimestepEmbedding,
    add_embedding: Option<&TimestepEmbedding>,
    shape: TimeShape,
    timesteps: &[f32],
    added: Option<&AddedConditioning>,
    device: &Device,
) -> Result<Tensor<2>> {
    let b = timesteps.len();
    let features = timestep_features(
        timesteps,
        shape.time_features,
        shape.freq_shift as f32,
        device,
    );
    let mut temb = time_embedding.forward(features);
    match (add_embedding, added) {
        (Some(embedding), Some(added)) => {
            let ids = added
                .time_ids
                .clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| AvatarError::Backend(format!("{e:?}")))?;
            let time = timestep_features(&ids, shape.add_time_features, 0.0, device)
                .reshape([b, ids.len() / b * shape.add_time_features]);
            let input = Tensor::cat(vec![added.text_embeds.clone(), time], 1);
            temb = temb + embedding.forward(input);
        }
        (Some(_), None) => {
            return Err(AvatarError::invalid(
                "added_cond",
                "this model (text_time) needs text_embeds and time_ids",
            ));
        }
        _ => {}
    }
    Ok(temb)
}

/// Runs the down blocks from the stem's output `x`: (their output, every skip connection with
/// `x` first).
pub(crate) fn down_pass(
    blocks: &[UNetBlock],
    mut x: Tensor<4>,
    temb: &Tensor<2>,
    context: &Tensor<3>,
    injection: &AttentionInjection,
) -> (Tensor<4>, Vec<Tensor<4>>) {
    let mut skips = vec![x.clone()];
    for block in blocks {
        for (j, resnet) in block.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb.clone()));
            if let Some(attention) = block.attentions.get(j) {
                x = attention.forward(x, context.clone(), injection);
            }
            skips.push(x.clone());
        }
        for down in &block.downsamplers {
            x = down.forward(x);
            skips.push(x.clone());
        }
    }
    (x, skips)
}

/// Runs `UNetMidBlock2DCrossAttn`.
pub(crate) fn mid_pass(
    mid: &UNetBlock,
    x: Tensor<4>,
    temb: &Tensor<2>,
    context: &Tensor<3>,
    injection: &AttentionInjection,
) -> Tensor<4> {
    let x = mid.resnets[0].forward(x, Some(temb.clone()));
    let x = mid.attentions[0].forward(x, context.clone(), injection);
    mid.resnets[1].forward(x, Some(temb.clone()))
}

/// One attention layer of the UNet as an adapter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionProcessor {
    /// diffusers' processor index.
    pub index: usize,
    /// The attention module (transformer) it belongs to.
    pub location: BlockLocation,
    /// Width of the attention (its query and output).
    pub hidden: usize,
    /// Width of what it attends to (`hidden` for self-attention).
    pub context: usize,
    /// `attn2` (cross-attention to the text) rather than `attn1`.
    pub cross: bool,
}

/// A part of the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UNetPart {
    /// `down_blocks`.
    Down,
    /// `mid_block`.
    Mid,
    /// `up_blocks`.
    Up,
}

/// Where an attention module sits: `{part}_blocks.{block}.attentions.{attention}`
/// (`mid_block.attentions.{attention}`, block 0, for the mid block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockLocation {
    /// Down, mid or up.
    pub part: UNetPart,
    /// The block's index in its part.
    pub block: usize,
    /// The attention module's index in the block.
    pub attention: usize,
}

/// ControlNet residuals added to the UNet's skip connections and mid-block output.
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    /// One per skip connection, in down order (the `conv_in` output first).
    pub down: Vec<Tensor<4>>,
    /// Added to the mid block's output.
    pub mid: Tensor<4>,
}

/// One level of the UNet (down, mid or up): resnets, optional spatial transformers, and a
/// resampler. Empty lists stand for absent parts, as in diffusers' module names.
#[derive(Module, Debug)]
pub struct UNetBlock {
    /// The resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// One transformer after each resnet (cross-attention blocks), else none.
    pub attentions: Vec<Transformer2DModel>,
    /// Halves the resolution after the level (down blocks but the last).
    pub downsamplers: Vec<Downsample2D>,
    /// Doubles the resolution after the level (up blocks but the last).
    pub upsamplers: Vec<Upsample2D>,
}

/// SDXL's added conditioning: pooled text embedding and the six size/crop numbers.
#[derive(Debug, Clone)]
pub struct AddedConditioning {
    /// `[B, P]` pooled, projected text embedding of the second encoder.
    pub text_embeds: Tensor<2>,
    /// `[B, 6]`: original (h, w), crop (top, left), target (h, w).
    pub time_ids: Tensor<2>,
}

/// The denoising UNet.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    /// Stem.
    pub conv_in: Conv2d,
    /// Timestep MLP.
    pub time_embedding: TimestepEmbedding,
    /// SDXL's `text_time` embedding.
    pub add_embedding: Option<TimestepEmbedding>,
    /// Down levels.
    pub down_blocks: Vec<UNetBlock>,
    /// Bottleneck.
    pub mid_block: UNetBlock,
    /// Up levels.
    pub up_blocks: Vec<UNetBlock>,
    /// Output norm.
    pub conv_norm_out: GroupNorm,
    /// To latent channels.
    pub conv_out: Conv2d,
    time: TimeShape,
}

impl UNet2DConditionModel {
    /// Loads `config.json` + `diffusion_pytorch_model.safetensors` from a diffusers `unet/` folder.
    pub fn load(dir: &Path, device: &Device) -> Result<(UNetConfig, Self)> {
        let config: UNetConfig = read_config(&dir.join("config.json"))?;
        let model = load_strict(
            config.init(device)?,
            &component_weights(dir, "diffusion_pytorch_model")?,
            &Self::key_map(),
        )?;
        Ok((config, model))
    }

    /// Loads diffusers-layout safetensors bytes (e.g. converted from a single file).
    pub fn load_bytes(
        config: &UNetConfig,
        bytes: Vec<u8>,
        label: &str,
        device: &Device,
    ) -> Result<Self> {
        load_strict_bytes(config.init(device)?, bytes, label, &Self::key_map())
    }

    /// diffusers' GEGLU paths (`ff.net.0.proj`, `ff.net.2`) onto ours.
    pub(crate) fn key_map() -> KeyMap {
        KeyMap::default()
            .remap(r"\.ff\.net\.0\.proj\.", ".ff.proj_in.")
            .remap(r"\.ff\.net\.2\.", ".ff.proj_out.")
    }

    /// The transformer blocks in diffusers' `attn_processors` order: down blocks, up blocks,
    /// then the mid block.
    fn transformer_blocks_mut(&mut self) -> Vec<&mut BasicTransformerBlock> {
        self.down_blocks
            .iter_mut()
            .chain(self.up_blocks.iter_mut())
            .chain(std::iter::once(&mut self.mid_block))
            .flat_map(|block| block.attentions.iter_mut())
            .flat_map(|transformer| transformer.transformer_blocks.iter_mut())
            .collect()
    }

    /// The attention modules per block, in diffusers' order: `(part, block, count)`.
    pub fn attention_counts(&self) -> Vec<(UNetPart, usize, usize)> {
        let side = |part, blocks: &[_]| -> Vec<(UNetPart, usize, usize)> {
            blocks
                .iter()
                .enumerate()
                .map(|(i, b): (usize, &UNetBlock)| (part, i, b.attentions.len()))
                .collect()
        };
        let mut out = side(UNetPart::Down, &self.down_blocks);
        out.extend(side(UNetPart::Up, &self.up_blocks));
        out.push((UNetPart::Mid, 0, self.mid_block.attentions.len()));
        out
    }

    /// Every attention layer in diffusers' processor order (what IP-Adapter files index).
    pub fn attention_processors(&self) -> Vec<AttentionProcessor> {
        let parts = [
            (UNetPart::Down, self.down_blocks.iter().collect::<Vec<_>>()),
            (UNetPart::Up, self.up_blocks.iter().collect()),
            (UNetPart::Mid, vec![&self.mid_block]),
        ];
        let mut out = Vec::new();
        for (part, blocks) in parts {
            for (block_index, block) in blocks.into_iter().enumerate() {
                for (attention, transformer) in block.attentions.iter().enumerate() {
                    let location = BlockLocation {
                        part,
                        block: block_index,
                        attention,
                    };
                    for block in &transformer.transformer_blocks {
                        let [context, hidden] = block.attn2.to_k.weight.dims();
                        let own = block.attn1.to_q.weight.dims()[1];
                        out.push(AttentionProcessor {
                            index: block.processor,
                            location,
                            hidden: own,
                            context: own,
                            cross: false,
                        });
                        out.push(AttentionProcessor {
                            index: block.processor + 1,
                            location,
                            hidden,
                            context,
                            cross: true,
                        });
                    }
                }
            }
        }
        out
    }

    /// Predicts noise (or v) for `sample` `[B, C, h, w]` at `timesteps` (one per batch item),
    /// conditioned on `context` `[B, T, D]` (and SDXL's `added`).
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        context: Tensor<3>,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor<4>> {
        self.forward_with(
            sample,
            timesteps,
            context,
            added,
            &AttentionInjection::default(),
            None,
        )
    }

    /// [`UNet2DConditionModel::forward`] with adapters: `injection`'s additions to the
    /// attention layers and ControlNet `control` residuals.
    pub fn forward_with(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        context: Tensor<3>,
        added: Option<&AddedConditioning>,
        injection: &AttentionInjection,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor<4>> {
        let device = sample.device();
        let [b, ..] = sample.dims();
        if timesteps.len() != b {
            return Err(AvatarError::invalid(
                "timesteps",
                format!("{} timesteps for a batch of {b}", timesteps.len()),
            ));
        }
        let temb = embed_time(
            &self.time_embedding,
            self.add_embedding.as_ref(),
            self.time,
            timesteps,
            added,
            &device,
        )?;
        // Inputs in the weights' dtype (see `precision`); the prediction is returned as f32.
        let dtype = dtype_of(&self.conv_in.weight);
        let context = context.cast(dtype);
        let x = conv2d_layer(sample.cast(dtype), &self.conv_in);
        let (x, mut skips) = down_pass(&self.down_blocks, x, &temb, &context, injection);
        if let Some(control) = control {
            if control.down.len() != skips.len() {
                return Err(AvatarError::invalid(
                    "controlnet",
                    format!(
                        "{} down residuals for a UNet with {} skip connections",
                        control.down.len(),
                        skips.len()
                    ),
                ));
            }
            for (skip, residual) in skips.iter_mut().zip(&control.down) {
                *skip = skip.clone() + residual.clone().cast(dtype);
            }
        }
        let mut x = mid_pass(&self.mid_block, x, &temb, &context, injection);
        if let Some(control) = control {
            x = x + control.mid.clone().cast(dtype);
        }

        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per resnet");
                x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb.clone()));
                if let Some(attention) = block.attentions.get(j) {
                    x = attention.forward(x, context.clone(), injection);
                }
            }
            // Back to the next skip connection's size: 2x, or one less where a stride-2
            // convolution rounded an odd side up (diffusers' `forward_upsample_size`).
            for up in &block.upsamplers {
                x = match skips.last() {
                    Some(skip) => {
                        let [_, _, h, w] = skip.dims();
                        up.forward_to(x, [h, w])
                    }
                    None => up.forward(x),
                };
            }
        }
        Ok(to_f32(conv2d_layer(
            group_norm_silu(x, &self.conv_norm_out),
            &self.conv_out,
        )))
    }
}
