//! diffusers' `Attention` (self- or cross-attention with `to_q`/`to_k`/`to_v`/`to_out.0`), built on
//! burn's fused `attention` op.
//!
//! Face adapters plug in here without rewriting the UNet: IP-Adapter adds key/value projections
//! over extra image tokens and sums a scaled second attention into the output (an
//! [`ExtraKeyValue`] stream), IP-Adapter-FaceID adds low-rank updates to the four projections
//! ([`AttentionLora`]); [`Attention::forward_with`] takes both as [`AttentionExtras`].

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

/// A low-rank update of a linear projection: `x -> up(down(x))` (LoRA with scale 1, as
/// diffusers applies IP-Adapter-FaceID's LoRA).
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// `in -> rank` (no bias).
    pub down: Linear,
    /// `rank -> out` (no bias).
    pub up: Linear,
}

impl LoraLinear {
    /// A default-initialised `input -> rank -> output` update.
    pub fn new(input: usize, rank: usize, output: usize, device: &Device) -> Self {
        let no_bias = |i: usize, o: usize| LinearConfig::new(i, o).with_bias(false).init(device);
        LoraLinear {
            down: no_bias(input, rank),
            up: no_bias(rank, output),
        }
    }

    /// The update for `x`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.up.forward(self.down.forward(x))
    }
}

/// LoRA updates of an attention's four projections (IP-Adapter-FaceID's `to_{q,k,v,out}_lora`).
#[derive(Module, Debug)]
pub struct AttentionLora {
    /// Update of `to_q`.
    pub to_q: LoraLinear,
    /// Update of `to_k`.
    pub to_k: LoraLinear,
    /// Update of `to_v`.
    pub to_v: LoraLinear,
    /// Update of `to_out.0`.
    pub to_out: LoraLinear,
}

/// What one attention call adds to its own weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionExtras<'a> {
    /// Extra key/value streams (IP-Adapter image tokens), each summed with its scale.
    pub streams: &'a [ExtraKeyValue],
    /// Low-rank updates of the projections, all applied.
    pub lora: &'a [AttentionLora],
}

fn project(linear: &Linear, x: Tensor<3>, updates: &[&LoraLinear]) -> Tensor<3> {
    let mut out = linear.forward(x.clone());
    for update in updates {
        out = out + update.forward(x.clone());
    }
    out
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
        self.forward_with(x, context, AttentionExtras::default())
    }

    /// [`Attention::forward`] with LoRA updates of the projections and extra key/value streams
    /// summed into the result before `to_out` (as diffusers' `IPAdapterAttnProcessor2_0`).
    pub fn forward_with(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        extras: AttentionExtras<'_>,
    ) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let pick = |f: fn(&AttentionLora) -> &LoraLinear| -> Vec<&LoraLinear> {
            extras.lora.iter().map(f).collect()
        };
        let q = self.split_heads(project(&self.to_q, x, &pick(|l| &l.to_q)));
        let mut out = self.attend(
            q.clone(),
            project(&self.to_k, context.clone(), &pick(|l| &l.to_k)),
            project(&self.to_v, context, &pick(|l| &l.to_v)),
        );
        for stream in extras.streams {
            if stream.scale == 0.0 {
                continue;
            }
            out = out
                + self
                    .attend(
                        q.clone(),
                        stream.key.clone().cast(q.dtype()),
                        stream.value.clone().cast(q.dtype()),
                    )
                    .mul_scalar(stream.scale);
        }
        project(&self.to_out[0], out, &pick(|l| &l.to_out))
    }
}

/// Per-run additions to a UNet's attention layers, addressed by diffusers' attention-processor
/// index (`unet.attn_processors` order: down blocks, up blocks, then the mid block; in each
/// transformer block `attn1`, then `attn2`).
#[derive(Debug, Clone, Default)]
pub struct AttentionInjection {
    /// Extra key/value streams per processor index.
    pub streams: Vec<Vec<ExtraKeyValue>>,
    /// LoRA updates per processor index.
    pub lora: Vec<Vec<AttentionLora>>,
}

impl AttentionInjection {
    /// What processor `index` adds.
    pub fn extras(&self, index: usize) -> AttentionExtras<'_> {
        AttentionExtras {
            streams: self.streams.get(index).map(Vec::as_slice).unwrap_or(&[]),
            lora: self.lora.get(index).map(Vec::as_slice).unwrap_or(&[]),
        }
    }

    /// Adds `stream` to processor `index`.
    pub fn push_stream(&mut self, index: usize, stream: ExtraKeyValue) {
        if self.streams.len() <= index {
            self.streams.resize_with(index + 1, Vec::new);
        }
        self.streams[index].push(stream);
    }

    /// Adds `lora` to processor `index`.
    pub fn push_lora(&mut self, index: usize, lora: AttentionLora) {
        if self.lora.len() <= index {
            self.lora.resize_with(index + 1, Vec::new);
        }
        self.lora[index].push(lora);
    }
}
