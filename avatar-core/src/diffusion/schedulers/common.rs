//! Bookkeeping shared by the schedulers: the step counter, argument checks, prediction types.

use burn::tensor::Tensor;

use super::config::PredictionType;
use crate::error::{AvatarError, Result};

/// What one [`step`](super::Scheduler::step) returns.
#[derive(Debug, Clone)]
pub struct SchedulerOutput {
    /// The sample at the next (less noisy) timestep.
    pub prev_sample: Tensor<4>,
    /// The scheduler's estimate of the clean sample x₀ (LCM: its `denoised` output; DPM-Solver:
    /// `None`, like diffusers).
    pub pred_original_sample: Option<Tensor<4>>,
}

/// diffusers' `_step_index`/`_begin_index`: which entry of the schedule the next step uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepCounter {
    pub step: Option<usize>,
    pub begin: Option<usize>,
}

impl StepCounter {
    /// The index the next step uses: the running counter, else `begin`, else the position of
    /// `timestep` in `timesteps` (diffusers' `index_for_timestep`).
    pub fn current(&self, timesteps: &[f64], timestep: f64) -> Result<usize> {
        match (self.step, self.begin) {
            (Some(i), _) | (None, Some(i)) => Ok(i),
            (None, None) => index_for_timestep(timesteps, timestep),
        }
    }

    /// The index `add_noise` uses: the timestep's position unless a begin index was set, then
    /// the running counter or the begin index (diffusers' rule, for img2img).
    pub fn noise_index(&self, timesteps: &[f64], timestep: f64) -> Result<usize> {
        match (self.begin, self.step) {
            (None, _) => index_for_timestep(timesteps, timestep),
            (Some(_), Some(i)) | (Some(i), None) => Ok(i),
        }
    }

    /// Forgets the position (after `set_timesteps`).
    pub fn reset(&mut self) {
        *self = StepCounter::default();
    }
}

/// The index of `timestep` in the schedule; when it occurs twice, the second one (so that
/// img2img starting mid-schedule does not skip a sigma), like diffusers.
pub(crate) fn index_for_timestep(timesteps: &[f64], timestep: f64) -> Result<usize> {
    let mut found = timesteps
        .iter()
        .enumerate()
        .filter(|&(_, &t)| t == timestep)
        .map(|(i, _)| i);
    match (found.next(), found.next()) {
        (_, Some(second)) => Ok(second),
        (Some(first), None) => Ok(first),
        (None, None) => Err(AvatarError::invalid(
            "timestep",
            format!(
                "{timestep} is not in the schedule (call set_timesteps and pass its timesteps)"
            ),
        )),
    }
}

/// Checks `1 <= n <= max`.
pub(crate) fn check_num_steps(n: usize, max: usize, what: &str) -> Result<()> {
    if n == 0 {
        return Err(AvatarError::invalid(
            "num_inference_steps",
            "must be at least 1",
        ));
    }
    if n > max {
        return Err(AvatarError::invalid(
            "num_inference_steps",
            format!("{n} is more than the {max} {what}"),
        ));
    }
    Ok(())
}

/// Checks that a timestep indexes the training schedule (DDIM and LCM use it directly).
pub(crate) fn train_index(timestep: f64, num_train: usize) -> Result<usize> {
    if timestep.fract() != 0.0 || timestep < 0.0 || timestep >= num_train as f64 {
        return Err(AvatarError::invalid(
            "timestep",
            format!("{timestep} is not an integer training timestep in 0..{num_train}"),
        ));
    }
    Ok(timestep as usize)
}

/// Checks that `tensor` has the shape of `sample`.
pub(crate) fn check_shape(
    field: &'static str,
    tensor: &Tensor<4>,
    sample: &Tensor<4>,
) -> Result<()> {
    if tensor.dims() != sample.dims() {
        return Err(AvatarError::invalid(
            field,
            format!(
                "has shape {:?}, expected the sample's {:?}",
                tensor.dims(),
                sample.dims()
            ),
        ));
    }
    Ok(())
}

/// The noise of a stochastic step, or an error naming the scheduler that needed it.
pub(crate) fn require_noise(
    noise: Option<Tensor<4>>,
    sample: &Tensor<4>,
    scheduler: &str,
) -> Result<Tensor<4>> {
    let noise = noise.ok_or_else(|| {
        AvatarError::invalid(
            "noise",
            format!("{scheduler} needs a standard-normal noise tensor for this step"),
        )
    })?;
    check_shape("noise", &noise, sample)?;
    Ok(noise)
}

/// x₀ and ε from the model output, for the DDPM parameterisation `x_t = √ᾱ·x₀ + √(1−ᾱ)·ε`,
/// with diffusers' float32 operation order.
pub(crate) fn ddpm_predictions(
    prediction: PredictionType,
    alpha_prod_t: f32,
    model_output: Tensor<4>,
    sample: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let beta_prod_t = 1.0 - alpha_prod_t;
    let (sqrt_a, sqrt_b) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());
    match prediction {
        PredictionType::Epsilon => {
            let x0 = (sample - model_output.clone().mul_scalar(sqrt_b)).div_scalar(sqrt_a);
            (x0, model_output)
        }
        PredictionType::Sample => {
            let eps = (sample - model_output.clone().mul_scalar(sqrt_a)).div_scalar(sqrt_b);
            (model_output, eps)
        }
        PredictionType::VPrediction => {
            let x0 = sample.clone().mul_scalar(sqrt_a) - model_output.clone().mul_scalar(sqrt_b);
            let eps = model_output.mul_scalar(sqrt_a) + sample.mul_scalar(sqrt_b);
            (x0, eps)
        }
    }
}
