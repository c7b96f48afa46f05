//! Latent Consistency Models multistep sampling (Luo et al. 2023, arXiv:2310.04378):
//! diffusers' `LCMScheduler`.

use burn::tensor::Tensor;

use super::betas::{BetaDefaults, TrainingSchedule};
use super::common::{
    SchedulerOutput, StepCounter, check_num_steps, check_shape, ddpm_predictions, require_noise,
    train_index,
};
use super::config::{PredictionType, SchedulerConfig};
use super::numpy;
use crate::error::{AvatarError, Result};

/// Each step maps the sample to the consistency-model estimate `denoised`, then (except on the
/// last step) re-noises it to the next timestep with fresh noise. `timestep_spacing` is ignored:
/// timesteps are taken from the `original_inference_steps`-step distillation schedule, and
/// `set_alpha_to_one` has no effect (the previous timestep is never past the schedule).
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    schedule: TrainingSchedule,
    prediction: PredictionType,
    clip_sample: Option<f32>,
    original_inference_steps: usize,
    timestep_scaling: f32,
    ready: bool,
    timesteps: Vec<f64>,
    counter: StepCounter,
}

impl LcmScheduler {
    /// Builds the scheduler (class defaults: SD's scaled-linear betas, 50 original steps,
    /// timestep scaling 10, `set_alpha_to_one`, no clipping).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if config.thresholding == Some(true) {
            return Err(AvatarError::invalid("thresholding", "is not supported"));
        }
        let schedule = TrainingSchedule::new(config, BetaDefaults::LCM, false)?;
        let original_inference_steps = config.original_inference_steps.unwrap_or(50);
        if original_inference_steps == 0 || original_inference_steps > schedule.len() {
            return Err(AvatarError::invalid(
                "original_inference_steps",
                format!(
                    "must be in 1..={}, got {original_inference_steps}",
                    schedule.len()
                ),
            ));
        }
        Ok(LcmScheduler {
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            clip_sample: config
                .clip_sample
                .unwrap_or(false)
                .then(|| config.clip_sample_range.unwrap_or(1.0) as f32),
            original_inference_steps,
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0) as f32,
            ready: false,
            timesteps: (0..schedule.len()).rev().map(|t| t as f64).collect(),
            schedule,
            counter: StepCounter::default(),
        })
    }

    /// The training schedule.
    pub fn training_schedule(&self) -> &TrainingSchedule {
        &self.schedule
    }

    /// Picks `n` timesteps (n ≤ `original_inference_steps`) evenly from the distillation
    /// schedule `k−1, 2k−1, …, T−1` (k = T / original_inference_steps), starting at its end.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let original = self.original_inference_steps;
        check_num_steps(n, original, "original_inference_steps of LCM")?;
        let k = self.schedule.len() / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        self.timesteps = numpy::linspace(0.0, original as f64, n, false)
            .into_iter()
            .map(|i| origin[i.floor() as usize] as f64)
            .collect();
        self.counter.reset();
        self.ready = true;
        Ok(())
    }

    /// The inference timesteps (integers).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Starts at schedule entry `index` instead of looking the first timestep up (img2img).
    pub fn set_begin_index(&mut self, index: usize) {
        self.counter.begin = Some(index);
    }

    /// Whether the step at `timestep` re-noises (every step but the last).
    pub fn needs_noise(&self, timestep: f64) -> bool {
        self.counter
            .current(&self.timesteps, timestep)
            .is_ok_and(|i| i + 1 < self.timesteps.len())
    }

    /// The boundary-condition scalings `(c_skip, c_out)` at `timestep` (σ_data = 0.5).
    fn scalings(&self, timestep: usize) -> (f32, f32) {
        let scaled = timestep as f32 * self.timestep_scaling;
        let denominator = scaled * scaled + 0.25;
        (0.25 / denominator, scaled / denominator.sqrt())
    }

    /// One LCM step; `noise` is required on every step but the last.
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        timestep: f64,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<SchedulerOutput> {
        if !self.ready {
            return Err(AvatarError::invalid(
                "num_inference_steps",
                "call set_timesteps before step",
            ));
        }
        check_shape("model_output", &model_output, &sample)?;
        let num_train = self.schedule.len();
        let t = train_index(timestep, num_train)?;
        let i = self.counter.current(&self.timesteps, timestep)?;
        let is_last = i + 1 >= self.timesteps.len();
        let prev_t = if is_last {
            t
        } else {
            train_index(self.timesteps[i + 1], num_train)?
        };
        let alpha_prod_t = self.schedule.alphas_cumprod[t];
        let alpha_prod_t_prev = self.schedule.alphas_cumprod[prev_t];
        let (c_skip, c_out) = self.scalings(t);
        let (mut x0, _) =
            ddpm_predictions(self.prediction, alpha_prod_t, model_output, sample.clone());
        if let Some(range) = self.clip_sample {
            x0 = x0.clamp(-range, range);
        }
        let denoised = x0.mul_scalar(c_out) + sample.mul_scalar(c_skip);
        let prev_sample = if is_last {
            denoised.clone()
        } else {
            let noise = require_noise(noise, &denoised, "LCM")?;
            denoised.clone().mul_scalar(alpha_prod_t_prev.sqrt())
                + noise.mul_scalar((1.0 - alpha_prod_t_prev).sqrt())
        };
        self.counter.step = Some(i + 1);
        Ok(SchedulerOutput {
            prev_sample,
            pred_original_sample: Some(denoised),
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
