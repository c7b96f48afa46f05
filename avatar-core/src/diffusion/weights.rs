//! Strict safetensors loading for the diffusion components: every tensor the model needs must be
//! in the file with the right shape, and every tensor in the file must be used (apart from known
//! buffers such as `position_ids`), or nothing is loaded and the error lists the offenders.

use std::path::Path;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::store::{
    ApplyError, ApplyResult, ChainAdapter, FloatCastAdapter, ModuleSnapshot, ModuleStore,
    PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::DType;
use serde::de::DeserializeOwned;

use super::single_file::RawTensor;
use crate::error::{AvatarError, Result};

/// How the names in a file map onto our module paths.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    /// `(regex, replacement)` pairs applied in order to every file key.
    pub remaps: Vec<(String, String)>,
    /// File keys ending with one of these suffixes are ignored (buffers the model does not need).
    pub ignore: Vec<String>,
    /// File keys starting with one of these prefixes are ignored (e.g. a checkpoint's training loss).
    pub ignore_prefixes: Vec<String>,
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

    /// Ignores file keys starting with `prefix`.
    pub fn ignore_prefix(mut self, prefix: &str) -> Self {
        self.ignore_prefixes.push(prefix.to_owned());
        self
    }

    fn ignores(&self, key: &str) -> bool {
        self.ignore
            .iter()
            .any(|suffix| key.ends_with(suffix.as_str()))
            || self
                .ignore_prefixes
                .iter()
                .any(|prefix| key.starts_with(prefix.as_str()))
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

/// The weights file `stem.safetensors` of a component folder, or, where only a variant was
/// saved (diffusers' `variant="fp16"` writes `stem.fp16.safetensors`), that single variant.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use avatar_core::diffusion::weights::component_weights;
/// std::fs::write(dir.path().join("model.fp16.safetensors"), b"").unwrap();
/// let found = component_weights(dir.path(), "model").unwrap();
/// assert!(found.ends_with("model.fp16.safetensors"));
/// ```
pub fn component_weights(dir: &Path, stem: &str) -> Result<std::path::PathBuf> {
    let plain = dir.join(format!("{stem}.safetensors"));
    if plain.is_file() {
        return Ok(plain);
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| AvatarError::io(dir, e))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| is_weights_of(name, stem))
        .collect();
    names.sort();
    let candidates: Vec<&str> = names.iter().map(String::as_str).collect();
    match pick_weights(stem, &candidates, None) {
        Some(name) => Ok(dir.join(name)),
        None if candidates.is_empty() => Err(AvatarError::io(
            plain,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such weights file"),
        )),
        None => Err(AvatarError::Weights(format!(
            "{}: no {stem}.safetensors and several variants ({}); keep one",
            dir.display(),
            candidates.join(", ")
        ))),
    }
}

/// Whether the file `name` holds safetensors weights of `stem`: `stem.safetensors` or a variant
/// such as `stem.fp16.safetensors`.
pub(crate) fn is_weights_of(name: &str, stem: &str) -> bool {
    name.ends_with(".safetensors") && name.split('.').next() == Some(stem)
}

/// The one weights file to load among `candidates` (file names of `stem`, see
/// [`is_weights_of`]): the `variant` if asked for and present, else the plain
/// `stem.safetensors`, else the only candidate; `None` when nothing or several variants remain.
pub(crate) fn pick_weights<'a>(
    stem: &str,
    candidates: &[&'a str],
    variant: Option<&str>,
) -> Option<&'a str> {
    let wanted = variant.map(|v| format!("{stem}.{v}.safetensors"));
    let plain = format!("{stem}.safetensors");
    let find = |name: &str| candidates.iter().copied().find(|n| *n == name);
    wanted
        .as_deref()
        .and_then(find)
        .or_else(|| find(&plain))
        .or(match candidates {
            [only] => Some(*only),
            _ => None,
        })
}

/// Whether `path` names a safetensors file (by its extension); anything else is read as a
/// PyTorch pickle.
pub fn is_safetensors(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// The shape of every tensor in a safetensors file or a PyTorch pickle, without reading the data
/// (for inferring a model's widths before building it).
pub fn tensor_shapes(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    let label = path.display();
    if is_safetensors(path) {
        let bytes = std::fs::read(path).map_err(|e| AvatarError::io(path, e))?;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| AvatarError::Weights(format!("{label}: not a safetensors file: {e}")))?;
        return Ok(metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.shape.clone()))
            .collect());
    }
    let reader = burn::store::pytorch::PytorchReader::new(path)
        .map_err(|e| AvatarError::Weights(format!("{label}: not a PyTorch checkpoint: {e}")))?;
    Ok(reader
        .into_tensors()
        .into_iter()
        .map(|(name, tensor)| (name, tensor.shape().to_vec()))
        .collect())
}

/// Every tensor of a safetensors file or a PyTorch pickle (`.bin`, `.pt`, `.pth`, `.ckpt`; nested
/// dicts flattened with `.`), by name, in its stored float dtype.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, RawTensor>> {
    let label = path.display();
    if is_safetensors(path) {
        let bytes = std::fs::read(path).map_err(|e| AvatarError::io(path, e))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| AvatarError::Weights(format!("{label}: not a safetensors file: {e}")))?;
        return Ok(file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let tensor = RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                };
                (name, tensor)
            })
            .collect());
    }
    use burn::store::pytorch::PytorchReader;
    use burn::store::pytorch_reader::DType as TorchDType;
    let reader = PytorchReader::new(path)
        .map_err(|e| AvatarError::Weights(format!("{label}: not a PyTorch checkpoint: {e}")))?;
    reader
        .into_tensors()
        .into_iter()
        .map(|(name, tensor)| {
            let dtype = match tensor.dtype() {
                TorchDType::F32 => safetensors::Dtype::F32,
                TorchDType::F16 => safetensors::Dtype::F16,
                TorchDType::BF16 => safetensors::Dtype::BF16,
                TorchDType::F64 => safetensors::Dtype::F64,
                other => {
                    return Err(AvatarError::Weights(format!(
                        "{label}: {name} has dtype {other:?}, expected a float"
                    )));
                }
            };
            let data = tensor
                .read()
                .map_err(|e| AvatarError::Weights(format!("{label}: {e}")))?;
            let shape = tensor.shape().to_vec();
            Ok((name, RawTensor { dtype, shape, data }))
        })
        .collect()
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

/// [`load_strict`] for a safetensors file, [`load_strict_pytorch`] (a flat state dict) for
/// anything else.
pub fn load_strict_any<M: Module>(module: M, path: &Path, keys: &KeyMap) -> Result<M> {
    if is_safetensors(path) {
        load_strict(module, path, keys)
    } else {
        load_strict_pytorch(module, path, None, keys)
    }
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
    apply(module, &mut store, &file, keys)
}

/// Loads a PyTorch pickle (`.pt`, `.pth`, `.bin`, Lightning `.ckpt`) into `module`, strictly as
/// [`load_strict`] does; `top_level_key` selects a nested dict such as Lightning's `state_dict`.
/// Tensors are read in the file's dtype (f32 expected).
pub fn load_strict_pytorch<M: Module>(
    module: M,
    path: &Path,
    top_level_key: Option<&str>,
    keys: &KeyMap,
) -> Result<M> {
    let file = path.display().to_string();
    let mut store = PytorchStore::from_file(path)
        .allow_partial(true)
        .validate(false)
        .map_indices_contiguous(false);
    if let Some(key) = top_level_key {
        store = store.with_top_level_key(key);
    }
    for (from, to) in &keys.remaps {
        store = store.with_key_remapping(from, to.clone());
    }
    apply(module, &mut store, &file, keys)
}

fn apply<M: Module, S: ModuleStore>(
    mut module: M,
    store: &mut S,
    file: &str,
    keys: &KeyMap,
) -> Result<M> {
    let result = module
        .load_from(store)
        .map_err(|e| AvatarError::Weights(format!("{file}: {e}")))?;
    check_applied(result, file, keys)?;
    Ok(module)
}

/// Turns a partial load's report into an error listing every missing, unexpected (not ignored)
/// and mis-shaped tensor.
fn check_applied(result: ApplyResult, file: &str, keys: &KeyMap) -> Result<()> {
    let file = file.to_owned();
    let missing: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
    let unexpected: Vec<String> = result
        .unused
        .iter()
        .filter(|k| !keys.ignores(k))
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
        Ok(())
    } else {
        Err(AvatarError::WeightKeys {
            file,
            missing,
            unexpected,
            mismatched,
        })
    }
}
