//! [`SchedulerConfig`]: diffusers' `scheduler_config.json`, read with serde.
//!
//! Every field is optional because diffusers fills a missing key with the *class* default, and
//! the defaults differ between schedulers (`timestep_spacing` is `leading` for DDIM and LCM but
//! `linspace` for Euler and DPM-Solver; `beta_schedule` is `linear` except for LCM). Each
//! scheduler resolves the `None`s with its own defaults. Unknown keys are ignored.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{AvatarError, Result};

/// Defines a string-valued option: `FromStr` (unknown values give
/// [`AvatarError::InvalidOption`]), `Display`, and serde via `FromStr`.
macro_rules! string_option {
    ($(#[$meta:meta])* $name:ident, $field:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The name diffusers uses.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = AvatarError;

            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(AvatarError::invalid(
                        $field,
                        format!("unknown value `{s}` (expected one of: {})", [$($text),+].join(", ")),
                    )),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = AvatarError;

            fn try_from(s: String) -> Result<Self> {
                s.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_option!(
    /// How the training betas are laid out over `num_train_timesteps`.
    BetaSchedule, "beta_schedule", {
        /// `linspace(beta_start, beta_end)`.
        Linear => "linear",
        /// `linspace(sqrt(beta_start), sqrt(beta_end))²` (Stable Diffusion).
        ScaledLinear => "scaled_linear",
        /// The cosine schedule of improved DDPM.
        SquaredcosCapV2 => "squaredcos_cap_v2",
    }
);

string_option!(
    /// What the denoising model predicts.
    PredictionType, "prediction_type", {
        /// The added noise ε.
        Epsilon => "epsilon",
        /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768 models).
        VPrediction => "v_prediction",
        /// The clean sample x₀.
        Sample => "sample",
    }
);

string_option!(
    /// How inference timesteps are picked from the training timesteps (table 2 of
    /// "Common Diffusion Noise Schedules and Sample Steps are Flawed").
    TimestepSpacing, "timestep_spacing", {
        /// `0, k, 2k, … + steps_offset` with `k = T // N`.
        Leading => "leading",
        /// `T, T − T/N, … − 1`, rounded: always starts at the last training step.
        Trailing => "trailing",
        /// `linspace(0, T − 1, N)`.
        Linspace => "linspace",
    }
);

string_option!(
    /// The last sigma of the schedule.
    FinalSigmasType, "final_sigmas_type", {
        /// σ = 0: the last step returns the denoised sample.
        Zero => "zero",
        /// The smallest training sigma.
        SigmaMin => "sigma_min",
    }
);

string_option!(
    /// The second-order update rule of DPM-Solver.
    SolverType, "solver_type", {
        /// The midpoint rule (diffusers' default, DPM++ 2M).
        Midpoint => "midpoint",
        /// Heun's rule.
        Heun => "heun",
    }
);

/// diffusers' `scheduler_config.json` (the subset these schedulers use).
///
/// `None` means "the scheduler class's default", like a key missing from the JSON file.
///
/// ```
/// use avatar_core::diffusion::schedulers::{SchedulerConfig, SchedulerKind, TimestepSpacing};
/// let config = SchedulerConfig::from_json_str(
///     r#"{"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear",
///         "timestep_spacing": "leading", "lambda_min_clipped": -Infinity, "unknown_key": 1}"#,
/// )?;
/// assert_eq!(config.kind()?, Some(SchedulerKind::Euler));
/// assert_eq!(config.timestep_spacing, Some(TimestepSpacing::Leading));
/// # Ok::<(), avatar_core::AvatarError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The diffusers class that wrote the file (`EulerDiscreteScheduler`, ...).
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Training timesteps T (1000).
    pub num_train_timesteps: Option<usize>,
    /// First beta of the training schedule.
    pub beta_start: Option<f64>,
    /// Last beta of the training schedule.
    pub beta_end: Option<f64>,
    /// Layout of the betas.
    pub beta_schedule: Option<BetaSchedule>,
    /// Explicit betas, overriding `beta_start`/`beta_end`/`beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// Rescale the betas to zero terminal SNR.
    pub rescale_betas_zero_snr: Option<bool>,
    /// What the model predicts.
    pub prediction_type: Option<PredictionType>,
    /// How inference timesteps are spaced.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to `leading` timesteps (1 for Stable Diffusion).
    pub steps_offset: Option<usize>,
    /// DDIM/LCM: use ᾱ = 1 (instead of ᾱ₀) past the last step.
    pub set_alpha_to_one: Option<bool>,
    /// DDIM/LCM: clamp the predicted x₀ to ±`clip_sample_range`.
    pub clip_sample: Option<bool>,
    /// DDIM/LCM: the clamp range.
    pub clip_sample_range: Option<f64>,
    /// Dynamic thresholding (not supported: must be false).
    pub thresholding: Option<bool>,
    /// Euler/DPM: Karras et al. sigmas (ρ = 7).
    pub use_karras_sigmas: Option<bool>,
    /// Unsupported sigma schedules (must be false).
    pub use_exponential_sigmas: Option<bool>,
    /// Unsupported sigma schedules (must be false).
    pub use_beta_sigmas: Option<bool>,
    /// Unsupported sigma schedules (must be false).
    pub use_lu_lambdas: Option<bool>,
    /// Unsupported sigma schedules (must be false).
    pub use_flow_sigmas: Option<bool>,
    /// Euler: Karras sigma range override.
    pub sigma_min: Option<f64>,
    /// Euler: Karras sigma range override.
    pub sigma_max: Option<f64>,
    /// Euler: sigma interpolation (only `linear`).
    pub interpolation_type: Option<String>,
    /// Euler: timestep type (only `discrete`).
    pub timestep_type: Option<String>,
    /// Euler/DPM: the last sigma.
    pub final_sigmas_type: Option<FinalSigmasType>,
    /// DPM: solver order (1, 2 or 3).
    pub solver_order: Option<usize>,
    /// DPM: algorithm (only `dpmsolver++`).
    pub algorithm_type: Option<String>,
    /// DPM: second-order rule.
    pub solver_type: Option<SolverType>,
    /// DPM: lower the order on the last steps of short schedules.
    pub lower_order_final: Option<bool>,
    /// DPM: always use a first-order last step.
    pub euler_at_final: Option<bool>,
    /// DPM: clip the schedule where log-SNR λ falls below this.
    pub lambda_min_clipped: Option<f64>,
    /// DPM: learned variance (unsupported: must be null).
    pub variance_type: Option<String>,
    /// LCM: length of the distillation schedule (50).
    pub original_inference_steps: Option<usize>,
    /// LCM: timestep multiplier in the boundary-condition scalings (10).
    pub timestep_scaling: Option<f64>,
}

impl SchedulerConfig {
    /// Parses a `scheduler_config.json`. Python's `NaN`/`Infinity`/`-Infinity` (which diffusers
    /// writes, e.g. `"lambda_min_clipped": -Infinity`) are read as `null`, i.e. the default.
    pub fn from_json_str(json: &str) -> Result<Self> {
        serde_json::from_str(&python_json_to_strict(json))
            .map_err(|e| AvatarError::Config(format!("scheduler_config.json: {e}")))
    }

    /// Reads a `scheduler_config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| AvatarError::io(path, e))?;
        Self::from_json_str(&text)
    }

    /// The scheduler named by `_class_name`, `None` when the file has none.
    pub fn kind(&self) -> Result<Option<super::SchedulerKind>> {
        self.class_name.as_deref().map(str::parse).transpose()
    }

    /// Applies the options a scheduler name implies (`dpmpp_2m` → DPM-Solver++ of order 2,
    /// `dpmpp_2m_karras` → also Karras sigmas, `euler_karras` → Euler with Karras sigmas) and
    /// returns the scheduler kind. See [`super::SchedulerKind`] for the accepted names.
    pub fn apply_name(&mut self, name: &str) -> Result<super::SchedulerKind> {
        let kind: super::SchedulerKind = name.parse()?;
        let normalized = super::kind::normalize(name);
        match normalized.as_str() {
            "dpmpp_2m" | "dpmpp_2m_karras" => {
                self.algorithm_type = Some("dpmsolver++".into());
                self.solver_order = Some(2);
                self.use_karras_sigmas = Some(normalized.ends_with("_karras"));
            }
            "euler_karras" => self.use_karras_sigmas = Some(true),
            _ => {}
        }
        Ok(kind)
    }
}

/// Rewrites Python's non-standard JSON number tokens (outside strings) to `null`.
fn python_json_to_strict(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            let len = if c == '\\' {
                c.len_utf8() + rest[1..].chars().next().map_or(0, char::len_utf8)
            } else {
                c.len_utf8()
            };
            in_string = c != '"';
            out.push_str(&rest[..len]);
            rest = &rest[len..];
            continue;
        }
        if let Some(token) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push_str("null");
            rest = &rest[token.len()..];
            continue;
        }
        in_string = c == '"';
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_tokens_become_null_outside_strings() {
        assert_eq!(
            python_json_to_strict(r#"{"a": -Infinity, "b": "NaN \"Infinity\"", "c": NaN}"#),
            r#"{"a": null, "b": "NaN \"Infinity\"", "c": null}"#
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert_eq!(
            "middle".parse::<TimestepSpacing>().unwrap_err().field(),
            Some("timestep_spacing")
        );
        assert!(SchedulerConfig::from_json_str(r#"{"timestep_spacing": "middle"}"#).is_err());
        assert!(SchedulerConfig::from_json_str(r#"{"trained_betas": null}"#).is_ok());
    }
}
