//! The discriminator used to train the generators: strided convolutions down to one logit.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use super::config::base_size;
use super::spectral_norm::SpectralNorm;
use crate::batch_norm::{Activation, batch_norm_activation};
use crate::error::Result;
use crate::gemm_conv::{conv2d_layer, conv2d_with_weight};

/// `channels x R x R` image -> one real/fake logit, through 4x4 stride-2 convolutions.
#[derive(Config, Debug, PartialEq)]
pub struct DiscriminatorConfig {
    /// Input side in pixels (the generator's resolution).
    pub resolution: usize,
    /// Input channels (3 or 4).
    pub channels: usize,
    /// Widths of the stride-2 stages, from the image side; `R / 2^len` must be >= 2.
    pub widths: Vec<usize>,
    /// Spectral normalisation of every convolution (SN-GAN) instead of batch normalisation;
    /// every convolution then has a bias.
    #[config(default = false)]
    pub spectral_norm: bool,
}

/// One `Conv2d 4x4 stride 2 -> [BatchNorm] -> LeakyReLU(0.2)` stage.
#[derive(Module, Debug)]
pub struct DownBlock {
    /// The strided convolution.
    pub conv: Conv2d,
    /// Batch normalisation (absent on the first stage, as in DCGAN, and with spectral norm).
    pub norm: Option<BatchNorm>,
    /// The convolution's spectral normalisation, when enabled.
    pub spectral: Option<SpectralNorm>,
}

/// The discriminator module.
#[derive(Module, Debug)]
pub struct Discriminator {
    /// The stride-2 stages.
    pub blocks: Vec<DownBlock>,
    /// The final `s0 x s0` convolution to one logit.
    pub output: Conv2d,
    /// The output convolution's spectral normalisation, when enabled.
    pub output_spectral: Option<SpectralNorm>,
}

impl DiscriminatorConfig {
    /// The side of the last feature map.
    pub fn final_size(&self) -> Result<usize> {
        base_size(self.resolution, self.widths.len(), "discriminator")
    }

    /// Builds the discriminator with DCGAN's N(0, 0.02) initialisation.
    pub fn init(&self, device: &Device) -> Result<Discriminator> {
        let s0 = self.final_size()?;
        let init = burn::nn::Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let spectral = self.spectral_norm;
        let spectral_of =
            |conv: &Conv2d| spectral.then(|| SpectralNorm::new(conv.weight.dims(), device));
        let mut blocks = Vec::new();
        let mut input = self.channels;
        for (i, &width) in self.widths.iter().enumerate() {
            let conv = Conv2dConfig::new([input, width], [4, 4])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(i == 0 || spectral)
                .with_initializer(init.clone())
                .init(device);
            blocks.push(DownBlock {
                spectral: spectral_of(&conv),
                conv,
                norm: (i > 0 && !spectral).then(|| BatchNormConfig::new(width).init(device)),
            });
            input = width;
        }
        let output = Conv2dConfig::new([input, 1], [s0, s0])
            .with_initializer(init)
            .init(device);
        Ok(Discriminator {
            blocks,
            output_spectral: spectral_of(&output),
            output,
        })
    }
}

impl Discriminator {
    /// `[N, C, R, R] -> [N]` logits.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<1> {
        let mut x = images;
        for block in &self.blocks {
            x = convolve(x, &block.conv, block.spectral.as_ref());
            x = match &block.norm {
                Some(norm) => batch_norm_activation(x, norm, LEAKY_RELU),
                None => LEAKY_RELU.apply(x),
            };
        }
        let [n, ..] = x.dims();
        convolve(x, &self.output, self.output_spectral.as_ref()).reshape([n])
    }

    /// One power iteration of every spectral normalisation (a no-op without them): called once
    /// per training step, before the step's forward passes.
    pub fn power_iteration(self) -> Self {
        let refine = |spectral: Option<SpectralNorm>, conv: &Conv2d| {
            spectral.map(|s| s.power_iteration(conv.weight.val()))
        };
        Discriminator {
            blocks: self
                .blocks
                .into_iter()
                .map(|block| DownBlock {
                    spectral: refine(block.spectral, &block.conv),
                    ..block
                })
                .collect(),
            output_spectral: refine(self.output_spectral, &self.output),
            output: self.output,
        }
    }
}

/// `conv` on `x`, with its weight spectrally normalised when `spectral` is given.
fn convolve(x: Tensor<4>, conv: &Conv2d, spectral: Option<&SpectralNorm>) -> Tensor<4> {
    match spectral {
        Some(spectral) => conv2d_with_weight(x, conv, spectral.normalise_weight(conv.weight.val())),
        None => conv2d_layer(x, conv),
    }
}

/// DCGAN's activation in the discriminator.
const LEAKY_RELU: Activation = Activation::LeakyRelu { slope: 0.2 };
