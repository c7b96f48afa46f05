//! DDIM (Song et al. 2020, arXiv:2010.02502): diffusers' `DDIMScheduler`.

use burn::tensor::Tensor;

use super::betas::{BetaDefaults, TrainingSchedule};
use super::common::{
    SchedulerOutput, check_num_steps, check_shape, ddpm_predictions, require_noise, train_index,
};
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::numpy;
use crate::error::{AvatarError, Result};

/// Denoising diffusion implicit models: deterministic for `eta = 0` (the default).
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    schedule: TrainingSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    final_alpha_cumprod: f32,
    clip_sample: Option<f32>,
    /// DDIM's η: 0 is deterministic DDIM, 1 is DDPM-like (then [`step`](Self::step) needs noise).
    pub eta: f64,
    num_inference_steps: Option<usize>,
    timesteps: Vec<f64>,
}

impl DdimScheduler {
    /// Builds the scheduler (class defaults: linear betas, `leading`, `set_alpha_to_one`,
    /// `clip_sample`).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if config.thresholding == Some(true) {
            return Err(AvatarError::invalid("thresholding", "is not supported"));
        }
        let schedule = TrainingSchedule::new(config, BetaDefaults::DDPM, false)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        let clip_sample = config
            .clip_sample
            .unwrap_or(true)
            .then(|| config.clip_sample_range.unwrap_or(1.0) as f32);
        let timesteps = (0..schedule.len()).rev().map(|t| t as f64).collect();
        Ok(DdimScheduler {
            schedule,
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Leading),
            steps_offset: config.steps_offset.unwrap_or(0),
            final_alpha_cumprod,
            clip_sample,
            eta: 0.0,
            num_inference_steps: None,
            timesteps,
        })
    }

    /// The training schedule.
    pub fn training_schedule(&self) -> &TrainingSchedule {
        &self.schedule
    }

    /// Sets the `n` inference timesteps (integers, descending).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let num_train = self.schedule.len();
        check_num_steps(n, num_train, "num_train_timesteps")?;
        self.timesteps = numpy::spaced_timesteps(self.spacing, num_train, n, self.steps_offset)
            .into_iter()
            .map(numpy::round)
            .collect();
        self.num_inference_steps = Some(n);
        Ok(())
    }

    /// The inference timesteps.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Whether [`step`](Self::step) needs noise (only when `eta > 0`).
    pub fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }

    /// One DDIM step from `timestep` to `timestep − T/N`.
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        timestep: f64,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<SchedulerOutput> {
        let n = self.num_inference_steps.ok_or_else(|| {
            AvatarError::invalid("num_inference_steps", "call set_timesteps before step")
        })?;
        check_shape("model_output", &model_output, &sample)?;
        let num_train = self.schedule.len();
        let t = train_index(timestep, num_train)?;
        let prev_t = t as i64 - (num_train / n) as i64;
        let alpha_prod_t = self.schedule.alphas_cumprod[t];
        let alpha_prod_t_prev = if prev_t >= 0 {
            self.schedule.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let (mut x0, eps) = ddpm_predictions(self.prediction, alpha_prod_t, model_output, sample);
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        let (beta_prod_t, beta_prod_t_prev) = (1.0 - alpha_prod_t, 1.0 - alpha_prod_t_prev);
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta as f32 * variance.sqrt();
        let direction = eps.mul_scalar((1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt());
        let mut prev_sample = x0.clone().mul_scalar(alpha_prod_t_prev.sqrt()) + direction;
        if self.eta > 0.0 {
            let noise = require_noise(noise, &prev_sample, "DDIM with eta > 0")?;
            prev_sample = prev_sample + noise.mul_scalar(std_dev_t);
        }
        Ok(SchedulerOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }

    /// Forward diffusion to `timestep`: `√ᾱ_t·x₀ + √(1−ᾱ_t)·noise`.
    pub fn add_noise(
        &self,
        original: Tensor<4>,
        noise: Tensor<4>,
        timestep: f64,
    ) -> Result<Tensor<4>> {
        check_shape("noise", &noise, &original)?;
        let alpha = self.schedule.alphas_cumprod[train_index(timestep, self.schedule.len())?];
        Ok(original.mul_scalar(alpha.sqrt()) + noise.mul_scalar((1.0 - alpha).sqrt()))
    }
}
