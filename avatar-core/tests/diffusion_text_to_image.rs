//! Text to image through the whole pipeline (tokenizers, text encoders, UNet, scheduler, VAE)
//! against diffusers 0.42.1: the prompts and explicit latents of the e2e fixtures, compared on
//! the final float image; plus seeded reproducibility and option errors.

use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::diffusion::pipeline::{StableDiffusion, TextToImageOptions};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

fn e2e_tensor(file: &str, name: &str, device: &Device) -> Tensor<4> {
    let bytes = std::fs::read(fixtures().join("e2e").join(file)).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let shape: [usize; 4] = view.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn check(folder: &str, model: &str, scheduler: &str) {
    let device = Device::flex();
    let pipeline = StableDiffusion::load(&fixtures().join(folder), &device).unwrap();
    assert_eq!(pipeline.is_xl(), model == "sdxl");
    let options = TextToImageOptions {
        prompt: "a photo of an astronaut riding a horse".into(),
        negative_prompt: "blurry, low quality".into(),
        num_inference_steps: 2,
        guidance_scale: 7.5,
        width: Some(16),
        height: Some(16),
        scheduler: Some(scheduler.into()),
        // The SDXL fixture's micro-conditioning (ignored by SD1.5).
        original_size: Some((48, 40)),
        crops_coords_top_left: (4, 2),
        latents: Some(e2e_tensor(
            &format!("{model}_txt2img_inputs.safetensors"),
            "latents",
            &device,
        )),
        ..Default::default()
    };
    let mut steps = 0;
    let image = pipeline
        .text_to_image_tensor(&options, |_| {
            steps += 1;
            true
        })
        .unwrap();
    assert_eq!(steps, 2);
    let expected = e2e_tensor(
        &format!("{model}_txt2img_{scheduler}.safetensors"),
        "image",
        &device,
    );
    let diff = (image - expected).abs().max().into_scalar::<f32>();
    eprintln!("{model} {scheduler}: image max abs diff {diff:e}");
    assert!(diff < 1e-3, "{model} {scheduler}: {diff}");
}

#[test]
fn sd15_prompt_to_image_matches_diffusers() {
    check("sd15_tiny", "sd15", "ddim");
    check("sd15_tiny", "sd15", "dpmpp_2m_karras");
}

#[test]
fn sdxl_prompt_to_image_matches_diffusers() {
    check("sdxl_tiny", "sdxl", "euler");
}

#[test]
fn seeds_reproduce_and_bad_options_are_named() {
    let device = Device::flex();
    let pipeline = StableDiffusion::load(&fixtures().join("sd15_tiny"), &device).unwrap();
    let options = TextToImageOptions {
        prompt: "an avatar".into(),
        num_inference_steps: 2,
        num_images: 2,
        seed: Some("alice".into()),
        scheduler: Some("euler_a".into()),
        ..Default::default()
    };
    let a = pipeline.text_to_image(&options, |_| true).unwrap();
    let b = pipeline.text_to_image(&options, |_| true).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(
        a[0].dimensions(),
        (32, 32),
        "default size: sample_size x VAE factor"
    );
    assert_eq!(a, b, "the same seed gives the same images");
    assert_ne!(a[0], a[1], "two images per prompt differ");
    let other = pipeline
        .text_to_image(
            &TextToImageOptions {
                seed: Some("bob".into()),
                ..options.clone()
            },
            |_| true,
        )
        .unwrap();
    assert_ne!(a[0], other[0]);

    let field = |options: TextToImageOptions| match pipeline.text_to_image(&options, |_| true) {
        Err(AvatarError::InvalidOption { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        field(TextToImageOptions {
            width: Some(20),
            ..options.clone()
        }),
        "width"
    );
    assert_eq!(
        field(TextToImageOptions {
            num_images: 0,
            ..options.clone()
        }),
        "num_images"
    );
    assert_eq!(
        field(TextToImageOptions {
            guidance_scale: -1.0,
            ..options.clone()
        }),
        "guidance_scale"
    );
    assert_eq!(
        field(TextToImageOptions {
            num_inference_steps: 0,
            ..options.clone()
        }),
        "num_inference_steps"
    );
    assert!(matches!(
        pipeline.text_to_image(&options, |_| false),
        Err(AvatarError::Cancelled)
    ));
}

#[test]
fn sd15_image_to_image_matches_diffusers() {
    let device = Device::flex();
    let pipeline = StableDiffusion::load(&fixtures().join("sd15_tiny"), &device).unwrap();
    let file = "sd15_img2img_euler.safetensors";
    let options = TextToImageOptions {
        prompt: "a photo of an astronaut riding a horse".into(),
        negative_prompt: "blurry, low quality".into(),
        num_inference_steps: 4,
        guidance_scale: 7.5,
        scheduler: Some("euler".into()),
        ..Default::default()
    };
    // diffusers' draw order: the posterior sample, then the forward-diffusion noise.
    let mut draws = vec![
        e2e_tensor(file, "posterior_noise", &device),
        e2e_tensor(file, "add_noise_noise", &device),
    ]
    .into_iter();
    let mut steps = 0;
    let image = pipeline
        .image_to_image_with_noise(
            e2e_tensor(file, "init_image_01", &device),
            0.5,
            &options,
            |_| draws.next().expect("two draws"),
            |_| {
                steps += 1;
                true
            },
        )
        .unwrap();
    assert_eq!(steps, 2, "strength 0.5 of 4 steps runs 2");
    let diff = (image - e2e_tensor(file, "image", &device))
        .abs()
        .max()
        .into_scalar::<f32>();
    eprintln!("sd15 img2img euler: image max abs diff {diff:e}");
    assert!(diff < 1e-3, "img2img differs by {diff}");

    let bad = |strength: f64| {
        pipeline
            .image_to_image_tensor(
                e2e_tensor(file, "init_image_01", &device),
                strength,
                &options,
                |_| true,
            )
            .unwrap_err()
    };
    assert!(matches!(
        bad(1.5),
        AvatarError::InvalidOption {
            field: "strength",
            ..
        }
    ));
    assert!(matches!(
        bad(0.0),
        AvatarError::InvalidOption {
            field: "strength",
            ..
        }
    ));
    // The RGBA front door: any image size is brought to a multiple of 8.
    let photo = image::RgbaImage::from_fn(19, 17, |x, y| {
        image::Rgba([(x * 13) as u8, (y * 15) as u8, 90, 255])
    });
    let out = pipeline
        .image_to_image(
            &photo,
            0.75,
            &TextToImageOptions {
                seed: Some(1.into()),
                ..options
            },
            |_| true,
        )
        .unwrap();
    assert_eq!(out[0].dimensions(), (16, 16));
}

#[test]
fn single_file_checkpoints_load_and_match_diffusers() {
    let device = Device::flex();
    for (file, folder, model, scheduler) in [
        ("sd15_tiny.safetensors", "sd15_tiny", "sd15", "ddim"),
        ("sdxl_tiny.safetensors", "sdxl_tiny", "sdxl", "euler"),
    ] {
        let pipeline = StableDiffusion::load_single_file(
            &fixtures().join(file),
            &fixtures().join(folder),
            &device,
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(pipeline.is_xl(), model == "sdxl");
        let options = TextToImageOptions {
            prompt: "a photo of an astronaut riding a horse".into(),
            negative_prompt: "blurry, low quality".into(),
            num_inference_steps: 2,
            width: Some(16),
            height: Some(16),
            scheduler: Some(scheduler.into()),
            original_size: Some((48, 40)),
            crops_coords_top_left: (4, 2),
            latents: Some(e2e_tensor(
                &format!("{model}_txt2img_inputs.safetensors"),
                "latents",
                &device,
            )),
            ..Default::default()
        };
        let image = pipeline.text_to_image_tensor(&options, |_| true).unwrap();
        let expected = e2e_tensor(
            &format!("{model}_txt2img_{scheduler}.safetensors"),
            "image",
            &device,
        );
        let diff = (image - expected).abs().max().into_scalar::<f32>();
        eprintln!("{file}: image max abs diff {diff:e}");
        assert!(diff < 1e-3, "{file}: {diff}");
    }
    // A folder's component file is not a single-file checkpoint: a typed error naming its keys.
    let err = StableDiffusion::load_single_file(
        &fixtures().join("sd15_tiny/vae/diffusion_pytorch_model.safetensors"),
        &fixtures().join("sd15_tiny"),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, AvatarError::WeightKeys { .. }), "{err}");
}

/// Copies a diffusers folder, storing every float tensor as f16 (as `variant="fp16"` files are).
fn f16_copy(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            f16_copy(&entry.path(), &target);
        } else if entry.path().extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(entry.path()).unwrap();
            let file = SafeTensors::deserialize(&bytes).unwrap();
            let tensors: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = file
                .tensors()
                .into_iter()
                .map(|(name, view)| match view.dtype() {
                    safetensors::Dtype::F32 => {
                        let data = view
                            .data()
                            .chunks_exact(4)
                            .flat_map(|b| {
                                half::f16::from_f32(f32::from_le_bytes(b.try_into().unwrap()))
                                    .to_le_bytes()
                            })
                            .collect();
                        (name, view.shape().to_vec(), safetensors::Dtype::F16, data)
                    }
                    other => (name, view.shape().to_vec(), other, view.data().to_vec()),
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
                .iter()
                .map(|(name, shape, dtype, data)| {
                    (
                        name.clone(),
                        safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
                    )
                })
                .collect();
            std::fs::write(&target, safetensors::serialize(views, None).unwrap()).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn fp16_weights_load_and_run_in_f32() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    f16_copy(&fixtures().join("sd15_tiny"), dir.path());
    let half = StableDiffusion::load(dir.path(), &device).unwrap();
    let full = StableDiffusion::load(&fixtures().join("sd15_tiny"), &device).unwrap();
    let options = TextToImageOptions {
        prompt: "a photo of an astronaut riding a horse".into(),
        num_inference_steps: 2,
        width: Some(16),
        height: Some(16),
        seed: Some(3.into()),
        scheduler: Some("ddim".into()),
        ..Default::default()
    };
    let a = half.text_to_image_tensor(&options, |_| true).unwrap();
    let b = full.text_to_image_tensor(&options, |_| true).unwrap();
    let diff = (a - b).abs().max().into_scalar::<f32>();
    eprintln!("fp16 weights vs f32 weights: image max abs diff {diff:e}");
    // f16 rounding of the weights moves the image a little, never a lot.
    assert!(diff > 0.0 && diff < 2e-2, "{diff}");
}

/// `vae_tiling` switches the pipeline to the tiled decoder (parity of which is tested in
/// `diffusion_vae_tiled.rs`) only when the latents exceed one tile, as diffusers does.
#[test]
fn vae_tiling_applies_to_latents_larger_than_a_tile() {
    let device = Device::flex();
    let pipeline = StableDiffusion::load(&fixtures().join("sd15_tiny"), &device).unwrap();
    let run = |size: u32, vae_tiling: bool| {
        let options = TextToImageOptions {
            prompt: "an avatar".into(),
            num_inference_steps: 2,
            width: Some(size),
            height: Some(size),
            seed: Some("tiles".into()),
            vae_tiling,
            ..Default::default()
        };
        pipeline.text_to_image_tensor(&options, |_| true).unwrap()
    };
    // 32 px = 16 latent pixels = one tile (sample_size 32 >> 1 level): identical.
    let diff = |a: Tensor<4>, b: Tensor<4>| (a - b).abs().max().into_scalar::<f32>();
    assert_eq!(diff(run(32, true), run(32, false)), 0.0);
    // 64 px = 2x2 overlapping tiles: same shape, seams blended, so not identical.
    let (tiled, whole) = (run(64, true), run(64, false));
    assert_eq!(tiled.dims(), [1, 3, 64, 64]);
    assert_eq!(tiled.dims(), whole.dims());
    assert!(diff(tiled, whole) > 1e-4);
}

#[test]
fn previews_show_the_image_being_denoised() {
    use avatar_core::diffusion::preview::{Preview, PreviewMode, PreviewOptions};
    use std::sync::{Arc, Mutex};
    let device = Device::flex();
    let pipeline = StableDiffusion::load(&fixtures().join("sd15_tiny"), &device).unwrap();
    let run = |every: usize, mode: PreviewMode| {
        let seen: Arc<Mutex<Vec<Preview>>> = Arc::default();
        let sink = seen.clone();
        let options = TextToImageOptions {
            prompt: "an avatar".into(),
            num_inference_steps: 3,
            num_images: 2,
            width: Some(48),
            height: Some(32),
            seed: Some(9.into()),
            scheduler: Some("euler".into()),
            preview: Some(PreviewOptions::new(every, mode, move |p| {
                sink.lock().unwrap().push(p)
            })),
            ..Default::default()
        };
        let images = pipeline.text_to_image(&options, |_| true).unwrap();
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        (images, seen)
    };
    // Every step, decoded by the VAE: Euler's last x0 estimate is the result itself.
    let (images, seen) = run(1, PreviewMode::Vae);
    let steps: Vec<(usize, usize)> = seen.iter().map(|p| (p.step, p.total)).collect();
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(seen[2].images, images);
    assert_ne!(seen[0].images, images, "the first estimate is still rough");
    // Every second step (and the last), approximate: at latent resolution (the tiny VAE halves
    // the sides; SD's divides them by 8), nearly free.
    let (_, seen) = run(2, PreviewMode::Approximate);
    let steps: Vec<usize> = seen.iter().map(|p| p.step).collect();
    assert_eq!(steps, vec![2, 3]);
    assert_eq!(seen[0].images.len(), 2);
    assert_eq!(seen[0].images[0].dimensions(), (24, 16));
    assert!(
        "sometimes"
            .parse::<PreviewMode>()
            .is_err_and(|e| e.field() == Some("preview_mode"))
    );
}

#[test]
fn long_prompts_are_encoded_in_windows() {
    let device = Device::flex();
    let long = (0..40)
        .map(|i| format!("a smiling cartoon avatar number {i} with a hat"))
        .collect::<Vec<_>>()
        .join(", ");
    for folder in ["sd15_tiny", "sdxl_tiny"] {
        let pipeline = StableDiffusion::load(&fixtures().join(folder), &device).unwrap();
        assert_eq!(pipeline.prompt_windows("an avatar"), 1);
        let windows = pipeline.prompt_windows(&long);
        assert!(windows >= 3, "{folder}: {windows} windows");
        let (truncated, pooled_one) = pipeline.encode_prompt(&long, 1);
        let (windowed, pooled_many) = pipeline.encode_prompt(&long, windows);
        let [_, length, width] = windowed.dims();
        assert_eq!(length, 77 * windows);
        // The first window is the truncated encoding; the pooled one comes from it (SDXL).
        let first = windowed.clone().slice([0..1, 0..77, 0..width]);
        assert!((first - truncated.clone()).abs().max().into_scalar::<f32>() < 1e-6);
        if let (Some(a), Some(b)) = (pooled_one, pooled_many) {
            assert!((a - b).abs().max().into_scalar::<f32>() < 1e-6);
        }
        // A later window is text, not padding.
        let (empty, _) = pipeline.encode_prompt("", 1);
        let second = windowed.slice([0..1, 77..154, 0..width]);
        assert!((second - empty).abs().max().into_scalar::<f32>() > 1e-3);

        let options = |prompt: &str, long_prompt: bool| TextToImageOptions {
            prompt: prompt.into(),
            negative_prompt: "blurry".into(),
            num_inference_steps: 1,
            seed: Some(4.into()),
            long_prompt,
            ..Default::default()
        };
        let draw = |o: TextToImageOptions| pipeline.text_to_image(&o, |_| true).unwrap();
        // Short prompts are unchanged; long ones see their whole text.
        assert_eq!(
            draw(options("an avatar", true)),
            draw(options("an avatar", false))
        );
        assert_ne!(draw(options(&long, true)), draw(options(&long, false)));
    }
}
