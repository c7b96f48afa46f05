//! Draw one avatar with the embedded (or a given) DCGAN and print the timing.
//!
//! ```text
//! cargo run --release --example generate -- --size small --seed alice --transparent -o alice.png
//! ```

use std::path::PathBuf;
use std::time::Instant;

use avatar_core::imaging::{Color, ImageFormat};
use avatar_core::{
    AvatarError, AvatarGenerator, DeviceSpec, GenerateOptions, ModelSize, WeightsSource,
};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Generate a cartoon avatar")]
struct Args {
    /// small (96 px) or large (128 px).
    #[arg(long, default_value = "small")]
    size: String,
    /// Load these weights instead of the embedded ones (model.safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Any text or number; the same seed gives the same avatar.
    #[arg(long)]
    seed: Option<String>,
    /// Keep the background transparent.
    #[arg(long)]
    transparent: bool,
    /// Background colour #RRGGBB[AA] (default white).
    #[arg(long)]
    bg_color: Option<String>,
    /// Output side in pixels.
    #[arg(long)]
    output_size: Option<u32>,
    /// png, webp or jpeg (default: from the file extension).
    #[arg(long)]
    format: Option<String>,
    /// cpu, wgpu, cuda[:N], auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output file.
    #[arg(short, long, default_value = "avatar.png")]
    output: PathBuf,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), AvatarError> {
    let spec: DeviceSpec = args.device.parse()?;
    let source = match args.weights {
        Some(path) => WeightsSource::Path(path),
        None => WeightsSource::Embedded(args.size.parse::<ModelSize>()?),
    };
    let loading = Instant::now();
    let generator = AvatarGenerator::load(source, &spec)?;
    let load_ms = loading.elapsed().as_secs_f64() * 1e3;
    let format = match &args.format {
        Some(f) => f.parse()?,
        None => args
            .output
            .extension()
            .and_then(|e| e.to_str())
            .map(str::parse)
            .transpose()?
            .unwrap_or(ImageFormat::Png),
    };
    let options = GenerateOptions {
        seed: args.seed.map(Into::into),
        transparent: args.transparent,
        bg_color: args
            .bg_color
            .as_deref()
            .map(str::parse::<Color>)
            .transpose()?,
        output_size: args.output_size,
        format,
    };
    let started = Instant::now();
    let avatar = generator.generate_encoded(&options)?;
    let gen_ms = started.elapsed().as_secs_f64() * 1e3;
    std::fs::write(&args.output, &avatar.bytes).map_err(|e| AvatarError::io(&args.output, e))?;
    println!(
        "{}: seed {}, {} px on {}, load {load_ms:.1} ms, generate+encode {gen_ms:.1} ms",
        args.output.display(),
        avatar.seed,
        options.output_size.unwrap_or(generator.resolution()),
        spec
    );
    Ok(())
}
