//! What the face-adapter tests share: the fixture folder, the tiny pipelines and the options of
//! the reference runs (`tools/reference/face_adapters/`: DDIM, 2 steps, CFG 7.5, 16x16).

use std::path::{Path, PathBuf};

use avatar_core::diffusion::pipeline::{StableDiffusion, TextToImageOptions};
use burn::tensor::{Device, Tensor};

/// `avatar-core/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny diffusers pipeline `model` (`sd15_tiny`, `sdxl_tiny`).
pub fn pipeline(model: &str, device: &Device) -> StableDiffusion {
    StableDiffusion::load(&fixtures().join("diffusion").join(model), device).unwrap()
}

/// Loads the fixture IP-Adapter (basic, with its CLIP image encoder) into `sd`; returns the
/// reference picture the fixtures give it.
pub fn load_image_adapter(sd: &mut StableDiffusion) -> image::RgbaImage {
    let adapters = fixtures().join("ip_adapter");
    sd.load_ip_adapter(
        &adapters.join("ip_adapter.safetensors"),
        Some(&adapters.join("image_encoder")),
    )
    .unwrap();
    image::open(adapters.join("reference.png"))
        .unwrap()
        .to_rgba8()
}

/// The reference runs' options, from explicit `latents`.
pub fn reference_options(latents: Tensor<4>) -> TextToImageOptions {
    TextToImageOptions {
        prompt: "a portrait of a smiling woman".into(),
        negative_prompt: "blurry".into(),
        num_inference_steps: 2,
        guidance_scale: 7.5,
        width: Some(16),
        height: Some(16),
        scheduler: Some("ddim".into()),
        latents: Some(latents),
        ..Default::default()
    }
}
