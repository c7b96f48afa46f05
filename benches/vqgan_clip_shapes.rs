//! VQGAN+CLIP at full size with random weights (no download needed): one optimisation iteration
//! (quantise, decode, 32 cutouts, CLIP ViT-B/32 on them, two-stage backward, Adam step) with
//! taming's `vqgan_imagenet_f16_16384` shapes at 64, 128, 256 and 512 px, each timed (median of
//! `--runs`) with the process's peak RSS. `benches/compare_vqgan_clip.py` runs the same iteration in
//! PyTorch (taming + open_clip); results go to `benches/RESULTS.md`.
//!
//! ```text
//! cargo bench -p avatar-core --bench vqgan_clip_shapes -- [64|128|256|512|augment|parts|clip|decoder ...] [--runs N]
//! ```
//! `parts` times CLIP (32 cutouts) and the 256 px decoder alone, forward and forward+backward
//! (`clip` or `decoder` one of them).
//! Augmentations are off in the sizes' rows (the PyTorch side has none); `augment` times 256 px
//! with our default augmentations on.

mod common;

use avatar_core::seed::NormalStream;
use avatar_core::seed::SplitMix64;
use avatar_core::vqgan_clip::cutouts::draw_cutouts;
use avatar_core::vqgan_clip::{
    Augmentations, LatentOptimizer, Objective, OpenClipConfig, Prompt, VqganClip, VqganConfig,
};
use burn::tensor::{Device, Distribution, Tensor};
use common::{bench_args, time, wanted};

fn main() {
    let Some((args, runs)) = bench_args("vqgan_clip_shapes") else {
        return;
    };
    let device = Device::flex();
    let vqgan = VqganConfig::imagenet_f16_16384().init(&device).unwrap();
    let clip = OpenClipConfig::vit_b_32().init(&device).unwrap();
    let engine = VqganClip::new(vqgan, clip, &device).unwrap();
    let objective = Objective {
        prompts: vec![Prompt {
            embeds: engine.embed_texts(&["a cartoon avatar of a red fox"]),
            weight: 1.0,
            stop: f32::NEG_INFINITY,
        }],
        init: None,
    };
    let cut = engine.clip().image_size();
    let ad = engine.device().clone();
    let parts = wanted(&args, "parts");
    if parts || wanted(&args, "clip") {
        // Where an iteration's time goes: CLIP on 32 cutouts, and the decoder at 256 px.
        let pixels = Tensor::<4>::random([32, 3, cut, cut], Distribution::Default, &ad);
        time("clip image fwd b32", runs, || {
            let _ = engine.embed_images(pixels.clone()).into_data();
        });
        time("clip image fwd+bwd b32", runs, || {
            let x = pixels.clone().require_grad();
            let grads = engine.embed_images(x.clone()).sum().backward();
            let _ = x.grad(&grads).unwrap().into_data();
        });
    }
    if parts || wanted(&args, "decoder") {
        let mut rng = SplitMix64::new(1);
        let z = engine.initial_latent(&mut rng, 256, 256, None);
        time("decoder fwd 256px", runs, || {
            let _ = engine.synthesize(z.clone()).into_data();
        });
        time("decoder fwd+bwd 256px", runs, || {
            let z = z.clone().require_grad();
            let grads = engine.synthesize(z.clone()).sum().backward();
            let _ = z.grad(&grads).unwrap().into_data();
        });
    }
    let cases = [
        (64, false),
        (128, false),
        (256, false),
        (512, false),
        (256, true),
    ];
    for (side, augment) in cases {
        let name = if augment {
            "augment".to_owned()
        } else {
            side.to_string()
        };
        if !wanted(&args, &name) {
            continue;
        }
        let mut rng = SplitMix64::new(1);
        let mut normal = NormalStream::new(2);
        let z = engine.initial_latent(&mut rng, side, side, None);
        let mut optimizer = LatentOptimizer::new(&engine, 0.1);
        let augmentations = if augment {
            Augmentations::default()
        } else {
            Augmentations::none()
        };
        let label = format!(
            "iteration {side}px cutn 32{}",
            if augment { " +aug" } else { "" }
        );
        time(&label, runs, || {
            let boxes = draw_cutouts(&mut rng, side, side, cut, 32, 1.0);
            let (parts, grad) = engine.loss_and_grad(z.clone(), &boxes, &objective, |b| {
                augmentations.apply(b, &mut rng, &mut normal)
            });
            let next = optimizer.step(z.clone(), grad);
            assert!(parts.total().is_finite());
            let _ = next.into_data();
        });
    }
}
