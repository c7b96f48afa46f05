//! Stable Diffusion 1.5 at full size with random weights (no download needed): one UNet step at
//! batch 2 on 64x64 and 32x32 latents, a VAE decode 64x64 -> 512 px, and a CLIP-L text encode,
//! each timed (median of `--runs`) with the process's peak RSS. `benches/compare_sd15.py` runs the
//! same shapes in PyTorch/diffusers; results go to `benches/RESULTS.md`.
//!
//! ```text
//! cargo bench -p avatar-core --bench sd15_shapes -- [unet64|unet32|vae|clip ...] [--runs N]
//! ```

use std::time::Instant;

use avatar_core::diffusion::clip_text::ClipTextConfig;
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

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(name: &str, runs: usize, mut f: impl FnMut()) {
    f(); // warm-up (allocations, kernels)
    let times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .collect();
    println!(
        "{name:<28} median {:>8.3} s  (runs {runs}, min {:.3} s)  peak RSS {:.0} MiB",
        median(times.clone()),
        times.iter().cloned().fold(f64::INFINITY, f64::min),
        peak_rss_mib()
    );
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too (without `--bench`): minutes of full-size
    // UNet steps do not belong in the test suite.
    if !std::env::args().any(|a| a == "--bench") {
        println!("sd15_shapes: run with `cargo bench -p avatar-core --bench sd15_shapes`");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3);
    let wanted = |name: &str| {
        args.iter()
            .all(|a| a.starts_with("--") || a.parse::<usize>().is_ok())
            || args.iter().any(|a| a == name)
    };
    let device = Device::flex();
    let normal = Distribution::Normal(0.0, 1.0);
    if wanted("unet64") || wanted("unet32") {
        let config: UNetConfig = serde_json::from_str(UNET).unwrap();
        let unet = config.init(&device).unwrap();
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
        let vae = config.init(&device).unwrap();
        let latents = Tensor::<4>::random([1, 4, 64, 64], normal, &device);
        time("vae decode 64x64 -> 512px", runs, || {
            let _ = vae.decode(latents.clone()).into_data();
        });
    }
    if wanted("clip") {
        let config = ClipTextConfig::from_hub_json(CLIP).unwrap();
        let clip = config.init(&device).unwrap();
        let ids = Tensor::<1, Int>::arange(0..154, &device).reshape([2, 77]);
        time("clip-l encode b2 x 77", runs, || {
            let _ = clip.forward(ids.clone()).last_hidden_state.into_data();
        });
    }
}
