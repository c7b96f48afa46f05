//! Noise schedulers ported from diffusers 0.42.1, step for step: the same timesteps and sigmas
//! (numpy float64 where diffusers uses numpy, torch float32 where it uses torch), and traces
//! that match diffusers to float32 rounding (see `tests/diffusion_schedulers.rs`).
//!
//! A sampling loop (`unet` and `randn` stand for the caller's model and RNG):
//!
//! ```no_run
//! use avatar_core::burn::tensor::Tensor;
//! use avatar_core::diffusion::schedulers::{Scheduler, SchedulerConfig};
//!
//! fn sample(
//!     unet: impl Fn(Tensor<4>, f64) -> Tensor<4>,
//!     mut randn: impl FnMut(&Tensor<4>) -> Tensor<4>,
//!     noise: Tensor<4>,
//! ) -> avatar_core::Result<Tensor<4>> {
//!     let config = SchedulerConfig::from_file("scheduler/scheduler_config.json")?;
//!     let mut scheduler = Scheduler::from_name("dpmpp_2m_karras", &config)?;
//!     scheduler.set_timesteps(25)?;
//!     let mut latents = noise.mul_scalar(scheduler.init_noise_sigma());
//!     for t in scheduler.timesteps().to_vec() {
//!         let eps = unet(scheduler.scale_model_input(latents.clone(), t)?, t);
//!         latents = scheduler.step_with(eps, t, latents, &mut randn)?.prev_sample;
//!     }
//!     Ok(latents)
//! }
//! ```
//!
//! Stochastic schedulers (Euler Ancestral, LCM, DDIM with η > 0) take their Gaussian noise from
//! the caller, so runs are reproducible with the caller's RNG.

mod betas;
mod common;
mod config;
mod ddim;
mod dpm_solver_multistep;
mod euler;
mod euler_ancestral;
mod kind;
mod lcm;
mod numpy;

pub use betas::TrainingSchedule;
pub use common::SchedulerOutput;
pub use config::{
    BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, SolverType, TimestepSpacing,
};
pub use ddim::DdimScheduler;
pub use dpm_solver_multistep::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use kind::SchedulerKind;
pub use lcm::LcmScheduler;

use burn::tensor::Tensor;

use crate::error::{AvatarError, Result};

/// Any of the supported schedulers, behind diffusers' common interface.
#[derive(Debug, Clone)]
pub enum Scheduler {
    /// DDIM.
    Ddim(DdimScheduler),
    /// Euler.
    Euler(EulerDiscreteScheduler),
    /// Euler Ancestral.
    EulerAncestral(EulerAncestralDiscreteScheduler),
    /// DPM-Solver++ multistep.
    DpmSolverMultistep(DpmSolverMultistepScheduler),
    /// LCM.
    Lcm(LcmScheduler),
}

/// Calls the same method on whichever scheduler `self` holds.
macro_rules! dispatch {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Scheduler::Ddim($s) => $body,
            Scheduler::Euler($s) => $body,
            Scheduler::EulerAncestral($s) => $body,
            Scheduler::DpmSolverMultistep($s) => $body,
            Scheduler::Lcm($s) => $body,
        }
    };
}

impl Scheduler {
    /// Builds a scheduler of `kind`; keys missing from `config` get that class's defaults, as
    /// with diffusers' `Cls.from_config(config)`.
    pub fn new(kind: SchedulerKind, config: &SchedulerConfig) -> Result<Self> {
        Ok(match kind {
            SchedulerKind::Ddim => Scheduler::Ddim(DdimScheduler::new(config)?),
            SchedulerKind::Euler => Scheduler::Euler(EulerDiscreteScheduler::new(config)?),
            SchedulerKind::EulerAncestral => {
                Scheduler::EulerAncestral(EulerAncestralDiscreteScheduler::new(config)?)
            }
            SchedulerKind::DpmSolverMultistep => {
                Scheduler::DpmSolverMultistep(DpmSolverMultistepScheduler::new(config)?)
            }
            SchedulerKind::Lcm => Scheduler::Lcm(LcmScheduler::new(config)?),
        })
    }

    /// Builds the scheduler named by the config's `_class_name`.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let kind = config
            .kind()?
            .ok_or_else(|| AvatarError::invalid("scheduler", "the config has no `_class_name`"))?;
        Self::new(kind, config)
    }

    /// Builds a scheduler by name (`euler_a`, `dpmpp_2m_karras`, ...; see [`SchedulerKind`])
    /// on top of a model's `config`, applying the options the name implies.
    pub fn from_name(name: &str, config: &SchedulerConfig) -> Result<Self> {
        let mut config = config.clone();
        let kind = config.apply_name(name)?;
        Self::new(kind, &config)
    }

    /// Which scheduler this is.
    pub fn kind(&self) -> SchedulerKind {
        match self {
            Scheduler::Ddim(_) => SchedulerKind::Ddim,
            Scheduler::Euler(_) => SchedulerKind::Euler,
            Scheduler::EulerAncestral(_) => SchedulerKind::EulerAncestral,
            Scheduler::DpmSolverMultistep(_) => SchedulerKind::DpmSolverMultistep,
            Scheduler::Lcm(_) => SchedulerKind::Lcm,
        }
    }

    /// The training schedule (betas and ᾱ, float32).
    pub fn training_schedule(&self) -> &TrainingSchedule {
        dispatch!(self, s => s.training_schedule())
    }

    /// Sets the number of inference steps (and resets the step state). Errors when `n` is 0 or
    /// more than the scheduler allows (the training timesteps; 50 original steps for LCM).
    pub fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        dispatch!(self, s => s.set_timesteps(num_inference_steps))
    }

    /// The inference timesteps, descending (integers, except Euler's float32 values).
    pub fn timesteps(&self) -> &[f64] {
        dispatch!(self, s => s.timesteps())
    }

    /// The N + 1 sigmas of the sigma-based schedulers (Euler, Euler Ancestral, DPM-Solver).
    pub fn sigmas(&self) -> Option<&[f32]> {
        match self {
            Scheduler::Euler(s) => Some(s.sigmas()),
            Scheduler::EulerAncestral(s) => Some(s.sigmas()),
            Scheduler::DpmSolverMultistep(s) => Some(s.sigmas()),
            Scheduler::Ddim(_) | Scheduler::Lcm(_) => None,
        }
    }

    /// The standard deviation of the initial latent noise (multiply unit noise by it).
    pub fn init_noise_sigma(&self) -> f64 {
        match self {
            Scheduler::Euler(s) => s.init_noise_sigma(),
            Scheduler::EulerAncestral(s) => s.init_noise_sigma(),
            _ => 1.0,
        }
    }

    /// Starts the next step at schedule entry `index` (img2img: `N − ⌊N·strength⌋`) instead of
    /// looking its timestep up. DDIM needs no index and ignores it.
    pub fn set_begin_index(&mut self, index: usize) {
        match self {
            Scheduler::Ddim(_) => {}
            Scheduler::Euler(s) => s.set_begin_index(index),
            Scheduler::EulerAncestral(s) => s.set_begin_index(index),
            Scheduler::DpmSolverMultistep(s) => s.set_begin_index(index),
            Scheduler::Lcm(s) => s.set_begin_index(index),
        }
    }

    /// Whether the step at `timestep` consumes noise: always for Euler Ancestral, all but the
    /// last step for LCM, DDIM when η > 0.
    pub fn needs_noise(&self, timestep: f64) -> bool {
        match self {
            Scheduler::Ddim(s) => s.needs_noise(),
            Scheduler::EulerAncestral(_) => true,
            Scheduler::Lcm(s) => s.needs_noise(timestep),
            Scheduler::Euler(_) | Scheduler::DpmSolverMultistep(_) => false,
        }
    }

    /// The model input at `timestep`: `sample / √(σ² + 1)` for Euler and Euler Ancestral, the
    /// sample itself otherwise.
    pub fn scale_model_input(&self, sample: Tensor<4>, timestep: f64) -> Result<Tensor<4>> {
        match self {
            Scheduler::Euler(s) => s.scale_model_input(sample, timestep),
            Scheduler::EulerAncestral(s) => s.scale_model_input(sample, timestep),
            _ => Ok(sample),
        }
    }

    /// One denoising step from `timestep` (a value of [`timesteps`](Self::timesteps)).
    /// `noise` (standard normal, the sample's shape) is required when
    /// [`needs_noise`](Self::needs_noise) and ignored otherwise.
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        timestep: f64,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<SchedulerOutput> {
        match self {
            Scheduler::Ddim(s) => s.step(model_output, timestep, sample, noise),
            Scheduler::Euler(s) => s.step(model_output, timestep, sample),
            Scheduler::EulerAncestral(s) => s.step(model_output, timestep, sample, noise),
            Scheduler::DpmSolverMultistep(s) => s.step(model_output, timestep, sample),
            Scheduler::Lcm(s) => s.step(model_output, timestep, sample, noise),
        }
    }

    /// [`step`](Self::step), calling `draw(&sample)` for noise only when the step needs it (so
    /// the caller's RNG advances exactly as diffusers' generator does).
    pub fn step_with(
        &mut self,
        model_output: Tensor<4>,
        timestep: f64,
        sample: Tensor<4>,
        draw: impl FnOnce(&Tensor<4>) -> Tensor<4>,
    ) -> Result<SchedulerOutput> {
        let noise = self.needs_noise(timestep).then(|| draw(&sample));
        self.step(model_output, timestep, sample, noise)
    }

    /// Forward diffusion of a clean sample to `timestep` (img2img).
    pub fn add_noise(
        &self,
        original: Tensor<4>,
        noise: Tensor<4>,
        timestep: f64,
    ) -> Result<Tensor<4>> {
        dispatch!(self, s => s.add_noise(original, noise, timestep))
    }
}
