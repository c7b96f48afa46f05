//! The seed service's Keras generator, layer for layer.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Tensor};

use super::config::GeneratorConfig;
use super::upsample_conv::upsample_conv_affine;
use crate::error::Result;

/// One `UpSampling2D -> Conv2D 3x3 same -> BatchNormalization -> ReLU` block.
#[derive(Module, Debug)]
pub struct UpsampleBlock {
    /// The 3x3 convolution.
    pub conv: Conv2d,
    /// Batch normalisation after the convolution.
    pub norm: BatchNorm,
    /// Nearest-neighbour upsampling factor applied before the convolution.
    pub factor: usize,
}

impl UpsampleBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // Inference batch norm (running statistics; this generator is only ever imported, never
        // trained here) folded into the convolution: no separate pass over the largest tensors.
        let norm = &self.norm;
        let scale = norm.gamma.val() / norm.running_var.value().add_scalar(norm.epsilon).sqrt();
        let shift = norm.beta.val() - norm.running_mean.value() * scale.clone();
        relu(upsample_conv_affine(
            x,
            &self.conv,
            self.factor,
            Some((scale, shift)),
        ))
    }
}

/// Keras `Dense(4*4*F0, relu) -> Reshape -> 4 upsample blocks -> Conv2D(channels, 3x3) -> tanh`.
#[derive(Module, Debug)]
pub struct KerasUpsampleGenerator {
    /// The dense projection of the latent vector (Keras kernel layout is [in, out] like burn's).
    pub dense: Linear,
    /// The four upsampling blocks.
    pub blocks: Vec<UpsampleBlock>,
    /// The output convolution.
    pub output: Conv2d,
}

impl KerasUpsampleGenerator {
    /// Builds the model with random weights (call through [`GeneratorConfig::init`](super::Generator)).
    pub fn new(config: &GeneratorConfig, device: &Device) -> Result<Self> {
        let widths = &config.widths;
        let factors = config.upsample_factors()?;
        let conv3 = |i: usize, o: usize| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let blocks = (0..4)
            .map(|i| UpsampleBlock {
                conv: conv3(widths[i], widths[i + 1]),
                norm: BatchNormConfig::new(widths[i + 1])
                    .with_epsilon(config.bn_epsilon)
                    .with_momentum(config.bn_momentum)
                    .init(device),
                factor: factors[i],
            })
            .collect();
        Ok(KerasUpsampleGenerator {
            dense: LinearConfig::new(config.latent_dim, 16 * widths[0]).init(device),
            blocks,
            output: conv3(widths[4], config.channels),
        })
    }

    /// `[N, latent] -> [N, channels, H, W]` in [-1, 1].
    pub fn forward(&self, latent: Tensor<2>) -> Tensor<4> {
        let [n, _] = latent.dims();
        let x = relu(self.dense.forward(latent));
        let features = x.dims()[1] / 16;
        // Keras reshapes NHWC: [N, 4, 4, F0] then we go to NCHW.
        let mut x = x.reshape([n, 4, 4, features]).permute([0, 3, 1, 2]);
        for block in &self.blocks {
            x = block.forward(x);
        }
        tanh(self.output.forward(x))
    }
}
