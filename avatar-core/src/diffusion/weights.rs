//! Strict safetensors loading for the diffusion components: every tensor the model needs must be
//! in the file with the right shape, and every tensor in the file must be used (apart from known
//! buffers such as `position_ids`), or nothing is loaded and the error lists the offenders.

use std::path::Path;

use burn::module::Module;
use burn::store::{
    ApplyError, ChainAdapter, FloatCastAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use burn::tensor::DType;
use serde::de::DeserializeOwned;

use crate::error::{AvatarError, Result};

/// How the names in a file map onto our module paths.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    /// `(regex, replacement)` pairs applied in order to every file key.
    pub remaps: Vec<(String, String)>,
    /// File keys ending with one of these suffixes are ignored (buffers the model does not need).
    pub ignore: Vec<String>,
}

impl KeyMap {
    /// Adds a `(regex, replacement)` remap.
    pub fn remap(mut self, from: &str, to: &str) -> Self {
        self.remaps.push((from.to_owned(), to.to_owned()));
        self
    }

    /// Ignores file keys ending with `suffix`.
    pub fn ignore(mut self, suffix: &str) -> Self {
        self.ignore.push(suffix.to_owned());
        self
    }
}

/// Reads and parses a JSON config file (diffusers' / transformers' `config.json`).
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| AvatarError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| AvatarError::Config(format!("{}: {e}", path.display())))
}

/// The tensor names stored in a safetensors file.
pub fn tensor_names(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| AvatarError::io(path, e))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        AvatarError::Weights(format!("{}: not a safetensors file: {e}", path.display()))
    })?;
    Ok(metadata.tensors().keys().cloned().collect())
}

/// Loads `path` into `module` (PyTorch layout: linear weights transposed, norm `weight`/`bias` as
/// `gamma`/`beta`; f16/bf16 converted to f32), strictly: see the module docs.
pub fn load_strict<M: Module>(module: M, path: &Path, keys: &KeyMap) -> Result<M> {
    apply_strict(
        module,
        SafetensorsStore::from_file(path),
        &path.display().to_string(),
        keys,
    )
}

/// [`load_strict`] from safetensors bytes (e.g. a component converted from a single file);
/// `label` names the source in errors.
pub fn load_strict_bytes<M: Module>(
    module: M,
    bytes: Vec<u8>,
    label: &str,
    keys: &KeyMap,
) -> Result<M> {
    apply_strict(
        module,
        SafetensorsStore::from_bytes(Some(bytes)),
        label,
        keys,
    )
}

fn apply_strict<M: Module>(
    module: M,
    store: SafetensorsStore,
    file: &str,
    keys: &KeyMap,
) -> Result<M> {
    let file = file.to_owned();
    let mut store = store
        .with_from_adapter(ChainAdapter::new(
            PyTorchToBurnAdapter,
            FloatCastAdapter::to(DType::F32),
        ))
        .skip_enum_variants(true)
        .allow_partial(true)
        .validate(false);
    for (from, to) in &keys.remaps {
        store = store.with_key_remapping(from, to.clone());
    }
    let mut module = module;
    let result = module
        .load_from(&mut store)
        .map_err(|e| AvatarError::Weights(format!("{file}: {e}")))?;
    let missing: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
    let unexpected: Vec<String> = result
        .unused
        .iter()
        .filter(|k| {
            !keys
                .ignore
                .iter()
                .any(|suffix| k.ends_with(suffix.as_str()))
        })
        .cloned()
        .collect();
    let mismatched: Vec<String> = result
        .errors
        .iter()
        .map(|e| match e {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => format!(
                "{path}: expected {:?}, found {:?}",
                expected.to_vec(),
                found.to_vec()
            ),
            other => other.to_string(),
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        Ok(module)
    } else {
        Err(AvatarError::WeightKeys {
            file,
            missing,
            unexpected,
            mismatched,
        })
    }
}
