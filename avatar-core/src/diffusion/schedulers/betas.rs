//! The training noise schedule (betas and ᾱ = Πα), bit-exact with what diffusers builds in torch.
//!
//! diffusers keeps these in float32: `torch.linspace` (whose CPU kernel computes
//! `start + step·i` with a fused multiply-add, from both ends), a float32 square, and a
//! `torch.cumprod` that accumulates in float64 and rounds each prefix to float32.

use super::config::{BetaSchedule, SchedulerConfig};
use crate::error::{AvatarError, Result};

/// The beta defaults of a scheduler class (used for keys missing from the config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BetaDefaults {
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
}

impl BetaDefaults {
    /// DDIM, Euler, Euler Ancestral, DPM-Solver.
    pub const DDPM: BetaDefaults = BetaDefaults {
        beta_start: 0.0001,
        beta_end: 0.02,
        beta_schedule: BetaSchedule::Linear,
    };
    /// LCM.
    pub const LCM: BetaDefaults = BetaDefaults {
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: BetaSchedule::ScaledLinear,
    };
}

/// The training schedule: `betas[t]` and `alphas_cumprod[t]` (ᾱ_t) for t in 0..T, in float32.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSchedule {
    /// β_t.
    pub betas: Vec<f32>,
    /// ᾱ_t = Π_{s≤t} (1 − β_s).
    pub alphas_cumprod: Vec<f32>,
}

impl TrainingSchedule {
    /// Builds the schedule from a config; `defaults` fill the missing beta keys. `zero_snr_clamp`:
    /// after rescaling to zero terminal SNR, set ᾱ_{T−1} = 2⁻²⁴ (Euler and DPM-Solver do).
    pub(crate) fn new(
        config: &SchedulerConfig,
        defaults: BetaDefaults,
        zero_snr_clamp: bool,
    ) -> Result<Self> {
        let n = config.num_train_timesteps.unwrap_or(1000);
        if n < 2 {
            return Err(AvatarError::invalid(
                "num_train_timesteps",
                format!("must be at least 2, got {n}"),
            ));
        }
        let start = config.beta_start.unwrap_or(defaults.beta_start);
        let end = config.beta_end.unwrap_or(defaults.beta_end);
        let mut betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule) {
            (Some(trained), _) => {
                if trained.len() != n {
                    return Err(AvatarError::invalid(
                        "trained_betas",
                        format!("has {} values for {n} num_train_timesteps", trained.len()),
                    ));
                }
                trained.iter().map(|&b| b as f32).collect()
            }
            (None, schedule) => match schedule.unwrap_or(defaults.beta_schedule) {
                BetaSchedule::Linear => torch_linspace_f32(start, end, n),
                BetaSchedule::ScaledLinear => torch_linspace_f32(start.powf(0.5), end.powf(0.5), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar_cosine(n),
            },
        };
        let rescale = config.rescale_betas_zero_snr.unwrap_or(false);
        if rescale {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut alphas_cumprod = cumprod(betas.iter().map(|b| 1.0 - b));
        if rescale && zero_snr_clamp {
            alphas_cumprod[n - 1] = 2f32.powi(-24);
        }
        Ok(TrainingSchedule {
            betas,
            alphas_cumprod,
        })
    }

    /// The number of training timesteps T.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Always false (T ≥ 2).
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// The Karras/k-diffusion sigma of every training step, `√((1 − ᾱ_t)/ᾱ_t)` in float32.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU.
fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// `torch.cumprod` of a float32 sequence (float64 accumulator, each prefix rounded to float32).
fn cumprod(values: impl Iterator<Item = f32>) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .map(|v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar(T)` with the cosine transform (`squaredcos_cap_v2`).
fn betas_for_alpha_bar_cosine(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (algorithm 1 of arXiv:2305.08891), in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut sqrt_ab: Vec<f32> = cumprod(betas.iter().map(|b| 1.0 - b))
        .into_iter()
        .map(f32::sqrt)
        .collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    let scale = first / (first - last);
    for s in &mut sqrt_ab {
        *s = (*s - last) * scale;
    }
    let alphas_bar: Vec<f32> = sqrt_ab.iter().map(|s| s * s).collect();
    std::iter::once(alphas_bar[0])
        .chain(alphas_bar.windows(2).map(|w| w[1] / w[0]))
        .map(|a| 1.0 - a)
        .collect()
}
