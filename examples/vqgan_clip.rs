//! VQGAN+CLIP: an image optimised from text (and image) prompts, writing intermediate frames.
//!
//! ```text
//! cargo run --release --example vqgan_clip -- \
//!     --vqgan-config vqgan_imagenet_f16_16384.yaml --vqgan vqgan_imagenet_f16_16384.ckpt \
//!     --clip open_clip_pytorch_model.bin \
//!     --prompt "a cartoon avatar of a red fox|blurry:-0.5" --size 256 --iterations 200 \
//!     --init face.png --init-weight 0.5 --out-dir frames
//! ```
//!
//! No weights are downloaded: pass taming's yaml + checkpoint and a CLIP state dict (OpenAI's
//! ViT-B/32 by default; `--clip-config` takes open_clip's model json for others). The tiny test
//! models in `avatar-core/tests/fixtures/vqgan_clip` run it in seconds:
//!
//! ```text
//! cargo run --release --example vqgan_clip -- --vqgan-config avatar-core/tests/fixtures/vqgan_clip/vqgan.yaml \
//!     --vqgan avatar-core/tests/fixtures/vqgan_clip/vqgan.ckpt \
//!     --clip avatar-core/tests/fixtures/vqgan_clip/clip.safetensors \
//!     --clip-config avatar-core/tests/fixtures/vqgan_clip/clip_config.json \
//!     --prompt "a cartoon avatar" --size 64 --iterations 20 --display-every 5
//! ```

use std::path::PathBuf;
use std::time::Instant;

use avatar_core::vqgan_clip::{
    Augmentations, OpenClipConfig, PromptSpec, RunObserver, RunOptions, VqganClip,
};
use avatar_core::{AvatarError, DeviceSpec, Seed};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(about = "VQGAN+CLIP on burn: text (+ image) -> image by optimisation")]
struct Args {
    /// taming's model yaml (e.g. vqgan_imagenet_f16_16384.yaml).
    #[arg(long)]
    vqgan_config: PathBuf,
    /// taming's checkpoint (.ckpt) or a safetensors conversion.
    #[arg(long)]
    vqgan: PathBuf,
    /// CLIP weights (open_clip / OpenAI state dict: .bin, .pt, .safetensors).
    #[arg(long)]
    clip: PathBuf,
    /// open_clip's model json (default: OpenAI's ViT-B/32 with QuickGELU).
    #[arg(long)]
    clip_config: Option<PathBuf>,
    /// Prompts `text:weight:stop`, separated by `|`.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Image prompts `path:weight:stop` (repeatable).
    #[arg(long)]
    image_prompt: Vec<String>,
    /// Start from this image.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Pull towards the initial latent.
    #[arg(long, default_value_t = 0.0)]
    init_weight: f32,
    /// Side, or `WIDTHxHEIGHT`, in pixels (multiples of 16).
    #[arg(long, default_value = "256")]
    size: String,
    /// Adam steps.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.1)]
    step_size: f64,
    /// Cutouts per step.
    #[arg(long, default_value_t = 32)]
    cutn: usize,
    /// Cutout size exponent.
    #[arg(long, default_value_t = 1.0)]
    cut_pow: f64,
    /// Turn the cutout augmentations off.
    #[arg(long)]
    no_augment: bool,
    /// Any text or number.
    #[arg(long)]
    seed: Option<String>,
    /// Write a frame every this many iterations.
    #[arg(long, default_value_t = 10)]
    display_every: usize,
    /// cpu, wgpu, cuda[:N], auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Folder for the frames and `final.png`.
    #[arg(long, default_value = "vqgan_clip_frames")]
    out_dir: PathBuf,
}

fn open_image(path: &str) -> Result<image::RgbaImage, AvatarError> {
    Ok(image::open(path)
        .map_err(|e| AvatarError::Image(format!("{path}: {e}")))?
        .to_rgba8())
}

fn parse_size(size: &str) -> Result<(usize, usize), AvatarError> {
    let bad = || AvatarError::invalid("size", format!("{size:?} is not N or WIDTHxHEIGHT"));
    match size.split_once(['x', 'X']) {
        Some((w, h)) => Ok((
            w.trim().parse().map_err(|_| bad())?,
            h.trim().parse().map_err(|_| bad())?,
        )),
        None => {
            let n = size.trim().parse().map_err(|_| bad())?;
            Ok((n, n))
        }
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), AvatarError> {
    let device = args.device.parse::<DeviceSpec>()?.device()?;
    let clip_config = match &args.clip_config {
        Some(path) => OpenClipConfig::from_json_file(path)?,
        None => OpenClipConfig::vit_b_32(),
    };
    let started = Instant::now();
    let engine = VqganClip::load(
        &args.vqgan_config,
        &args.vqgan,
        &clip_config,
        &args.clip,
        &device,
    )?;
    eprintln!(
        "loaded VQGAN + CLIP in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut image_prompts = Vec::new();
    for spec in &args.image_prompt {
        let spec = PromptSpec::parse(spec)?;
        image_prompts.push((open_image(&spec.text)?, spec));
    }
    let (width, height) = parse_size(&args.size)?;
    let seed = args.seed.map(Seed::from).unwrap_or_else(Seed::random);
    let options = RunOptions {
        prompts: PromptSpec::parse_list(&args.prompt)?,
        image_prompts,
        init_image: args
            .init
            .as_ref()
            .map(|p| open_image(&p.to_string_lossy()))
            .transpose()?,
        init_weight: args.init_weight,
        width,
        height,
        iterations: args.iterations,
        step_size: args.step_size,
        cutn: args.cutn,
        cut_pow: args.cut_pow,
        augmentations: if args.no_augment {
            Augmentations::none()
        } else {
            Augmentations::default()
        },
        seed: Some(seed.clone()),
        display_every: args.display_every,
    };
    std::fs::create_dir_all(&args.out_dir).map_err(|e| AvatarError::io(&args.out_dir, e))?;
    let bar = ProgressBar::new(args.iterations as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} it {elapsed} (eta {eta}) {msg}")
            .expect("valid template"),
    );
    let mut write_error = None;
    let result = engine.run(&options, &RunObserver::new(), |p| {
        bar.set_position(p.iteration as u64);
        bar.set_message(format!("loss {:.4}", p.loss));
        if let Some(image) = &p.image {
            let path = args.out_dir.join(format!("frame_{:05}.png", p.iteration));
            if let Err(e) = image.save(&path) {
                write_error = Some(AvatarError::Image(format!("{}: {e}", path.display())));
                return false;
            }
        }
        true
    });
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e);
    }
    let image = result?;
    let path = args.out_dir.join("final.png");
    image
        .save(&path)
        .map_err(|e| AvatarError::Image(format!("{}: {e}", path.display())))?;
    eprintln!(
        "{}x{} in {:.1}s (seed {seed}) -> {}",
        image.width(),
        image.height(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}
