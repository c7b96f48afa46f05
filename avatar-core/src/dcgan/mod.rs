//! DCGAN cartoon-avatar generators: the seed's Keras recipe and our trained transposed models.

mod config;
mod discriminator;
mod generator;
mod grow;
mod inference;
pub mod keras;
mod keras_import;
mod keras_upsample;
mod spectral_norm;
mod standing_statistics;
mod transposed;
mod upsample_conv;
mod weights;

pub use config::{Architecture, GeneratorConfig};
pub use discriminator::{Discriminator, DiscriminatorConfig, DownBlock};
pub use generator::{Generator, latents_for_seeds};
pub use grow::grow_generator;
pub use inference::InferenceGenerator;
pub use keras_import::{
    generator_from_keras, keras_config, load_keras_generator, load_keras_generator_bytes,
};
pub use keras_upsample::{KerasUpsampleGenerator, UpsampleBlock};
pub use spectral_norm::SpectralNorm;
pub use standing_statistics::STANDING_STATISTICS_SAMPLES;
pub use transposed::{TransposedBlock, TransposedGenerator};
pub use upsample_conv::{upsample_conv, upsample_nearest};
pub use weights::{
    CONFIG_METADATA_KEY, StoredDtype, config_from_metadata, config_path_for, generator_from_bytes,
    generator_to_bytes, load_generator, save_generator,
};
