//! Standing statistics: batch-norm running statistics re-estimated from the generator's own
//! activations (Brock et al. 2019, "BigGAN", section 3.1 / appendix C).
//!
//! A trained generator's running statistics are an exponential average over the last few
//! training batches of a generator that kept changing; an EMA generator's are worse, an
//! average of those averages that no set of weights ever produced. Both are replaced here by the
//! population mean and variance of each batch norm's input over many latents, block by block,
//! the blocks before already normalised with their new statistics, so that inference (which
//! normalises with running statistics) sees exactly the distribution it normalises.

use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData};

use super::generator::Generator;
use super::transposed::TransposedGenerator;
use crate::error::{AvatarError, Result};
use crate::gemm_conv::conv_transpose2d_layer;
use crate::host::f32_values;
use crate::seed::NormalStream;

/// Latents per batch while estimating (memory stays that of one generator forward pass).
const BATCH: usize = 256;

/// Latents the trainer draws for the exported generator's standing statistics.
pub const STANDING_STATISTICS_SAMPLES: usize = 8192;

/// Mean and sum of squared deviations per channel, merged batch by batch (Chan et al.'s update,
/// in f64: no cancellation from `E[x^2] - E[x]^2`).
struct Moments {
    count: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Moments {
    fn new(channels: usize) -> Self {
        Moments {
            count: 0.0,
            mean: vec![0.0; channels],
            m2: vec![0.0; channels],
        }
    }

    /// Adds the values of `x` (`[N, C, H, W]`) per channel.
    fn add(&mut self, x: Tensor<4>) -> Result<()> {
        let [n, c, h, w] = x.dims();
        let per_channel = x.swap_dims(0, 1).reshape([c, n * h * w]);
        let mean = per_channel.clone().mean_dim(1);
        let m2 = (per_channel - mean.clone()).square().sum_dim(1);
        let (mean, m2) = (f32_values(mean)?, f32_values(m2)?);
        let k = (n * h * w) as f64;
        let total = self.count + k;
        for ch in 0..c {
            let delta = mean[ch] as f64 - self.mean[ch];
            self.mean[ch] += delta * k / total;
            self.m2[ch] += m2[ch] as f64 + delta * delta * self.count * k / total;
        }
        self.count = total;
        Ok(())
    }

    /// The population mean and (biased) variance, as tensors on `device`.
    fn into_tensors(self, device: &burn::tensor::Device) -> (Tensor<1>, Tensor<1>) {
        let c = self.mean.len();
        let mean: Vec<f32> = self.mean.iter().map(|&m| m as f32).collect();
        let var: Vec<f32> = self
            .m2
            .iter()
            .map(|&m2| (m2 / self.count.max(1.0)) as f32)
            .collect();
        (
            Tensor::from_data(TensorData::new(mean, [c]), device),
            Tensor::from_data(TensorData::new(var, [c]), device),
        )
    }
}

impl TransposedGenerator {
    /// The same generator with every batch norm's running statistics set to the population
    /// statistics of its input over `latents` (each `[N, latent_dim]`), block by block.
    ///
    /// With one batch of latents, inference then reproduces a training-mode (batch-statistics)
    /// forward pass on that batch. Runs on the generator's device without autodiff.
    pub fn with_standing_statistics_from(self, latents: &[Tensor<2>]) -> Result<Self> {
        let generator = self.valid();
        // Each block's input is recomputed from the latents rather than kept: holding every
        // latent's activations at 48 px would take gigabytes.
        for i in 0..generator.blocks.len() {
            let channels = generator.blocks[i].norm.gamma.dims()[0];
            let mut moments = Moments::new(channels);
            for z in latents {
                let [n, d] = z.dims();
                let mut x = z.clone().without_autodiff().reshape([n, d, 1, 1]);
                for block in &generator.blocks[..i] {
                    x = relu(block.norm.forward(conv_transpose2d_layer(x, &block.conv)));
                }
                moments.add(conv_transpose2d_layer(x, &generator.blocks[i].conv))?;
            }
            if moments.count == 0.0 {
                return Err(AvatarError::invalid(
                    "standing statistics",
                    "no latents to estimate from",
                ));
            }
            let norm = &generator.blocks[i].norm;
            let (mean, var) = moments.into_tensors(&norm.gamma.val().device());
            // `update` records the value for this thread; `value_sync` makes it the value that
            // inference reads. The states keep their ids (records and checkpoints unchanged).
            norm.running_mean.update(mean);
            norm.running_var.update(var);
            norm.running_mean.value_sync();
            norm.running_var.value_sync();
        }
        Ok(generator)
    }
}

impl Generator {
    /// The same generator with standing batch-norm statistics estimated from `samples` latents
    /// drawn from our normal stream at `seed` (see the module docs of
    /// [`with_standing_statistics_from`](TransposedGenerator::with_standing_statistics_from)).
    ///
    /// Only our trained `transposed` generators: the seed's `keras-upsample` models keep the
    /// statistics they were imported with (an [`AvatarError::InvalidOption`] says so).
    ///
    /// ```
    /// use avatar_core::dcgan::GeneratorConfig;
    /// let device = burn::tensor::Device::flex();
    /// let config = GeneratorConfig::transposed(16, 32, 4, vec![8, 4])?;
    /// let generator = config.init(&device)?.with_standing_statistics(64, 0)?;
    /// # Ok::<(), avatar_core::AvatarError>(())
    /// ```
    pub fn with_standing_statistics(self, samples: usize, seed: u64) -> Result<Self> {
        let Generator::Transposed(generator) = self else {
            return Err(AvatarError::invalid(
                "architecture",
                "standing statistics are for trained transposed generators; \
                 keras-upsample models keep their imported statistics",
            ));
        };
        if samples == 0 {
            return Err(AvatarError::invalid(
                "standing statistics",
                "need at least one latent",
            ));
        }
        let latent_dim = generator.blocks[0].conv.weight.dims()[0];
        let device = generator.output.weight.val().device().without_autodiff();
        let mut stream = NormalStream::new(seed);
        let latents: Vec<Tensor<2>> = (0..samples)
            .step_by(BATCH)
            .map(|start| {
                let n = BATCH.min(samples - start);
                stream.tensor([n, latent_dim], &device)
            })
            .collect();
        Ok(Generator::Transposed(
            generator.with_standing_statistics_from(&latents)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::dcgan::{GeneratorConfig, InferenceGenerator};

    fn latents(n: usize, dim: usize, seed: u64, device: &Device) -> Tensor<2> {
        NormalStream::new(seed).tensor([n, dim], device)
    }

    fn transposed(generator: Generator) -> TransposedGenerator {
        match generator {
            Generator::Transposed(g) => g,
            Generator::KerasUpsample(_) => unreachable!(),
        }
    }

    fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn one_batch_reproduces_the_training_mode_forward_pass() {
        let device = Device::flex();
        let config = GeneratorConfig::transposed(8, 16, 4, vec![12, 6]).unwrap();
        let generator = transposed(config.init(&device.clone().autodiff()).unwrap());
        let z = latents(10, 8, 3, &device);
        // Training mode normalises with the batch's own statistics.
        let train = generator.forward(z.clone().autodiff()).without_autodiff();
        // The fresh running statistics (mean 0, variance 1) do not.
        let stale = generator.valid().forward(z.clone());
        assert!(max_abs_diff(train.clone(), stale) > 1e-2);
        let standing = generator
            .with_standing_statistics_from(std::slice::from_ref(&z))
            .unwrap();
        let eval = standing.forward(z.clone());
        let diff = max_abs_diff(train.clone(), eval);
        assert!(diff < 1e-5, "{diff}");
        // The folded inference path reads the same statistics.
        let folded = InferenceGenerator::from(&standing).forward(z);
        let diff = max_abs_diff(train, folded);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn batches_merge_into_the_population_statistics() {
        let device = Device::flex();
        let config = GeneratorConfig::transposed(8, 16, 4, vec![12, 6]).unwrap();
        let generator = transposed(config.init(&device).unwrap());
        let (a, b) = (latents(7, 8, 1, &device), latents(5, 8, 2, &device));
        let whole = generator
            .clone()
            .with_standing_statistics_from(&[Tensor::cat(vec![a.clone(), b.clone()], 0)])
            .unwrap();
        let split = generator
            .clone()
            .with_standing_statistics_from(&[a, b])
            .unwrap();
        let stats = |g: &TransposedGenerator| -> Vec<f32> {
            g.blocks
                .iter()
                .flat_map(|b| {
                    let mut v = b
                        .norm
                        .running_mean
                        .value()
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap();
                    v.extend(
                        b.norm
                            .running_var
                            .value()
                            .into_data()
                            .try_to_vec::<f32>()
                            .unwrap(),
                    );
                    v
                })
                .collect()
        };
        let (whole, split, before) = (stats(&whole), stats(&split), stats(&generator));
        for (x, y) in whole.iter().zip(&split) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
        }
        // Fresh batch norms hold mean 0 and variance 1: the estimate replaced them.
        assert_ne!(whole, before);
    }

    #[test]
    fn seeded_estimates_are_reproducible_and_bad_requests_are_errors() {
        let device = Device::flex();
        let config = GeneratorConfig::transposed(8, 16, 4, vec![12, 6]).unwrap();
        let generator = config.init(&device).unwrap();
        let z = latents(4, 8, 9, &device);
        let a = generator.clone().with_standing_statistics(300, 5).unwrap();
        let b = generator.clone().with_standing_statistics(300, 5).unwrap();
        assert_eq!(max_abs_diff(a.forward(z.clone()), b.forward(z)), 0.0);

        let err = generator.with_standing_statistics(0, 5).unwrap_err();
        assert!(err.to_string().contains("standing statistics"), "{err}");
        let keras = GeneratorConfig::keras_seed(96)
            .unwrap()
            .init(&device)
            .unwrap();
        let err = keras.with_standing_statistics(16, 0).unwrap_err();
        assert!(err.to_string().contains("keras-upsample"), "{err}");
    }
}
