//! DPM-Solver++ multistep (Lu et al. 2022, arXiv:2211.01095): diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"` (DPM++ 2M by default).

use burn::tensor::Tensor;

use super::betas::{BetaDefaults, TrainingSchedule};
use super::common::{
    SchedulerOutput, StepCounter, check_num_steps, check_shape, index_for_timestep,
};
use super::config::{
    BetaSchedule, FinalSigmasType, PredictionType, SchedulerConfig, SolverType, TimestepSpacing,
};
use super::euler::unsupported_sigma_options;
use super::numpy;
use crate::error::{AvatarError, Result};

/// The multistep DPM-Solver++ in data (x₀) prediction, working in λ = log(α/σ).
///
/// The first step is first-order (no history), and so is the last step whenever the final sigma
/// is zero (the default), for short schedules with `lower_order_final`, or with `euler_at_final`.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    schedule: TrainingSchedule,
    beta_schedule: BetaSchedule,
    prediction: PredictionType,
    spacing: TimestepSpacing,
    steps_offset: usize,
    karras: bool,
    final_sigmas: FinalSigmasType,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    lambda_min_clipped: f64,
    ready: bool,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    counter: StepCounter,
    /// The last `solver_order` x₀ predictions, oldest first.
    model_outputs: Vec<Option<Tensor<4>>>,
    lower_order_nums: usize,
}

impl DpmSolverMultistepScheduler {
    /// Builds the scheduler (class defaults: linear betas, `linspace`, order 2, midpoint,
    /// `lower_order_final`, final sigma 0).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        unsupported_sigma_options(config)?;
        match config.algorithm_type.as_deref() {
            None | Some("dpmsolver++") | Some("deis") => {}
            Some(other) => {
                return Err(AvatarError::invalid(
                    "algorithm_type",
                    format!("`{other}` is not supported (only dpmsolver++)"),
                ));
            }
        }
        if let Some(variance) = &config.variance_type {
            return Err(AvatarError::invalid(
                "variance_type",
                format!("`{variance}` is not supported"),
            ));
        }
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            return Err(AvatarError::invalid(
                "solver_order",
                format!("must be 1, 2 or 3, got {solver_order}"),
            ));
        }
        let schedule = TrainingSchedule::new(config, BetaDefaults::DDPM, true)?;
        let num_train = schedule.len();
        Ok(DpmSolverMultistepScheduler {
            sigmas: schedule.sigmas(),
            schedule,
            beta_schedule: config.beta_schedule.unwrap_or(BetaSchedule::Linear),
            prediction: config.prediction_type.unwrap_or(PredictionType::Epsilon),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            steps_offset: config.steps_offset.unwrap_or(0),
            karras: config.use_karras_sigmas.unwrap_or(false),
            final_sigmas: config.final_sigmas_type.unwrap_or(FinalSigmasType::Zero),
            solver_order,
            solver_type: config.solver_type.unwrap_or(SolverType::Midpoint),
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            lambda_min_clipped: config.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
            ready: false,
            timesteps: (0..num_train).rev().map(|t| t as f64).collect(),
            counter: StepCounter::default(),
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
        })
    }

    /// The training schedule.
    pub fn training_schedule(&self) -> &TrainingSchedule {
        &self.schedule
    }

    /// Sets `n` integer timesteps and their sigmas; with Karras sigmas the spacing is ignored
    /// and each Karras sigma is mapped back to its (rounded) training timestep.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let num_train = self.schedule.len();
        check_num_steps(n, num_train, "num_train_timesteps")?;
        let table = self.schedule.sigmas();
        // Training steps whose log-SNR λ is below `lambda_min_clipped` are cut off the top.
        let clipped = self
            .schedule
            .alphas_cumprod
            .iter()
            .rev()
            .map(|&a| (a.sqrt().ln() - (1.0 - a).sqrt().ln()) as f64)
            .take_while(|&lambda| lambda < self.lambda_min_clipped)
            .count();
        let last = num_train - clipped;
        let mut timesteps: Vec<f64> = match self.spacing {
            TimestepSpacing::Linspace => {
                let mut t = numpy::linspace(0.0, (last - 1) as f64, n + 1, true);
                t.reverse();
                t.pop();
                t.into_iter().map(numpy::round).collect()
            }
            TimestepSpacing::Leading => {
                let ratio = last / (n + 1);
                if ratio == 0 {
                    return Err(AvatarError::invalid(
                        "num_inference_steps",
                        format!("{n} is too many for leading spacing over {last} timesteps"),
                    ));
                }
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                numpy::arange(last as f64, 0.0, -(num_train as f64 / n as f64))
                    .into_iter()
                    .map(|t| numpy::round(t) - 1.0)
                    .collect()
            }
        };
        if timesteps.is_empty() {
            return Err(AvatarError::invalid(
                "lambda_min_clipped",
                "clips every training timestep",
            ));
        }
        let mut sigmas: Vec<f64> = if self.karras {
            let log_sigmas = numpy::log_table(&table);
            let sigmas = numpy::karras_sigmas(table[0] as f64, table[num_train - 1] as f64, n);
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = numpy::sigma_to_t(s, &log_sigmas);
                    if self.beta_schedule == BetaSchedule::SquaredcosCapV2 {
                        t.trunc()
                    } else {
                        numpy::round(t)
                    }
                })
                .collect();
            sigmas
        } else {
            timesteps
                .iter()
                .map(|&t| numpy::interp_table(t, &table))
                .collect()
        };
        sigmas.push(match self.final_sigmas {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => table[0] as f64,
        });
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.timesteps = timesteps;
        self.counter.reset();
        self.model_outputs = vec![None; self.solver_order];
        self.lower_order_nums = 0;
        self.ready = true;
        Ok(())
    }

    /// The inference timesteps (integers).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// The N + 1 sigmas.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// Starts at schedule entry `index` instead of looking the first timestep up (img2img).
    pub fn set_begin_index(&mut self, index: usize) {
        self.counter.begin = Some(index);
    }

    /// The position of `timestep` (an unknown timestep means the last step, like diffusers).
    fn index_for_timestep(&self, timestep: f64) -> usize {
        index_for_timestep(&self.timesteps, timestep).unwrap_or(self.timesteps.len() - 1)
    }

    /// One multistep update from σ_i to σ_{i+1}.
    pub fn step(
        &mut self,
        model_output: Tensor<4>,
        timestep: f64,
        sample: Tensor<4>,
    ) -> Result<SchedulerOutput> {
        if !self.ready {
            return Err(AvatarError::invalid(
                "num_inference_steps",
                "call set_timesteps before step",
            ));
        }
        check_shape("model_output", &model_output, &sample)?;
        let i = match (self.counter.step, self.counter.begin) {
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) => self.index_for_timestep(timestep),
        };
        if i + 1 >= self.sigmas.len() {
            return Err(AvatarError::invalid(
                "timestep",
                "every step of the schedule has been taken",
            ));
        }
        let len = self.timesteps.len();
        let lower_order_final = i == len - 1
            && (self.euler_at_final
                || (self.lower_order_final && len < 15)
                || self.final_sigmas == FinalSigmasType::Zero);
        let lower_order_second = i + 2 == len && self.lower_order_final && len < 15;

        let x0 = self.convert_model_output(model_output, sample.clone(), self.sigmas[i]);
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(x0));
        let history: Vec<Tensor<4>> = self.model_outputs.iter().rev().flatten().cloned().collect();
        // diffusers' order selection, capped by the available history and sigmas.
        let order = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };
        let order = order.min(history.len()).min(i + 1);
        let sigma = |k: usize| alpha_sigma_lambda(self.sigmas[k]);
        let (t, s0) = (sigma(i + 1), sigma(i));
        let prev_sample = match order {
            1 => first_order(t, s0, sample, history[0].clone()),
            2 => second_order(
                self.solver_type,
                [t, s0, sigma(i - 1)],
                sample,
                [history[0].clone(), history[1].clone()],
            ),
            _ => third_order(
                [t, s0, sigma(i - 1), sigma(i - 2)],
                sample,
                [history[0].clone(), history[1].clone(), history[2].clone()],
            ),
        };
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.solver_order);
        self.counter.step = Some(i + 1);
        Ok(SchedulerOutput {
            prev_sample,
            pred_original_sample: None,
        })
    }

    /// x₀ from the model output at noise level `sigma`.
    fn convert_model_output(
        &self,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        sigma: f32,
    ) -> Tensor<4> {
        let (alpha_t, sigma_t, _) = alpha_sigma_lambda(sigma);
        match self.prediction {
            PredictionType::Epsilon => {
                (sample - model_output.mul_scalar(sigma_t)).div_scalar(alpha_t)
            }
            PredictionType::Sample => model_output,
            PredictionType::VPrediction => {
                sample.mul_scalar(alpha_t) - model_output.mul_scalar(sigma_t)
            }
        }
    }

    /// Forward diffusion to `timestep`: `α_t·x₀ + σ_t·noise` with α_t = 1/√(σ²+1), σ_t = σ·α_t.
    pub fn add_noise(
        &self,
        original: Tensor<4>,
        noise: Tensor<4>,
        timestep: f64,
    ) -> Result<Tensor<4>> {
        check_shape("noise", &noise, &original)?;
        let i = match (self.counter.begin, self.counter.step) {
            (None, _) => self.index_for_timestep(timestep),
            (Some(_), Some(i)) | (Some(i), None) => i,
        };
        let (alpha_t, sigma_t, _) = alpha_sigma_lambda(self.sigmas[i]);
        Ok(original.mul_scalar(alpha_t) + noise.mul_scalar(sigma_t))
    }
}

/// `(α, σ, λ)` of the VP process at k-diffusion sigma `s`: α = 1/√(s²+1), σ = s·α,
/// λ = log α − log σ (float32, like diffusers' tensor scalars).
fn alpha_sigma_lambda(s: f32) -> (f32, f32, f32) {
    let alpha = 1.0 / (s * s + 1.0).sqrt();
    let sigma = s * alpha;
    (alpha, sigma, alpha.ln() - sigma.ln())
}

type Point = (f32, f32, f32);

/// DPM-Solver++(1) (= DDIM in x₀ prediction): `σ_t/σ_s·x − α_t(e^{−h} − 1)·x₀`.
fn first_order(t: Point, s: Point, sample: Tensor<4>, x0: Tensor<4>) -> Tensor<4> {
    let ((alpha_t, sigma_t, lambda_t), (_, sigma_s, lambda_s)) = (t, s);
    let h = lambda_t - lambda_s;
    sample.mul_scalar(sigma_t / sigma_s) - x0.mul_scalar(alpha_t * ((-h).exp() - 1.0))
}

/// Multistep DPM-Solver++(2M); `points` = (t, s0, s1), `m` = (m0, m1), newest first.
fn second_order(
    solver: SolverType,
    points: [Point; 3],
    sample: Tensor<4>,
    [m0, m1]: [Tensor<4>; 2],
) -> Tensor<4> {
    let [
        (alpha_t, sigma_t, lambda_t),
        (_, sigma_s0, lambda_s0),
        (_, _, lambda_s1),
    ] = points;
    let (h, h_0) = (lambda_t - lambda_s0, lambda_s0 - lambda_s1);
    let r0 = h_0 / h;
    let d1 = (m0.clone() - m1).mul_scalar(1.0 / r0);
    let phi = alpha_t * ((-h).exp() - 1.0);
    let base = sample.mul_scalar(sigma_t / sigma_s0) - m0.mul_scalar(phi);
    match solver {
        SolverType::Midpoint => base - d1.mul_scalar(0.5 * phi),
        SolverType::Heun => base + d1.mul_scalar(alpha_t * (((-h).exp() - 1.0) / h + 1.0)),
    }
}

/// Multistep DPM-Solver++(3M); `points` = (t, s0, s1, s2), `m` = (m0, m1, m2), newest first.
fn third_order(points: [Point; 4], sample: Tensor<4>, [m0, m1, m2]: [Tensor<4>; 3]) -> Tensor<4> {
    let [
        (alpha_t, sigma_t, lambda_t),
        (_, sigma_s0, lambda_s0),
        s1,
        s2,
    ] = points;
    let (h, h_0, h_1) = (lambda_t - lambda_s0, lambda_s0 - s1.2, s1.2 - s2.2);
    let (r0, r1) = (h_0 / h, h_1 / h);
    let d1_0 = (m0.clone() - m1.clone()).mul_scalar(1.0 / r0);
    let d1_1 = (m1 - m2).mul_scalar(1.0 / r1);
    let d1 = d1_0.clone() + (d1_0.clone() - d1_1.clone()).mul_scalar(r0 / (r0 + r1));
    let d2 = (d1_0 - d1_1).mul_scalar(1.0 / (r0 + r1));
    let e = (-h).exp() - 1.0;
    sample.mul_scalar(sigma_t / sigma_s0) - m0.mul_scalar(alpha_t * e)
        + d1.mul_scalar(alpha_t * (e / h + 1.0))
        - d2.mul_scalar(alpha_t * ((e + h) / (h * h) - 0.5))
}
