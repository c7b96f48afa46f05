//! Generator configurations: the seed's Keras recipe and our transposed-convolution models.

use burn::config::Config;

use crate::error::{AvatarError, Result};

/// The two generator architectures.
#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum Architecture {
    /// The seed service's Keras recipe: Dense -> 4x4 -> [UpSampling2D -> Conv2D 3x3 -> BN -> ReLU] x4
    /// -> Conv2D 3x3 -> tanh. `widths` = `[dense F0, conv1, conv2, conv3, conv4]`.
    KerasUpsample,
    /// ConvTranspose2d stacks: a 1x1 -> s0 x s0 projection then 4x4 stride-2 doublings; `widths` are
    /// the feature widths of each stage, and `resolution = s0 * 2^widths.len()`.
    Transposed,
}

/// A DCGAN generator: latent vector -> `channels` x `resolution` x `resolution` image in [-1, 1].
///
/// ```
/// use avatar_core::dcgan::GeneratorConfig;
/// let seed_96 = GeneratorConfig::keras_seed(96).unwrap();
/// assert_eq!(seed_96.latent_dim, 100);
/// assert_eq!(seed_96.upsample_factors().unwrap(), vec![2, 2, 2, 3]);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Length of the latent vector.
    pub latent_dim: usize,
    /// Output side in pixels.
    pub resolution: usize,
    /// Output channels: 3 (RGB) or 4 (RGBA with a learned alpha).
    #[config(default = 3)]
    pub channels: usize,
    /// Which architecture.
    pub architecture: Architecture,
    /// Stage widths (see [`Architecture`]).
    pub widths: Vec<usize>,
    /// Batch-norm epsilon (Keras: 1e-3, PyTorch: 1e-5).
    #[config(default = 1e-3)]
    pub bn_epsilon: f64,
    /// Batch-norm momentum in burn's convention (weight of the new batch statistic;
    /// Keras `momentum=0.8` is 0.2 here).
    #[config(default = 0.2)]
    pub bn_momentum: f64,
}

impl GeneratorConfig {
    /// The seed service's Keras generator: 96 px with latent 100, or 128 px with latent 128.
    pub fn keras_seed(resolution: usize) -> Result<Self> {
        let latent = match resolution {
            96 => 100,
            128 => 128,
            other => {
                return Err(AvatarError::Config(format!(
                    "the seed's Keras generator exists at 96 or 128 px, not {other}"
                )));
            }
        };
        let config = GeneratorConfig::new(
            latent,
            resolution,
            Architecture::KerasUpsample,
            vec![256, 256, 256, 128, 128],
        );
        config.validate()?;
        Ok(config)
    }

    /// A transposed-convolution generator (the architecture of our trained models).
    pub fn transposed(
        latent_dim: usize,
        resolution: usize,
        channels: usize,
        widths: Vec<usize>,
    ) -> Result<Self> {
        let config = GeneratorConfig::new(latent_dim, resolution, Architecture::Transposed, widths)
            .with_channels(channels)
            .with_bn_epsilon(1e-5)
            .with_bn_momentum(0.1);
        config.validate()?;
        Ok(config)
    }

    /// The UpSampling2D factors of the Keras recipe: 2, 2, 2 and `resolution / 32`.
    pub fn upsample_factors(&self) -> Result<Vec<usize>> {
        if !self.resolution.is_multiple_of(32) || self.resolution < 32 {
            return Err(AvatarError::Config(format!(
                "keras-upsample needs a resolution that is a multiple of 32, got {}",
                self.resolution
            )));
        }
        Ok(vec![2, 2, 2, self.resolution / 32])
    }

    /// The side of the first feature map of the transposed architecture.
    pub fn initial_size(&self) -> Result<usize> {
        base_size(self.resolution, self.widths.len(), "transposed")
    }

    /// Checks that the configuration describes a buildable model.
    pub fn validate(&self) -> Result<()> {
        if self.latent_dim == 0 || self.latent_dim > 4096 {
            return Err(AvatarError::Config(format!(
                "latent_dim {} out of 1..=4096",
                self.latent_dim
            )));
        }
        if !(self.channels == 3 || self.channels == 4) {
            return Err(AvatarError::Config(format!(
                "channels must be 3 or 4, got {}",
                self.channels
            )));
        }
        if self.widths.contains(&0) {
            return Err(AvatarError::Config("widths must be positive".into()));
        }
        match self.architecture {
            Architecture::KerasUpsample => {
                if self.widths.len() != 5 {
                    return Err(AvatarError::Config(format!(
                        "keras-upsample needs 5 widths (dense + 4 convs), got {}",
                        self.widths.len()
                    )));
                }
                self.upsample_factors()?;
            }
            Architecture::Transposed => {
                self.initial_size()?;
            }
        }
        Ok(())
    }

    /// Parses a config from JSON and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: GeneratorConfig = serde_json::from_str(text)
            .map_err(|e| AvatarError::Config(format!("generator config JSON: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }
}

/// `resolution / 2^stages`, the side of the smallest feature map of a stack of stride-2 stages;
/// an error unless it is a whole number >= 2. `owner` names the model in the message.
pub(crate) fn base_size(resolution: usize, stages: usize, owner: &str) -> Result<usize> {
    let scale = 1usize << stages.min(31);
    if stages == 0 || !resolution.is_multiple_of(scale) || resolution / scale < 2 {
        return Err(AvatarError::Config(format!(
            "{owner}: resolution {resolution} is not s0 * 2^{stages} with s0 >= 2"
        )));
    }
    Ok(resolution / scale)
}
