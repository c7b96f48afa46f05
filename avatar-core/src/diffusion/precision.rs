//! The floating-point precision the diffusion models compute in.
//!
//! Weights are always read in their stored dtype and converted; [`Precision::F32`] (the default)
//! computes everything in f32, [`Precision::F16`] / [`Precision::BF16`] cast the model weights and
//! run the UNet, ControlNets, text and image encoders, adapters and the VAE in half precision
//! where the device supports it (wgpu with `shader-f16`, CUDA; also `flex` on CPU, which saves
//! memory rather than time). Schedulers, guidance and everything between the models stay f32:
//! each model casts its inputs to its own dtype and returns f32, as diffusers' pipelines do around
//! `torch_dtype=torch.float16` models.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{AvatarError, Result};

/// Compute precision of the diffusion models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats (the reference; the only precision of the parity tests at 1e-4).
    #[default]
    F32,
    /// IEEE half precision (`torch.float16`).
    F16,
    /// bfloat16 (`torch.bfloat16`): f32's range with 8 bits of mantissa.
    BF16,
}

impl Precision {
    /// The burn dtype of the weights and activations.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::BF16 => FloatDType::BF16,
        }
    }

    /// A typed error when `device` cannot compute in this precision.
    pub fn check(self, device: &Device) -> Result<()> {
        let dtype = DType::from(self.float_dtype());
        if device.supports_dtype(dtype) {
            Ok(())
        } else {
            Err(AvatarError::invalid(
                "precision",
                format!("{self} is not supported by {device:?}"),
            ))
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "fp32",
            Precision::F16 => "fp16",
            Precision::BF16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = AvatarError;

    /// `fp32` / `f32` / `float32`, `fp16` / `f16` / `float16` / `half`, `bf16` / `bfloat16`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" | "float" => Ok(Precision::F32),
            "fp16" | "f16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::BF16),
            other => Err(AvatarError::invalid(
                "precision",
                format!("unknown precision {other:?} (expected fp32, fp16 or bf16)"),
            )),
        }
    }
}

/// `module` with every float parameter cast to `dtype` (parameter ids kept).
pub fn cast_module<M: Module>(module: M, dtype: FloatDType) -> M {
    struct Caster(FloatDType);
    impl ModuleMapper for Caster {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|tensor| tensor.cast(dtype))
        }
    }
    module.map(&mut Caster(dtype))
}

/// The dtype of a parameter, for casting a module's inputs to it.
pub(crate) fn dtype_of<const D: usize>(param: &Param<Tensor<D>>) -> DType {
    param.val().dtype()
}

/// `tensor` as f32 (a no-op when it already is).
pub(crate) fn to_f32<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
    tensor.cast(FloatDType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_refuses_others() {
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::F16);
        assert_eq!("Half".parse::<Precision>().unwrap(), Precision::F16);
        assert_eq!("bfloat16".parse::<Precision>().unwrap(), Precision::BF16);
        assert_eq!("float32".parse::<Precision>().unwrap(), Precision::F32);
        let err = "int8".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("int8") && err.contains("fp16"), "{err}");
        for p in [Precision::F32, Precision::F16, Precision::BF16] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
    }

    #[test]
    fn casts_every_parameter() {
        let device = Device::default();
        let linear = burn::nn::LinearConfig::new(4, 3).init(&device);
        let half = cast_module(linear, FloatDType::F16);
        assert_eq!(dtype_of(&half.weight), DType::F16);
        assert_eq!(dtype_of(half.bias.as_ref().unwrap()), DType::F16);
        let x = Tensor::<2>::ones([2, 4], &device).cast(FloatDType::F16);
        assert_eq!(to_f32(half.forward(x)).dtype(), DType::F32);
    }
}
