//! Face-adapter overhead per denoising step at full Stable Diffusion 1.5 size with random
//! weights (no download): one UNet step at batch 2 (guidance) on a 32x32 latent, plain, with an
//! IP-Adapter Plus (16 tokens from a ViT-H-sized Resampler, prepared once per generation as the
//! pipeline does), with IP-Adapter-FaceID (4 tokens + rank-128 LoRA in every attention), and
//! with one ControlNet (its forward + the UNet with its residuals). `compare_face_adapters.py`
//! runs the same steps in diffusers; results go to `benches/RESULTS.md`.
//!
//! ```text
//! cargo bench -p avatar-core --bench face_adapter_shapes -- [plain|plus|faceid|controlnet ...] [--runs N]
//! ```

use std::collections::BTreeMap;

use avatar_core::diffusion::attention::AttentionInjection;
use avatar_core::diffusion::controlnet::ControlNetConfig;
use avatar_core::diffusion::ip_adapter::IpAdapter;
use avatar_core::diffusion::single_file::{RawTensor, to_safetensors};
use avatar_core::diffusion::unet::{ControlResiduals, UNet2DConditionModel, UNetConfig};
use burn::tensor::{Device, Distribution, Tensor};

mod common;

use common::{bench_args, time, wanted};

const UNET: &str = r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64}"#;

/// Deterministic pseudo-random f32 tensor bytes (small values).
fn random(shape: &[usize], seed: u64) -> RawTensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(4 * n);
    for _ in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
        data.extend_from_slice(&v.to_le_bytes());
    }
    RawTensor {
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        data,
    }
}

/// An adapter file in the official flat layout: `proj` is the image projection's tensors.
fn adapter_file(
    unet: &UNet2DConditionModel,
    proj: Vec<(String, Vec<usize>)>,
    lora_rank: Option<usize>,
) -> std::path::PathBuf {
    let mut tensors = BTreeMap::new();
    let mut seed = 1;
    for (name, shape) in proj {
        tensors.insert(format!("image_proj.{name}"), random(&shape, seed));
        seed += 1;
    }
    for p in unet.attention_processors() {
        if p.cross {
            for which in ["to_k_ip", "to_v_ip"] {
                tensors.insert(
                    format!("ip_adapter.{}.{which}.weight", p.index),
                    random(&[p.hidden, p.context], seed),
                );
                seed += 1;
            }
        }
        if let Some(rank) = lora_rank {
            for (proj, input) in [
                ("to_q", p.hidden),
                ("to_k", p.context),
                ("to_v", p.context),
                ("to_out", p.hidden),
            ] {
                let key = format!("ip_adapter.{}.{proj}_lora", p.index);
                tensors.insert(format!("{key}.down.weight"), random(&[rank, input], seed));
                tensors.insert(
                    format!("{key}.up.weight"),
                    random(&[p.hidden, rank], seed + 1),
                );
                seed += 2;
            }
        }
    }
    let path = std::env::temp_dir().join(format!(
        "bench-adapter-{}-{seed}.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, to_safetensors(&tensors).unwrap()).unwrap();
    path
}

/// IP-Adapter Plus for SD1.5 (ViT-H hidden 1280 in, 16 queries of width 768, depth 4, 12 heads).
fn plus_projection() -> Vec<(String, Vec<usize>)> {
    let (embed, hidden, out, inner) = (1280, 768, 768, 768);
    let mut proj = vec![
        ("latents".to_string(), vec![1, 16, hidden]),
        ("proj_in.weight".into(), vec![hidden, embed]),
        ("proj_in.bias".into(), vec![hidden]),
        ("proj_out.weight".into(), vec![out, hidden]),
        ("proj_out.bias".into(), vec![out]),
        ("norm_out.weight".into(), vec![out]),
        ("norm_out.bias".into(), vec![out]),
    ];
    for n in 0..4 {
        for norm in ["0.norm1", "0.norm2", "1.0"] {
            proj.push((format!("layers.{n}.{norm}.weight"), vec![hidden]));
            proj.push((format!("layers.{n}.{norm}.bias"), vec![hidden]));
        }
        proj.push((format!("layers.{n}.0.to_q.weight"), vec![inner, hidden]));
        proj.push((
            format!("layers.{n}.0.to_kv.weight"),
            vec![2 * inner, hidden],
        ));
        proj.push((format!("layers.{n}.0.to_out.weight"), vec![hidden, inner]));
        proj.push((format!("layers.{n}.1.1.weight"), vec![4 * hidden, hidden]));
        proj.push((format!("layers.{n}.1.3.weight"), vec![hidden, 4 * hidden]));
    }
    proj
}

/// IP-Adapter-FaceID for SD1.5 (512-d face embedding, 4 tokens of 768).
fn faceid_projection() -> Vec<(String, Vec<usize>)> {
    vec![
        ("proj.0.weight".to_string(), vec![1024, 512]),
        ("proj.0.bias".into(), vec![1024]),
        ("proj.2.weight".into(), vec![4 * 768, 1024]),
        ("proj.2.bias".into(), vec![4 * 768]),
        ("norm.weight".into(), vec![768]),
        ("norm.bias".into(), vec![768]),
    ]
}

fn main() {
    let Some((args, runs)) = bench_args("face_adapter_shapes") else {
        return;
    };
    let wanted = |name: &str| wanted(&args, name);
    let device = Device::flex();
    let normal = Distribution::Normal(0.0, 1.0);
    let config: UNetConfig = serde_json::from_str(UNET).unwrap();
    let unet = config.init(&device).unwrap();
    let context = Tensor::<3>::random([2, 77, 768], normal, &device);
    let sample = Tensor::<4>::random([2, 4, 32, 32], normal, &device);
    let step = |injection: &AttentionInjection, residuals: Option<&ControlResiduals>| {
        let out = unet
            .forward_with(
                sample.clone(),
                &[500.0, 500.0],
                context.clone(),
                None,
                injection,
                residuals,
            )
            .unwrap();
        let _ = out.into_data();
    };
    if wanted("plain") {
        time("unet step b2 32x32", runs, || {
            step(&AttentionInjection::default(), None)
        });
    }
    // An adapter with random weights, its tokens from random features, prepared once.
    let adapter_step = |name: &str, proj, lora, features: [usize; 3]| {
        let file = adapter_file(&unet, proj, lora);
        let adapter = IpAdapter::load(&file, &unet, &device).unwrap();
        let _ = std::fs::remove_file(&file);
        let mut injection = AttentionInjection::default();
        let features = Tensor::<3>::random(features, normal, &device);
        adapter.inject(adapter.project(features), |_| 1.0, &mut injection);
        time(name, runs, || step(&injection, None));
    };
    if wanted("plus") {
        adapter_step("+ ip-adapter plus", plus_projection(), None, [2, 257, 1280]);
    }
    if wanted("faceid") {
        adapter_step(
            "+ ip-adapter faceid (lora)",
            faceid_projection(),
            Some(128),
            [2, 1, 512],
        );
    }
    if wanted("controlnet") {
        let mut value: serde_json::Value = serde_json::from_str(UNET).unwrap();
        value.as_object_mut().unwrap().remove("up_block_types");
        let config = ControlNetConfig::from_json(value, "controlnet").unwrap();
        let net = config.init(&device).unwrap();
        let cond = Tensor::<4>::random([2, 3, 256, 256], Distribution::Uniform(0.0, 1.0), &device);
        time("+ controlnet", runs, || {
            let residuals = net
                .forward(
                    sample.clone(),
                    &[500.0, 500.0],
                    context.clone(),
                    None,
                    cond.clone(),
                    1.0,
                )
                .unwrap();
            step(&AttentionInjection::default(), Some(&residuals));
        });
    }
}
