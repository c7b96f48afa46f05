//! `AutoencoderKL` against diffusers 0.42.1 (fixtures by `tools/reference/diffusion/make_fixtures.py`).

use std::path::{Path, PathBuf};

use avatar_core::diffusion::vae::AutoencoderKL;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

fn tensor(file: &SafeTensors, name: &str, device: &Device) -> Tensor<4> {
    let view = file.tensor(name).unwrap();
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let shape: [usize; 4] = view.shape().try_into().unwrap();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar::<f32>()
}

fn check(model: &str, io: &str) {
    let device = Device::flex();
    let (config, vae) = AutoencoderKL::load(&fixtures().join(model), &device).unwrap();
    assert!(config.scaling_factor > 0.0);
    let bytes = std::fs::read(fixtures().join("io").join(io)).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let t = |name: &str| tensor(&file, name, &device);

    let posterior = vae.encode(t("image"));
    let checks = [
        ("mean", max_abs_diff(posterior.mean.clone(), t("mean"))),
        (
            "logvar",
            max_abs_diff(posterior.logvar.clone(), t("logvar")),
        ),
        ("std", max_abs_diff(posterior.std(), t("std"))),
        (
            "posterior_sample",
            max_abs_diff(posterior.sample(t("noise")), t("posterior_sample")),
        ),
        ("decoded", max_abs_diff(vae.decode(t("z")), t("decoded"))),
    ];
    for (name, diff) in checks {
        eprintln!("{model} {name}: max abs diff {diff:e}");
        assert!(diff < 1e-4, "{model} {name}: max abs diff {diff}");
    }
}

#[test]
fn sd15_vae_matches_diffusers() {
    check("sd15_tiny/vae", "sd15_vae.safetensors");
}

#[test]
fn sdxl_vae_matches_diffusers() {
    check("sdxl_tiny/vae", "sdxl_vae.safetensors");
}
