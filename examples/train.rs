//! Train a DCGAN on a folder of images, resumable, with samples and an export.
//!
//! ```text
//! cargo run --release --example train -- --data /work/data/lorelei/96 --size 96 --latent 100 \
//!     --run-dir runs/small --steps 20000
//! cargo run --release --example train -- --run-dir runs/small --resume --steps 40000
//! cargo run --release --example train -- --run-dir runs/small --resume --export weights/small.safetensors --steps 0
//! # the 128 px model, fine-tuned from the 96 px one (same widths)
//! cargo run --release --example train -- --data /work/data/lorelei/128 --size 128 --latent 128 \
//!     --warm-start avatar-core/weights/dcgan_small.safetensors --run-dir runs/large
//! ```

use std::path::PathBuf;
use std::time::Instant;

use avatar_core::burn::module::Module;
use avatar_core::dcgan::{GeneratorConfig, StoredDtype};
use avatar_core::train::{GanLoss, ImageDataset, TrainConfig, Trainer};
use avatar_core::{AvatarError, DeviceSpec};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(about = "Train a DCGAN avatar generator (resumable)")]
struct Args {
    /// Folder of PNG/JPEG/WebP images (searched recursively).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output resolution.
    #[arg(long, default_value_t = 96)]
    size: usize,
    /// Latent dimension.
    #[arg(long, default_value_t = 100)]
    latent: usize,
    /// Image channels: 4 = RGBA with a learned alpha, 3 = RGB.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Generator stage widths (transposed architecture), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [256, 128, 64, 32])]
    widths: Vec<usize>,
    /// Discriminator stage widths, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [32, 64, 128, 256])]
    d_widths: Vec<usize>,
    /// Spectrally normalised discriminator (SN-GAN) instead of batch norm (new runs only).
    #[arg(long)]
    spectral_norm: bool,
    /// Adversarial loss: bce (the seed's) or hinge (may change on resume).
    #[arg(long, default_value = "bce")]
    loss: GanLoss,
    /// Images per step (may change on resume).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Train until this many steps in total.
    #[arg(long, default_value_t = 10_000)]
    steps: u64,
    /// Stop after this many minutes (a checkpoint is written first).
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, default_value_t = 2e-4)]
    lr_g: f64,
    #[arg(long, default_value_t = 2e-4)]
    lr_d: f64,
    #[arg(long, default_value_t = 0.5)]
    beta1: f32,
    /// One-sided label smoothing for real images.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Initial instance-noise std (decays to 0 over --noise-steps).
    #[arg(long, default_value_t = 0.0)]
    instance_noise: f64,
    #[arg(long, default_value_t = 10_000)]
    noise_steps: u64,
    /// EMA decay of the generator weights (0 = off).
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    /// Do not mirror training images.
    #[arg(long)]
    no_flip: bool,
    /// Use at most this many images.
    #[arg(long)]
    max_images: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder: checkpoint/, samples/, log.
    #[arg(long, default_value = "runs/dcgan")]
    run_dir: PathBuf,
    /// Continue from run_dir/checkpoint.
    #[arg(long)]
    resume: bool,
    /// New runs: start the generator from these exported weights (same widths and channels),
    /// grown to --size and --latent; the discriminator starts fresh.
    #[arg(long, conflicts_with = "resume")]
    warm_start: Option<PathBuf>,
    #[arg(long, default_value_t = 500)]
    sample_every: u64,
    #[arg(long, default_value_t = 250)]
    checkpoint_every: u64,
    /// Export the (EMA) generator here at the end (safetensors + .json beside it).
    #[arg(long)]
    export: Option<PathBuf>,
    /// Stored dtype of the export: f16, bf16 or f32.
    #[arg(long, default_value = "f16")]
    export_dtype: String,
    /// Device: cpu, wgpu, cuda[:N], auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), AvatarError> {
    let device = args.device.parse::<DeviceSpec>()?.device()?;
    let checkpoint = args.run_dir.join("checkpoint");
    let mut trainer = if args.resume {
        Trainer::resume(&checkpoint, &device, |c| {
            c.batch_size = args.batch;
            c.lr_generator = args.lr_g;
            c.lr_discriminator = args.lr_d;
            c.label_smoothing = args.label_smoothing;
            c.instance_noise = args.instance_noise;
            c.instance_noise_steps = args.noise_steps;
            c.loss = args.loss;
        })?
    } else {
        let generator = GeneratorConfig::transposed(
            args.latent,
            args.size,
            args.channels,
            args.widths.clone(),
        )?;
        let mut config = TrainConfig::dcgan(generator, args.d_widths.clone())
            .with_loss(args.loss)
            .with_batch_size(args.batch)
            .with_lr_generator(args.lr_g)
            .with_lr_discriminator(args.lr_d)
            .with_beta1(args.beta1)
            .with_label_smoothing(args.label_smoothing)
            .with_instance_noise(args.instance_noise)
            .with_instance_noise_steps(args.noise_steps)
            .with_flip(!args.no_flip)
            .with_seed(args.seed);
        config.ema_decay = (args.ema > 0.0).then_some(args.ema);
        config.discriminator.spectral_norm = args.spectral_norm;
        let mut trainer = Trainer::new(config, &device)?;
        if let Some(weights) = &args.warm_start {
            trainer.warm_start(weights)?;
        }
        trainer
    };
    let config = trainer.config().clone();
    std::fs::create_dir_all(args.run_dir.join("samples"))
        .map_err(|e| AvatarError::io(&args.run_dir, e))?;
    eprintln!(
        "model: {} px, latent {}, {} channels, G widths {:?} ({} params), D widths {:?} ({} params); step {}",
        config.generator.resolution,
        config.generator.latent_dim,
        config.generator.channels,
        config.generator.widths,
        trainer.generator().num_params(),
        config.discriminator.widths,
        trainer.discriminator().num_params(),
        trainer.step_count(),
    );

    if trainer.step_count() < args.steps {
        let data_dir = args
            .data
            .as_ref()
            .ok_or_else(|| AvatarError::invalid("data", "--data is required to train"))?;
        let loading = Instant::now();
        let data = ImageDataset::load(
            data_dir,
            config.generator.resolution,
            config.generator.channels,
            args.max_images,
        )?;
        eprintln!(
            "loaded {} images in {:.1}s",
            data.len(),
            loading.elapsed().as_secs_f64()
        );
        let bar = ProgressBar::new(args.steps);
        bar.set_position(trainer.step_count());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {per_sec} eta {eta} | {msg}")
                .expect("template")
                .progress_chars("=> "),
        );
        let started = Instant::now();
        let first_step = trainer.step_count();
        let deadline = args
            .minutes
            .map(|m| std::time::Duration::from_secs_f64(m * 60.0));
        while trainer.step_count() < args.steps {
            let stats = trainer.step(&data)?;
            let done = stats.step - first_step;
            let rate = (done * config.batch_size as u64) as f64 / started.elapsed().as_secs_f64();
            let msg = format!(
                "D {:.3} G {:.3} D(x) {:.2} D(G(z)) {:.2} | {:.1} img/s",
                stats.loss_discriminator, stats.loss_generator, stats.d_real, stats.d_fake, rate
            );
            bar.set_position(stats.step);
            bar.set_message(msg.clone());
            if bar.is_hidden() && stats.step % 25 == 0 {
                eprintln!("step {} | {msg}", stats.step);
            }
            let out_of_time = deadline.is_some_and(|d| started.elapsed() >= d);
            if stats.step % args.checkpoint_every == 0 || stats.step == args.steps || out_of_time {
                trainer.save_checkpoint(&checkpoint)?;
            }
            if stats.step % args.sample_every == 0 || stats.step == args.steps || out_of_time {
                let grid = trainer.sample_grid(8)?;
                for name in [
                    format!("step_{:07}.png", stats.step),
                    "latest.png".to_string(),
                ] {
                    let path = args.run_dir.join("samples").join(name);
                    grid.save(&path)
                        .map_err(|e| AvatarError::Image(format!("{}: {e}", path.display())))?;
                }
            }
            if out_of_time {
                eprintln!("time limit reached at step {}", stats.step);
                break;
            }
        }
        bar.finish();
        eprintln!(
            "trained {} steps ({} images) in {:.1} min this run; {:.1} min in total",
            trainer.step_count() - first_step,
            (trainer.step_count() - first_step) * config.batch_size as u64,
            started.elapsed().as_secs_f64() / 60.0,
            trainer.train_seconds() / 60.0
        );
    }
    if let Some(path) = &args.export {
        trainer.export(path, args.export_dtype.parse::<StoredDtype>()?)?;
        eprintln!("exported {}", path.display());
    }
    Ok(())
}
