//! Euler Ancestral (k-diffusion's `sample_euler_ancestral`): diffusers'
//! `EulerAncestralDiscreteScheduler`.

use burn::tensor::Tensor;

use super::betas::{BetaDefaults, TrainingSchedule};
use super::common::{SchedulerOutput, StepCounter, check_num_steps, check_shape, require_noise};
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::euler::{SigmaSchedule, k_pred_original};
use super::numpy;
use crate::error::{AvatarError, Result};

/// An Euler step down to σ_down followed by fresh noise of standard deviation σ_up, with
/// σ_down² + σ_up² = σ_{i+1}². Every step (the last one too, where σ_up = 0) consumes noise.
#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    schedule: TrainingSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    state: SigmaSchedule,
}

impl EulerAncestralDiscreteScheduler {
    /// Builds the scheduler (class defaults: linear betas, `linspace`).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let prediction = config.prediction_type.unwrap_or(PredictionType::Epsilon);
        if prediction == PredictionType::Sample {
            return Err(AvatarError::invalid(
                "prediction_type",
                "`sample` is not implemented for Euler Ancestral (as in diffusers)",
            ));
        }
        let schedule = TrainingSchedule::new(config, BetaDefaults::DDPM, true)?;
        Ok(EulerAncestralDiscreteScheduler {
            state: SigmaSchedule::training(&schedule),
            schedule,
            prediction,
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset.unwrap_or(0),
        })
    }

    /// The training schedule.
    pub fn training_schedule(&self) -> &TrainingSchedule {
        &self.schedule
    }

    /// Sets the `n` inference timesteps (float32) and their interpolated sigmas.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let num_train = self.schedule.len();
        check_num_steps(n, num_train, "num_train_timesteps")?;
        let timesteps: Vec<f64> =
            numpy::spaced_timesteps(self.spacing, num_train, n, self.steps_offset)
                .into_iter()
                .map(|t| t as f32 as f64)
                .collect();
        let table = self.schedule.sigmas();
        let sigmas = timesteps
            .iter()
            .map(|&t| numpy::interp_table(t, &table) as f32)
            .chain([0.0])
            .collect();
        self.state = SigmaSchedule {
            timesteps,
            sigmas,
            counter: StepCounter::default(),
        };
        Ok(())
    }

    /// The inference timesteps (float32 values).
    pub fn timesteps(&self) -> &[f64] {
        &self.state.timesteps
    }

    /// The N + 1 sigmas.
    pub fn sigmas(&self) -> &[f32] {
        &self.state.sigmas
    }

    /// The standard deviation of the initial noise.
    pub fn init_noise_sigma(&self) -> f64 {
        self.state.init_noise_sigma(self.spacing)
    }

    /// Starts at schedule entry `index` instead of looking the first timestep up (img2img).
    pub fn set_begin_index(&mut self, index: usize) {
        self.state.counter.begin = Some(index);
    }

    /// `sample / √(σ² + 1)`.
    pub fn scale_model_input(&self, sample: Tensor<4>, timestep: f64) -> Result<Tensor<4>> {
        self.state.scale_model_input(sample, timestep)
    }

    /// One ancestral step; `noise` (standard normal, the sample's shape) is required.
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        timestep: f64,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<SchedulerOutput> {
        check_shape("model_output", &model_output, &sample)?;
        let noise = require_noise(noise, &sample, "Euler Ancestral")?;
        let (i, sigma_from, sigma_to) = self.state.sigma_pair(timestep)?;
        let x0 = k_pred_original(self.prediction, sigma_from, model_output, sample.clone());
        let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        let derivative = (sample.clone() - x0.clone()).div_scalar(sigma_from);
        let prev_sample =
            sample + derivative.mul_scalar(sigma_down - sigma_from) + noise.mul_scalar(sigma_up);
        self.state.counter.step = Some(i + 1);
        Ok(SchedulerOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }

    /// Forward diffusion in the k-diffusion convention: `original + σ·noise`.
    pub fn add_noise(
        &self,
        original: Tensor<4>,
        noise: Tensor<4>,
        timestep: f64,
    ) -> Result<Tensor<4>> {
        self.state.add_noise(original, noise, timestep)
    }
}
