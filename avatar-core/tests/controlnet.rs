//! ControlNet and InstantID's wiring against diffusers 0.42.1
//! (`tools/reference/face_adapters/make_controlnet_fixtures.py`): one ControlNet call's
//! residuals, SD1.5 runs with one ControlNet, two (one stopping half-way) and a ControlNet with an
//! IP-Adapter, an SDXL run, and InstantID (face tokens into the UNet and into the IdentityNet).

use std::path::PathBuf;

use avatar_core::AvatarError;
use avatar_core::diffusion::controlnet::ControlNetModel;
use avatar_core::diffusion::ip_adapter::{IpAdapter, IpAdapterKind, IpAdapterPrompt};
use avatar_core::diffusion::pipeline::{ControlNetPrompt, StableDiffusion, TextToImageOptions};
use burn::tensor::{Device, Tensor};

use crate::common;

use common::adapters::{fixtures, load_image_adapter, pipeline, reference_options};
use common::tensors::{TensorFile, max_abs_diff};

fn controlnets() -> PathBuf {
    fixtures().join("controlnet")
}

fn reference<const D: usize>(name: &str, device: &Device) -> Tensor<D> {
    TensorFile::open(&controlnets().join("reference.safetensors")).float(name, device)
}

fn png(name: &str) -> image::RgbaImage {
    image::open(controlnets().join(name)).unwrap().to_rgba8()
}

fn options(device: &Device) -> TextToImageOptions {
    reference_options(reference("latents", device))
}

fn check_image(pipeline: &StableDiffusion, options: &TextToImageOptions, expected: &str) -> f32 {
    let device = Device::flex();
    let image = pipeline.text_to_image_tensor(options, |_| true).unwrap();
    let expected_image = reference(expected, &device);
    let diff = max_abs_diff(image, expected_image.clone());
    eprintln!("{expected}: max abs diff {diff:e}");
    assert!(diff < 1e-3, "{expected}: {diff}");
    // The control really contributes: without it the image is far from the reference.
    let plain = pipeline
        .text_to_image_tensor(
            &TextToImageOptions {
                controlnet: Vec::new(),
                ip_adapter: Vec::new(),
                ..options.clone()
            },
            |_| true,
        )
        .unwrap();
    max_abs_diff(plain, expected_image)
}

#[test]
fn controlnet_residuals_match_diffusers() {
    let device = Device::flex();
    let (_, net) =
        ControlNetModel::load(&controlnets().join("sd15_controlnet_0"), &device).unwrap();
    let out = net
        .forward(
            reference("component_sample", &device),
            &[501.0, 501.0],
            reference("component_context", &device),
            None,
            reference("component_cond", &device),
            0.7,
        )
        .unwrap();
    assert_eq!(out.down.len(), 4);
    for (i, down) in out.down.into_iter().enumerate() {
        let diff = max_abs_diff(down, reference(&format!("component_down_{i}"), &device));
        assert!(diff < 1e-4, "down {i}: {diff}");
    }
    let diff = max_abs_diff(out.mid, reference("component_mid", &device));
    assert!(diff < 1e-4, "mid: {diff}");
}

#[test]
fn sd15_controlnet_runs_match_diffusers() {
    let device = Device::flex();
    let mut sd = pipeline("sd15_tiny", &device);
    let first = sd
        .load_controlnet(&controlnets().join("sd15_controlnet_0"))
        .unwrap();
    let second = sd
        .load_controlnet(&controlnets().join("sd15_controlnet_1"))
        .unwrap();
    assert_eq!((first, second, sd.controlnet_count()), (0, 1, 2));

    let single = TextToImageOptions {
        controlnet: vec![ControlNetPrompt::new(0, png("control_0.png"), 0.8)],
        ..options(&device)
    };
    assert!(check_image(&sd, &single, "single_image") > 1e-2);

    let multi = TextToImageOptions {
        controlnet: vec![
            ControlNetPrompt::new(0, png("control_0.png"), 0.5),
            ControlNetPrompt {
                guidance_end: 0.5,
                ..ControlNetPrompt::new(1, png("control_1.png"), 0.9)
            },
        ],
        ..options(&device)
    };
    check_image(&sd, &multi, "multi_image");
}

#[test]
fn controlnet_with_ip_adapter_matches_diffusers() {
    let device = Device::flex();
    let mut sd = pipeline("sd15_tiny", &device);
    sd.load_controlnet(&controlnets().join("sd15_controlnet_0"))
        .unwrap();
    let reference_image = load_image_adapter(&mut sd);
    let options = TextToImageOptions {
        controlnet: vec![ControlNetPrompt::new(0, png("control_0.png"), 0.8)],
        ip_adapter: vec![IpAdapterPrompt::image(reference_image, 0.7)],
        ..options(&device)
    };
    check_image(&sd, &options, "with_ip_adapter_image");
}

#[test]
fn sdxl_controlnet_run_matches_diffusers() {
    let device = Device::flex();
    let mut sd = pipeline("sdxl_tiny", &device);
    sd.load_controlnet(&controlnets().join("sdxl_controlnet"))
        .unwrap();
    let options = TextToImageOptions {
        controlnet: vec![ControlNetPrompt::new(0, png("control_1.png"), 0.6)],
        ..options(&device)
    };
    assert!(check_image(&sd, &options, "sdxl_image") > 1e-2);
}

#[test]
fn instantid_wiring_matches_its_pipeline() {
    let device = Device::flex();
    let mut sd = pipeline("sdxl_tiny", &device);
    let adapter = sd
        .load_instantid_adapter(&controlnets().join("instantid_ip_adapter.bin"))
        .unwrap();
    assert_eq!(sd.ip_adapters()[adapter].kind(), IpAdapterKind::InstantId);
    let net = sd
        .load_controlnet(&controlnets().join("sdxl_identitynet"))
        .unwrap();
    let face: Vec<f32> = reference::<2>("face_embedding", &device)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    // The face tokens (raw embedding, zeros for the negative side).
    let (uncond, cond) = sd.ip_adapters()[adapter]
        .tokens(&IpAdapterPrompt::face(face.clone(), 0.8), None, &device)
        .unwrap();
    let diff = max_abs_diff(
        Tensor::cat(vec![uncond, cond], 0),
        reference("instantid_tokens", &device),
    );
    assert!(diff < 1e-4, "tokens: {diff}");
    let options = TextToImageOptions {
        ip_adapter: vec![IpAdapterPrompt::face(face, 0.8)],
        controlnet: vec![ControlNetPrompt {
            context_from_ip_adapter: Some(adapter),
            ..ControlNetPrompt::new(net, png("keypoints.png"), 0.8)
        }],
        ..options(&device)
    };
    check_image(&sd, &options, "instantid_image");
}

#[test]
fn controlnet_errors_are_typed() {
    let device = Device::flex();
    let mut sd15 = pipeline("sd15_tiny", &device);
    // A ControlNet for SDXL on SD1.5.
    let err = sd15
        .load_controlnet(&controlnets().join("sdxl_controlnet"))
        .unwrap_err();
    assert!(matches!(err, AvatarError::Config(_)), "{err}");
    // Not a ControlNet folder.
    assert!(sd15.load_controlnet(&controlnets()).is_err());
    sd15.load_controlnet(&controlnets().join("sd15_controlnet_0"))
        .unwrap();
    let run = |prompt: ControlNetPrompt| {
        sd15.text_to_image_tensor(
            &TextToImageOptions {
                controlnet: vec![prompt],
                ..options(&device)
            },
            |_| true,
        )
        .unwrap_err()
    };
    let image = png("control_0.png");
    assert_eq!(
        run(ControlNetPrompt::new(3, image.clone(), 1.0)).field(),
        Some("controlnet")
    );
    assert_eq!(
        run(ControlNetPrompt::new(0, image.clone(), 2.5)).field(),
        Some("controlnet_conditioning_scale")
    );
    assert_eq!(
        run(ControlNetPrompt {
            guidance_start: 0.8,
            guidance_end: 0.2,
            ..ControlNetPrompt::new(0, image.clone(), 1.0)
        })
        .field(),
        Some("control_guidance")
    );
    assert_eq!(
        run(ControlNetPrompt {
            context_from_ip_adapter: Some(0),
            ..ControlNetPrompt::new(0, image, 1.0)
        })
        .field(),
        Some("controlnet")
    );
    // An SD1.5 InstantID adapter file that is not a Resampler.
    let err = IpAdapter::load_instantid(
        &fixtures().join("ip_adapter/ip_adapter.safetensors"),
        sd15.unet(),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, AvatarError::Weights(_)), "{err}");
}
