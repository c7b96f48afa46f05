//! Stable Diffusion 1.5 at full size with random weights (no download needed): one UNet step at
//! batch 2 on 64x64 and 32x32 latents, a VAE decode 64x64 -> 512 px, and a CLIP-L text encode,
//! each timed (median of `--runs`) with the process's peak RSS. `benches/compare_sd15.py` runs the
//! same shapes in PyTorch/diffusers; results go to `benches/RESULTS.md`.
//!
//! ```text
//! cargo bench -p avatar-core --bench sd15_shapes -- [unet64|unet32|vae|clip ...] [--runs N]
//!     [--precision fp32|fp16|bf16]
//! ```

use avatar_core::diffusion::clip_text::ClipTextConfig;
use avatar_core::diffusion::precision::{Precision, cast_module};
use avatar_core::diffusion::unet::UNetConfig;
use avatar_core::diffusion::vae::VaeConfig;
use burn::tensor::{Device, Distribution, Int, Tensor};

const UNET: &str = r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64}"#;
const VAE: &str = r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#;
const CLIP: &str = r#"{"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
  "num_attention_heads": 12, "num_hidden_layers": 12, "hidden_act": "quick_gelu",
  "architectures": ["CLIPTextModel"]}"#;

mod common;

use common::{bench_args, option, time, wanted};

fn main() {
    let Some((args, runs)) = bench_args("sd15_shapes") else {
        return;
    };
    let wanted = |name: &str| wanted(&args, name);
    let precision: Precision = option(&args, "--precision")
        .unwrap_or("fp32")
        .parse()
        .unwrap();
    let dtype = precision.float_dtype();
    println!("precision {precision}");
    let device = Device::flex();
    let normal = Distribution::Normal(0.0, 1.0);
    if wanted("unet64") || wanted("unet32") {
        let config: UNetConfig = serde_json::from_str(UNET).unwrap();
        let unet = cast_module(config.init(&device).unwrap(), dtype);
        let context = Tensor::<3>::random([2, 77, 768], normal, &device);
        for side in [64, 32] {
            if !wanted(&format!("unet{side}")) {
                continue;
            }
            let sample = Tensor::<4>::random([2, 4, side, side], normal, &device);
            time(&format!("unet step b2 {side}x{side}"), runs, || {
                let out = unet
                    .forward(sample.clone(), &[500.0, 500.0], context.clone(), None)
                    .unwrap();
                let _ = out.into_data();
            });
        }
    }
    if wanted("vae") {
        let config: VaeConfig = serde_json::from_str(VAE).unwrap();
        let vae = cast_module(config.init(&device).unwrap(), dtype);
        let latents = Tensor::<4>::random([1, 4, 64, 64], normal, &device);
        time("vae decode 64x64 -> 512px", runs, || {
            let _ = vae.decode(latents.clone()).into_data();
        });
    }
    if wanted("clip") {
        let config = ClipTextConfig::from_hub_json(CLIP).unwrap();
        let clip = cast_module(config.init(&device).unwrap(), dtype);
        let ids = Tensor::<1, Int>::arange(0..154, &device).reshape([2, 77]);
        time("clip-l encode b2 x 77", runs, || {
            let _ = clip.forward(ids.clone()).last_hidden_state.into_data();
        });
    }
}
