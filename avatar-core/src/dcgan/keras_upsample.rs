//! The seed service's Keras generator, layer for layer.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::config::GeneratorConfig;
use super::inference::InferenceGenerator;
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

    /// `[N, latent] -> [N, channels, H, W]` in [-1, 1]. Batch norms use their running statistics
    /// (this generator is only ever imported, never trained here), folded into the convolutions
    /// as in [`InferenceGenerator`]; keep one from [`Generator::for_inference`] to fold once.
    ///
    /// [`Generator::for_inference`]: super::Generator::for_inference
    pub fn forward(&self, latent: Tensor<2>) -> Tensor<4> {
        InferenceGenerator::from(self).forward(latent)
    }
}
