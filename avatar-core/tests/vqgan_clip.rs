//! VQGAN+CLIP against taming-transformers 0.0.6 and open_clip 3.3 (fixtures by
//! `tools/reference/vqgan_clip/make_fixtures.py`): components within 1e-4, the loss and its
//! gradient w.r.t. z within 1e-4, a 3-step Adam trajectory within 1e-3; then whole runs.

use crate::common;

use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::burn::tensor::{Device, Tensor};
use avatar_core::vqgan_clip::cutouts::Cutout;
use avatar_core::vqgan_clip::{
    Augmentations, LatentOptimizer, Objective, OpenClip, OpenClipConfig, Prompt, PromptSpec,
    RunObserver, RunOptions, VqModel, VqganClip, VqganConfig,
};
use common::tensors::{TensorFile, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan_clip")
}

fn reference() -> TensorFile {
    TensorFile::open(&fixtures().join("reference.safetensors"))
}

fn vqgan_config() -> VqganConfig {
    VqganConfig::from_taming_yaml_file(&fixtures().join("vqgan.yaml")).unwrap()
}

fn clip_config() -> OpenClipConfig {
    OpenClipConfig::from_json_file(&fixtures().join("clip_config.json")).unwrap()
}

fn engine(device: &Device) -> VqganClip {
    VqganClip::load(
        &fixtures().join("vqgan.yaml"),
        &fixtures().join("vqgan.ckpt"),
        &clip_config(),
        &fixtures().join("clip.safetensors"),
        device,
    )
    .unwrap()
}

fn assert_close<const D: usize>(what: &str, ours: Tensor<D>, theirs: Tensor<D>, tolerance: f32) {
    let diff = max_abs_diff(ours, theirs);
    eprintln!("{what}: max abs diff {diff:e}");
    assert!(diff < tolerance, "{what}: max abs diff {diff}");
}

#[test]
fn vqgan_matches_taming() {
    let device = Device::flex();
    let config = vqgan_config();
    assert_eq!(config.factor(), 2);
    let model = VqModel::load(&config, &fixtures().join("vqgan.ckpt"), &device).unwrap();
    let r = reference();
    let image = r.float::<4>("vq.image", &device);
    let h = model.encoder.forward(image.clone());
    assert_close("encoder", h.clone(), r.float("vq.encoder", &device), 1e-4);
    let hq = model.encode_unquantized(image.clone());
    assert_close("quant_conv", hq, r.float("vq.quant_conv", &device), 1e-4);
    let (quantized, indices) = model.encode(image);
    assert_close(
        "quantized",
        quantized,
        r.float("vq.quantized", &device),
        1e-4,
    );
    assert_eq!(
        indices
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap(),
        r.ints("vq.indices").1
    );
    let decoded = model.decode(r.float("vq.z", &device));
    assert_close("decoded", decoded, r.float("vq.decoded", &device), 1e-4);
}

#[test]
fn clip_matches_open_clip() {
    let device = Device::flex();
    let config = clip_config();
    let clip = OpenClip::load(&config, &fixtures().join("clip.safetensors"), &device).unwrap();
    let r = reference();
    let image_embeds = clip.encode_image(r.float("clip.pixels", &device));
    assert_close(
        "image embeds",
        image_embeds,
        r.float("clip.image_embeds", &device),
        1e-4,
    );
    let text_embeds = clip.encode_text(r.int("clip.tokens", &device));
    assert_close(
        "text embeds",
        text_embeds,
        r.float("clip.text_embeds", &device),
        1e-4,
    );
}

#[test]
fn tokenizer_matches_open_clip() {
    let tokenizer = avatar_core::diffusion::tokenizer::ClipTokenizer::openai("!").unwrap();
    let (shape, expected) = reference().ints("clip.tokens");
    let prompts = [
        "a cartoon avatar with red hair",
        "flowering magenta orchids in a rainy-day impressionist",
    ];
    for (i, prompt) in prompts.iter().enumerate() {
        let ids: Vec<i64> = tokenizer
            .encode_padded(prompt, 77)
            .into_iter()
            .map(i64::from)
            .collect();
        assert_eq!(ids, expected[i * shape[1]..(i + 1) * shape[1]], "{prompt}");
    }
}

/// The objective of the reference: two text prompts (weights 1 and -0.5), an image prompt
/// (weight 0.7, stop between the middle distances) and `init_weight` 0.5.
fn objective(engine: &VqganClip, case: &str, z0: Tensor<4>) -> Objective {
    let r = reference();
    let device = engine.device();
    let texts = engine.embed_texts(&["a cartoon avatar", "a photo"]);
    let e = texts.dims()[1];
    let image_embeds = engine
        .embed_images(r.float("loss.prompt_image", device))
        .detach();
    let stop = r.values(&format!("{case}.stop")).1[0];
    Objective {
        prompts: vec![
            Prompt {
                embeds: texts.clone().narrow(0, 0, 1).reshape([1, e]),
                weight: 1.0,
                stop: f32::NEG_INFINITY,
            },
            Prompt {
                embeds: texts.narrow(0, 1, 1).reshape([1, e]),
                weight: -0.5,
                stop: f32::NEG_INFINITY,
            },
            Prompt {
                embeds: image_embeds,
                weight: 0.7,
                stop,
            },
        ],
        init: Some((z0, 0.5)),
    }
}

fn boxes(case: &str) -> Vec<Cutout> {
    let (_, values) = reference().ints(&format!("{case}.boxes"));
    values
        .chunks_exact(3)
        .map(|b| Cutout {
            size: b[0] as usize,
            x: b[1] as usize,
            y: b[2] as usize,
        })
        .collect()
}

fn check_loss_and_trajectory(case: &str) {
    let device = Device::flex();
    let engine = engine(&device);
    let r = reference();
    let ad = engine.device().clone();
    let z0 = r.float::<4>(&format!("{case}.z0"), &ad);
    let objective = objective(&engine, case, z0.clone());
    let boxes = boxes(case);

    let (parts, grad) = engine.loss_and_grad(z0.clone(), &boxes, &objective, |b| b);
    let (_, expected) = r.values(&format!("{case}.loss_parts"));
    let ours: Vec<f32> = std::iter::once(parts.init)
        .chain(parts.prompts.iter().copied())
        .collect();
    eprintln!("{case} loss parts: ours {ours:?}, reference {expected:?}");
    for (a, b) in ours.iter().zip(&expected) {
        assert!(
            (a - b).abs() < 1e-4,
            "{case} loss parts {ours:?} vs {expected:?}"
        );
    }
    let expected_grad = r.float::<4>(&format!("{case}.grad"), &ad);
    let scale = expected_grad.clone().abs().max().into_scalar::<f32>();
    assert!(scale > 0.0, "the reference gradient is zero");
    eprintln!("{case} grad scale {scale:e}");
    assert_close(&format!("{case} grad"), grad, expected_grad, 1e-4);

    let mut optimizer = LatentOptimizer::new(&engine, 0.1);
    let trajectory = r.float::<5>(&format!("{case}.trajectory"), &ad);
    let (_, losses) = r.values(&format!("{case}.trajectory_losses"));
    let mut z = z0;
    for (step, expected_loss) in losses.iter().enumerate() {
        let (parts, grad) = engine.loss_and_grad(z.clone(), &boxes, &objective, |b| b);
        assert!(
            (parts.total() - expected_loss).abs() < 1e-3,
            "{case} step {step}: loss {} vs {expected_loss}",
            parts.total()
        );
        z = optimizer.step(z, grad);
        let [_, b, c, h, w] = trajectory.dims();
        let expected = trajectory.clone().narrow(0, step, 1).reshape([b, c, h, w]);
        assert_close(
            &format!("{case} z after step {}", step + 1),
            z.clone(),
            expected,
            1e-3,
        );
    }
}

#[test]
fn loss_gradient_and_adam_steps_match_the_reference_with_downscaled_cutouts() {
    check_loss_and_trajectory("large");
}

#[test]
fn loss_gradient_and_adam_steps_match_the_reference_with_upscaled_cutouts() {
    check_loss_and_trajectory("small");
}

fn small_run() -> RunOptions {
    RunOptions {
        prompts: PromptSpec::parse_list("a cartoon avatar|a blurry photo:-0.5").unwrap(),
        width: 40,
        height: 32,
        iterations: 4,
        cutn: 4,
        display_every: 2,
        seed: Some(7.into()),
        ..Default::default()
    }
}

#[test]
fn a_run_reports_progress_publishes_images_and_is_reproducible() {
    let device = Device::flex();
    let engine = engine(&device);
    let observer = RunObserver::new();
    let mut seen = Vec::new();
    let image = engine
        .run(&small_run(), &observer, |p| {
            assert_eq!(p.total, 4);
            assert!(p.loss.is_finite());
            seen.push((p.iteration, p.image.is_some()));
            true
        })
        .unwrap();
    assert_eq!(seen, [(1, false), (2, true), (3, false), (4, true)]);
    assert_eq!(image.dimensions(), (40, 32));
    assert_eq!((observer.iteration(), observer.total()), (4, 4));
    assert!(observer.is_finished() && !observer.is_cancelled());
    assert_eq!(observer.latest_image().unwrap(), image);

    let again = engine
        .run(&small_run(), &RunObserver::new(), |_| true)
        .unwrap();
    assert_eq!(again, image, "same seed, same image");
    let other = RunOptions {
        seed: Some(8.into()),
        ..small_run()
    };
    let different = engine.run(&other, &RunObserver::new(), |_| true).unwrap();
    assert_ne!(different, image, "another seed, another image");
}

#[test]
fn a_run_starts_from_an_init_image_and_takes_image_prompts() {
    let device = Device::flex();
    let engine = engine(&device);
    let init = image::RgbaImage::from_fn(50, 37, |x, y| {
        image::Rgba([(x * 5) as u8, (y * 6) as u8, 128, 255])
    });
    let options = RunOptions {
        init_image: Some(init.clone()),
        init_weight: 0.5,
        image_prompts: vec![(init, PromptSpec::parse("reference:0.5").unwrap())],
        augmentations: Augmentations::none(),
        ..small_run()
    };
    let image = engine.run(&options, &RunObserver::new(), |_| true).unwrap();
    assert_eq!(image.dimensions(), (40, 32));
}

#[test]
fn a_run_can_be_cancelled_from_the_callback_or_another_thread() {
    let device = Device::flex();
    let engine = engine(&device);
    let observer = RunObserver::new();
    let result = engine.run(&small_run(), &observer, |p| p.iteration < 2);
    assert!(matches!(result, Err(AvatarError::Cancelled)));
    assert_eq!(observer.iteration(), 2);
    assert!(
        observer.latest_image().is_some(),
        "the image of step 2 stays readable"
    );

    let observer = RunObserver::new();
    let remote = observer.clone();
    let result = engine.run(&small_run(), &observer, |p| {
        if p.iteration == 1 {
            let remote = remote.clone();
            std::thread::spawn(move || remote.cancel()).join().unwrap();
        }
        true
    });
    assert!(matches!(result, Err(AvatarError::Cancelled)));
    assert_eq!(observer.iteration(), 1);
    assert!(observer.is_finished());
}

#[test]
fn bad_options_and_bad_weights_are_typed_errors() {
    let device = Device::flex();
    let engine = engine(&device);
    let field = |options: RunOptions| match engine.run(&options, &RunObserver::new(), |_| true) {
        Err(AvatarError::InvalidOption { field, .. }) => field,
        other => panic!("expected an invalid option, got {other:?}"),
    };
    assert_eq!(
        field(RunOptions {
            prompts: vec![],
            ..small_run()
        }),
        "prompts"
    );
    assert_eq!(
        field(RunOptions {
            width: 1,
            ..small_run()
        }),
        "width"
    );
    assert_eq!(
        field(RunOptions {
            height: 5000,
            ..small_run()
        }),
        "height"
    );
    assert_eq!(
        field(RunOptions {
            iterations: 0,
            ..small_run()
        }),
        "iterations"
    );
    assert_eq!(
        field(RunOptions {
            cutn: 0,
            ..small_run()
        }),
        "cutn"
    );
    assert_eq!(
        field(RunOptions {
            step_size: f64::NAN,
            ..small_run()
        }),
        "step_size"
    );

    // CLIP weights given as a VQGAN, and a codebook of the wrong size.
    let err = VqModel::load(
        &vqgan_config(),
        &fixtures().join("clip.safetensors"),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, AvatarError::WeightKeys { .. }), "{err}");
    let wrong = VqganConfig {
        n_embed: 128,
        ..vqgan_config()
    };
    let err = VqModel::load(&wrong, &fixtures().join("vqgan.ckpt"), &device).unwrap_err();
    match &err {
        AvatarError::WeightKeys { mismatched, .. } => assert!(
            mismatched
                .iter()
                .any(|m| m.contains("quantize.embedding.weight")),
            "{err}"
        ),
        other => panic!("{other}"),
    }
    let err =
        VqModel::load(&vqgan_config(), &fixtures().join("missing.ckpt"), &device).unwrap_err();
    assert!(matches!(err, AvatarError::Io { .. }), "{err}");
    let err = VqganConfig::from_taming_yaml("model:\n  target: taming.models.vqgan.GumbelVQ\n  params:\n    embed_dim: 1\n    n_embed: 1\n    ddconfig: {}\n").unwrap_err();
    assert!(err.to_string().contains("GumbelVQ"), "{err}");
}
