//! Generator weights on disk: safetensors in PyTorch layout (f32, f16 or bf16) + a JSON config.
//!
//! `model.safetensors` holds the tensors under PyTorch-style keys (`blocks.0.conv.weight`,
//! `blocks.0.norm.running_mean`, ...); the generator config is stored both in the file's
//! metadata (key `avatar.generator_config`) and, for people, in `model.json` beside it.

use std::path::{Path, PathBuf};

use burn::store::{
    ApplyError, BurnToPyTorchAdapter, ChainAdapter, FloatCastAdapter, ModuleSnapshot,
    PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::{DType, Device};

use super::config::GeneratorConfig;
use super::generator::Generator;
use crate::error::{AvatarError, Result};

/// Metadata key holding the generator config JSON inside the safetensors file.
pub const CONFIG_METADATA_KEY: &str = "avatar.generator_config";

/// The float type tensors are stored in (they are always computed in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoredDtype {
    /// 32-bit floats.
    F32,
    /// IEEE half precision (the shipped models).
    #[default]
    F16,
    /// bfloat16.
    Bf16,
}

impl StoredDtype {
    fn dtype(self) -> DType {
        match self {
            StoredDtype::F32 => DType::F32,
            StoredDtype::F16 => DType::F16,
            StoredDtype::Bf16 => DType::BF16,
        }
    }
}

impl std::str::FromStr for StoredDtype {
    type Err = AvatarError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(StoredDtype::F32),
            "f16" => Ok(StoredDtype::F16),
            "bf16" => Ok(StoredDtype::Bf16),
            other => Err(AvatarError::invalid(
                "dtype",
                format!("{other:?}: expected f32, f16 or bf16"),
            )),
        }
    }
}

/// The JSON config path beside a weights file (`model.safetensors` -> `model.json`).
pub fn config_path_for(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Serialises a generator to safetensors bytes (config embedded in the metadata).
pub fn generator_to_bytes(
    generator: &Generator,
    config: &GeneratorConfig,
    dtype: StoredDtype,
) -> Result<Vec<u8>> {
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(ChainAdapter::new(
            BurnToPyTorchAdapter,
            FloatCastAdapter::to(dtype.dtype()),
        ))
        .skip_enum_variants(true)
        .metadata(CONFIG_METADATA_KEY, config.to_json());
    generator
        .save_into(&mut store)
        .map_err(|e| AvatarError::Weights(e.to_string()))?;
    store
        .get_bytes()
        .map_err(|e| AvatarError::Weights(e.to_string()))
}

/// Saves `model.safetensors` and `model.json` beside it.
pub fn save_generator(
    generator: &Generator,
    config: &GeneratorConfig,
    path: &Path,
    dtype: StoredDtype,
) -> Result<()> {
    let bytes = generator_to_bytes(generator, config, dtype)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| AvatarError::io(dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| AvatarError::io(path, e))?;
    let json = config_path_for(path);
    std::fs::write(&json, config.to_json()).map_err(|e| AvatarError::io(json, e))
}

/// Reads the config stored in a safetensors file's metadata, if any.
pub fn config_from_metadata(bytes: &[u8]) -> Result<Option<GeneratorConfig>> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| AvatarError::Weights(format!("not a safetensors file: {e}")))?;
    match metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CONFIG_METADATA_KEY))
    {
        Some(json) => GeneratorConfig::from_json(json).map(Some),
        None => Ok(None),
    }
}

/// Loads a generator from safetensors bytes; `config` overrides the embedded one.
pub fn generator_from_bytes(
    bytes: &[u8],
    config: Option<GeneratorConfig>,
    device: &Device,
) -> Result<(GeneratorConfig, Generator)> {
    let config = match config {
        Some(config) => config,
        None => config_from_metadata(bytes)?.ok_or_else(|| {
            AvatarError::Weights(format!(
                "no generator config: pass one or store it under the `{CONFIG_METADATA_KEY}` metadata key"
            ))
        })?,
    };
    check_dtypes(bytes)?;
    let mut generator = config.init(device)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .with_from_adapter(ChainAdapter::new(
            PyTorchToBurnAdapter,
            FloatCastAdapter::to(DType::F32),
        ))
        .skip_enum_variants(true)
        .allow_partial(true)
        .validate(false);
    let result = generator
        .load_from(&mut store)
        .map_err(|e| AvatarError::Weights(e.to_string()))?;
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => AvatarError::TensorShape {
                name: path.clone(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            ApplyError::DTypeMismatch { path, found, .. } => AvatarError::TensorDtype {
                name: path.clone(),
                dtype: format!("{found:?}"),
            },
            other => AvatarError::Weights(other.to_string()),
        });
    }
    if let Some((name, _)) = result.missing.first() {
        return Err(AvatarError::MissingTensor { name: name.clone() });
    }
    Ok((config, generator))
}

/// Loads `model.safetensors`, taking the config from `model.json` beside it when present.
pub fn load_generator(path: &Path, device: &Device) -> Result<(GeneratorConfig, Generator)> {
    let bytes = std::fs::read(path).map_err(|e| AvatarError::io(path, e))?;
    let json = config_path_for(path);
    let config = match std::fs::read_to_string(&json) {
        Ok(text) => Some(GeneratorConfig::from_json(&text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(AvatarError::io(json, e)),
    };
    generator_from_bytes(&bytes, config, device)
}

/// Rejects tensors that are not f32/f16/bf16 before loading, naming the first offender.
fn check_dtypes(bytes: &[u8]) -> Result<()> {
    let tensors = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| AvatarError::Weights(format!("not a safetensors file: {e}")))?;
    for (name, view) in tensors.tensors() {
        use safetensors::Dtype;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(AvatarError::TensorDtype {
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
    }
    Ok(())
}
