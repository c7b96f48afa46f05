//! diffusers' `Attention` (self- or cross-attention with `to_q`/`to_k`/`to_v`/`to_out.0`), built on
//! burn's fused `attention` op.
//!
//! Face adapters plug in here: IP-Adapter adds key/value projections over extra image tokens and
//! sums a scaled second attention into the output; [`Attention::forward_with_extra`] takes such
//! extra key/value streams so adapters do not rewrite the UNet.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

/// Multi-head attention over `[B, S, C]` tokens.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection (no bias).
    pub to_q: Linear,
    /// Key projection from the context (no bias).
    pub to_k: Linear,
    /// Value projection from the context (no bias).
    pub to_v: Linear,
    /// Output projection (diffusers' `to_out.0`, with bias).
    pub to_out: Vec<Linear>,
    heads: usize,
}

/// An extra key/value token stream attended to alongside the main one (IP-Adapter style):
/// `out += scale * attention(q, k, v)`.
#[derive(Debug, Clone)]
pub struct ExtraKeyValue {
    /// Keys `[B, T, inner]`.
    pub key: Tensor<3>,
    /// Values `[B, T, inner]`.
    pub value: Tensor<3>,
    /// Weight of this stream.
    pub scale: f32,
}

impl Attention {
    /// `query_dim -> heads * head_dim`; keys/values from `context_dim` (= `query_dim` for self-attention).
    pub fn new(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> Self {
        let inner = heads * head_dim;
        let no_bias = |i: usize, o: usize| LinearConfig::new(i, o).with_bias(false).init(device);
        Attention {
            to_q: no_bias(query_dim, inner),
            to_k: no_bias(context_dim, inner),
            to_v: no_bias(context_dim, inner),
            to_out: vec![LinearConfig::new(inner, query_dim).init(device)],
            heads,
        }
    }

    fn split_heads(&self, t: Tensor<3>) -> Tensor<4> {
        let [b, s, c] = t.dims();
        t.reshape([b, s, self.heads, c / self.heads])
            .swap_dims(1, 2)
    }

    fn attend(&self, q: Tensor<4>, key: Tensor<3>, value: Tensor<3>) -> Tensor<3> {
        let [b, h, s, d] = q.dims();
        attention(
            q,
            self.split_heads(key),
            self.split_heads(value),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .swap_dims(1, 2)
        .reshape([b, s, h * d])
    }

    /// `x` `[B, S, query_dim]` attends to `context` (`None`: to itself).
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        self.forward_with_extra(x, context, &[])
    }

    /// [`Attention::forward`] plus extra key/value streams summed into the result before `to_out`.
    pub fn forward_with_extra(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        extra: &[ExtraKeyValue],
    ) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = self.split_heads(self.to_q.forward(x));
        let mut out = self.attend(
            q.clone(),
            self.to_k.forward(context.clone()),
            self.to_v.forward(context),
        );
        for stream in extra {
            out = out
                + self
                    .attend(q.clone(), stream.key.clone(), stream.value.clone())
                    .mul_scalar(stream.scale);
        }
        self.to_out[0].forward(out)
    }
}
