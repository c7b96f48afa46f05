//! Text to image (and image to image) with a local Stable Diffusion 1.5 or SDXL diffusers folder.
//!
//! ```text
//! cargo run --release --example txt2img -- --model DIR --prompt "a cartoon avatar" \
//!     --negative "blurry" --steps 25 --scheduler dpmpp_2m_karras --seed 42 -o out.png
//! cargo run --release --example txt2img -- --model DIR --prompt "..." --image in.png --strength 0.6
//! ```
//!
//! No weights are downloaded: `--model` is a folder with `model_index.json`, `unet/`, `vae/`,
//! `text_encoder(_2)/`, `tokenizer(_2)/` and `scheduler/` (e.g. the tiny test pipelines in
//! `avatar-core/tests/fixtures/diffusion/sd15_tiny`).

use std::path::PathBuf;
use std::time::Instant;

use avatar_core::diffusion::pipeline::{StableDiffusion, TextToImageOptions};
use avatar_core::{AvatarError, DeviceSpec, Seed};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(about = "Stable Diffusion text-to-image / image-to-image on burn")]
struct Args {
    /// A diffusers pipeline folder.
    #[arg(long)]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// The negative prompt.
    #[arg(long, default_value = "")]
    negative: String,
    /// Denoising steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm (default: the folder's, else euler).
    #[arg(long)]
    scheduler: Option<String>,
    /// Width in pixels (multiple of 8).
    #[arg(long)]
    width: Option<u32>,
    /// Height in pixels (multiple of 8).
    #[arg(long)]
    height: Option<u32>,
    /// Images to draw.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Any text or number.
    #[arg(long)]
    seed: Option<String>,
    /// Start from this image (image to image).
    #[arg(long)]
    image: Option<PathBuf>,
    /// How much of `--image` to replace (0..1).
    #[arg(long, default_value_t = 0.75)]
    strength: f64,
    /// cpu, wgpu, cuda[:N], auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute precision: fp32, fp16 (GPUs; halves memory on the CPU) or bf16.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Output file (`-N` is inserted before the extension for several samples).
    #[arg(short, long, default_value = "txt2img.png")]
    output: PathBuf,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), AvatarError> {
    let device = args.device.parse::<DeviceSpec>()?.device()?;
    let started = Instant::now();
    let mut pipeline = StableDiffusion::load(&args.model, &device)?;
    pipeline.set_precision(args.precision.parse()?)?;
    eprintln!(
        "loaded {} pipeline in {:.1}s",
        if pipeline.is_xl() { "SDXL" } else { "SD" },
        started.elapsed().as_secs_f64()
    );
    let options = TextToImageOptions {
        prompt: args.prompt,
        negative_prompt: args.negative,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        width: args.width,
        height: args.height,
        num_images: args.samples,
        seed: Some(args.seed.map(Seed::from).unwrap_or_else(Seed::random)),
        scheduler: args.scheduler,
        ..Default::default()
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed} (eta {eta})")
            .expect("valid template"),
    );
    let progress = |p: avatar_core::Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        true
    };
    let started = Instant::now();
    let images = match &args.image {
        Some(path) => {
            let input = image::open(path)
                .map_err(|e| AvatarError::Image(format!("{}: {e}", path.display())))?
                .to_rgba8();
            pipeline.image_to_image(&input, args.strength, &options, progress)?
        }
        None => pipeline.text_to_image(&options, progress)?,
    };
    bar.finish_and_clear();
    eprintln!(
        "{} image(s) in {:.1}s (seed {})",
        images.len(),
        started.elapsed().as_secs_f64(),
        options.seed.as_ref().expect("set above")
    );
    for (i, image) in images.iter().enumerate() {
        let path = if images.len() == 1 {
            args.output.clone()
        } else {
            let stem = args
                .output
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("out");
            let ext = args
                .output
                .extension()
                .and_then(|s| s.to_str())
                .unwrap_or("png");
            args.output.with_file_name(format!("{stem}-{i}.{ext}"))
        };
        image
            .save(&path)
            .map_err(|e| AvatarError::Image(format!("{}: {e}", path.display())))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
