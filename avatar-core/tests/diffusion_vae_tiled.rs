//! Tiled VAE decoding against diffusers' `enable_tiling()` (fixture by
//! `tools/reference/diffusion/make_tiling_fixture.py`): latents larger than one tile.

use std::path::Path;

use avatar_core::diffusion::vae::AutoencoderKL;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;

#[test]
fn tiled_decode_matches_diffusers() {
    let device = Device::flex();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion");
    let (config, vae) = AutoencoderKL::load(&dir.join("sd15_tiny/vae"), &device).unwrap();
    let bytes = std::fs::read(dir.join("io/sd15_vae_tiled.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensor = |name: &str| {
        let view = file.tensor(name).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let shape: [usize; 4] = view.shape().try_into().unwrap();
        Tensor::<4>::from_data(TensorData::new(values, shape), &device)
    };
    let levels = config.block_out_channels.len() - 1;
    let tile = config.sample_size.unwrap() >> levels;
    let tiled = vae.decode_tiled(tensor("z"), tile, 1 << levels, 0.25);
    let expected = tensor("tiled");
    assert_eq!(tiled.dims(), expected.dims());
    let diff = (tiled - expected).abs().max().into_scalar::<f32>();
    eprintln!("tiled decode: max abs diff {diff:e}");
    assert!(diff < 1e-4, "{diff}");
    // Tiling really changes the result near seams (so the check above is not trivial).
    let untiled = (vae.decode(tensor("z")) - tensor("untiled"))
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(untiled < 1e-4, "{untiled}");
}
