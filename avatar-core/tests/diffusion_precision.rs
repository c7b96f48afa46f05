//! Half-precision compute (`StableDiffusion::set_precision`): the tiny pipelines in f16 and bf16
//! on flex against diffusers' f32 reference images (within a half-precision tolerance, and
//! clearly not equal to the f32 run, so the weights really were cast), with a ControlNet and an
//! IP-Adapter loaded before and after the switch, and image-to-image through the VAE encoder.

use avatar_core::diffusion::ip_adapter::IpAdapterPrompt;
use avatar_core::diffusion::pipeline::{ControlNetPrompt, StableDiffusion, TextToImageOptions};
use avatar_core::diffusion::precision::Precision;
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::common;

use common::adapters::{fixtures, load_image_adapter, pipeline, reference_options};
use common::tensors::{TensorFile, max_abs_diff};

/// Largest error allowed against the f32 reference (images in [0, 1], 2 DDIM steps).
fn tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::F32 => 1e-3,
        Precision::F16 => 1e-2,
        Precision::BF16 => 8e-2,
    }
}

fn reference<const D: usize>(folder: &str, name: &str, device: &Device) -> Tensor<D> {
    TensorFile::open(&fixtures().join(folder).join("reference.safetensors")).float(name, device)
}

/// Runs `options` in every precision and checks each image against `expected` of `folder`.
fn check_all(sd: &mut StableDiffusion, options: &TextToImageOptions, folder: &str, expected: &str) {
    let device = Device::flex();
    let expected = reference::<4>(folder, expected, &device);
    let mut f32_image = None;
    for precision in [Precision::F32, Precision::F16, Precision::BF16] {
        sd.set_precision(precision).unwrap();
        assert_eq!(sd.precision(), precision);
        let image = sd.text_to_image_tensor(options, |_| true).unwrap();
        assert_eq!(image.dtype(), DType::F32);
        let diff = max_abs_diff(image.clone(), expected.clone());
        eprintln!("{folder} {precision}: max abs diff {diff:e}");
        assert!(
            diff.is_finite() && diff < tolerance(precision),
            "{precision}: {diff}"
        );
        match &f32_image {
            None => f32_image = Some(image),
            Some(full) => {
                let change = max_abs_diff(image, full.clone());
                assert!(change > 1e-5, "{precision} gave the f32 image ({change})");
            }
        }
    }
}

#[test]
fn sd15_and_sdxl_run_in_half_precision() {
    let device = Device::flex();
    let latents = |folder| reference::<4>(folder, "latents", &device);
    // SD1.5 with a ControlNet and an IP-Adapter, the adapter loaded after switching to f16.
    let mut sd = pipeline("sd15_tiny", &device);
    sd.load_controlnet(&fixtures().join("controlnet/sd15_controlnet_0"))
        .unwrap();
    sd.set_precision(Precision::F16).unwrap();
    assert_eq!(sd.unet().conv_in.weight.val().dtype(), DType::F16);
    assert_eq!(sd.vae().decoder.conv_in.weight.val().dtype(), DType::F16);
    let reference_image = load_image_adapter(&mut sd);
    let control = image::open(fixtures().join("controlnet/control_0.png"))
        .unwrap()
        .to_rgba8();
    let options = TextToImageOptions {
        controlnet: vec![ControlNetPrompt::new(0, control, 0.8)],
        ip_adapter: vec![IpAdapterPrompt::image(reference_image, 0.7)],
        ..reference_options(latents("controlnet"))
    };
    check_all(&mut sd, &options, "controlnet", "with_ip_adapter_image");

    // SDXL: added conditioning (text_embeds, time_ids) through the cast embeddings; the VAE
    // stays f32 (force_upcast).
    let mut xl = pipeline("sdxl_tiny", &device);
    let options = TextToImageOptions {
        latents: None,
        seed: Some("xl".into()),
        ..reference_options(latents("controlnet"))
    };
    let reference_f32 = xl.text_to_image_tensor(&options, |_| true).unwrap();
    for precision in [Precision::F16, Precision::BF16] {
        xl.set_precision(precision).unwrap();
        assert_eq!(
            xl.unet().conv_in.weight.val().dtype(),
            DType::from(precision.float_dtype())
        );
        assert_eq!(xl.vae().decoder.conv_in.weight.val().dtype(), DType::F32);
        let image = xl.text_to_image_tensor(&options, |_| true).unwrap();
        let diff = max_abs_diff(image, reference_f32.clone());
        eprintln!("sdxl {precision}: max abs diff to f32 {diff:e}");
        assert!(
            diff.is_finite() && diff > 1e-5 && diff < tolerance(precision),
            "{precision}: {diff}"
        );
    }
}

#[test]
fn image_to_image_and_tiled_decoding_run_in_half_precision() {
    let device = Device::flex();
    let mut sd = pipeline("sd15_tiny", &device);
    // 64 px: larger than the tiny VAE's 32 px tiles, so decoding is tiled and blended.
    let values: Vec<f32> = (0..3 * 64 * 64).map(|i| (i % 97) as f32 / 96.0).collect();
    let init = Tensor::<4>::from_data(TensorData::new(values, [1, 3, 64, 64]), &device);
    let options = TextToImageOptions {
        width: Some(64),
        height: Some(64),
        seed: Some("half".into()),
        vae_tiling: true,
        latents: None,
        ..reference_options(reference::<4>("controlnet", "latents", &device))
    };
    let full = sd
        .image_to_image_tensor(init.clone(), 0.6, &options, |_| true)
        .unwrap();
    sd.set_precision(Precision::F16).unwrap();
    let half = sd
        .image_to_image_tensor(init.clone(), 0.6, &options, |_| true)
        .unwrap();
    let diff = max_abs_diff(half, full);
    eprintln!("img2img f16 vs f32: {diff:e}");
    assert!(
        diff.is_finite() && diff < tolerance(Precision::F16),
        "{diff}"
    );
}
