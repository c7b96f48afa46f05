//! CLIP's image and text towers in OpenAI's / open_clip's layout (`visual.conv1`,
//! `visual.transformer.resblocks.N.attn.in_proj_weight`, `token_embedding`, `text_projection`, ...),
//! as VQGAN+CLIP uses them: `encode_image` and `encode_text`, unnormalised.
//!
//! Loads open_clip state dicts (`open_clip_pytorch_model.bin`, `open_clip_model.safetensors`) and
//! OpenAI state dicts saved with `torch.save(model.state_dict())`. OpenAI's released `ViT-B-32.pt`
//! is a TorchScript archive; `tools/reference/vqgan_clip/README.md` shows the one-line conversion.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor};
use serde::Deserialize;

use crate::diffusion::weights::{KeyMap, load_strict_any};
use crate::error::{AvatarError, Result};

pub use crate::imaging::{CLIP_MEAN, CLIP_STD};

/// The image tower's shape (open_clip's `vision_cfg`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// Input side in pixels (224).
    pub image_size: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Residual width.
    pub width: usize,
    /// Width of one attention head (heads = width / head_width).
    #[serde(default = "sixty_four")]
    pub head_width: usize,
    /// Patch side.
    pub patch_size: usize,
    /// MLP width over residual width.
    #[serde(default = "four")]
    pub mlp_ratio: f64,
}

/// The text tower's shape (open_clip's `text_cfg`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TextConfig {
    /// Tokens per prompt (77).
    #[serde(default = "seventy_seven")]
    pub context_length: usize,
    /// Vocabulary size (49,408).
    #[serde(default = "vocab")]
    pub vocab_size: usize,
    /// Residual width.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// Transformer layers.
    pub layers: usize,
    /// MLP width over residual width.
    #[serde(default = "four")]
    pub mlp_ratio: f64,
}

/// A CLIP model's config: open_clip's model json (`ViT-B-32.json`) plus `quick_gelu`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OpenClipConfig {
    /// Width of the joint embedding.
    pub embed_dim: usize,
    /// Image tower.
    pub vision_cfg: VisionConfig,
    /// Text tower.
    pub text_cfg: TextConfig,
    /// `x * sigmoid(1.702 x)` MLP activation (OpenAI's weights) instead of exact gelu.
    #[serde(default)]
    pub quick_gelu: bool,
}

fn sixty_four() -> usize {
    64
}
fn four() -> f64 {
    4.0
}
fn seventy_seven() -> usize {
    77
}
fn vocab() -> usize {
    49_408
}

impl OpenClipConfig {
    /// OpenAI's ViT-B/32 (open_clip's `ViT-B-32-quickgelu`): the CLIP of VQGAN+CLIP.
    pub fn vit_b_32() -> Self {
        OpenClipConfig {
            embed_dim: 512,
            vision_cfg: VisionConfig {
                image_size: 224,
                layers: 12,
                width: 768,
                head_width: 64,
                patch_size: 32,
                mlp_ratio: 4.0,
            },
            text_cfg: TextConfig {
                context_length: 77,
                vocab_size: 49_408,
                width: 512,
                heads: 8,
                layers: 12,
                mlp_ratio: 4.0,
            },
            quick_gelu: true,
        }
    }

    /// Parses open_clip's model json.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: OpenClipConfig = serde_json::from_str(text)
            .map_err(|e| AvatarError::Config(format!("open_clip config: {e}")))?;
        config.check()?;
        Ok(config)
    }

    /// Reads [`OpenClipConfig::from_json`] from a file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let path = &*crate::hub::resolve(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| AvatarError::io(path, e))?;
        Self::from_json(&text).map_err(|e| AvatarError::Config(format!("{}: {e}", path.display())))
    }

    fn check(&self) -> Result<()> {
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        let bad = |m: String| Err(AvatarError::Config(format!("open_clip config: {m}")));
        if v.head_width == 0 || !v.width.is_multiple_of(v.head_width) {
            return bad(format!(
                "vision width {} is not a multiple of head_width {}",
                v.width, v.head_width
            ));
        }
        if t.heads == 0 || !t.width.is_multiple_of(t.heads) {
            return bad(format!(
                "text width {} is not a multiple of heads {}",
                t.width, t.heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        Ok(())
    }

    /// Builds the model with default-initialised weights.
    pub fn init(&self, device: &Device) -> Result<OpenClip> {
        self.check()?;
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        let grid = v.image_size / v.patch_size;
        let transformer = |width: usize, heads: usize, layers: usize, ratio: f64| Transformer {
            resblocks: (0..layers)
                .map(|_| {
                    ResidualAttentionBlock::new(
                        width,
                        heads,
                        (width as f64 * ratio) as usize,
                        device,
                    )
                })
                .collect(),
        };
        let zeros1 = |n: usize| Param::from_tensor(Tensor::zeros([n], device));
        let zeros2 = |a: usize, b: usize| Param::from_tensor(Tensor::zeros([a, b], device));
        Ok(OpenClip {
            visual: VisionTransformer {
                conv1: Conv2dConfig::new([3, v.width], [v.patch_size, v.patch_size])
                    .with_stride([v.patch_size, v.patch_size])
                    .with_bias(false)
                    .init(device),
                class_embedding: zeros1(v.width),
                positional_embedding: zeros2(grid * grid + 1, v.width),
                ln_pre: LayerNormConfig::new(v.width).init(device),
                transformer: transformer(v.width, v.width / v.head_width, v.layers, v.mlp_ratio),
                ln_post: LayerNormConfig::new(v.width).init(device),
                proj: zeros2(v.width, self.embed_dim),
                image_size: v.image_size,
            },
            token_embedding: EmbeddingConfig::new(t.vocab_size, t.width).init(device),
            positional_embedding: zeros2(t.context_length, t.width),
            transformer: transformer(t.width, t.heads, t.layers, t.mlp_ratio),
            ln_final: LayerNormConfig::new(t.width).init(device),
            text_projection: zeros2(t.width, self.embed_dim),
            quick_gelu: self.quick_gelu,
        })
    }
}

/// `nn.MultiheadAttention` with its fused input projection (`in_proj_weight` `[3W, W]`).
#[derive(Module, Debug)]
pub struct MultiheadAttention {
    /// Query, key and value projections stacked, PyTorch layout `[3W, W]`.
    pub in_proj_weight: Param<Tensor<2>>,
    /// Their biases `[3W]`.
    pub in_proj_bias: Param<Tensor<1>>,
    /// Output projection.
    pub out_proj: Linear,
    heads: usize,
}

impl MultiheadAttention {
    /// `[B, S, W] -> [B, S, W]`, causal when `causal`.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let [b, s, w] = x.dims();
        let qkv = (x
            .reshape([b * s, w])
            .matmul(self.in_proj_weight.val().transpose())
            + self.in_proj_bias.val().reshape([1, 3 * w]))
        .reshape([b, s, 3 * w]);
        let d = w / self.heads;
        let heads = |i: usize| {
            qkv.clone()
                .narrow(2, i * w, w)
                .reshape([b, s, self.heads, d])
                .swap_dims(1, 2)
        };
        let options = AttentionModuleOptions {
            is_causal: causal,
            ..Default::default()
        };
        let out = attention(heads(0), heads(1), heads(2), None, None, options)
            .swap_dims(1, 2)
            .reshape([b, s, w]);
        linear_2d(&self.out_proj, out)
    }
}

/// A linear layer over `[B, S, W]` as one `[B*S, W]` matrix product (one large GEMM rather than a
/// batch of small ones).
fn linear_2d(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, s, w] = x.dims();
    let y = linear.forward(x.reshape([b * s, w]));
    let out = y.dims()[1];
    y.reshape([b, s, out])
}

/// The two-layer MLP of a residual block (`c_fc`, `c_proj`).
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion.
    pub c_fc: Linear,
    /// Projection back.
    pub c_proj: Linear,
}

/// Pre-norm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct ResidualAttentionBlock {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Self-attention.
    pub attn: MultiheadAttention,
    /// Norm before the MLP.
    pub ln_2: LayerNorm,
    /// MLP.
    pub mlp: Mlp,
}

impl ResidualAttentionBlock {
    fn new(width: usize, heads: usize, hidden: usize, device: &Device) -> Self {
        ResidualAttentionBlock {
            ln_1: LayerNormConfig::new(width).init(device),
            attn: MultiheadAttention {
                in_proj_weight: Param::from_tensor(Tensor::zeros([3 * width, width], device)),
                in_proj_bias: Param::from_tensor(Tensor::zeros([3 * width], device)),
                out_proj: LinearConfig::new(width, width).init(device),
                heads,
            },
            ln_2: LayerNormConfig::new(width).init(device),
            mlp: Mlp {
                c_fc: LinearConfig::new(width, hidden).init(device),
                c_proj: LinearConfig::new(hidden, width).init(device),
            },
        }
    }

    fn forward(&self, x: Tensor<3>, causal: bool, quick_gelu: bool) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), causal);
        let h = linear_2d(&self.mlp.c_fc, self.ln_2.forward(x.clone()));
        let h = if quick_gelu {
            crate::activation::quick_gelu(h)
        } else {
            gelu(h)
        };
        x + linear_2d(&self.mlp.c_proj, h)
    }
}

/// A stack of residual attention blocks.
#[derive(Module, Debug)]
pub struct Transformer {
    /// The blocks.
    pub resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    fn forward(&self, mut x: Tensor<3>, causal: bool, quick_gelu: bool) -> Tensor<3> {
        for block in &self.resblocks {
            x = block.forward(x, causal, quick_gelu);
        }
        x
    }
}

/// The image tower (a ViT with a class token).
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// Patch embedding (no bias).
    pub conv1: Conv2d,
    /// Class token `[W]`.
    pub class_embedding: Param<Tensor<1>>,
    /// Position embeddings `[grid² + 1, W]`.
    pub positional_embedding: Param<Tensor<2>>,
    /// Norm before the transformer.
    pub ln_pre: LayerNorm,
    /// Transformer.
    pub transformer: Transformer,
    /// Norm of the class token.
    pub ln_post: LayerNorm,
    /// Projection to the joint embedding, `[W, E]` (used as `x @ proj`).
    pub proj: Param<Tensor<2>>,
    image_size: usize,
}

/// CLIP: image and text towers projecting into one embedding space.
#[derive(Module, Debug)]
pub struct OpenClip {
    /// Image tower.
    pub visual: VisionTransformer,
    /// Token embeddings `[vocab, W]`.
    pub token_embedding: Embedding,
    /// Position embeddings `[context, W]`.
    pub positional_embedding: Param<Tensor<2>>,
    /// Text transformer (causal).
    pub transformer: Transformer,
    /// Final norm.
    pub ln_final: LayerNorm,
    /// Projection to the joint embedding, `[W, E]`.
    pub text_projection: Param<Tensor<2>>,
    quick_gelu: bool,
}

impl OpenClip {
    /// Loads a state dict (`.safetensors`, or a PyTorch pickle `.bin` / `.pt` / `.pth`) for
    /// `config`; `logit_scale` and OpenAI's metadata entries are ignored, anything else missing,
    /// unexpected or mis-shaped is an error listing the keys.
    pub fn load(config: &OpenClipConfig, weights: &Path, device: &Device) -> Result<Self> {
        let weights = &*crate::hub::resolve(weights)?;
        let model = config.init(device)?;
        let keys = KeyMap::default()
            .ignore("logit_scale")
            .ignore("attn_mask")
            .ignore("input_resolution")
            .ignore("context_length")
            .ignore("vocab_size");
        load_strict_any(model, weights, &keys)
    }

    /// Side of the images `encode_image` takes.
    pub fn image_size(&self) -> usize {
        self.visual.image_size
    }

    /// Width of the joint embedding.
    pub fn embed_dim(&self) -> usize {
        self.text_projection.val().dims()[1]
    }

    /// Tokens per prompt.
    pub fn context_length(&self) -> usize {
        self.positional_embedding.val().dims()[0]
    }

    /// CLIP-normalised images `[B, 3, S, S]` (S = [`OpenClip::image_size`]) -> `[B, E]`.
    pub fn encode_image(&self, pixels: Tensor<4>) -> Tensor<2> {
        let v = &self.visual;
        let patches = v.conv1.forward(pixels);
        let [b, w, gh, gw] = patches.dims();
        let tokens = patches.reshape([b, w, gh * gw]).swap_dims(1, 2);
        let class = v.class_embedding.val().reshape([1, 1, w]).expand([b, 1, w]);
        let x = Tensor::cat(vec![class, tokens], 1) + v.positional_embedding.val().unsqueeze_dim(0);
        let x = v
            .transformer
            .forward(v.ln_pre.forward(x), false, self.quick_gelu);
        let pooled = v.ln_post.forward(x.narrow(1, 0, 1)).reshape([b, w]);
        pooled.matmul(v.proj.val())
    }

    /// Token ids `[B, context]` (start token, text, end token 49407, zero padding) -> `[B, E]`,
    /// pooled at each row's end token (its largest id).
    pub fn encode_text(&self, tokens: Tensor<2, Int>) -> Tensor<2> {
        let [b, s] = tokens.dims();
        let end = tokens.clone().argmax(1);
        let x = self.token_embedding.forward(tokens)
            + self
                .positional_embedding
                .val()
                .narrow(0, 0, s)
                .unsqueeze_dim(0);
        let x = self
            .ln_final
            .forward(self.transformer.forward(x, true, self.quick_gelu));
        let w = x.dims()[2];
        let pooled = x
            .gather(1, end.reshape([b, 1, 1]).expand([b, 1, w]))
            .reshape([b, w]);
        pooled.matmul(self.text_projection.val())
    }
}
