//! Sinusoidal timestep features and the MLP that embeds them (diffusers' `Timesteps` and
//! `TimestepEmbedding`).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};

use super::precision::dtype_of;
use crate::activation::silu;

/// `[N]` values -> `[N, dim]` features `[cos(t f_k), sin(t f_k)]` with
/// `f_k = exp(-ln(10000) k / (dim/2 - shift))` (diffusers with `flip_sin_to_cos=True`), computed
/// in f32 like diffusers.
pub fn timestep_features(values: &[f32], dim: usize, shift: f32, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let log_period = 10000f64.ln() as f32;
    let exponent = |k: usize| -log_period * k as f32 / (half as f32 - shift);
    let mut data = Vec::with_capacity(values.len() * dim);
    for &t in values {
        let args: Vec<f32> = (0..half).map(|k| t * exponent(k).exp()).collect();
        data.extend(args.iter().map(|a| a.cos()));
        data.extend(args.iter().map(|a| a.sin()));
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [values.len(), dim]), device)
}

/// `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// Input -> embedding width.
    pub linear_1: Linear,
    /// Embedding width -> embedding width.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// `input -> dim -> dim`.
    pub fn new(input: usize, dim: usize, device: &Device) -> Self {
        TimestepEmbedding {
            linear_1: LinearConfig::new(input, dim).init(device),
            linear_2: LinearConfig::new(dim, dim).init(device),
        }
    }

    /// `[B, input] -> [B, dim]`, in the weights' dtype (the f32 features are cast to it).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = x.cast(dtype_of(&self.linear_1.weight));
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
