//! DCGAN generator: weights round trips, typed load errors, and the high-level avatar API.

use avatar_core::dcgan::{
    GeneratorConfig, StoredDtype, generator_from_bytes, generator_to_bytes, load_generator,
    save_generator,
};
use avatar_core::imaging::{Color, ImageFormat};
use avatar_core::{AvatarError, AvatarGenerator, DeviceSpec, GenerateOptions, Seed, WeightsSource};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};

fn tiny(channels: usize) -> GeneratorConfig {
    GeneratorConfig::transposed(16, 32, channels, vec![16, 8, 8]).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn output(generator: &avatar_core::dcgan::Generator, latents: &Tensor<2>) -> Vec<f32> {
    generator
        .forward(latents.clone())
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
}

#[test]
fn transposed_generator_has_the_configured_shape_and_range() {
    let device = Device::flex();
    for (config, side) in [
        (tiny(4), 32),
        (
            GeneratorConfig::transposed(100, 96, 4, vec![32, 16, 8, 8]).unwrap(),
            96,
        ),
    ] {
        let generator = config.init(&device).unwrap().valid();
        let latents = Tensor::<2>::random(
            [3, config.latent_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let out = generator.forward(latents);
        assert_eq!(out.dims(), [3, 4, side, side]);
        let values = out.into_data().try_into_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

#[test]
fn keras_seed_architecture_builds_at_both_sizes() {
    let device = Device::flex();
    for (side, latent) in [(96, 100), (128, 128)] {
        let config = GeneratorConfig::keras_seed(side).unwrap();
        assert_eq!(config.latent_dim, latent);
        let generator = config.init(&device).unwrap().valid();
        let out = generator.forward(Tensor::<2>::zeros([1, latent], &device));
        assert_eq!(out.dims(), [1, 3, side, side]);
    }
    assert!(GeneratorConfig::keras_seed(64).is_err());
}

#[test]
fn weights_round_trip_in_every_stored_dtype() {
    let device = Device::flex();
    let config = tiny(4);
    let generator = config.init(&device).unwrap().valid();
    let latents = Tensor::<2>::random([2, 16], Distribution::Normal(0.0, 1.0), &device);
    let expected = output(&generator, &latents);
    for (dtype, tolerance) in [
        (StoredDtype::F32, 0.0),
        (StoredDtype::F16, 2e-2),
        (StoredDtype::Bf16, 1e-1),
    ] {
        let bytes = generator_to_bytes(&generator, &config, dtype).unwrap();
        let (loaded_config, loaded) = generator_from_bytes(&bytes, None, &device).unwrap();
        assert_eq!(loaded_config, config);
        let diff = max_abs_diff(&expected, &output(&loaded.valid(), &latents));
        assert!(diff <= tolerance, "{dtype:?}: {diff}");
    }
    // Files: model.safetensors + model.json beside it, keys in PyTorch layout.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_generator(&generator, &config, &path, StoredDtype::F32).unwrap();
    assert!(dir.path().join("model.json").exists());
    let bytes = std::fs::read(&path).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    assert!(
        names.contains(&"blocks.0.norm.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"blocks.0.norm.running_var".to_string()),
        "{names:?}"
    );
    let (_, loaded) = load_generator(&path, &device).unwrap();
    assert_eq!(
        max_abs_diff(&expected, &output(&loaded.valid(), &latents)),
        0.0
    );
}

/// Rewrites a safetensors file with one tensor changed by `edit` (None removes it).
fn edit_tensor(
    bytes: &[u8],
    name: &str,
    edit: impl Fn(&[usize]) -> Option<(safetensors::Dtype, Vec<usize>)>,
) -> Vec<u8> {
    let tensors = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (key, view) in tensors.tensors() {
        if key == name {
            if let Some((dtype, shape)) = edit(view.shape()) {
                let size = shape.iter().product::<usize>() * dtype.bitsize() / 8;
                owned.push((key, dtype, shape, vec![0u8; size]));
            }
        } else {
            owned.push((
                key,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            ));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(k, d, s, data)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, metadata.metadata().clone()).unwrap()
}

#[test]
fn bad_weights_are_typed_errors_naming_the_tensor() {
    let device = Device::flex();
    let config = tiny(4);
    let generator = config.init(&device).unwrap();
    let bytes = generator_to_bytes(&generator, &config, StoredDtype::F16).unwrap();
    let key = "blocks.1.conv.weight";

    let missing = edit_tensor(&bytes, key, |_| None);
    match generator_from_bytes(&missing, None, &device) {
        Err(AvatarError::MissingTensor { name }) => {
            assert!(name.contains("blocks.1.conv.weight"), "{name}")
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    let reshaped = edit_tensor(&bytes, key, |s| {
        Some((safetensors::Dtype::F16, vec![s[0], s[1], 3, 3]))
    });
    match generator_from_bytes(&reshaped, None, &device) {
        Err(AvatarError::TensorShape { name, .. }) => {
            assert!(name.contains("blocks.1.conv"), "{name}")
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }

    let integer = edit_tensor(&bytes, key, |s| Some((safetensors::Dtype::I32, s.to_vec())));
    match generator_from_bytes(&integer, None, &device) {
        Err(AvatarError::TensorDtype { name, dtype }) => {
            assert!(name == key && dtype.contains("I32"), "{name} {dtype}")
        }
        other => panic!("expected TensorDtype, got {other:?}"),
    }

    assert!(matches!(
        generator_from_bytes(b"not safetensors", None, &device),
        Err(AvatarError::Weights(_))
    ));
    assert!(matches!(
        generator_from_bytes(&bytes[..bytes.len() / 2], None, &device),
        Err(AvatarError::Weights(_))
    ));
}

fn tiny_avatar_generator(channels: usize) -> AvatarGenerator {
    let device = Device::flex();
    let config = tiny(channels);
    let generator = config.init(&device).unwrap();
    let bytes = generator_to_bytes(&generator, &config, StoredDtype::F16).unwrap();
    AvatarGenerator::load(WeightsSource::Bytes(bytes), &DeviceSpec::Cpu).unwrap()
}

#[test]
fn same_seed_same_avatar_and_different_seeds_differ() {
    let generator = tiny_avatar_generator(4);
    let options = |seed: &str| GenerateOptions {
        seed: Some(seed.into()),
        ..Default::default()
    };
    let a = generator.generate(&options("alice")).unwrap();
    assert_eq!(a, generator.generate(&options("alice")).unwrap());
    assert_ne!(a, generator.generate(&options("bob")).unwrap());
    // A batch draws exactly what single calls draw.
    let batch = generator
        .generate_batch(
            &[Seed::from("alice"), Seed::from("bob")],
            &GenerateOptions::default(),
        )
        .unwrap();
    assert_eq!(batch[0], a);
    // Encoded bytes are stable too.
    let png = generator.generate_encoded(&options("carol")).unwrap();
    assert_eq!(
        png.bytes,
        generator.generate_encoded(&options("carol")).unwrap().bytes
    );
    assert_eq!(png.seed, Seed::Text("carol".into()));
}

#[test]
fn transparency_background_size_and_formats() {
    for channels in [3, 4] {
        let generator = tiny_avatar_generator(channels);
        let seed = Some(Seed::Number(3));
        let opaque = generator
            .generate(&GenerateOptions {
                seed: seed.clone(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(opaque.dimensions(), (32, 32));
        assert!(opaque.pixels().all(|p| p[3] == 255));
        let transparent = generator
            .generate(&GenerateOptions {
                seed: seed.clone(),
                transparent: true,
                ..Default::default()
            })
            .unwrap();
        if channels == 4 {
            // The learned alpha is kept as is.
            assert!(transparent.pixels().any(|p| p[3] < 255));
        }
        let big = generator
            .generate(&GenerateOptions {
                seed: seed.clone(),
                output_size: Some(200),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(big.dimensions(), (200, 200));
        for format in [ImageFormat::Png, ImageFormat::Webp, ImageFormat::Jpeg] {
            let encoded = generator
                .generate_encoded(&GenerateOptions {
                    seed: seed.clone(),
                    bg_color: Some(Color::rgba(10, 200, 30, 255)),
                    format,
                    ..Default::default()
                })
                .unwrap();
            let decoded = image::load_from_memory(&encoded.bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (32, 32), "{format:?}");
        }
    }
}

#[test]
fn invalid_options_name_the_field() {
    let generator = tiny_avatar_generator(4);
    let cases = [
        (
            GenerateOptions {
                transparent: true,
                bg_color: Some(Color::WHITE),
                ..Default::default()
            },
            "bg_color",
        ),
        (
            GenerateOptions {
                transparent: true,
                format: ImageFormat::Jpeg,
                ..Default::default()
            },
            "format",
        ),
        (
            GenerateOptions {
                output_size: Some(5000),
                ..Default::default()
            },
            "output_size",
        ),
        (
            GenerateOptions {
                output_size: Some(0),
                ..Default::default()
            },
            "output_size",
        ),
    ];
    for (options, field) in cases {
        match generator.generate(&options) {
            Err(AvatarError::InvalidOption { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected InvalidOption({field}), got {other:?}"),
        }
    }
    assert!(
        generator
            .generate_batch(&[], &GenerateOptions::default())
            .is_err()
    );
}

#[test]
fn interpolation_starts_and_ends_at_the_seeds() {
    let generator = tiny_avatar_generator(4);
    let options = GenerateOptions::default();
    let frames = generator
        .interpolate(&Seed::from("a"), &Seed::from("b"), 5, &options)
        .unwrap();
    assert_eq!(frames.len(), 5);
    let a = generator
        .generate(&GenerateOptions {
            seed: Some("a".into()),
            ..Default::default()
        })
        .unwrap();
    let b = generator
        .generate(&GenerateOptions {
            seed: Some("b".into()),
            ..Default::default()
        })
        .unwrap();
    let close = |x: &image::RgbaImage, y: &image::RgbaImage| {
        x.pixels()
            .zip(y.pixels())
            .all(|(p, q)| (0..4).all(|c| p[c].abs_diff(q[c]) <= 1))
    };
    assert!(close(&frames[0], &a));
    assert!(close(&frames[4], &b));
    assert!(
        generator
            .interpolate(&Seed::from("a"), &Seed::from("b"), 1, &options)
            .is_err()
    );
}

#[test]
fn progress_reports_every_chunk_and_can_cancel() {
    let generator = tiny_avatar_generator(4);
    let options = GenerateOptions::default();
    let seeds: Vec<Seed> = (0..40).map(Seed::Number).collect();
    let mut reports = Vec::new();
    let images = generator
        .generate_batch_with_progress(&seeds, &options, |p| {
            reports.push((p.done, p.total));
            true
        })
        .unwrap();
    assert_eq!(reports, vec![(16, 40), (32, 40), (40, 40)]);
    // Chunking does not change the result.
    assert_eq!(images, generator.generate_batch(&seeds, &options).unwrap());

    let mut calls = 0;
    let err = generator
        .generate_batch_with_progress(&seeds, &options, |_| {
            calls += 1;
            calls < 2
        })
        .unwrap_err();
    assert!(matches!(err, AvatarError::Cancelled), "{err}");
    assert_eq!((calls, err.code()), (2, "ERR_CANCELLED"));

    let err = generator
        .generate_batch_with_progress(&[], &options, |_| true)
        .unwrap_err();
    assert_eq!((err.code(), err.field()), ("ERR_INVALID_OPTION", Some("n")));
}
