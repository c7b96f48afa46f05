//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod adapters;
pub mod tensors;

use std::path::PathBuf;

use avatar_core::dcgan::{Architecture, load_keras_generator};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

/// Path of a Keras fixture.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keras")
        .join(name)
}

/// A shape and its row-major values.
pub type Array = (Vec<usize>, Vec<f32>);

/// `(latent [N, z], expected output [N, H, W, C])` from a `.io.safetensors` fixture.
pub fn io(name: &str) -> (Array, Array) {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |key: &str| {
        let view = tensors.tensor(key).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (view.shape().to_vec(), values)
    };
    (read("latent"), read("output"))
}

/// Runs `model_file` on the fixture's latents and returns the max abs error against Keras.
pub fn keras_max_error(
    stem: &str,
    model_file: &str,
    resolution: Option<usize>,
    device: &Device,
) -> f32 {
    let ((latent_shape, latent), (out_shape, expected)) = io(&format!("{stem}.io.safetensors"));
    let (config, generator) =
        load_keras_generator(&fixture(model_file), resolution, device).unwrap();
    assert_eq!(config.architecture, Architecture::KerasUpsample);
    assert_eq!(config.latent_dim, latent_shape[1]);
    let generator = generator.valid();
    let latents = Tensor::<2>::from_data(TensorData::new(latent, latent_shape), device);
    // Ours is NCHW; Keras is NHWC.
    let ours = generator.forward(latents).permute([0, 2, 3, 1]);
    assert_eq!(ours.dims().to_vec(), out_shape);
    let ours = ours.into_data().try_into_vec::<f32>().unwrap();
    ours.iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}
