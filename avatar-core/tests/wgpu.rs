//! The small wgpu correctness set (CI runs it on Mesa's software Vulkan; set AVATAR_WGPU_TESTS=1).

use avatar_core::DeviceSpec;
use avatar_core::dcgan::GeneratorConfig;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

mod common;

fn wgpu_device() -> Option<Device> {
    if std::env::var_os("AVATAR_WGPU_TESTS").is_none() {
        eprintln!("AVATAR_WGPU_TESTS is not set: wgpu tests not run");
        return None;
    }
    Some(DeviceSpec::Wgpu.device().expect("wgpu is compiled in"))
}

#[test]
fn keras_parity_on_wgpu() {
    let Some(device) = wgpu_device() else { return };
    for stem in ["tiny96", "tiny128"] {
        let error = common::keras_max_error(stem, &format!("{stem}.keras2.h5"), None, &device);
        assert!(error <= 1e-4, "{stem} on wgpu: max abs error {error}");
    }
}

#[test]
fn transposed_generator_agrees_with_flex() {
    let Some(device) = wgpu_device() else { return };
    let config = GeneratorConfig::transposed(16, 32, 4, vec![16, 8, 8]).unwrap();
    let generator = config.init(&Device::flex()).unwrap().valid();
    let latents: Vec<f32> = (0..32).map(|i| (i as f32 * 0.77).cos()).collect();
    let run = |device: &Device| {
        let g = generator.clone().to_device(device);
        let z = Tensor::<2>::from_data(TensorData::new(latents.clone(), [2, 16]), device);
        g.forward(z).into_data().try_into_vec::<f32>().unwrap()
    };
    let (cpu, gpu) = (run(&Device::flex()), run(&device));
    let error = cpu
        .iter()
        .zip(&gpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(error <= 1e-4, "max abs error {error}");
}

#[test]
fn sdxl_prompt_to_image_matches_diffusers_on_wgpu() {
    use avatar_core::diffusion::pipeline::{StableDiffusion, TextToImageOptions};
    let Some(device) = wgpu_device() else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion");
    let pipeline = StableDiffusion::load(&dir.join("sdxl_tiny"), &device).unwrap();
    let read = |name: &str| {
        let bytes = std::fs::read(dir.join("e2e").join(name.split(':').next().unwrap())).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = file.tensor(name.split(':').nth(1).unwrap()).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let shape: [usize; 4] = view.shape().try_into().unwrap();
        Tensor::<4>::from_data(TensorData::new(values, shape), &device)
    };
    let options = TextToImageOptions {
        prompt: "a photo of an astronaut riding a horse".into(),
        negative_prompt: "blurry, low quality".into(),
        num_inference_steps: 2,
        width: Some(16),
        height: Some(16),
        scheduler: Some("euler".into()),
        original_size: Some((48, 40)),
        crops_coords_top_left: (4, 2),
        latents: Some(read("sdxl_txt2img_inputs.safetensors:latents")),
        ..Default::default()
    };
    let image = pipeline.text_to_image_tensor(&options, |_| true).unwrap();
    let expected = read("sdxl_txt2img_euler.safetensors:image");
    let error = (image - expected.clone()).abs().max().into_scalar::<f32>();
    assert!(error <= 1e-3, "SDXL on wgpu: max abs error {error}");

    // Half precision where the adapter has shader-f16; a typed error where it has not.
    use avatar_core::diffusion::precision::Precision;
    let mut pipeline = pipeline;
    if device.supports_dtype(burn::tensor::DType::F16) {
        pipeline.set_precision(Precision::F16).unwrap();
        let image = pipeline.text_to_image_tensor(&options, |_| true).unwrap();
        let error = (image - expected).abs().max().into_scalar::<f32>();
        eprintln!("SDXL on wgpu in f16: max abs error {error}");
        assert!(error <= 2e-2, "SDXL on wgpu in f16: max abs error {error}");
    } else {
        let err = pipeline.set_precision(Precision::F16).unwrap_err();
        assert_eq!(err.field(), Some("precision"), "{err}");
        assert_eq!(pipeline.precision(), Precision::F32);
    }
}

#[test]
fn vqgan_clip_gradient_matches_the_reference_on_wgpu() {
    use avatar_core::vqgan_clip::cutouts::Cutout;
    use avatar_core::vqgan_clip::{Objective, OpenClipConfig, Prompt, VqganClip};
    use common::tensors::{TensorFile, max_abs_diff};
    let Some(device) = wgpu_device() else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan_clip");
    let engine = VqganClip::load(
        &dir.join("vqgan.yaml"),
        &dir.join("vqgan.ckpt"),
        &OpenClipConfig::from_json_file(&dir.join("clip_config.json")).unwrap(),
        &dir.join("clip.safetensors"),
        &device,
    )
    .unwrap();
    let r = TensorFile::open(&dir.join("reference.safetensors"));
    let ad = engine.device().clone();
    let decoded = engine.vqgan().decode(r.float("vq.z", &ad));
    let error = max_abs_diff(decoded, r.float("vq.decoded", &ad));
    assert!(error < 1e-4, "VQGAN decode on wgpu: {error}");

    // The `large` case's loss gradient without the stopped image prompt (one text prompt).
    let texts = engine.embed_texts(&["a cartoon avatar", "a photo"]);
    let objective = Objective {
        prompts: vec![Prompt {
            embeds: texts.narrow(0, 0, 1),
            weight: 1.0,
            stop: f32::NEG_INFINITY,
        }],
        init: None,
    };
    let boxes: Vec<Cutout> = r
        .ints("large.boxes")
        .1
        .chunks_exact(3)
        .map(|b| Cutout {
            size: b[0] as usize,
            x: b[1] as usize,
            y: b[2] as usize,
        })
        .collect();
    let z0 = r.float::<4>("large.z0", &ad);
    let (parts, grad) = engine.loss_and_grad(z0.clone(), &boxes, &objective, |b| b);
    let cpu = VqganClip::load(
        &dir.join("vqgan.yaml"),
        &dir.join("vqgan.ckpt"),
        &OpenClipConfig::from_json_file(&dir.join("clip_config.json")).unwrap(),
        &dir.join("clip.safetensors"),
        &Device::flex(),
    )
    .unwrap();
    let cpu_objective = Objective {
        prompts: vec![Prompt {
            embeds: cpu.embed_texts(&["a cartoon avatar"]),
            weight: 1.0,
            stop: f32::NEG_INFINITY,
        }],
        init: None,
    };
    let cpu_z0 = r.float::<4>("large.z0", cpu.device());
    let (cpu_parts, cpu_grad) = cpu.loss_and_grad(cpu_z0, &boxes, &cpu_objective, |b| b);
    let (loss, cpu_loss) = (parts.total(), cpu_parts.total());
    // Every stage agrees to ~1e-6 (decode, cutouts, both CLIP towers), but Mesa's software
    // Vulkan computes `asin` (the spherical distance) with an absolute error up to ~4e-4, so the
    // loss and its gradient are compared at that precision.
    assert!(
        (loss - cpu_loss).abs() < 1e-3,
        "loss on wgpu {loss} vs flex {cpu_loss}"
    );
    let grad = Tensor::<4>::from_data(grad.into_data(), cpu.device());
    let scale = cpu_grad.clone().abs().max().into_scalar::<f32>();
    let error = max_abs_diff(grad, cpu_grad);
    eprintln!("gradient on wgpu vs flex: max abs diff {error:e} (largest component {scale:e})");
    assert!(
        error < 1e-3 * scale,
        "gradient on wgpu vs flex: {error} of {scale}"
    );
}
