//! Parity with the seed's Keras generator: fixtures made by `tools/reference/keras_dcgan.py`
//! (random weights and random batch-norm statistics), read straight from `.h5` without Python.

use crate::common;

use avatar_core::dcgan::{
    StoredDtype, generator_from_bytes, generator_to_bytes, load_keras_generator,
};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use common::{fixture, keras_max_error};

#[test]
fn keras_h5_files_match_keras_outputs_on_flex() {
    let device = Device::flex();
    for (stem, resolution) in [("tiny96", 96), ("tiny128", 128)] {
        for (file, res) in [
            (format!("{stem}.keras2.h5"), None),
            (format!("{stem}.keras3.h5"), None),
            (format!("{stem}.weights.h5"), Some(resolution)),
        ] {
            let error = keras_max_error(stem, &file, res, &device);
            assert!(error <= 1e-4, "{file}: max abs error {error}");
        }
    }
}

#[test]
fn half_precision_keras_file_loads_close_to_the_f32_model() {
    let error = keras_max_error("tiny96", "tiny96.f16.keras2.h5", None, &Device::flex());
    assert!(error <= 2e-2, "max abs error {error}");
}

#[test]
fn weights_h5_needs_a_resolution_and_rejects_a_wrong_one() {
    let device = Device::flex();
    let err = load_keras_generator(&fixture("tiny96.weights.h5"), None, &device).unwrap_err();
    assert!(err.to_string().contains("resolution"), "{err}");
    assert!(load_keras_generator(&fixture("tiny96.keras2.h5"), Some(128), &device).is_err());
    let err = load_keras_generator(&fixture("does-not-exist.h5"), None, &device).unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    let truncated = std::fs::read(fixture("tiny96.keras2.h5")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.h5");
    std::fs::write(&path, &truncated[..truncated.len() / 3]).unwrap();
    assert!(load_keras_generator(&path, None, &device).is_err());
}

#[test]
fn converted_keras_model_round_trips_through_our_safetensors_format() {
    let device = Device::flex();
    let (config, generator) =
        load_keras_generator(&fixture("tiny128.keras2.h5"), None, &device).unwrap();
    let bytes = generator_to_bytes(&generator, &config, StoredDtype::F32).unwrap();
    let (loaded_config, loaded) = generator_from_bytes(&bytes, None, &device).unwrap();
    assert_eq!(loaded_config, config);
    let latents = Tensor::<2>::ones([1, config.latent_dim], &device);
    let a = generator
        .valid()
        .forward(latents.clone())
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let b = loaded
        .valid()
        .forward(latents)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn avatar_generator_loads_keras_files_by_path() {
    use avatar_core::{AvatarGenerator, DeviceSpec, GenerateOptions, WeightsSource};
    let generator = AvatarGenerator::load(
        WeightsSource::Path(fixture("tiny96.keras2.h5")),
        &DeviceSpec::Cpu,
    )
    .unwrap();
    assert_eq!(generator.resolution(), 96);
    let image = generator
        .generate(&GenerateOptions {
            seed: Some(1.into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(image.dimensions(), (96, 96));
    assert!(image.pixels().all(|p| p[3] == 255));
    let keyed = generator
        .generate(&GenerateOptions {
            seed: Some(1.into()),
            transparent: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keyed.dimensions(), (96, 96));
    let weights_only = WeightsSource::Keras {
        path: fixture("tiny128.weights.h5"),
        resolution: Some(128),
    };
    assert_eq!(
        AvatarGenerator::load(weights_only, &DeviceSpec::Cpu)
            .unwrap()
            .resolution(),
        128
    );
}
