//! Run-time backend selection shared by every front end (Rust, Python, Node, HTTP).

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::AvatarError;

/// Which compute backend to run on, parsed from `"cpu" | "wgpu" | "cuda[:N]" | "auto"`.
///
/// ```
/// use avatar_core::DeviceSpec;
/// let spec: DeviceSpec = "cpu".parse().unwrap();
/// assert_eq!(spec, DeviceSpec::Cpu);
/// assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
/// assert!("tpu".parse::<DeviceSpec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// The `flex` CPU backend (pure Rust, SIMD + rayon).
    #[default]
    Cpu,
    /// The wgpu backend on the default adapter (Vulkan, Metal, DX12 or WebGPU).
    Wgpu,
    /// The CUDA backend on the given GPU index (needs the `cuda` feature).
    Cuda(usize),
    /// The best compiled backend: CUDA, then wgpu with a hardware adapter, then CPU.
    Auto,
}

impl DeviceSpec {
    /// The names accepted by [`FromStr`], for error messages and CLIs.
    pub const ACCEPTED: &'static str = "cpu, wgpu, cuda, cuda:N, auto";

    /// Whether this build of the library can run this backend.
    pub fn is_compiled(&self) -> bool {
        match self {
            DeviceSpec::Cpu | DeviceSpec::Auto => true,
            DeviceSpec::Wgpu => cfg!(feature = "wgpu"),
            DeviceSpec::Cuda(_) => cfg!(feature = "cuda"),
        }
    }

    /// Resolves the spec to the concrete spec that [`DeviceSpec::device`] will use.
    ///
    /// `Auto` prefers CUDA when compiled in, else CPU: wgpu is never chosen implicitly because a
    /// software Vulkan driver is much slower than the CPU backend.
    pub fn resolve(&self) -> DeviceSpec {
        match self {
            DeviceSpec::Auto if cfg!(feature = "cuda") => DeviceSpec::Cuda(0),
            DeviceSpec::Auto => DeviceSpec::Cpu,
            other => *other,
        }
    }

    /// Creates the burn [`Device`] for this spec, or a typed error if the backend is not compiled.
    /// The CPU device also tunes the process's heap for tensor work ([`crate::allocator`]).
    pub fn device(&self) -> Result<Device, AvatarError> {
        let spec = self.resolve();
        if !spec.is_compiled() {
            return Err(AvatarError::BackendNotCompiled {
                backend: spec.to_string(),
                feature: match spec {
                    DeviceSpec::Cuda(_) => "cuda",
                    _ => "wgpu",
                },
            });
        }
        Ok(match spec {
            DeviceSpec::Cpu | DeviceSpec::Auto => {
                crate::allocator::tune_for_tensors();
                Device::flex()
            }
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu => Device::wgpu(burn::tensor::DeviceKind::default()),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => Device::cuda(index),
            #[allow(unreachable_patterns)]
            _ => unreachable!("checked by is_compiled"),
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Wgpu => f.write_str("wgpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = AvatarError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let invalid = || AvatarError::InvalidOption {
            field: "device",
            message: format!(
                "unknown device {s:?}; expected one of {}",
                DeviceSpec::ACCEPTED
            ),
        };
        match lower.as_str() {
            "cpu" | "flex" => Ok(DeviceSpec::Cpu),
            "wgpu" | "gpu" | "vulkan" => Ok(DeviceSpec::Wgpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            "auto" | "" => Ok(DeviceSpec::Auto),
            other => match other.strip_prefix("cuda:") {
                Some(index) => index.parse().map(DeviceSpec::Cuda).map_err(|_| invalid()),
                None => Err(invalid()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_round_trip() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("WGPU", DeviceSpec::Wgpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("auto", DeviceSpec::Auto),
        ] {
            let parsed: DeviceSpec = text.parse().unwrap();
            assert_eq!(parsed, spec);
            assert_eq!(parsed.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn rejects_unknown_names_with_the_accepted_list() {
        for bad in ["tpu", "cuda:x", "cuda:-1", "metal2"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains("device") && err.contains("cuda:N"), "{err}");
        }
    }

    #[test]
    fn cuda_is_a_typed_error_when_not_compiled() {
        if !cfg!(feature = "cuda") {
            let err = DeviceSpec::Cuda(0).device().unwrap_err();
            assert!(matches!(
                err,
                AvatarError::BackendNotCompiled {
                    feature: "cuda",
                    ..
                }
            ));
        }
        assert!(DeviceSpec::Auto.resolve().is_compiled());
        DeviceSpec::Cpu.device().unwrap();
    }
}
