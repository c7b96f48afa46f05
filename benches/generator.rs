//! Generator forward pass on the CPU (flex): batch 1 and 64 at 96 and 128 px, for the seed's
//! Keras architecture (random weights: speed does not depend on them) and our shipped models
//! (raw forward, and PNG-encoded avatars).
//!
//! `cargo bench -p avatar-core --bench generator`
//!
//! `AVATAR_BENCH_GENERATORS=a.safetensors,b.safetensors` adds more `transposed` models to the
//! raw-forward group (`benches/compare_inference.py` times the same files in PyTorch).

use std::path::{Path, PathBuf};

use avatar_core::dcgan::GeneratorConfig;
use avatar_core::{AvatarGenerator, DeviceSpec, GenerateOptions, ModelSize, Seed};
use burn::tensor::{Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// A forward pass's output read back to the host (so the work is done, not just queued).
fn read_back(output: Tensor<4>) -> Vec<f32> {
    output
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 output")
}

fn keras_architecture(c: &mut Criterion) {
    // The CPU device of every front end (`DeviceSpec::Cpu`, which also tunes the heap).
    let device = DeviceSpec::Cpu.device().expect("cpu");
    let mut group = c.benchmark_group("keras_seed_generator");
    group.sample_size(20);
    for resolution in [96, 128] {
        let config = GeneratorConfig::keras_seed(resolution).expect("config");
        // Batch norms folded once, as `AvatarGenerator` does at load time.
        let generator =
            burn::module::Module::valid(&config.init(&device).expect("init")).for_inference();
        for batch in [1usize, 64] {
            let latents = Tensor::<2>::random(
                [batch, config.latent_dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{resolution}px"), batch),
                &batch,
                |b, _| b.iter(|| read_back(generator.forward(latents.clone()))),
            );
        }
    }
    group.finish();
}

fn transposed_models(c: &mut Criterion) {
    let mut models: Vec<(String, AvatarGenerator)> = ModelSize::ALL
        .iter()
        .filter_map(|&size| {
            let generator = AvatarGenerator::load(size, &DeviceSpec::Cpu).ok()?;
            Some((size.as_str().to_string(), generator))
        })
        .collect();
    let extra = std::env::var("AVATAR_BENCH_GENERATORS").unwrap_or_default();
    for path in extra.split(',').filter(|p| !p.is_empty()) {
        let name = Path::new(path)
            .file_stem()
            .map_or(path.into(), |s| s.to_string_lossy().into_owned());
        let generator = AvatarGenerator::load(PathBuf::from(path), &DeviceSpec::Cpu)
            .expect("generator weights");
        models.push((name, generator));
    }
    let device = DeviceSpec::Cpu.device().expect("cpu");
    let mut group = c.benchmark_group("transposed_generator_forward");
    group.sample_size(20);
    for (name, generator) in &models {
        for batch in [1usize, 64] {
            let latents = Tensor::<2>::random(
                [batch, generator.config().latent_dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, _| {
                b.iter(|| read_back(generator.forward(latents.clone())))
            });
        }
    }
    group.finish();
}

fn shipped_models(c: &mut Criterion) {
    let mut group = c.benchmark_group("shipped_avatar_png");
    group.sample_size(20);
    for size in ModelSize::ALL {
        let Ok(generator) = AvatarGenerator::load(size, &DeviceSpec::Cpu) else {
            eprintln!("skipping {}: no embedded weights", size.as_str());
            continue;
        };
        group.bench_function(format!("{}_png", size.as_str()), |b| {
            let mut n = 0u64;
            b.iter(|| {
                n += 1;
                generator
                    .generate_encoded(&GenerateOptions {
                        seed: Some(Seed::Number(n)),
                        ..Default::default()
                    })
                    .expect("generate")
            })
        });
        let seeds: Vec<Seed> = (0..64u64).map(Seed::Number).collect();
        group.bench_function(format!("{}_batch64_images", size.as_str()), |b| {
            b.iter(|| {
                generator
                    .generate_batch(&seeds, &GenerateOptions::default())
                    .expect("batch")
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    keras_architecture,
    transposed_models,
    shipped_models
);
criterion_main!(benches);
