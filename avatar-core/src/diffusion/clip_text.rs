//! The CLIP text encoder of Stable Diffusion (transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`): SD1.5's CLIP ViT-L/14 text tower (quick_gelu) and SDXL's two
//! encoders (CLIP-L, and OpenCLIP bigG with exact gelu and a text projection).
//!
//! Module paths follow transformers' names, so hub `model.safetensors` files load as they are.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use super::precision::to_f32;
use super::weights::{
    KeyMap, component_weights, load_strict, load_strict_bytes, read_config, tensor_names,
};
use crate::activation::quick_gelu;
use crate::error::{AvatarError, Result};

/// The activation of the MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD1.5).
    QuickGelu,
    /// Exact erf gelu (OpenCLIP bigG, SDXL's second encoder).
    Gelu,
}

/// A CLIP text encoder's config, read from transformers' `config.json` (unknown keys ignored).
#[derive(Config, Debug, PartialEq)]
pub struct ClipTextConfig {
    /// Vocabulary size (49,408 for the real models).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Longest sequence (77).
    #[config(default = 77)]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[config(default = "ClipActivation::QuickGelu")]
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Width of the text projection (`CLIPTextModelWithProjection`).
    #[config(default = "None")]
    pub projection_dim: Option<usize>,
    /// End-of-text token id; `2` selects transformers' legacy pooling at `argmax(input_ids)`.
    #[config(default = 2)]
    pub eos_token_id: usize,
}

/// transformers' `config.json` fields we read.
#[derive(Deserialize)]
struct HubConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_act")]
    hidden_act: ClipActivation,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    projection_dim: Option<usize>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default = "default_eos")]
    eos_token_id: usize,
}

fn default_positions() -> usize {
    77
}
fn default_act() -> ClipActivation {
    ClipActivation::QuickGelu
}
fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> usize {
    2
}

impl ClipTextConfig {
    /// Parses transformers' `config.json`; the projection is kept only for
    /// `CLIPTextModelWithProjection`.
    pub fn from_hub_json(text: &str) -> Result<Self> {
        let hub: HubConfig = serde_json::from_str(text)
            .map_err(|e| AvatarError::Config(format!("CLIP text config: {e}")))?;
        let with_projection = hub
            .architectures
            .iter()
            .any(|a| a == "CLIPTextModelWithProjection");
        let config = ClipTextConfig {
            vocab_size: hub.vocab_size,
            hidden_size: hub.hidden_size,
            intermediate_size: hub.intermediate_size,
            num_attention_heads: hub.num_attention_heads,
            num_hidden_layers: hub.num_hidden_layers,
            max_position_embeddings: hub.max_position_embeddings,
            hidden_act: hub.hidden_act,
            layer_norm_eps: hub.layer_norm_eps,
            projection_dim: if with_projection {
                hub.projection_dim
            } else {
                None
            },
            eos_token_id: hub.eos_token_id,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(AvatarError::Config(format!(
                "CLIP text: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.num_hidden_layers < 2 {
            return Err(AvatarError::Config(
                "CLIP text: at least 2 layers (the penultimate state is used)".into(),
            ));
        }
        Ok(())
    }

    /// Builds the encoder with default-initialised weights (load real ones with
    /// [`ClipTextModel::load`]).
    pub fn init(&self, device: &Device) -> Result<ClipTextModel> {
        self.check()?;
        let h = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let encoder = ClipEncoder::new(
            &ClipEncoderShape {
                hidden_size: h,
                intermediate_size: self.intermediate_size,
                num_hidden_layers: self.num_hidden_layers,
                num_attention_heads: self.num_attention_heads,
                layer_norm_eps: self.layer_norm_eps,
                hidden_act: self.hidden_act,
                causal: true,
            },
            device,
        );
        Ok(ClipTextModel {
            text_model: ClipTextTransformer {
                embeddings: ClipEmbeddings {
                    token_embedding: EmbeddingConfig::new(self.vocab_size, h).init(device),
                    position_embedding: EmbeddingConfig::new(self.max_position_embeddings, h)
                        .init(device),
                },
                encoder,
                final_layer_norm: norm(),
            },
            text_projection: self
                .projection_dim
                .map(|p| LinearConfig::new(h, p).with_bias(false).init(device)),
            eos_token_id: self.eos_token_id,
        })
    }
}

/// Token and position embeddings.
#[derive(Module, Debug)]
pub struct ClipEmbeddings {
    /// `[vocab, hidden]`.
    pub token_embedding: Embedding,
    /// `[positions, hidden]`.
    pub position_embedding: Embedding,
}

/// Multi-head self-attention (causal in the text tower, not in the vision tower).
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    heads: usize,
    causal: bool,
}

impl ClipAttention {
    /// `[B, S, H] -> [B, S, H]` (with a causal mask in the text tower).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let split = |t: Tensor<3>| {
            t.reshape([b, s, self.heads, h / self.heads])
                .swap_dims(1, 2)
        };
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let options = AttentionModuleOptions {
            is_causal: self.causal,
            ..Default::default()
        };
        let out = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([b, s, h]);
        self.out_proj.forward(out)
    }
}

/// The feed-forward block.
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// Hidden -> intermediate.
    pub fc1: Linear,
    /// Intermediate -> hidden.
    pub fc2: Linear,
    quick_gelu: bool,
}

impl ClipMlp {
    /// `fc2(act(fc1(x)))`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.fc1.forward(x);
        let x = if self.quick_gelu {
            quick_gelu(x)
        } else {
            gelu(x)
        };
        self.fc2.forward(x)
    }
}

/// One pre-norm transformer layer.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    /// Attention.
    pub self_attn: ClipAttention,
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// Feed-forward.
    pub mlp: ClipMlp,
    /// Norm before the feed-forward.
    pub layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    /// `x + attn(ln1(x))`, then `+ mlp(ln2(.))`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// The layer stack.
#[derive(Module, Debug)]
pub struct ClipEncoder {
    /// Layers in order.
    pub layers: Vec<ClipEncoderLayer>,
}

/// The shape of a CLIP encoder stack (shared by the text and vision towers).
#[derive(Debug, Clone, Copy)]
pub struct ClipEncoderShape {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// Causal attention (text) or full attention (vision).
    pub causal: bool,
}

impl ClipEncoder {
    /// A stack with default-initialised weights.
    pub fn new(shape: &ClipEncoderShape, device: &Device) -> Self {
        let h = shape.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(shape.layer_norm_eps)
                .init(device)
        };
        let layers = (0..shape.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: LinearConfig::new(h, h).init(device),
                    k_proj: LinearConfig::new(h, h).init(device),
                    v_proj: LinearConfig::new(h, h).init(device),
                    out_proj: LinearConfig::new(h, h).init(device),
                    heads: shape.num_attention_heads,
                    causal: shape.causal,
                },
                layer_norm1: norm(),
                mlp: ClipMlp {
                    fc1: LinearConfig::new(h, shape.intermediate_size).init(device),
                    fc2: LinearConfig::new(shape.intermediate_size, h).init(device),
                    quick_gelu: shape.hidden_act == ClipActivation::QuickGelu,
                },
                layer_norm2: norm(),
            })
            .collect();
        ClipEncoder { layers }
    }

    /// Runs every layer.
    pub fn forward(&self, mut x: Tensor<3>) -> Tensor<3> {
        for layer in &self.layers {
            x = layer.forward(x);
        }
        x
    }
}

/// Embeddings, layers and the final norm (`text_model.*`).
#[derive(Module, Debug)]
pub struct ClipTextTransformer {
    /// Token + position embeddings.
    pub embeddings: ClipEmbeddings,
    /// The layers.
    pub encoder: ClipEncoder,
    /// Norm applied to the last layer's output.
    pub final_layer_norm: LayerNorm,
}

/// A CLIP text encoder (with the projection for `CLIPTextModelWithProjection`).
#[derive(Module, Debug)]
pub struct ClipTextModel {
    /// The transformer.
    pub text_model: ClipTextTransformer,
    /// Pooled-output projection (SDXL's second encoder).
    pub text_projection: Option<Linear>,
    eos_token_id: usize,
}

/// What the pipelines need from an encoder run.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// The embeddings then each layer's output, `num_hidden_layers + 1` tensors `[B, S, H]`
    /// (transformers' `hidden_states`; `hidden_states[len - 2]` is SDXL's penultimate state), in
    /// the model's dtype; the other fields are f32.
    pub hidden_states: Vec<Tensor<3>>,
    /// `final_layer_norm(last layer)` `[B, S, H]`: SD1.5's prompt embedding.
    pub last_hidden_state: Tensor<3>,
    /// The last state at the end-of-text token `[B, H]`.
    pub pooled: Tensor<2>,
    /// `pooled` through the projection `[B, P]` (models with a projection).
    pub text_embeds: Option<Tensor<2>>,
}

impl ClipTextOutput {
    /// The second-to-last layer's output (no final norm), as SDXL uses, as f32.
    pub fn penultimate(&self) -> Tensor<3> {
        to_f32(self.hidden_states[self.hidden_states.len() - 2].clone())
    }
}

impl ClipTextModel {
    /// Loads `config.json` + `model.safetensors` from a transformers folder (e.g. a diffusers
    /// pipeline's `text_encoder/`). Keys with or without the `text_model.` prefix are accepted.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| AvatarError::io(dir.join("config.json"), e))?;
        let config = ClipTextConfig::from_hub_json(&text)?;
        let weights = component_weights(dir, "model")?;
        Self::load_file(&config, &weights, device)
    }

    /// Loads a transformers-layout safetensors file for `config`.
    pub fn load_file(config: &ClipTextConfig, weights: &Path, device: &Device) -> Result<Self> {
        let names = tensor_names(weights)?;
        let mut keys = KeyMap::default().ignore("position_ids");
        if !names.iter().any(|n| n.starts_with("text_model.")) {
            // transformers 5 saves `CLIPTextModel` without the hub's `text_model.` prefix.
            keys = keys.remap(
                r"^(embeddings|encoder|final_layer_norm)\.",
                "text_model.$1.",
            );
        }
        load_strict(config.init(device)?, weights, &keys)
    }

    /// Loads transformers-layout safetensors bytes (e.g. converted from a single file).
    pub fn load_bytes(
        config: &ClipTextConfig,
        bytes: Vec<u8>,
        label: &str,
        device: &Device,
    ) -> Result<Self> {
        load_strict_bytes(
            config.init(device)?,
            bytes,
            label,
            &KeyMap::default().ignore("position_ids"),
        )
    }

    /// Encodes token ids `[B, S]` (S <= max positions).
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> ClipTextOutput {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let ids = input_ids
            .to_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap_or_default();
        let positions = Tensor::<1, Int>::arange(0..s as i64, &device).reshape([1, s]);
        let embeddings = &self.text_model.embeddings;
        let mut x = embeddings.token_embedding.forward(input_ids)
            + embeddings.position_embedding.forward(positions);
        let mut hidden_states = vec![x.clone()];
        for layer in &self.text_model.encoder.layers {
            x = layer.forward(x);
            hidden_states.push(x.clone());
        }
        let last_hidden_state = self.text_model.final_layer_norm.forward(x);
        // transformers: eos_token_id == 2 (the hub configs) pools at argmax(input_ids), the
        // highest id being <|endoftext|>; otherwise at the first eos token.
        let pool: Vec<i64> = ids
            .chunks(s)
            .map(|row| {
                let index = if self.eos_token_id == 2 {
                    row.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
                        .map(|(i, _)| i)
                } else {
                    row.iter().position(|&t| t == self.eos_token_id as i64)
                };
                index.unwrap_or(s - 1) as i64
            })
            .collect();
        let h = last_hidden_state.dims()[2];
        let index = Tensor::<1, Int>::from_data(TensorData::new(pool, [b]), &device)
            .reshape([b, 1, 1])
            .expand([b, 1, h]);
        let pooled = last_hidden_state.clone().gather(1, index).reshape([b, h]);
        let text_embeds = self
            .text_projection
            .as_ref()
            .map(|projection| to_f32(projection.forward(pooled.clone())));
        ClipTextOutput {
            hidden_states,
            last_hidden_state: to_f32(last_hidden_state),
            pooled: to_f32(pooled),
            text_embeds,
        }
    }
}

/// Reads a transformers `config.json` (for callers that need the raw config).
pub fn read_clip_config(path: &Path) -> Result<ClipTextConfig> {
    let value: serde_json::Value = read_config(path)?;
    ClipTextConfig::from_hub_json(&value.to_string())
}
