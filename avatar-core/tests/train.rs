//! DCGAN training: a step learns, resume is exact, bad data is a clear error.
#![cfg(feature = "train")]

use avatar_core::AvatarError;
use avatar_core::dcgan::{GeneratorConfig, StoredDtype, generator_to_bytes, load_generator};
use avatar_core::seed::SplitMix64;
use avatar_core::train::{GanLoss, ImageDataset, TrainConfig, Trainer};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use image::RgbaImage;

fn config() -> TrainConfig {
    let generator = GeneratorConfig::transposed(8, 16, 4, vec![16, 8]).unwrap();
    TrainConfig::dcgan(generator, vec![8, 16])
        .with_batch_size(8)
        .with_ema_decay(Some(0.9))
}

/// SN-GAN: spectrally normalised discriminator and hinge loss.
fn sn_hinge_config() -> TrainConfig {
    let mut config = config().with_loss(GanLoss::Hinge);
    config.discriminator.spectral_norm = true;
    config
}

/// Coloured discs on a transparent background.
fn discs(n: usize, side: u32) -> Vec<RgbaImage> {
    (0..n)
        .map(|i| {
            let colour = [(i * 50 % 256) as u8, 120, (255 - i * 30 % 256) as u8];
            RgbaImage::from_fn(side, side, |x, y| {
                let d = ((x as f32 - side as f32 / 2.0).powi(2)
                    + (y as f32 - side as f32 / 2.0).powi(2))
                .sqrt();
                if d < side as f32 * 0.35 {
                    image::Rgba([colour[0], colour[1], colour[2], 255])
                } else {
                    image::Rgba([0, 0, 0, 0])
                }
            })
        })
        .collect()
}

fn params(generator: &avatar_core::dcgan::Generator) -> Vec<f32> {
    let latents = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(
            (0..16)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<f32>>(),
            [2, 8],
        ),
        &Device::flex(),
    );
    generator
        .valid()
        .forward(latents)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Each tensor of a trainer's generator as its weights file stores it, by name.
fn weight_tensors(trainer: &Trainer) -> std::collections::BTreeMap<String, Vec<u8>> {
    let bytes = generator_to_bytes(
        &trainer.generator().valid(),
        &trainer.config().generator,
        StoredDtype::F32,
    )
    .unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

/// Largest absolute difference between two generators' outputs.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn one_step_changes_the_weights_and_lowers_the_discriminator_loss() {
    one_step_learns(config());
}

#[test]
fn one_sn_hinge_step_changes_the_weights_and_lowers_the_discriminator_loss() {
    one_step_learns(sn_hinge_config());
}

fn one_step_learns(config: TrainConfig) {
    let loss = config.loss;
    let data = ImageDataset::from_images(discs(8, 16), 4).unwrap();
    let mut trainer = Trainer::new(config, &Device::flex()).unwrap();
    let device = Device::flex().autodiff();
    let real = data.sample_batch(8, false, &mut SplitMix64::new(1), &device);
    let fake = trainer
        .generator()
        .forward(Tensor::<2>::random(
            [8, 8],
            Distribution::Normal(0.0, 1.0),
            &device,
        ))
        .detach();
    let d_loss = |trainer: &Trainer| {
        let d = trainer.discriminator();
        loss.discriminator(d.forward(real.clone()), d.forward(fake.clone()), 0.0)
            .into_scalar::<f32>()
    };
    let before_loss = d_loss(&trainer);
    let before_g = params(trainer.generator());
    let stats = trainer.step(&data).unwrap();
    assert_eq!(stats.step, 1);
    assert!(stats.loss_discriminator.is_finite() && stats.loss_generator.is_finite());
    let after_loss = d_loss(&trainer);
    assert!(
        after_loss < before_loss,
        "D loss {before_loss} -> {after_loss}"
    );
    assert_ne!(
        before_g,
        params(trainer.generator()),
        "the generator did not change"
    );
    assert_eq!(trainer.images_seen(), 8);
}

#[test]
fn resume_gives_the_same_weights_as_an_uninterrupted_run() {
    let config = config().with_instance_noise(0.1).with_label_smoothing(0.1);
    let (resumed, dir, checkpoint) = resume_is_exact(config, 0.0);

    // A checkpoint written before the loss, spectral-norm and warm-start options existed still
    // resumes.
    let reference = Trainer::resume(&checkpoint, &Device::flex(), |_| {}).unwrap();
    let state_path = checkpoint.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    let config_json = state["config"].as_object_mut().unwrap();
    assert!(config_json.remove("loss").is_some());
    assert!(config_json.remove("warm_start").is_some());
    let discriminator = config_json["discriminator"].as_object_mut().unwrap();
    assert!(discriminator.remove("spectral_norm").is_some());
    std::fs::write(&state_path, state.to_string()).unwrap();
    let older = Trainer::resume(&checkpoint, &Device::flex(), |_| {}).unwrap();
    assert_eq!(older.config().loss, GanLoss::Bce);
    assert!(!older.config().discriminator.spectral_norm);
    let diff = max_abs_diff(&params(older.generator()), &params(reference.generator()));
    assert_eq!(diff, 0.0, "{diff}");

    // The export loads as an inference model of the configured size.
    let export = dir.path().join("export/model.safetensors");
    resumed.export(&export, StoredDtype::F16).unwrap();
    let (loaded_config, _) = load_generator(&export, &Device::flex()).unwrap();
    assert_eq!(loaded_config.resolution, 16);

    // A resumed run cannot change the architecture.
    let err = Trainer::resume(&checkpoint, &Device::flex(), |c| {
        c.generator.widths = vec![8, 8]
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("architecture"), "{err}");
    let err = Trainer::resume(&checkpoint, &Device::flex(), |c| {
        c.discriminator.spectral_norm = true
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("architecture"), "{err}");
    // Hinge loss has no labels to smooth.
    let err = Trainer::resume(&checkpoint, &Device::flex(), |c| c.loss = GanLoss::Hinge)
        .err()
        .unwrap();
    assert!(err.to_string().contains("label_smoothing"), "{err}");
}

#[test]
fn a_resumed_sn_hinge_run_keeps_its_singular_vectors() {
    // The spectral norms' running singular vectors live in the checkpoint: a resumed run
    // matches an uninterrupted one to float rounding. Not bit for bit: about half the runs of
    // this test differ by one ulp (1.2e-7) somewhere in the generator, also with a single
    // rayon thread and with `gemm_conv` switched off, and never without spectral norms (the
    // test above); the varying sum is inside burn, not found. A lost state moves 1e-4 or more.
    resume_is_exact(sn_hinge_config().with_instance_noise(0.1), 1e-6);
}

/// Trains 4 steps straight and 2 + checkpoint + 2 resumed; asserts equal weights (within
/// `tolerance`).
fn resume_is_exact(
    config: TrainConfig,
    tolerance: f32,
) -> (Trainer, tempfile::TempDir, std::path::PathBuf) {
    let data = ImageDataset::from_images(discs(8, 16), 4).unwrap();
    let mut straight = Trainer::new(config.clone(), &Device::flex()).unwrap();
    for _ in 0..4 {
        straight.step(&data).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let mut first = Trainer::new(config, &Device::flex()).unwrap();
    for _ in 0..2 {
        first.step(&data).unwrap();
    }
    first.save_checkpoint(&checkpoint).unwrap();
    // Saving twice replaces the checkpoint atomically.
    first.save_checkpoint(&checkpoint).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&checkpoint, &Device::flex(), |_| {}).unwrap();
    assert_eq!(resumed.step_count(), 2);
    for _ in 0..2 {
        resumed.step(&data).unwrap();
    }
    let diff = max_abs_diff(&params(straight.generator()), &params(resumed.generator()));
    let ema_diff = max_abs_diff(
        &params(&straight.inference_generator().unwrap()),
        &params(&resumed.inference_generator().unwrap()),
    );
    // Exact, even with many threads and other tests drawing random numbers meanwhile (the
    // trainer draws its initial weights from its own seeded stream).
    assert!(diff <= tolerance, "generator differs by {diff}");
    assert!(ema_diff <= tolerance, "EMA generator differs by {ema_diff}");
    // A lost state would show: one step more moves the outputs visibly.
    let mut one_more = Trainer::resume(&checkpoint, &Device::flex(), |_| {}).unwrap();
    for _ in 0..3 {
        one_more.step(&data).unwrap();
    }
    let step_diff = max_abs_diff(&params(straight.generator()), &params(one_more.generator()));
    eprintln!("resume differs by {diff} (EMA {ema_diff}); one more step moves {step_diff}");
    assert!(
        step_diff > 1e-4,
        "one step only moved the outputs by {step_diff}"
    );
    (resumed, dir, checkpoint)
}

#[test]
fn bad_data_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(
        ImageDataset::load(&missing, 16, 4, None),
        Err(AvatarError::Io { .. })
    ));
    match ImageDataset::load(dir.path(), 16, 4, None) {
        Err(AvatarError::InvalidOption {
            field: "data",
            message,
        }) => assert!(message.contains("no images"), "{message}"),
        other => panic!("{other:?}"),
    }
    std::fs::write(dir.path().join("broken.png"), b"\x89PNG not really").unwrap();
    match ImageDataset::load(dir.path(), 16, 4, None) {
        Err(AvatarError::Image(message)) => assert!(message.contains("broken.png"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Mixed RGB / RGBA / non-square images of other sizes load and are resized.
    std::fs::remove_file(dir.path().join("broken.png")).unwrap();
    image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10]))
        .save(dir.path().join("a.jpg"))
        .unwrap();
    discs(1, 64)[0].save(dir.path().join("b.png")).unwrap();
    let data = ImageDataset::load(dir.path(), 16, 3, None).unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data.image(0).dimensions(), (16, 16));
    // Wrong resolution for the model is an error, not a panic.
    let mut trainer = Trainer::new(config(), &Device::flex()).unwrap();
    let wrong = ImageDataset::from_images(discs(2, 32), 4).unwrap();
    assert!(matches!(
        trainer.step(&wrong),
        Err(AvatarError::InvalidOption { field: "data", .. })
    ));
}

#[test]
fn a_warm_started_run_grows_a_trained_generator_and_trains_all_of_it() {
    // A 12 px, latent-6 run of the same widths, exported, warm-starts the 16 px, latent-8 run.
    let data12 = ImageDataset::from_images(discs(8, 12), 4).unwrap();
    let small = GeneratorConfig::transposed(6, 12, 4, vec![16, 8]).unwrap();
    let mut source = Trainer::new(
        TrainConfig::dcgan(small, vec![8, 16]).with_batch_size(8),
        &Device::flex(),
    )
    .unwrap();
    source.step(&data12).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("small.safetensors");
    source.export(&weights, StoredDtype::F32).unwrap();

    let mut trainer = Trainer::new(config(), &Device::flex()).unwrap();
    trainer.warm_start(&weights).unwrap();
    assert_eq!(
        trainer.config().warm_start.as_deref(),
        Some(weights.to_str().unwrap())
    );
    let projection = |t: &Trainer| match t.generator() {
        avatar_core::dcgan::Generator::Transposed(g) => g.blocks[0]
            .conv
            .weight
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap(),
        _ => unreachable!(),
    };
    let before = projection(&trainer);
    // The two new latent rows (6 and 7 of 8) start at zero.
    let row = before.len() / 8;
    assert!(before[6 * row..].iter().all(|&v| v == 0.0));
    assert!(before[..6 * row].iter().any(|&v| v != 0.0));
    let before_outputs = params(trainer.generator());
    let before_weights = weight_tensors(&trainer);
    trainer
        .step(&ImageDataset::from_images(discs(8, 16), 4).unwrap())
        .unwrap();
    // Every tensor, copied, resized or new, is trainable: one step changes each of them.
    let after_weights = weight_tensors(&trainer);
    assert_eq!(
        before_weights.keys().collect::<Vec<_>>(),
        after_weights.keys().collect::<Vec<_>>()
    );
    let unchanged: Vec<&String> = before_weights
        .iter()
        .filter(|(name, values)| after_weights[*name] == **values)
        .map(|(name, _)| name)
        .collect();
    assert!(unchanged.is_empty(), "not trained: {unchanged:?}");
    let after = projection(&trainer);
    assert!(
        max_abs_diff(&before, &after) > 0.0,
        "the projection did not train"
    );
    assert!(
        after[6 * row..].iter().any(|&v| v != 0.0),
        "the new latent rows did not train"
    );
    assert_ne!(before_outputs, params(trainer.generator()));

    // The provenance survives a checkpoint; a run that has stepped cannot be warm-started.
    let checkpoint = dir.path().join("checkpoint");
    trainer.save_checkpoint(&checkpoint).unwrap();
    let mut resumed = Trainer::resume(&checkpoint, &Device::flex(), |_| {}).unwrap();
    assert_eq!(resumed.config().warm_start, trainer.config().warm_start);
    let err = resumed.warm_start(&weights).unwrap_err();
    assert!(err.to_string().contains("warm"), "{err}");
    // Other widths are rejected.
    let mut other = Trainer::new(
        TrainConfig::dcgan(
            GeneratorConfig::transposed(8, 16, 4, vec![8, 8]).unwrap(),
            vec![8, 16],
        ),
        &Device::flex(),
    )
    .unwrap();
    let err = other.warm_start(&weights).unwrap_err();
    assert!(err.to_string().contains("widths"), "{err}");
}
