//! Convert the seed's Keras generator (`face_generator_96.h5`, `.weights.h5`, ...) to our
//! safetensors format (+ `.json` config beside it).
//!
//! ```text
//! cargo run --release --example convert_keras -- face_generator_96.h5 -o weights/keras96.safetensors
//! ```

use std::path::PathBuf;

use avatar_core::dcgan::{StoredDtype, load_keras_generator, save_generator};
use avatar_core::{AvatarError, burn::tensor::Device};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Convert a Keras DCGAN generator (.h5) to safetensors")]
struct Args {
    /// The Keras file.
    input: PathBuf,
    /// The safetensors file to write (a .json config is written beside it).
    #[arg(short, long)]
    output: PathBuf,
    /// Output resolution (only needed for .weights.h5 files).
    #[arg(long)]
    resolution: Option<usize>,
    /// Stored dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn main() {
    let args = Args::parse();
    let result = (|| -> Result<(), AvatarError> {
        let (config, generator) =
            load_keras_generator(&args.input, args.resolution, &Device::flex())?;
        save_generator(
            &generator,
            &config,
            &args.output,
            args.dtype.parse::<StoredDtype>()?,
        )?;
        println!(
            "{} -> {} ({} px, latent {}, widths {:?})",
            args.input.display(),
            args.output.display(),
            config.resolution,
            config.latent_dim,
            config.widths
        );
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
