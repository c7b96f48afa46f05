//! IP-Adapter: image prompts through decoupled cross-attention, loaded from the official files
//! (a pickled `{"image_proj": .., "ip_adapter": ..}` `.bin` or a flat `.safetensors` with
//! `image_proj.*` / `ip_adapter.*` keys) exactly as diffusers' `load_ip_adapter` reads them.
//!
//! The variant is recognised from the `image_proj` keys as diffusers does:
//! - IP-Adapter (`proj`, `norm`): CLIP `image_embeds` -> 4 tokens;
//! - Plus / Plus-Face (`latents`, `proj_in`, `layers.N.{0,1}.*`, `proj_out`, `norm_out`): a
//!   perceiver [`Resampler`] over the encoder's penultimate hidden states;
//! - Full-Face (`proj.0`, `proj.2`, `proj.3`): an MLP over every penultimate token;
//! - FaceID (`proj.0`, `proj.2`, `norm`): an MLP on the L2-normalised insightface embedding,
//!   with LoRA (`{i}.to_{q,k,v,out}_lora.{down,up}`) in every attention layer;
//! - FaceID-Plus / Plus-v2 (FaceID's MLP then `perceiver_resampler.*` over the face crop's CLIP
//!   hidden states; v2 adds the MLP's tokens back with weight `s_scale`), with FaceID's LoRA;
//! - InstantID's face adapter ([`IpAdapter::load_instantid`]): a Resampler on the raw
//!   insightface embedding.
//!
//! `ip_adapter.{i}.to_{k,v}_ip` sit in every cross-attention, `i` in diffusers'
//! attention-processor order (odd indices are `attn2`).

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use image::RgbaImage;

use super::attention::{AttentionInjection, AttentionLora, ExtraKeyValue, LoraLinear};
use super::image_encoder::ImageEncoder;
use super::ip_adapter_scale::BlockScales;
use super::precision::{cast_module, dtype_of, to_f32};
use super::single_file::{RawTensor, to_safetensors};
use super::unet::{AttentionProcessor, UNet2DConditionModel};
use super::weights::{KeyMap, load_strict_bytes, read_tensors};
use crate::error::{AvatarError, Result};

/// Which IP-Adapter a file holds (what its projection consumes and produces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpAdapterKind {
    /// `ImageProjection`: CLIP `image_embeds` -> 4 tokens.
    Basic,
    /// `Resampler` over the penultimate CLIP hidden states (Plus, Plus-Face).
    Plus,
    /// MLP over every penultimate CLIP token (Full-Face).
    FullFace,
    /// MLP on the L2-normalised face embedding, with LoRA (IP-Adapter-FaceID).
    FaceId,
    /// FaceID's MLP refined by a perceiver over the face crop's CLIP hidden states, with LoRA
    /// (IP-Adapter-FaceID-Plus; v2 with the `s_scale` shortcut).
    FaceIdPlus,
    /// `Resampler` on the raw face embedding (InstantID's `ip-adapter.bin`).
    InstantId,
}

impl IpAdapterKind {
    /// Whether the adapter takes a face embedding rather than an image.
    pub fn takes_face_embedding(self) -> bool {
        matches!(
            self,
            IpAdapterKind::FaceId | IpAdapterKind::FaceIdPlus | IpAdapterKind::InstantId
        )
    }
}

/// `ImageProjection`: one linear layer to `tokens x cross` and a LayerNorm per token.
#[derive(Module, Debug)]
pub struct LinearProjection {
    /// `embed -> tokens * cross`.
    pub proj: Linear,
    /// Per-token norm.
    pub norm: LayerNorm,
}

/// An MLP projection (`Linear -> GELU -> Linear`) then a per-token LayerNorm: Full-Face (one
/// token per input token) and FaceID (`tokens` per embedding).
#[derive(Module, Debug)]
pub struct MlpProjection {
    /// `proj.0`.
    pub fc1: Linear,
    /// `proj.2`.
    pub fc2: Linear,
    /// `proj.3` (Full-Face) or `norm` (FaceID).
    pub norm: LayerNorm,
}

/// The perceiver attention of a [`Resampler`] layer: latents attend to the image tokens and to
/// themselves (`dim_head` 64).
#[derive(Module, Debug)]
pub struct PerceiverAttention {
    /// Norm of the image tokens.
    pub norm1: LayerNorm,
    /// Norm of the latents.
    pub norm2: LayerNorm,
    /// Queries from the latents (no bias).
    pub to_q: Linear,
    /// Keys and values, concatenated (no bias).
    pub to_kv: Linear,
    /// Output (no bias).
    pub to_out: Linear,
    heads: usize,
}

/// The feed-forward of a [`Resampler`] layer: `LayerNorm -> Linear -> GELU -> Linear` (no biases).
#[derive(Module, Debug)]
pub struct ResamplerFeedForward {
    /// `1.0`.
    pub norm: LayerNorm,
    /// `1.1`.
    pub fc1: Linear,
    /// `1.3`.
    pub fc2: Linear,
}

/// One [`Resampler`] layer.
#[derive(Module, Debug)]
pub struct ResamplerLayer {
    /// `N.0`.
    pub attn: PerceiverAttention,
    /// `N.1`.
    pub ff: ResamplerFeedForward,
}

/// IP-Adapter Plus's perceiver resampler (also InstantID's image projection).
#[derive(Module, Debug)]
pub struct Resampler {
    /// Learned queries `[1, queries, hidden]`.
    pub latents: Param<Tensor<3>>,
    /// Image tokens into the hidden width.
    pub proj_in: Linear,
    /// The layers.
    pub layers: Vec<ResamplerLayer>,
    /// Hidden width -> the UNet's cross-attention width.
    pub proj_out: Linear,
    /// Output norm.
    pub norm_out: LayerNorm,
}

/// The perceiver of FaceID-Plus: the face tokens attend to the face crop's CLIP hidden states.
#[derive(Module, Debug)]
pub struct PerceiverResampler {
    /// CLIP hidden states into the token width.
    pub proj_in: Linear,
    /// The layers.
    pub layers: Vec<ResamplerLayer>,
    /// Token width -> the UNet's cross-attention width.
    pub proj_out: Linear,
    /// Output norm.
    pub norm_out: LayerNorm,
}

/// FaceID-Plus's projection: FaceID's MLP to face tokens, refined by a [`PerceiverResampler`].
#[derive(Module, Debug)]
pub struct FaceIdPlusProjection {
    /// The face embedding to tokens.
    pub mlp: MlpProjection,
    /// The refinement.
    pub perceiver_resampler: PerceiverResampler,
}

/// The image projection of an adapter.
// One per loaded adapter, built once: the variants' size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ImageProjectionModel {
    /// FaceID-Plus.
    FaceIdPlus(FaceIdPlusProjection),
    /// IP-Adapter.
    Linear(LinearProjection),
    /// Full-Face and FaceID.
    Mlp(MlpProjection),
    /// Plus and InstantID.
    Resampler(Resampler),
}

impl ImageProjectionModel {
    /// The weight of the layer the features enter first.
    fn input_weight(&self) -> &Param<Tensor<2>> {
        match self {
            ImageProjectionModel::FaceIdPlus(p) => &p.mlp.fc1.weight,
            ImageProjectionModel::Linear(p) => &p.proj.weight,
            ImageProjectionModel::Mlp(p) => &p.fc1.weight,
            ImageProjectionModel::Resampler(p) => &p.proj_in.weight,
        }
    }
}

/// The image-token keys and values of one cross-attention.
#[derive(Module, Debug)]
pub struct IpLayer {
    /// `to_k_ip` (no bias).
    pub to_k_ip: Linear,
    /// `to_v_ip` (no bias).
    pub to_v_ip: Linear,
}

/// The weights of one adapter file.
#[derive(Module, Debug)]
pub struct IpAdapterWeights {
    /// Image (or face) features -> tokens.
    pub image_proj: ImageProjectionModel,
    /// One per cross-attention, in processor order.
    pub ip_layers: Vec<IpLayer>,
    /// One per attention processor (FaceID), else empty.
    pub lora: Vec<AttentionLora>,
}

/// A loaded IP-Adapter, checked against the UNet it was loaded for.
#[derive(Debug)]
pub struct IpAdapter {
    weights: IpAdapterWeights,
    kind: IpAdapterKind,
    /// Processor index of each `ip_layers` entry.
    processors: Vec<usize>,
    /// Width of the projection's input (CLIP embeds / hidden size, or the face embedding).
    input_dim: usize,
}

fn layer_norm(dim: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(dim).init(device)
}

fn linear(input: usize, output: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(input, output)
        .with_bias(bias)
        .init(device)
}

fn split_heads(t: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, s, c] = t.dims();
    t.reshape([b, s, heads, c / heads]).swap_dims(1, 2)
}

impl PerceiverAttention {
    fn forward(&self, x: Tensor<3>, latents: Tensor<3>) -> Tensor<3> {
        let x = self.norm1.forward(x);
        let latents = self.norm2.forward(latents);
        let q = self.to_q.forward(latents.clone());
        let kv = self.to_kv.forward(Tensor::cat(vec![x, latents], 1));
        let [b, s, c2] = kv.dims();
        let k = kv.clone().narrow(2, 0, c2 / 2);
        let v = kv.narrow(2, c2 / 2, c2 / 2);
        let [_, queries, inner] = q.dims();
        debug_assert_eq!(s, k.dims()[1]);
        let out = attention(
            split_heads(q, self.heads),
            split_heads(k, self.heads),
            split_heads(v, self.heads),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .swap_dims(1, 2)
        .reshape([b, queries, inner]);
        self.to_out.forward(out)
    }
}

/// Runs perceiver `layers`: `latents` attend to `x` (and themselves), then a feed-forward.
fn perceive(layers: &[ResamplerLayer], x: Tensor<3>, mut latents: Tensor<3>) -> Tensor<3> {
    for layer in layers {
        latents = layer.attn.forward(x.clone(), latents.clone()) + latents;
        let ff = &layer.ff;
        latents = ff
            .fc2
            .forward(gelu(ff.fc1.forward(ff.norm.forward(latents.clone()))))
            + latents;
    }
    latents
}

impl Resampler {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let b = x.dims()[0];
        let [_, q, h] = self.latents.dims();
        let latents = self.latents.val().expand([b, q, h]);
        let latents = perceive(&self.layers, self.proj_in.forward(x), latents);
        self.norm_out.forward(self.proj_out.forward(latents))
    }
}

/// `[B, S, tokens * width]` -> `[B, S * tokens, width]` (`width`: the norm's), normalised per
/// token.
fn tokens_normed(out: Tensor<3>, norm: &LayerNorm) -> Tensor<3> {
    let [b, s, c] = out.dims();
    let width = norm.gamma.dims()[0];
    norm.forward(out.reshape([b, s * c / width, width]))
}

impl MlpProjection {
    /// `[B, S, D]` -> `[B, S * tokens, width]` with the norm's width.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        tokens_normed(self.fc2.forward(gelu(self.fc1.forward(x))), &self.norm)
    }
}

impl FaceIdPlusProjection {
    /// Face tokens from `face` `[B, 1, id]` refined over `clip` `[B, S, hidden]`; with
    /// `shortcut` (v2's `s_scale`) the face tokens are added back at that weight.
    fn forward(&self, face: Tensor<3>, clip: Tensor<3>, shortcut: Option<f32>) -> Tensor<3> {
        let tokens = self.mlp.forward(face);
        let p = &self.perceiver_resampler;
        let latents = perceive(&p.layers, p.proj_in.forward(clip), tokens.clone());
        let out = p.norm_out.forward(p.proj_out.forward(latents));
        match shortcut {
            Some(scale) => tokens + out.mul_scalar(scale),
            None => out,
        }
    }
}

impl ImageProjectionModel {
    /// `[B, S, D]` features -> `[B, T, cross]` tokens.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            ImageProjectionModel::Linear(p) => tokens_normed(p.proj.forward(x), &p.norm),
            ImageProjectionModel::Mlp(p) => p.forward(x),
            ImageProjectionModel::Resampler(p) => p.forward(x),
            // Without the face crop's hidden states: the face tokens alone.
            ImageProjectionModel::FaceIdPlus(p) => p.mlp.forward(x),
        }
    }
}

/// What one adapter is given for one generation: an image (IP-Adapter, Plus, Full-Face) or an
/// insightface face embedding (FaceID, InstantID), and the adapter's weight.
#[derive(Debug, Clone)]
pub struct IpAdapterPrompt {
    /// The reference image (RGB(A), any size: resized and centre-cropped as CLIP does).
    pub image: Option<RgbaImage>,
    /// The face embedding (512 values for insightface's antelopev2 / buffalo_l): pass the raw
    /// `embedding`; FaceID normalises it, InstantID uses it as is.
    pub face_embedding: Option<Vec<f32>>,
    /// Weight of the image tokens in every cross-attention (diffusers' `set_ip_adapter_scale`).
    pub scale: f32,
    /// FaceID-Plus-v2's `s_scale` (0-2): the face tokens are added back at this weight; `None`
    /// for FaceID-Plus v1 (and ignored by the other adapters).
    pub s_scale: Option<f32>,
    /// Weights per UNet block instead of `scale` (diffusers' dict form of
    /// `set_ip_adapter_scale`, InstantStyle's style/layout selection).
    pub block_scales: Option<BlockScales>,
}

impl IpAdapterPrompt {
    /// An image prompt at `scale`.
    pub fn image(image: RgbaImage, scale: f32) -> Self {
        IpAdapterPrompt {
            image: Some(image),
            face_embedding: None,
            scale,
            s_scale: None,
            block_scales: None,
        }
    }

    /// A face-embedding prompt at `scale`.
    pub fn face(embedding: Vec<f32>, scale: f32) -> Self {
        IpAdapterPrompt {
            image: None,
            face_embedding: Some(embedding),
            scale,
            s_scale: None,
            block_scales: None,
        }
    }

    /// A FaceID-Plus prompt: the face crop and its raw embedding, at `scale`, with v2's
    /// `s_scale` shortcut (`None` for v1).
    pub fn face_plus(
        image: RgbaImage,
        embedding: Vec<f32>,
        scale: f32,
        s_scale: Option<f32>,
    ) -> Self {
        IpAdapterPrompt {
            image: Some(image),
            face_embedding: Some(embedding),
            scale,
            s_scale,
            block_scales: None,
        }
    }

    /// The same prompt weighted per UNet block (`block_scales` replaces `scale`).
    pub fn with_block_scales(self, block_scales: BlockScales) -> Self {
        IpAdapterPrompt {
            block_scales: Some(block_scales),
            ..self
        }
    }
}

fn weights_error(file: &str, message: impl std::fmt::Display) -> AvatarError {
    AvatarError::Weights(format!("{file}: {message}"))
}

/// Splits `prefix.{index}.rest` keys.
fn indexed<'a>(key: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = key.strip_prefix(prefix)?;
    let (index, tail) = rest.split_once('.')?;
    Some((index.parse().ok()?, tail))
}

fn shape<'a>(
    tensors: &'a BTreeMap<String, RawTensor>,
    key: &str,
    file: &str,
) -> Result<&'a [usize]> {
    tensors
        .get(key)
        .map(|t| t.shape.as_slice())
        .ok_or_else(|| weights_error(file, format!("missing tensor {key}")))
}

/// The perceiver layers under `prefix` (`{prefix}layers.N.{0,1}.*`) of width `hidden`.
fn resampler_layers(
    proj: &BTreeMap<String, RawTensor>,
    prefix: &str,
    hidden: usize,
    file: &str,
    device: &Device,
) -> Result<Vec<ResamplerLayer>> {
    let depth = proj
        .keys()
        .filter_map(|k| indexed(k, &format!("{prefix}layers.")).map(|(i, _)| i + 1))
        .max()
        .unwrap_or(0);
    (0..depth)
        .map(|n| {
            let inner = shape(proj, &format!("{prefix}layers.{n}.0.to_q.weight"), file)?[0];
            let ff = shape(proj, &format!("{prefix}layers.{n}.1.1.weight"), file)?[0];
            Ok(ResamplerLayer {
                attn: PerceiverAttention {
                    norm1: layer_norm(hidden, device),
                    norm2: layer_norm(hidden, device),
                    to_q: linear(hidden, inner, false, device),
                    to_kv: linear(hidden, 2 * inner, false, device),
                    to_out: linear(inner, hidden, false, device),
                    heads: (inner / 64).max(1),
                },
                ff: ResamplerFeedForward {
                    norm: layer_norm(hidden, device),
                    fc1: linear(hidden, ff, false, device),
                    fc2: linear(ff, hidden, false, device),
                },
            })
        })
        .collect()
}

/// An original perceiver key (`{prefix}layers.N.0.to_q.weight`, `.1.0.`, `.1.1.`, `.1.3.`) as our
/// module path (`{prefix}layers.N.attn.to_q.weight`, `ff.norm`, `ff.fc1`, `ff.fc2`).
fn resampler_key(key: &str, prefix: &str) -> String {
    match indexed(key, &format!("{prefix}layers.")) {
        Some((n, tail)) => {
            let tail = if let Some(rest) = tail.strip_prefix("0.") {
                format!("attn.{rest}")
            } else if let Some(rest) = tail.strip_prefix("1.0.") {
                format!("ff.norm.{rest}")
            } else if let Some(rest) = tail.strip_prefix("1.1.") {
                format!("ff.fc1.{rest}")
            } else if let Some(rest) = tail.strip_prefix("1.3.") {
                format!("ff.fc2.{rest}")
            } else {
                tail.to_owned()
            };
            format!("{prefix}layers.{n}.{tail}")
        }
        None => key.to_owned(),
    }
}

impl IpAdapter {
    /// Loads an IP-Adapter file (`.bin` or `.safetensors`) for `unet`; the variant is
    /// recognised from its keys. Errors name mismatches: an adapter made for another base model
    /// (cross-attention width or layer count), FaceID weights without their LoRA, missing or
    /// unexpected tensors.
    pub fn load(path: &Path, unet: &UNet2DConditionModel, device: &Device) -> Result<Self> {
        Self::load_as(path, unet, None, device)
    }

    /// Loads InstantID's `ip-adapter.bin` (a Resampler taking the raw 512-d face embedding).
    pub fn load_instantid(
        path: &Path,
        unet: &UNet2DConditionModel,
        device: &Device,
    ) -> Result<Self> {
        Self::load_as(path, unet, Some(IpAdapterKind::InstantId), device)
    }

    fn load_as(
        path: &Path,
        unet: &UNet2DConditionModel,
        forced: Option<IpAdapterKind>,
        device: &Device,
    ) -> Result<Self> {
        let path = &*crate::hub::resolve(path)?;
        let file = path.display().to_string();
        let tensors = read_tensors(path)?;
        let mut proj = BTreeMap::new();
        let mut layers = BTreeMap::new();
        for (key, tensor) in tensors {
            if let Some(rest) = key.strip_prefix("image_proj.") {
                proj.insert(rest.to_owned(), tensor);
            } else if let Some(rest) = key.strip_prefix("ip_adapter.") {
                layers.insert(rest.to_owned(), tensor);
            } else {
                return Err(weights_error(
                    &file,
                    format!(
                        "unexpected tensor {key}: an IP-Adapter file holds image_proj.* \
                         and ip_adapter.* only"
                    ),
                ));
            }
        }
        if proj.is_empty() || layers.is_empty() {
            return Err(weights_error(
                &file,
                "not an IP-Adapter file: expected image_proj.* and ip_adapter.* tensors",
            ));
        }
        let detected = if proj.contains_key("proj.weight") {
            IpAdapterKind::Basic
        } else if proj.contains_key("proj.3.weight") {
            IpAdapterKind::FullFace
        } else if proj.contains_key("perceiver_resampler.proj_in.weight") {
            IpAdapterKind::FaceIdPlus
        } else if proj.contains_key("norm.weight") {
            IpAdapterKind::FaceId
        } else if proj.contains_key("latents") {
            IpAdapterKind::Plus
        } else {
            return Err(weights_error(
                &file,
                "unknown image projection (no proj.weight, proj.3.weight, norm.weight or latents)",
            ));
        };
        let kind = match (forced, detected) {
            (Some(IpAdapterKind::InstantId), IpAdapterKind::Plus) => IpAdapterKind::InstantId,
            (Some(IpAdapterKind::InstantId), other) => {
                return Err(weights_error(
                    &file,
                    format!("InstantID's adapter is a Resampler; this file holds {other:?}"),
                ));
            }
            _ => detected,
        };

        let processors = unet.attention_processors();
        let cross: Vec<AttentionProcessor> =
            processors.iter().copied().filter(|p| p.cross).collect();
        let unet_cross = cross.first().map(|p| p.context).unwrap_or(0);

        // ip layers: `{2k+1}.to_{k,v}_ip.weight` -> `ip_layers.{k}`.
        let mut renamed = BTreeMap::new();
        let mut ip_indices = Vec::new();
        let mut lora_indices = std::collections::BTreeSet::new();
        for (key, tensor) in layers {
            let (index, tail) = indexed(&key, "").ok_or_else(|| {
                weights_error(&file, format!("unexpected tensor ip_adapter.{key}"))
            })?;
            if let Some(which) = tail.strip_suffix("_ip.weight") {
                let position = cross.iter().position(|p| p.index == index).ok_or_else(|| {
                    weights_error(
                        &file,
                        format!(
                            "ip_adapter.{key}: the UNet has no cross-attention processor {index} \
                             (it has {} attention processors): an adapter for another base model?",
                            processors.len()
                        ),
                    )
                })?;
                if tensor.shape.len() != 2 || tensor.shape[1] != unet_cross {
                    return Err(weights_error(
                        &file,
                        format!(
                            "ip_adapter.{key} has shape {:?}: made for a cross-attention width of {} \
                             but the UNet's is {unet_cross} (768: SD1.5, 2048: SDXL)",
                            tensor.shape,
                            tensor.shape.get(1).copied().unwrap_or(0)
                        ),
                    ));
                }
                if which == "to_k" {
                    ip_indices.push(index);
                }
                renamed.insert(format!("ip_layers.{position}.{which}_ip.weight"), tensor);
            } else if let Some((projection, rest)) = tail.split_once("_lora.") {
                lora_indices.insert(index);
                renamed.insert(format!("lora.{index}.{projection}.{rest}"), tensor);
            } else {
                return Err(weights_error(
                    &file,
                    format!("unexpected tensor ip_adapter.{key}"),
                ));
            }
        }
        if ip_indices.len() != cross.len() {
            return Err(weights_error(
                &file,
                format!(
                    "{} image key/value layers for a UNet with {} cross-attention layers: \
                     an adapter for another base model?",
                    ip_indices.len(),
                    cross.len()
                ),
            ));
        }
        let has_lora = !lora_indices.is_empty();
        if has_lora && lora_indices.len() != processors.len() {
            return Err(weights_error(
                &file,
                format!(
                    "LoRA for {} of the UNet's {} attention processors",
                    lora_indices.len(),
                    processors.len()
                ),
            ));
        }
        if matches!(kind, IpAdapterKind::FaceId | IpAdapterKind::FaceIdPlus) && !has_lora {
            return Err(weights_error(
                &file,
                "IP-Adapter-FaceID weights without their LoRA (to_*_lora): \
                 the FaceID adapter only works with it",
            ));
        }

        // The image projection, renamed to our module paths.
        let (image_proj, input_dim) = match kind {
            IpAdapterKind::Basic => {
                let [out, input] = shape(&proj, "proj.weight", &file)?
                    .try_into()
                    .map_err(|_| weights_error(&file, "proj.weight is not 2-D"))?;
                let cross_dim = shape(&proj, "norm.weight", &file)?[0];
                for (k, t) in std::mem::take(&mut proj) {
                    renamed.insert(format!("image_proj.{k}"), t);
                }
                (
                    ImageProjectionModel::Linear(LinearProjection {
                        proj: linear(input, out, true, device),
                        norm: layer_norm(cross_dim, device),
                    }),
                    input,
                )
            }
            IpAdapterKind::FullFace | IpAdapterKind::FaceId => {
                let fc1 = shape(&proj, "proj.0.weight", &file)?.to_vec();
                let fc2 = shape(&proj, "proj.2.weight", &file)?.to_vec();
                let norm_key = if kind == IpAdapterKind::FullFace {
                    "proj.3"
                } else {
                    "norm"
                };
                let norm = shape(&proj, &format!("{norm_key}.weight"), &file)?[0];
                for (k, t) in std::mem::take(&mut proj) {
                    let ours = k
                        .replace("proj.0.", "fc1.")
                        .replace("proj.2.", "fc2.")
                        .replace(&format!("{norm_key}."), "norm.");
                    renamed.insert(format!("image_proj.{ours}"), t);
                }
                (
                    ImageProjectionModel::Mlp(MlpProjection {
                        fc1: linear(fc1[1], fc1[0], true, device),
                        fc2: linear(fc2[1], fc2[0], true, device),
                        norm: layer_norm(norm, device),
                    }),
                    fc1[1],
                )
            }
            IpAdapterKind::Plus | IpAdapterKind::InstantId => {
                let latents = shape(&proj, "latents", &file)?.to_vec();
                let proj_in = shape(&proj, "proj_in.weight", &file)?.to_vec();
                let proj_out = shape(&proj, "proj_out.weight", &file)?.to_vec();
                if latents.len() != 3 || proj_in.len() != 2 || proj_out.len() != 2 {
                    return Err(weights_error(&file, "malformed Resampler shapes"));
                }
                let layers = resampler_layers(&proj, "", latents[2], &file, device)?;
                for (k, t) in std::mem::take(&mut proj) {
                    renamed.insert(format!("image_proj.{}", resampler_key(&k, "")), t);
                }
                (
                    ImageProjectionModel::Resampler(Resampler {
                        latents: Param::from_tensor(Tensor::zeros(
                            [1, latents[1], latents[2]],
                            device,
                        )),
                        proj_in: linear(proj_in[1], proj_in[0], true, device),
                        layers,
                        proj_out: linear(proj_out[1], proj_out[0], true, device),
                        norm_out: layer_norm(proj_out[0], device),
                    }),
                    proj_in[1],
                )
            }
            IpAdapterKind::FaceIdPlus => {
                let pre = "perceiver_resampler.";
                let fc1 = shape(&proj, "proj.0.weight", &file)?.to_vec();
                let fc2 = shape(&proj, "proj.2.weight", &file)?.to_vec();
                let width = shape(&proj, "norm.weight", &file)?[0];
                let proj_in = shape(&proj, &format!("{pre}proj_in.weight"), &file)?.to_vec();
                let proj_out = shape(&proj, &format!("{pre}proj_out.weight"), &file)?.to_vec();
                if fc1.len() != 2 || fc2.len() != 2 || proj_in.len() != 2 || proj_out.len() != 2 {
                    return Err(weights_error(&file, "malformed FaceID-Plus shapes"));
                }
                let layers = resampler_layers(&proj, pre, width, &file, device)?;
                for (k, t) in std::mem::take(&mut proj) {
                    let ours = if k.starts_with(pre) {
                        resampler_key(&k, pre)
                    } else {
                        format!(
                            "mlp.{}",
                            k.replace("proj.0.", "fc1.").replace("proj.2.", "fc2.")
                        )
                    };
                    renamed.insert(format!("image_proj.{ours}"), t);
                }
                (
                    ImageProjectionModel::FaceIdPlus(FaceIdPlusProjection {
                        mlp: MlpProjection {
                            fc1: linear(fc1[1], fc1[0], true, device),
                            fc2: linear(fc2[1], fc2[0], true, device),
                            norm: layer_norm(width, device),
                        },
                        perceiver_resampler: PerceiverResampler {
                            proj_in: linear(proj_in[1], proj_in[0], true, device),
                            layers,
                            proj_out: linear(proj_out[1], proj_out[0], true, device),
                            norm_out: layer_norm(proj_out[0], device),
                        },
                    }),
                    fc1[1],
                )
            }
        };

        let ip_layers = cross
            .iter()
            .map(|p| IpLayer {
                to_k_ip: linear(unet_cross, p.hidden, false, device),
                to_v_ip: linear(unet_cross, p.hidden, false, device),
            })
            .collect();
        let lora = if has_lora {
            processors
                .iter()
                .map(|p| {
                    let rank = renamed
                        .get(&format!("lora.{}.to_q.down.weight", p.index))
                        .map(|t| t.shape[0])
                        .unwrap_or(1);
                    AttentionLora {
                        to_q: LoraLinear::new(p.hidden, rank, p.hidden, device),
                        to_k: LoraLinear::new(p.context, rank, p.hidden, device),
                        to_v: LoraLinear::new(p.context, rank, p.hidden, device),
                        to_out: LoraLinear::new(p.hidden, rank, p.hidden, device),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let module = IpAdapterWeights {
            image_proj,
            ip_layers,
            lora,
        };
        let bytes = to_safetensors(&renamed)?;
        let weights = load_strict_bytes(module, bytes, &file, &KeyMap::default())?;
        Ok(IpAdapter {
            weights,
            kind,
            processors: cross.iter().map(|p| p.index).collect(),
            input_dim,
        })
    }

    /// This adapter computing in `dtype` (its weights cast; inputs are cast to it, tokens come
    /// back as f32).
    pub fn with_dtype(self, dtype: FloatDType) -> Self {
        IpAdapter {
            weights: cast_module(self.weights, dtype),
            ..self
        }
    }

    /// The dtype this adapter computes in (its weights').
    fn dtype(&self) -> DType {
        dtype_of(self.weights.image_proj.input_weight())
    }

    /// The variant.
    pub fn kind(&self) -> IpAdapterKind {
        self.kind
    }

    /// Width of the projection's input: CLIP `image_embeds` (IP-Adapter), CLIP hidden size
    /// (Plus, Full-Face) or the face embedding (FaceID, InstantID).
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// Whether this adapter needs a CLIP image encoder.
    pub fn needs_image_encoder(&self) -> bool {
        !self.kind.takes_face_embedding() || self.kind == IpAdapterKind::FaceIdPlus
    }

    /// Projects `[B, S, input_dim]` features to image tokens `[B, T, cross]`.
    pub fn project(&self, features: Tensor<3>) -> Tensor<3> {
        to_f32(self.weights.image_proj.forward(features.cast(self.dtype())))
    }

    /// `(unconditional, conditional)` image tokens `[1, T, cross]` for `prompt`, as diffusers'
    /// `prepare_ip_adapter_image_embeds` computes them: zero embeddings (IP-Adapter, FaceID,
    /// InstantID) or the encoder's view of a black image (Plus, Full-Face, FaceID-Plus's face
    /// crop) for the unconditional side.
    pub fn tokens(
        &self,
        prompt: &IpAdapterPrompt,
        encoder: Option<&ImageEncoder>,
        device: &Device,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let split = |both: Tensor<3>| {
            let [_, t, c] = both.dims();
            (
                both.clone().slice([0..1, 0..t, 0..c]),
                both.slice([1..2, 0..t, 0..c]),
            )
        };
        let projected = match (&self.weights.image_proj, self.kind) {
            (ImageProjectionModel::FaceIdPlus(p), _) => {
                let s_scale = prompt.s_scale;
                if let Some(value) = s_scale.filter(|v| !(0.0..=2.0).contains(v)) {
                    return Err(AvatarError::invalid(
                        "s_scale",
                        format!("{value} is outside 0..=2"),
                    ));
                }
                let face = self.face_features(prompt, true, device)?;
                let clip = self.image_features(
                    prompt,
                    encoder,
                    p.perceiver_resampler.proj_in.weight.dims()[0],
                    device,
                )?;
                to_f32(p.forward(face.cast(self.dtype()), clip.cast(self.dtype()), s_scale))
            }
            (_, kind) if kind.takes_face_embedding() => {
                let normalise = kind == IpAdapterKind::FaceId;
                self.project(self.face_features(prompt, normalise, device)?)
            }
            _ => {
                let features = self.image_features(prompt, encoder, self.input_dim, device)?;
                self.project(features)
            }
        };
        Ok(split(projected))
    }

    /// Checks a face embedding for this adapter: `input_dim` finite values.
    pub fn check_face_embedding(&self, embedding: &[f32]) -> Result<()> {
        if embedding.len() != self.input_dim {
            return Err(AvatarError::invalid(
                "face_embedding",
                format!(
                    "{} values, the adapter takes {}",
                    embedding.len(),
                    self.input_dim
                ),
            ));
        }
        if embedding.iter().any(|v| !v.is_finite()) {
            return Err(AvatarError::invalid(
                "face_embedding",
                "holds a non-finite value",
            ));
        }
        Ok(())
    }

    /// `[zeros, embedding]` `[2, 1, input_dim]` (L2-normalised with `normalise`).
    fn face_features(
        &self,
        prompt: &IpAdapterPrompt,
        normalise: bool,
        device: &Device,
    ) -> Result<Tensor<3>> {
        let embedding = prompt.face_embedding.as_ref().ok_or_else(|| {
            AvatarError::invalid(
                "face_embedding",
                format!("the {:?} adapter needs a face embedding", self.kind),
            )
        })?;
        self.check_face_embedding(embedding)?;
        let mut values = embedding.clone();
        if normalise {
            let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm == 0.0 {
                return Err(AvatarError::invalid("face_embedding", "is all zeros"));
            }
            values.iter_mut().for_each(|v| *v /= norm);
        }
        let cond = Tensor::<3>::from_data(TensorData::new(values, [1, 1, self.input_dim]), device);
        Ok(Tensor::cat(vec![cond.zeros_like(), cond], 0))
    }

    /// The encoder's features of `[black image, prompt image]`: `image_embeds` `[2, 1, width]`
    /// (IP-Adapter) or the penultimate hidden states `[2, 1 + patches, width]`.
    fn image_features(
        &self,
        prompt: &IpAdapterPrompt,
        encoder: Option<&ImageEncoder>,
        width: usize,
        device: &Device,
    ) -> Result<Tensor<3>> {
        let image = prompt.image.as_ref().ok_or_else(|| {
            AvatarError::invalid(
                "ip_adapter_image",
                format!("the {:?} adapter needs a reference image", self.kind),
            )
        })?;
        let encoder = encoder.ok_or_else(|| {
            AvatarError::Config(
                "this IP-Adapter needs a CLIP image encoder: load one with the adapter".into(),
            )
        })?;
        let pixels = encoder.preprocess(image, device);
        if self.kind == IpAdapterKind::Basic {
            if encoder.projection_dim() != width {
                return Err(AvatarError::Config(format!(
                    "the image encoder's projection_dim is {}, the adapter takes {width}",
                    encoder.projection_dim(),
                )));
            }
            let embeds = encoder.image_embeds(pixels).unsqueeze_dim(1);
            return Ok(Tensor::cat(vec![embeds.zeros_like(), embeds], 0));
        }
        if encoder.hidden_size() != width {
            return Err(AvatarError::Config(format!(
                "the image encoder's hidden_size is {}, the adapter takes {width}",
                encoder.hidden_size(),
            )));
        }
        Ok(encoder.penultimate_hidden_states(Tensor::cat(vec![pixels.zeros_like(), pixels], 0)))
    }

    /// Adds this adapter to `injection` for image tokens `[B, T, cross]` (batched like the
    /// UNet's input), weighted by `scale(processor index)`: keys/values computed once per layer
    /// (none for a zero weight), plus FaceID's LoRA.
    pub fn inject(
        &self,
        tokens: Tensor<3>,
        scale: impl Fn(usize) -> f32,
        injection: &mut AttentionInjection,
    ) {
        let tokens = tokens.cast(self.dtype());
        for (layer, &index) in self.weights.ip_layers.iter().zip(&self.processors) {
            let scale = scale(index);
            if scale == 0.0 {
                // A zero weight adds nothing: skip its keys and values.
                continue;
            }
            injection.push_stream(
                index,
                ExtraKeyValue {
                    key: layer.to_k_ip.forward(tokens.clone()),
                    value: layer.to_v_ip.forward(tokens.clone()),
                    scale,
                },
            );
        }
        for (index, lora) in self.weights.lora.iter().enumerate() {
            injection.push_lora(index, lora.clone());
        }
    }
}
