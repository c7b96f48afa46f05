//! Writes random-weight DCGAN generators of the seed service's Keras architecture
//! (Dense -> 4x4 -> 4 x [UpSampling2D -> Conv2D 3x3 -> BN -> ReLU] -> Conv2D -> tanh, filters
//! 256/256/128/128) as `dcgan_small.safetensors` and `dcgan_large.safetensors`, so the server can
//! be benchmarked against the FastAPI + Keras reference on the very same architecture:
//!
//! ```text
//! cargo run --release -p avatar-http --example seed_arch_weights -- target/seed-arch-weights
//! cargo run --release -p avatar-http -- --weights-dir target/seed-arch-weights
//! ```

use std::path::PathBuf;

use avatar_core::dcgan::{GeneratorConfig, StoredDtype, save_generator};
use avatar_core::{AvatarError, DeviceSpec, ModelSize};

fn main() -> Result<(), AvatarError> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/seed-arch-weights".into()),
    );
    let device = DeviceSpec::Cpu.device()?;
    for size in ModelSize::ALL {
        let config = GeneratorConfig::keras_seed(size.resolution() as usize)?;
        let generator = config.init(&device)?;
        let path = dir.join(avatar_core::embedded::file_name(size));
        save_generator(&generator, &config, &path, StoredDtype::F32)?;
        println!("{}", path.display());
    }
    Ok(())
}
