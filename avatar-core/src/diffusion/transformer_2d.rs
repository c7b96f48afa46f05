//! diffusers' `Transformer2DModel` (continuous input) and its `BasicTransformerBlock`: the
//! spatial transformer of the UNet's cross-attention blocks.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use super::attention::{Attention, AttentionInjection};
use super::resnet::{conv1x1, group_norm};

/// GEGLU feed-forward: `proj_out(h * gelu(gate))` with `[h, gate] = proj_in(x)`.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// diffusers' `ff.net.0.proj`: `dim -> 2 * 4 dim`.
    pub proj_in: Linear,
    /// diffusers' `ff.net.2`: `4 dim -> dim`.
    pub proj_out: Linear,
}

impl FeedForward {
    fn new(dim: usize, device: &Device) -> Self {
        FeedForward {
            proj_in: LinearConfig::new(dim, 8 * dim).init(device),
            proj_out: LinearConfig::new(4 * dim, dim).init(device),
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let projected = self.proj_in.forward(x);
        let [b, s, c] = projected.dims();
        let hidden = projected.clone().slice([0..b, 0..s, 0..c / 2]);
        let gate = projected.slice([0..b, 0..s, c / 2..c]);
        self.proj_out.forward(hidden * gelu(gate))
    }
}

/// Self-attention, cross-attention and a GEGLU feed-forward, each pre-norm with a residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    /// Norm before self-attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// Norm before cross-attention.
    pub norm2: LayerNorm,
    /// Cross-attention to the text tokens.
    pub attn2: Attention,
    /// Norm before the feed-forward.
    pub norm3: LayerNorm,
    /// Feed-forward.
    pub ff: FeedForward,
    /// diffusers' attention-processor index of `attn1` (`attn2` is the next one).
    pub processor: usize,
}

impl BasicTransformerBlock {
    fn new(dim: usize, heads: usize, context_dim: usize, device: &Device) -> Self {
        let norm = || LayerNormConfig::new(dim).init(device);
        BasicTransformerBlock {
            norm1: norm(),
            attn1: Attention::new(dim, dim, heads, dim / heads, device),
            norm2: norm(),
            attn2: Attention::new(dim, context_dim, heads, dim / heads, device),
            norm3: norm(),
            ff: FeedForward::new(dim, device),
            processor: 0,
        }
    }

    /// `[B, S, C]` tokens attending to `context` `[B, T, D]`, with `injection`'s additions.
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: Tensor<3>,
        injection: &AttentionInjection,
    ) -> Tensor<3> {
        let first = injection.extras(self.processor);
        let second = injection.extras(self.processor + 1);
        let x = x.clone() + self.attn1.forward_with(self.norm1.forward(x), None, first);
        let x = x.clone()
            + self
                .attn2
                .forward_with(self.norm2.forward(x), Some(context), second);
        x.clone() + self.ff.forward(self.norm3.forward(x))
    }
}

/// Input/output projection: a linear layer on tokens (SDXL) or a 1x1 convolution (SD1.5).
#[derive(Module, Debug)]
pub enum Projection {
    /// `use_linear_projection: true`.
    Linear(Linear),
    /// `use_linear_projection: false`.
    Conv(Conv2d),
}

/// A spatial transformer over `[B, C, H, W]` features.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    /// GroupNorm (eps 1e-6) on the input.
    pub norm: GroupNorm,
    /// Into the token width.
    pub proj_in: Projection,
    /// The blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// Back to the feature width.
    pub proj_out: Projection,
}

impl Transformer2DModel {
    /// `channels` features, `heads` heads, `layers` blocks attending to `context_dim` tokens.
    pub fn new(
        channels: usize,
        heads: usize,
        layers: usize,
        context_dim: usize,
        groups: usize,
        linear_projection: bool,
        device: &Device,
    ) -> Self {
        let projection = || {
            if linear_projection {
                Projection::Linear(LinearConfig::new(channels, channels).init(device))
            } else {
                Projection::Conv(conv1x1(channels, channels, device))
            }
        };
        Transformer2DModel {
            norm: group_norm(groups, channels, 1e-6, device),
            proj_in: projection(),
            transformer_blocks: (0..layers)
                .map(|_| BasicTransformerBlock::new(channels, heads, context_dim, device))
                .collect(),
            proj_out: projection(),
        }
    }

    /// `[B, C, H, W] -> [B, C, H, W]` with a residual.
    pub fn forward(
        &self,
        x: Tensor<4>,
        context: Tensor<3>,
        injection: &AttentionInjection,
    ) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let normed = crate::group_norm::group_norm(x.clone(), &self.norm);
        let to_tokens = |t: Tensor<4>| t.reshape([b, c, h * w]).swap_dims(1, 2);
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(normed)),
            Projection::Linear(linear) => linear.forward(to_tokens(normed)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context.clone(), injection);
        }
        let to_map = |t: Tensor<3>| t.swap_dims(1, 2).reshape([b, c, h, w]);
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_map(tokens)),
            Projection::Linear(linear) => to_map(linear.forward(tokens)),
        };
        out + x
    }
}
