use std::path::Path;
use std::time::Instant;

use burn::config::Config;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::{relu, sigmoid, softplus};
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbaImage;

use super::checkpoint::TrainState;
use super::dataset::ImageDataset;
use super::ema::ema_update;
use super::init::redraw_random_init;
use crate::avatar::AvatarGenerator;
use crate::dcgan::{
    Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, STANDING_STATISTICS_SAMPLES,
    StoredDtype, grow_generator, load_generator, save_generator,
};
use crate::device::DeviceSpec;
use crate::error::{AvatarError, Result};
use crate::imaging::{Color, composite_over};
use crate::seed::{NormalStream, Seed, SplitMix64};

/// Latents behind the standing statistics of the sample grids drawn during training.
const GRID_STANDING_STATISTICS_SAMPLES: usize = 1024;

/// Seed of the latents behind standing statistics (fixed: an export is a function of the run).
const STANDING_STATISTICS_SEED: u64 = 0x5354_414E_4449_4E47;

/// Everything that defines a training run (saved in its checkpoints).
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// The generator to train.
    pub generator: GeneratorConfig,
    /// The discriminator.
    pub discriminator: DiscriminatorConfig,
    /// Images per step.
    #[config(default = 64)]
    pub batch_size: usize,
    /// Generator learning rate.
    #[config(default = 2e-4)]
    pub lr_generator: f64,
    /// Discriminator learning rate.
    #[config(default = 2e-4)]
    pub lr_discriminator: f64,
    /// Adam beta1.
    #[config(default = 0.5)]
    pub beta1: f32,
    /// Adam beta2.
    #[config(default = 0.999)]
    pub beta2: f32,
    /// One-sided label smoothing: real images are labelled `1 - label_smoothing`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// Initial std of Gaussian instance noise added to the discriminator's inputs (0 = off).
    #[config(default = 0.0)]
    pub instance_noise: f64,
    /// Steps over which instance noise decays linearly to zero.
    #[config(default = 10000)]
    pub instance_noise_steps: u64,
    /// Decay of the exponential moving average of the generator's weights (None = off).
    pub ema_decay: Option<f64>,
    /// Mirror training images left-right at random.
    #[config(default = true)]
    pub flip: bool,
    /// Master seed of the run (data order, latents, noise).
    #[config(default = 0)]
    pub seed: u64,
    /// The adversarial loss.
    #[config(default = "GanLoss::Bce")]
    pub loss: GanLoss,
    /// The weights the generator was warm-started from ([`Trainer::warm_start`]), if any.
    #[config(default = "None")]
    pub warm_start: Option<String>,
}

/// The adversarial loss of a run.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum GanLoss {
    /// DCGAN's binary cross-entropy (the generator's non-saturating form), as the seed trains.
    Bce,
    /// Hinge loss (SN-GAN, BigGAN): D minimises `relu(1 - D(x)) + relu(1 + D(G(z)))`,
    /// G minimises `-D(G(z))`.
    Hinge,
}

impl std::str::FromStr for GanLoss {
    type Err = AvatarError;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "bce" => Ok(GanLoss::Bce),
            "hinge" => Ok(GanLoss::Hinge),
            other => Err(AvatarError::invalid(
                "loss",
                format!("{other:?}: expected bce or hinge"),
            )),
        }
    }
}

impl GanLoss {
    /// The discriminator's loss on real and generated logits (`smoothing`: BCE's one-sided label
    /// smoothing).
    pub fn discriminator(self, real: Tensor<1>, fake: Tensor<1>, smoothing: f64) -> Tensor<1> {
        match self {
            GanLoss::Bce => bce_with_logits(real, 1.0 - smoothing) + bce_with_logits(fake, 0.0),
            GanLoss::Hinge => {
                relu(real.neg().add_scalar(1.0)).mean() + relu(fake.add_scalar(1.0)).mean()
            }
        }
    }

    /// The generator's loss on the logits of its images.
    pub fn generator(self, fake: Tensor<1>) -> Tensor<1> {
        match self {
            GanLoss::Bce => bce_with_logits(fake, 1.0),
            GanLoss::Hinge => fake.mean().neg(),
        }
    }
}

impl TrainConfig {
    /// A DCGAN config for `resolution` with matching discriminator widths.
    pub fn dcgan(generator: GeneratorConfig, discriminator_widths: Vec<usize>) -> Self {
        let discriminator = DiscriminatorConfig::new(
            generator.resolution,
            generator.channels,
            discriminator_widths,
        );
        TrainConfig::new(generator, discriminator)
    }

    fn validate(&self) -> Result<()> {
        self.generator.validate()?;
        self.discriminator.final_size()?;
        if self.discriminator.resolution != self.generator.resolution
            || self.discriminator.channels != self.generator.channels
        {
            return Err(AvatarError::Config(
                "discriminator and generator disagree on resolution or channels".into(),
            ));
        }
        if self.batch_size < 2 {
            return Err(AvatarError::invalid(
                "batch",
                "batch size must be at least 2 (batch norm)",
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(AvatarError::invalid(
                "label_smoothing",
                "must be in [0, 0.5)",
            ));
        }
        if let Some(decay) = self.ema_decay
            && !(0.0..1.0).contains(&decay)
        {
            return Err(AvatarError::invalid("ema", "decay must be in [0, 1)"));
        }
        if self.loss == GanLoss::Hinge && self.label_smoothing != 0.0 {
            return Err(AvatarError::invalid(
                "label_smoothing",
                "label smoothing applies to the bce loss only",
            ));
        }
        Ok(())
    }

    pub(super) fn adam(&self) -> ModuleOptimizer {
        AdamConfig::new()
            .with_beta_1(self.beta1)
            .with_beta_2(self.beta2)
            .with_epsilon(1e-8)
            .init()
    }
}

/// Losses and discriminator outputs of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The step number just completed (1-based).
    pub step: u64,
    /// Discriminator loss (real + fake).
    pub loss_discriminator: f32,
    /// Generator loss.
    pub loss_generator: f32,
    /// Mean D(x) on real images (probability).
    pub d_real: f32,
    /// Mean D(G(z)) on generated images, before the discriminator's update.
    pub d_fake: f32,
}

/// A DCGAN training run: generator, discriminator, their Adam states, the EMA and the RNGs.
pub struct Trainer {
    pub(super) config: TrainConfig,
    pub(super) device: Device,
    pub(super) generator: Generator,
    pub(super) discriminator: Discriminator,
    pub(super) optim_generator: ModuleOptimizer,
    pub(super) optim_discriminator: ModuleOptimizer,
    pub(super) ema: Option<Generator>,
    pub(super) data_rng: SplitMix64,
    pub(super) latent_rng: NormalStream,
    pub(super) state: TrainState,
}

/// Binary cross-entropy on logits, averaged: `mean(softplus(x) - x * y)` (numerically stable).
pub fn bce_with_logits(logits: Tensor<1>, target: f64) -> Tensor<1> {
    (softplus(logits.clone(), 1.0) - logits.mul_scalar(target)).mean()
}

impl Trainer {
    /// A new run with freshly initialised networks on `device` (an autodiff device is made from it).
    pub fn new(config: TrainConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let device = device.clone().autodiff();
        let generator = redraw_random_init(config.generator.init(&device)?, config.seed ^ 0x6E4E);
        let discriminator =
            redraw_random_init(config.discriminator.init(&device)?, config.seed ^ 0xD15C);
        let ema = config.ema_decay.map(|_| generator.valid());
        Ok(Trainer {
            data_rng: SplitMix64::new(config.seed ^ 0xD1CE_DA7A),
            latent_rng: NormalStream::new(config.seed ^ 0x001A_7E47),
            optim_generator: config.adam(),
            optim_discriminator: config.adam(),
            state: TrainState::new(config.clone()),
            config,
            device,
            generator,
            discriminator,
            ema,
        })
    }

    /// Replaces the new run's generator (and its EMA) with the generator saved at `weights`,
    /// grown to this run's generator config by [`grow_generator`]: fine-tuning a trained model at
    /// another resolution or latent size. The discriminator keeps its fresh initialisation.
    /// Only before the first step.
    pub fn warm_start(&mut self, weights: &Path) -> Result<()> {
        if self.state.step != 0 {
            return Err(AvatarError::invalid(
                "warm_start",
                "only a run that has not taken a step can be warm-started",
            ));
        }
        let base = self.device.clone().without_autodiff();
        let (source_config, source) = load_generator(weights, &base)?;
        // Grown without autodiff; `train()` makes every parameter, copied or new, a trainable leaf
        // on the run's autodiff device.
        let generator =
            grow_generator(&source, &source_config, &self.config.generator, &base)?.train();
        self.ema = self.config.ema_decay.map(|_| generator.valid());
        self.generator = generator;
        self.config.warm_start = Some(weights.display().to_string());
        self.state = TrainState::new(self.config.clone());
        Ok(())
    }

    /// The run's config.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps completed so far.
    pub fn step_count(&self) -> u64 {
        self.state.step
    }

    /// Training images seen so far.
    pub fn images_seen(&self) -> u64 {
        self.state.images_seen
    }

    /// Seconds spent in [`Trainer::step`] over the whole run (across resumes).
    pub fn train_seconds(&self) -> f64 {
        self.state.train_seconds
    }

    /// The generator being trained.
    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    /// The discriminator being trained.
    pub fn discriminator(&self) -> &Discriminator {
        &self.discriminator
    }

    /// One optimisation step of D then G on a batch from `data`.
    pub fn step(&mut self, data: &ImageDataset) -> Result<StepStats> {
        let device = self.device.clone();
        crate::worker_pool::on_worker(&device, || self.step_here(data))
    }

    fn step_here(&mut self, data: &ImageDataset) -> Result<StepStats> {
        let started = Instant::now();
        if data.resolution() != self.config.generator.resolution {
            return Err(AvatarError::invalid(
                "data",
                format!(
                    "images are {} px but the model is {} px",
                    data.resolution(),
                    self.config.generator.resolution
                ),
            ));
        }
        // Refined only once the step is sure to run: a rejected batch leaves the run untouched.
        self.discriminator = self.discriminator.clone().power_iteration();
        let config = &self.config;
        let batch = config.batch_size;
        let step = self.state.step + 1;
        let real = data.sample_batch(batch, config.flip, &mut self.data_rng, &self.device);
        let latents = self
            .latent_rng
            .tensor([batch, config.generator.latent_dim], &self.device);
        let fake = self.generator.forward(latents);

        let sigma = if config.instance_noise > 0.0 {
            config.instance_noise
                * (1.0 - step as f64 / config.instance_noise_steps.max(1) as f64).max(0.0)
        } else {
            0.0
        };
        let (real_in, fake_in) = if sigma > 0.0 {
            // Drawn from our own stream, keyed by (seed, step): resumed runs draw the same noise.
            let shape = real.shape();
            let n = shape.num_elements();
            let key = config
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(step);
            let values: Vec<f32> = NormalStream::new(key)
                .take_vec(2 * n)
                .into_iter()
                .map(|v| v * sigma as f32)
                .collect();
            let noise = |part: &[f32]| {
                Tensor::<4>::from_data(TensorData::new(part.to_vec(), shape.clone()), &self.device)
            };
            (real + noise(&values[..n]), fake + noise(&values[n..]))
        } else {
            (real, fake)
        };

        // Discriminator: real vs the detached fakes.
        let d_real_logits = self.discriminator.forward(real_in);
        let d_fake_logits = self.discriminator.forward(fake_in.clone().detach());
        let d_real = sigmoid(d_real_logits.clone()).mean();
        let d_fake = sigmoid(d_fake_logits.clone()).mean();
        let loss_d =
            config
                .loss
                .discriminator(d_real_logits, d_fake_logits, config.label_smoothing);
        let grads = GradientsParams::from_grads(loss_d.backward(), &self.discriminator);
        self.discriminator = self.optim_discriminator.step(
            config.lr_discriminator,
            self.discriminator.clone(),
            grads,
        );

        // Generator: fool the updated discriminator on the same fakes.
        let loss_g = config.loss.generator(self.discriminator.forward(fake_in));
        let grads = GradientsParams::from_grads(loss_g.backward(), &self.generator);
        self.generator =
            self.optim_generator
                .step(config.lr_generator, self.generator.clone(), grads);

        if let (Some(ema), Some(decay)) = (self.ema.take(), config.ema_decay) {
            // Warm-up: average from the start without dragging in the random init for long.
            let decay = decay.min((1.0 + step as f64) / (10.0 + step as f64));
            self.ema = Some(ema_update(ema, &self.generator.valid(), decay));
        }

        let scalar = |t: Tensor<1>| t.into_scalar::<f32>();
        let stats = StepStats {
            step,
            loss_discriminator: scalar(loss_d),
            loss_generator: scalar(loss_g),
            d_real: scalar(d_real),
            d_fake: scalar(d_fake),
        };
        if !(stats.loss_discriminator.is_finite() && stats.loss_generator.is_finite()) {
            return Err(AvatarError::Backend(format!(
                "training diverged at step {step}: {stats:?}"
            )));
        }
        self.state.step = step;
        self.state.images_seen += batch as u64;
        self.state.train_seconds += started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// The generator to ship: the EMA when enabled, else the trained generator, in inference
    /// mode, with standing batch-norm statistics from [`STANDING_STATISTICS_SAMPLES`] latents
    /// (see [`Generator::with_standing_statistics`]): the EMA's averaged running statistics do
    /// not describe its own activations.
    pub fn inference_generator(&self) -> Result<Generator> {
        self.averaged_generator(STANDING_STATISTICS_SAMPLES)
    }

    /// The EMA (or the trained generator) with standing statistics from `samples` latents.
    fn averaged_generator(&self, samples: usize) -> Result<Generator> {
        let generator = match &self.ema {
            Some(ema) => ema.clone(),
            None => self.generator.valid(),
        };
        generator.with_standing_statistics(samples, STANDING_STATISTICS_SEED)
    }

    /// Exports the inference generator as `model.safetensors` + `model.json`.
    pub fn export(&self, path: &Path, dtype: StoredDtype) -> Result<()> {
        save_generator(
            &self.inference_generator()?,
            &self.config.generator,
            path,
            dtype,
        )
    }

    /// An `rows x rows` grid of samples from fixed seeds `0..rows²` (RGBA composited on white).
    pub fn sample_grid(&self, rows: u32) -> Result<RgbaImage> {
        let device = self.device.clone().without_autodiff();
        let generator = AvatarGenerator::from_generator(
            self.config.generator.clone(),
            // Fewer latents than the export (the grid is redrawn every few hundred steps).
            self.averaged_generator(GRID_STANDING_STATISTICS_SAMPLES)?,
            DeviceSpec::Cpu,
            device,
        );
        sample_grid(&generator, rows)
    }
}

/// An `rows x rows` grid of avatars from seeds `0..rows²`, composited on white, 2 px gutters.
pub fn sample_grid(generator: &AvatarGenerator, rows: u32) -> Result<RgbaImage> {
    let seeds: Vec<Seed> = (0..(rows * rows) as u64).map(Seed::Number).collect();
    let tiles = generator.generate_batch(&seeds, &crate::avatar::GenerateOptions::default())?;
    Ok(tile(&tiles, rows))
}

pub(super) fn tile(tiles: &[RgbaImage], rows: u32) -> RgbaImage {
    let side = tiles.first().map(|t| t.width()).unwrap_or(1);
    let gutter = 2;
    let total = rows * side + (rows + 1) * gutter;
    let mut sheet = RgbaImage::from_pixel(total, total, image::Rgba([255, 255, 255, 255]));
    for (i, tile) in tiles.iter().enumerate() {
        let (col, row) = (i as u32 % rows, i as u32 / rows);
        let tile = composite_over(tile, Color::WHITE);
        image::imageops::overlay(
            &mut sheet,
            &tile,
            (gutter + col * (side + gutter)) as i64,
            (gutter + row * (side + gutter)) as i64,
        );
    }
    sheet
}
