//! `UNet2DConditionModel` against diffusers 0.42.1 (fixtures by
//! `tools/reference/diffusion/make_fixtures.py`): SD1.5-like and SDXL-like (text_time) configs.

use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::diffusion::unet::{AddedConditioning, UNet2DConditionModel};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

fn values(file: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let view = file.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (view.shape().to_vec(), values)
}

fn tensor<const D: usize>(file: &SafeTensors, name: &str, device: &Device) -> Tensor<D> {
    let (shape, values) = values(file, name);
    let shape: [usize; D] = shape.try_into().unwrap();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn check(model: &str, io: &str, sdxl: bool) {
    let device = Device::flex();
    let (_, unet) = UNet2DConditionModel::load(&fixtures().join(model), &device).unwrap();
    let bytes = std::fs::read(fixtures().join("io").join(io)).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, timesteps) = values(&file, "timestep");
    let added = sdxl.then(|| AddedConditioning {
        text_embeds: tensor(&file, "text_embeds", &device),
        time_ids: tensor(&file, "time_ids", &device),
    });
    let out = unet
        .forward(
            tensor(&file, "sample", &device),
            &timesteps,
            tensor(&file, "encoder_hidden_states", &device),
            added.as_ref(),
        )
        .unwrap();
    let expected: Tensor<4> = tensor(&file, "out", &device);
    assert_eq!(out.dims(), expected.dims());
    let diff = (out - expected).abs().max().into_scalar::<f32>();
    eprintln!("{model}: max abs diff {diff:e}");
    assert!(diff < 1e-4, "{model}: max abs diff {diff}");

    if sdxl {
        // Without the added conditioning an SDXL UNet is a clear error, not a panic.
        let err = unet
            .forward(
                tensor(&file, "sample", &device),
                &timesteps,
                tensor(&file, "encoder_hidden_states", &device),
                None,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                AvatarError::InvalidOption {
                    field: "added_cond",
                    ..
                }
            ),
            "{err}"
        );
    }
    let err = unet
        .forward(
            tensor(&file, "sample", &device),
            &timesteps[..1],
            tensor(&file, "encoder_hidden_states", &device),
            added.as_ref(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            AvatarError::InvalidOption {
                field: "timesteps",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn sd15_unet_matches_diffusers() {
    check("sd15_tiny/unet", "sd15_unet.safetensors", false);
}

#[test]
fn sdxl_unet_matches_diffusers() {
    check("sdxl_tiny/unet", "sdxl_unet.safetensors", true);
}

/// 13x10 latents, sides the UNets' downsampling does not divide (SD at 520 px, say): diffusers
/// passes each upsampler its skip connection's size instead of doubling.
#[test]
fn latents_of_any_size_match_diffusers() {
    check("sd15_tiny/unet", "sd15_unet_odd.safetensors", false);
    check("sdxl_tiny/unet", "sdxl_unet_odd.safetensors", true);
}
