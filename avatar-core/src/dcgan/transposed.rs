//! Our DCGAN generator: ConvTranspose2d stacks (Radford et al. 2015), RGB or RGBA.

use burn::module::Module;
use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Tensor};

use super::config::GeneratorConfig;
use crate::activation::tanh;
use crate::batch_norm::{Activation, batch_norm_activation};
use crate::error::Result;
use crate::gemm_conv::conv_transpose2d_layer;

/// `ConvTranspose2d -> BatchNorm -> ReLU`.
#[derive(Module, Debug)]
pub struct TransposedBlock {
    /// The transposed convolution (no bias: batch norm follows).
    pub conv: ConvTranspose2d,
    /// Batch normalisation.
    pub norm: BatchNorm,
}

/// Latent `[N, z]` -> `[N, z, 1, 1]` -> s0 x s0 -> ... -> `[N, channels, R, R]`, tanh.
#[derive(Module, Debug)]
pub struct TransposedGenerator {
    /// The projection and the stride-2 stages.
    pub blocks: Vec<TransposedBlock>,
    /// The last stride-2 transposed convolution to `channels`.
    pub output: ConvTranspose2d,
}

impl TransposedGenerator {
    /// Builds the model with DCGAN's N(0, 0.02) initialisation.
    pub fn new(config: &GeneratorConfig, device: &Device) -> Result<Self> {
        let s0 = config.initial_size()?;
        let init = burn::nn::Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let norm = |c: usize| {
            BatchNormConfig::new(c)
                .with_epsilon(config.bn_epsilon)
                .with_momentum(config.bn_momentum)
                .init(device)
        };
        let up = |i: usize, o: usize| {
            ConvTranspose2dConfig::new([i, o], [4, 4])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .with_bias(false)
                .with_initializer(init.clone())
                .init(device)
        };
        let widths = &config.widths;
        let mut blocks = vec![TransposedBlock {
            conv: ConvTranspose2dConfig::new([config.latent_dim, widths[0]], [s0, s0])
                .with_bias(false)
                .with_initializer(init.clone())
                .init(device),
            norm: norm(widths[0]),
        }];
        for pair in widths.windows(2) {
            blocks.push(TransposedBlock {
                conv: up(pair[0], pair[1]),
                norm: norm(pair[1]),
            });
        }
        let mut output = up(*widths.last().expect("validated"), config.channels);
        output.bias = Some(burn::nn::Initializer::Zeros.init([config.channels], device));
        Ok(TransposedGenerator { blocks, output })
    }

    /// `[N, latent] -> [N, channels, R, R]` in [-1, 1].
    pub fn forward(&self, latent: Tensor<2>) -> Tensor<4> {
        let [n, z] = latent.dims();
        let mut x = latent.reshape([n, z, 1, 1]);
        for block in &self.blocks {
            let x_conv = conv_transpose2d_layer(x, &block.conv);
            x = batch_norm_activation(x_conv, &block.norm, Activation::Relu);
        }
        tanh(conv_transpose2d_layer(x, &self.output))
    }
}
