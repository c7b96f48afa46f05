//! [`SchedulerKind`]: which scheduler, parsed from a short name or a diffusers class name.

use std::fmt;
use std::str::FromStr;

use crate::error::{AvatarError, Result};

/// The supported schedulers.
///
/// Parsed (case-insensitive, `-` or space for `_`) from the short names `ddim`, `euler`,
/// `euler_karras`, `euler_a` (`euler_ancestral`, `k_euler_a`), `dpmpp_2m` (`dpm++_2m`),
/// `dpmpp_2m_karras`, `lcm`, or from the diffusers class names (`_class_name`).
///
/// ```
/// use avatar_core::diffusion::schedulers::SchedulerKind;
/// assert_eq!("euler_a".parse::<SchedulerKind>()?, SchedulerKind::EulerAncestral);
/// assert_eq!("DPMSolverMultistepScheduler".parse::<SchedulerKind>()?, SchedulerKind::DpmSolverMultistep);
/// assert!("pndm".parse::<SchedulerKind>().is_err());
/// # Ok::<(), avatar_core::AvatarError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `DDIMScheduler`.
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler` (stochastic).
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` (DPM++ 2M by default).
    DpmSolverMultistep,
    /// `LCMScheduler` (stochastic, for latent-consistency models).
    Lcm,
}

impl SchedulerKind {
    /// Every kind.
    pub const ALL: [SchedulerKind; 5] = [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::Lcm,
    ];

    /// The names accepted by [`FromStr`], for error messages and CLIs.
    pub const ACCEPTED: &'static str =
        "ddim, euler, euler_karras, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm";

    /// The diffusers class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerKind::Lcm => "LCMScheduler",
        }
    }

    /// The canonical short name.
    pub fn name(&self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler_a",
            SchedulerKind::DpmSolverMultistep => "dpmpp_2m",
            SchedulerKind::Lcm => "lcm",
        }
    }
}

/// Lower case, with `-` and spaces as `_` and `dpm++` as `dpmpp`.
pub(super) fn normalize(name: &str) -> String {
    name.trim()
        .to_ascii_lowercase()
        .replace(['-', ' '], "_")
        .replace("dpm++", "dpmpp")
}

impl FromStr for SchedulerKind {
    type Err = AvatarError;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(kind) = Self::ALL.into_iter().find(|k| k.class_name() == s.trim()) {
            return Ok(kind);
        }
        Ok(match normalize(s).as_str() {
            "ddim" => SchedulerKind::Ddim,
            "euler" | "euler_karras" | "k_euler" => SchedulerKind::Euler,
            "euler_a" | "euler_ancestral" | "k_euler_a" => SchedulerKind::EulerAncestral,
            "dpmpp_2m" | "dpmpp_2m_karras" => SchedulerKind::DpmSolverMultistep,
            "lcm" => SchedulerKind::Lcm,
            _ => {
                return Err(AvatarError::invalid(
                    "scheduler",
                    format!(
                        "unknown scheduler `{s}` (expected one of: {})",
                        Self::ACCEPTED
                    ),
                ));
            }
        })
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
