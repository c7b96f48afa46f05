//! Euler (Karras et al. 2022, algorithm 2 without churn): diffusers' `EulerDiscreteScheduler`.

use burn::tensor::Tensor;

use super::betas::{BetaDefaults, TrainingSchedule};
use super::common::{SchedulerOutput, StepCounter, check_num_steps, check_shape};
use super::config::{FinalSigmasType, PredictionType, SchedulerConfig, TimestepSpacing};
use super::numpy;
use crate::error::{AvatarError, Result};

/// The k-diffusion sigma schedule shared by Euler and Euler Ancestral: float32 timesteps (may be
/// fractional with `linspace`), `sigmas` of length N + 1 (last one 0), and the step counter.
#[derive(Debug, Clone)]
pub(crate) struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f32>,
    pub counter: StepCounter,
}

impl SigmaSchedule {
    /// The training sigmas, reversed, before `set_timesteps`.
    pub fn training(schedule: &TrainingSchedule) -> Self {
        let mut sigmas = schedule.sigmas();
        sigmas.reverse();
        sigmas.push(0.0);
        SigmaSchedule {
            timesteps: (0..schedule.len()).rev().map(|t| t as f64).collect(),
            sigmas,
            counter: StepCounter::default(),
        }
    }

    /// diffusers' `init_noise_sigma`: σ_max, or √(σ_max² + 1) with `leading` spacing.
    pub fn init_noise_sigma(&self, spacing: TimestepSpacing) -> f64 {
        let max = self
            .sigmas
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
        }
    }

    /// The sigma of the current step and of the next one.
    pub fn sigma_pair(&self, timestep: f64) -> Result<(usize, f32, f32)> {
        let i = self.counter.current(&self.timesteps, timestep)?;
        if i + 1 >= self.sigmas.len() {
            return Err(AvatarError::invalid(
                "timestep",
                "every step of the schedule has been taken",
            ));
        }
        Ok((i, self.sigmas[i], self.sigmas[i + 1]))
    }

    /// `sample / √(σ² + 1)`: the model input at the current step.
    pub fn scale_model_input(&self, sample: Tensor<4>, timestep: f64) -> Result<Tensor<4>> {
        let (_, sigma, _) = self.sigma_pair(timestep)?;
        Ok(sample.div_scalar((sigma * sigma + 1.0).sqrt()))
    }

    /// `original + noise·σ` with the sigma of `timestep` (or of the begin index, for img2img).
    pub fn add_noise(
        &self,
        original: Tensor<4>,
        noise: Tensor<4>,
        timestep: f64,
    ) -> Result<Tensor<4>> {
        check_shape("noise", &noise, &original)?;
        let i = self.counter.noise_index(&self.timesteps, timestep)?;
        Ok(original + noise.mul_scalar(self.sigmas[i]))
    }
}

/// x₀ predicted at noise level σ (k-diffusion parameterisation `x = x₀ + σ·ε`).
pub(crate) fn k_pred_original(
    prediction: PredictionType,
    sigma: f32,
    model_output: Tensor<4>,
    sample: Tensor<4>,
) -> Tensor<4> {
    match prediction {
        PredictionType::Epsilon => sample - model_output.mul_scalar(sigma),
        PredictionType::VPrediction => {
            model_output.mul_scalar(-sigma / (sigma * sigma + 1.0).sqrt())
                + sample.div_scalar(sigma * sigma + 1.0)
        }
        PredictionType::Sample => model_output,
    }
}

/// The Euler method on the probability-flow ODE in σ. Deterministic.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    schedule: TrainingSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    karras: bool,
    sigma_range: (Option<f64>, Option<f64>),
    final_sigmas: FinalSigmasType,
    state: SigmaSchedule,
}

impl EulerDiscreteScheduler {
    /// Builds the scheduler (class defaults: linear betas, `linspace`, final sigma 0).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        unsupported_sigma_options(config)?;
        if let Some(kind) = config
            .interpolation_type
            .as_deref()
            .filter(|&k| k != "linear")
        {
            return Err(AvatarError::invalid(
                "interpolation_type",
                format!("`{kind}` is not supported (only linear)"),
            ));
        }
        if let Some(kind) = config.timestep_type.as_deref().filter(|&k| k != "discrete") {
            return Err(AvatarError::invalid(
                "timestep_type",
                format!("`{kind}` is not supported (only discrete)"),
            ));
        }
        let schedule = TrainingSchedule::new(config, BetaDefaults::DDPM, true)?;
        Ok(EulerDiscreteScheduler {
            state: SigmaSchedule::training(&schedule),
            schedule,
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset.unwrap_or(0),
            karras: config.use_karras_sigmas.unwrap_or(false),
            sigma_range: (config.sigma_min, config.sigma_max),
            final_sigmas: config.final_sigmas_type.unwrap_or(FinalSigmasType::Zero),
        })
    }

    /// The training schedule.
    pub fn training_schedule(&self) -> &TrainingSchedule {
        &self.schedule
    }

    /// Sets the `n` inference timesteps and their sigmas (interpolated in the training sigmas,
    /// or Karras sigmas mapped back to fractional timesteps).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let num_train = self.schedule.len();
        check_num_steps(n, num_train, "num_train_timesteps")?;
        // numpy builds the timesteps in float64 and stores them as float32.
        let mut timesteps: Vec<f64> =
            numpy::spaced_timesteps(self.spacing, num_train, n, self.steps_offset)
                .into_iter()
                .map(|t| t as f32 as f64)
                .collect();
        let table = self.schedule.sigmas();
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| numpy::interp_table(t, &table))
            .collect();
        if self.karras {
            let log_sigmas = numpy::log_table(&table);
            let min = self.sigma_range.0.unwrap_or(sigmas[n - 1]);
            let max = self.sigma_range.1.unwrap_or(sigmas[0]);
            sigmas = numpy::karras_sigmas(min, max, n);
            timesteps = sigmas
                .iter()
                .map(|&s| numpy::sigma_to_t(s, &log_sigmas) as f32 as f64)
                .collect();
        }
        sigmas.push(match self.final_sigmas {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => table[0] as f64,
        });
        self.state = SigmaSchedule {
            timesteps,
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
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

    /// One Euler step from σ_i to σ_{i+1}: `x + (x − x₀)/σ_i · (σ_{i+1} − σ_i)`.
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        timestep: f64,
        sample: Tensor<4>,
    ) -> Result<SchedulerOutput> {
        check_shape("model_output", &model_output, &sample)?;
        let (i, sigma, sigma_next) = self.state.sigma_pair(timestep)?;
        // No churn (s_churn = 0): σ̂ = σ·(γ + 1) = σ.
        let sigma_hat = sigma;
        let x0 = k_pred_original(self.prediction, sigma, model_output, sample.clone());
        let derivative = (sample.clone() - x0.clone()).div_scalar(sigma_hat);
        let prev_sample = sample + derivative.mul_scalar(sigma_next - sigma_hat);
        self.state.counter.step = Some(i + 1);
        Ok(SchedulerOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }

    /// Forward diffusion in the k-diffusion convention: `original + σ·noise` (no 1/√(σ²+1)).
    pub fn add_noise(
        &self,
        original: Tensor<4>,
        noise: Tensor<4>,
        timestep: f64,
    ) -> Result<Tensor<4>> {
        self.state.add_noise(original, noise, timestep)
    }
}

/// Rejects the sigma schedules diffusers offers but this port does not.
pub(crate) fn unsupported_sigma_options(config: &SchedulerConfig) -> Result<()> {
    for (field, value) in [
        ("use_exponential_sigmas", config.use_exponential_sigmas),
        ("use_beta_sigmas", config.use_beta_sigmas),
        ("use_lu_lambdas", config.use_lu_lambdas),
        ("use_flow_sigmas", config.use_flow_sigmas),
        ("thresholding", config.thresholding),
    ] {
        if value == Some(true) {
            return Err(AvatarError::invalid(field, "is not supported"));
        }
    }
    Ok(())
}
