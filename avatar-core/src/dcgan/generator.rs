//! The generator: one module type over both architectures.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::config::{Architecture, GeneratorConfig};
use super::keras_upsample::KerasUpsampleGenerator;
use super::transposed::TransposedGenerator;
use crate::error::Result;
use crate::seed::Seed;

/// A DCGAN generator of either architecture.
#[derive(Module, Debug)]
pub enum Generator {
    /// The seed service's Keras recipe.
    KerasUpsample(KerasUpsampleGenerator),
    /// Our transposed-convolution models.
    Transposed(TransposedGenerator),
}

impl GeneratorConfig {
    /// Builds a generator with random weights on `device`.
    pub fn init(&self, device: &Device) -> Result<Generator> {
        self.validate()?;
        Ok(match self.architecture {
            Architecture::KerasUpsample => {
                Generator::KerasUpsample(KerasUpsampleGenerator::new(self, device)?)
            }
            Architecture::Transposed => {
                Generator::Transposed(TransposedGenerator::new(self, device)?)
            }
        })
    }
}

impl Generator {
    /// `[N, latent] -> [N, channels, R, R]` in [-1, 1].
    pub fn forward(&self, latent: Tensor<2>) -> Tensor<4> {
        match self {
            Generator::KerasUpsample(g) => g.forward(latent),
            Generator::Transposed(g) => g.forward(latent),
        }
    }
}

/// The latent vectors for a list of seeds, as a `[N, latent_dim]` tensor (one row per seed).
pub fn latents_for_seeds(seeds: &[Seed], latent_dim: usize, device: &Device) -> Tensor<2> {
    let mut values = Vec::with_capacity(seeds.len() * latent_dim);
    for seed in seeds {
        values.extend(seed.normal_stream().take_vec(latent_dim));
    }
    Tensor::from_data(TensorData::new(values, [seeds.len(), latent_dim]), device)
}
