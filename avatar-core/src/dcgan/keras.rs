//! Reader for the seed service's Keras DCGAN generator (`face_generator_*.h5`),
//! in pure Rust (HDF5 through the `hdf5-pure` crate; no Python, no libhdf5).
//!
//! The seed's recipe is
//! `Dense(4*4*F0, relu) -> Reshape((4, 4, F0)) ->
//! 4 x [UpSampling2D(s_i) -> Conv2D(F_i, 3x3, same) -> BatchNormalization -> relu]
//! -> Conv2D(3, 3x3, same) -> tanh`.
//!
//! Three on-disk forms are read:
//! - a Keras 2 full model `.h5` (`model.save`, tf.keras / tf_keras / standalone
//!   Keras 2): group `model_weights` with attribute `layer_names`; each layer group
//!   has attribute `weight_names` (`dense/kernel:0`, ...) and the data lies at
//!   `model_weights/<layer>/<weight_name>`. A Keras 2 `save_weights` `.h5` is the
//!   same with `layer_names` on the root group;
//! - a Keras 3 full model `.h5` (legacy HDF5 `model.save`): the same layout, with
//!   weight names that carry the model's name (`generator/dense/kernel`,
//!   `sequential/dense/kernel` for a nested model) and no `:0`;
//! - a Keras 3 `.weights.h5` (`model.save_weights`): `layers/<key>/vars/<i>`,
//!   nested models as `layers/<key>/layers/<key>/vars/<i>`, where `<key>` is the
//!   snake-cased class name with a per-class counter (`conv2d`, `conv2d_1`, ...).
//!   Variables have no names there: their order is `kernel, bias` (Dense, Conv2D)
//!   and `gamma, beta, moving_mean, moving_variance` (BatchNormalization).
//!
//! Full models carry `model_config` (JSON), which is checked against the recipe and
//! gives the upsampling factors and BatchNormalization `epsilon`/`momentum`. A
//! `.weights.h5` has no config: [`KerasGenerator::upsample_factors`] is then empty,
//! [`KerasGenerator::resolution`] is `None` (the caller supplies the resolution),
//! and BatchNormalization takes the recipe's `epsilon = 1e-3`, `momentum = 0.8`.
//!
//! float32, float64 and IEEE float16 datasets are read; every array comes back as
//! `f32`, row-major, in Keras layout (Dense kernel `[in, out]`, Conv2D kernel HWIO).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hdf5_pure::{AttrValue, Datatype, DatatypeByteOrder, File, FloatingPointLayout};
use serde_json::Value;

/// A dense f32 array read from a Keras file, row-major, in Keras layout.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

/// One Conv2D layer: kernel HWIO [kh, kw, in, out] and bias [out].
#[derive(Debug, Clone, PartialEq)]
pub struct KerasConv2d {
    /// Layer name in the file (`conv2d_1`, ...).
    pub name: String,
    /// Kernel `[kh, kw, in, out]` (always `[3, 3, in, out]` once validated).
    pub kernel: KerasArray,
    /// Bias `[out]`.
    pub bias: KerasArray,
}

/// One BatchNormalization layer.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasBatchNorm {
    /// Layer name in the file (`batch_normalization_1`, ...).
    pub name: String,
    /// Scale `[channels]`.
    pub gamma: KerasArray,
    /// Offset `[channels]`.
    pub beta: KerasArray,
    /// Running mean `[channels]` (used at inference).
    pub moving_mean: KerasArray,
    /// Running variance `[channels]` (used at inference).
    pub moving_variance: KerasArray,
    /// `epsilon` from `model_config`, else the Keras default `1e-3`.
    pub epsilon: f64,
    /// `momentum` from `model_config`, else the seed recipe's `0.8`.
    pub momentum: f64,
}

/// The weights (and what the file says of the topology) of the seed's Keras DCGAN generator.
#[derive(Debug, Clone, PartialEq)]
pub struct KerasGenerator {
    /// Size of the latent input (rows of the Dense kernel).
    pub latent_dim: usize,
    /// Dense kernel `[latent, 4*4*F0]`; its columns reshape to `(4, 4, F0)` channels-last.
    pub dense_kernel: KerasArray,
    /// Dense bias `[4*4*F0]`.
    pub dense_bias: KerasArray,
    /// The five Conv2D layers in model order: four hidden ones, then the output one.
    pub convs: Vec<KerasConv2d>,
    /// The four BatchNormalization layers in model order (one after each hidden conv).
    pub batch_norms: Vec<KerasBatchNorm>,
    /// The four nearest-neighbour UpSampling2D factors from `model_config`; empty when
    /// the file has no config (a Keras 3 `.weights.h5`).
    pub upsample_factors: Vec<usize>,
    /// Output side `4 * prod(upsample_factors)` when the factors are known.
    pub resolution: Option<usize>,
}

/// Why a Keras file could not be read as the seed's generator.
#[derive(Debug, thiserror::Error)]
pub enum KerasImportError {
    /// The file could not be read from disk.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The HDF5 structure is unreadable or not what Keras writes at `path`.
    #[error("HDF5 error at `{path}`: {message}")]
    Hdf5 {
        /// The object inside the file (group, dataset, or `group@attribute`).
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A layer lacks one of the weights the recipe needs.
    #[error("layer `{layer}` has no `{weight}` weight")]
    MissingWeight {
        /// The layer.
        layer: String,
        /// The missing weight (`kernel`, `bias`, `gamma`, ...).
        weight: String,
    },
    /// A tensor's shape does not fit the recipe or the other tensors.
    #[error("tensor `{name}` has shape {found:?}, expected {expected}")]
    Shape {
        /// The tensor's path inside the file.
        name: String,
        /// The expected shape, e.g. `[3, 3, 256, *]`.
        expected: String,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor is stored in a type other than float16/32/64.
    #[error("tensor `{name}` has unsupported dtype {found}")]
    Dtype {
        /// The tensor's path inside the file.
        name: String,
        /// The stored type.
        found: String,
    },
    /// The `model_config` attribute is not valid JSON of a Keras model.
    #[error("invalid model_config: {0}")]
    Config(String),
    /// The layers found are not the seed's DCGAN generator.
    #[error("not the seed DCGAN generator: {0}")]
    Topology(String),
}

type Result<T> = std::result::Result<T, KerasImportError>;

/// Recipe value used when the file has no `model_config`.
const DEFAULT_EPSILON: f64 = 1e-3;
/// Recipe value used when the file has no `model_config`.
const DEFAULT_MOMENTUM: f64 = 0.8;
/// Keras' BatchNormalization default, for a config that omits `momentum`.
const KERAS_DEFAULT_MOMENTUM: f64 = 0.99;
/// Number of UpSampling2D -> Conv2D -> BatchNormalization -> relu blocks.
const BLOCKS: usize = 4;

/// Read the generator from a Keras `.h5` / `.weights.h5` file.
pub fn read_keras_generator(path: &Path) -> Result<KerasGenerator> {
    let bytes = std::fs::read(path).map_err(|source| KerasImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_keras_generator_bytes(&bytes)
}

/// Read the generator from the bytes of a Keras `.h5` / `.weights.h5` file.
pub fn read_keras_generator_bytes(bytes: &[u8]) -> Result<KerasGenerator> {
    let file = File::from_bytes(bytes.to_vec()).map_err(|e| h5("/", e))?;
    // A file cut short may still parse when only its tail is lost; the superblock
    // records where the file ends (relative to a base address >= 0), as libhdf5 checks.
    let eof = file.superblock().eof_address;
    if eof > bytes.len() as u64 {
        return Err(h5(
            "/",
            format!(
                "truncated file: {} bytes, the superblock says {eof}",
                bytes.len()
            ),
        ));
    }
    let root_attrs = attrs_of(&file, "")?;
    let root_groups = groups_of(&file, "")?;
    let config = match root_attrs.get("model_config") {
        Some(v) => Some(parse_config(v)?),
        None => None,
    };
    let layers = if root_groups.iter().any(|g| g == "model_weights") {
        layers_from_names(&file, "model_weights")?
    } else if has_list_attr(&root_attrs, "layer_names") {
        layers_from_names(&file, "")?
    } else if root_groups.iter().any(|g| g == "layers") {
        let mut out = Vec::new();
        layers_from_keras3_weights(&file, "", 0, &mut out)?;
        out
    } else {
        return Err(KerasImportError::Topology(
            "no `model_weights` group, `layer_names` attribute or `layers` group: not a Keras HDF5 file"
                .into(),
        ));
    };
    assemble(&file, layers, config.as_ref())
}

// ---------------------------------------------------------------------------
// Raw layers: what the file says, before matching it to the recipe.

/// A weighted layer as found in the file.
struct RawLayer {
    /// Layer name (for messages and the output structs).
    name: String,
    /// Snake-cased class from a Keras 3 `.weights.h5` group key (`conv2d`), if any.
    class_hint: Option<String>,
    /// Variables in file order: (name if the file has one, dataset path).
    vars: Vec<(Option<String>, String)>,
}

/// The recipe's three kinds of weighted layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dense,
    Conv,
    BatchNorm,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Dense => "Dense",
            Kind::Conv => "Conv2D",
            Kind::BatchNorm => "BatchNormalization",
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

fn h5(path: &str, e: impl std::fmt::Display) -> KerasImportError {
    KerasImportError::Hdf5 {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.to_string()
        },
        message: e.to_string(),
    }
}

fn group_of(file: &File, path: &str) -> Result<hdf5_pure::Group> {
    if path.is_empty() {
        Ok(file.root())
    } else {
        file.group(path).map_err(|e| h5(path, e))
    }
}

fn attrs_of(file: &File, path: &str) -> Result<HashMap<String, AttrValue>> {
    group_of(file, path)?.attrs().map_err(|e| h5(path, e))
}

fn groups_of(file: &File, path: &str) -> Result<Vec<String>> {
    group_of(file, path)?.groups().map_err(|e| h5(path, e))
}

fn datasets_of(file: &File, path: &str) -> Result<Vec<String>> {
    group_of(file, path)?.datasets().map_err(|e| h5(path, e))
}

fn has_list_attr(attrs: &HashMap<String, AttrValue>, key: &str) -> bool {
    attrs.contains_key(key) || attrs.contains_key(&format!("{key}0"))
}

/// A string-list attribute. Keras writes an empty list as an empty float64 array and
/// splits a list over 64 KiB into `key0`, `key1`, ...; fixed-length strings may
/// carry NUL padding. `Ok(None)` when absent.
fn string_list(
    attrs: &HashMap<String, AttrValue>,
    key: &str,
    at: &str,
) -> Result<Option<Vec<String>>> {
    fn one(v: &AttrValue, at: &str, key: &str) -> Result<Vec<String>> {
        if let Some(s) = v.as_strings() {
            return Ok(s
                .iter()
                .map(|s| s.trim_end_matches('\0').to_string())
                .collect());
        }
        let empty = match v {
            AttrValue::F64Array(a) => a.is_empty(),
            AttrValue::F32Array(a) => a.is_empty(),
            AttrValue::I64Array(a) => a.is_empty(),
            AttrValue::I32Array(a) => a.is_empty(),
            AttrValue::U8Array(a) => a.is_empty(),
            _ => false,
        };
        if empty {
            Ok(Vec::new())
        } else {
            Err(h5(&format!("{at}@{key}"), "expected a list of strings"))
        }
    }
    if let Some(v) = attrs.get(key) {
        return one(v, at, key).map(Some);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(v) = attrs.get(&format!("{key}{i}")) {
        out.extend(one(v, at, &format!("{key}{i}"))?);
        i += 1;
    }
    Ok(if i == 0 { None } else { Some(out) })
}

/// Layers of a full model / Keras 2 weights file: `layer_names`, then each layer's
/// `weight_names`. One `layer_names` entry may hold several layers (a nested
/// model): weights are grouped by their name's prefix (`sequential/dense`).
fn layers_from_names(file: &File, base: &str) -> Result<Vec<RawLayer>> {
    let attrs = attrs_of(file, base)?;
    let names = string_list(&attrs, "layer_names", base)?
        .ok_or_else(|| h5(&format!("{base}@layer_names"), "attribute missing"))?;
    let mut out: Vec<RawLayer> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for layer in names {
        let lpath = join(base, &layer);
        let lattrs = attrs_of(file, &lpath)?;
        let weights = string_list(&lattrs, "weight_names", &lpath)?.unwrap_or_default();
        for w in weights {
            let dpath = join(&lpath, &w);
            let (prefix, var) = match w.rsplit_once('/') {
                Some((p, v)) => (p.to_string(), v),
                None => (layer.clone(), w.as_str()),
            };
            // `kernel:0` -> `kernel`
            let var = match var.rsplit_once(':') {
                Some((v, n)) if n.chars().all(|c| c.is_ascii_digit()) => v,
                _ => var,
            };
            let key = format!("{layer}\u{0}{prefix}");
            let i = *index.entry(key).or_insert_with(|| {
                out.push(RawLayer {
                    name: prefix.rsplit('/').next().unwrap_or(&prefix).to_string(),
                    class_hint: None,
                    vars: Vec::new(),
                });
                out.len() - 1
            });
            out[i].vars.push((Some(var.to_string()), dpath));
        }
    }
    Ok(out)
}

/// Split `conv2d_12` into (`conv2d`, 12); `conv2d` is (`conv2d`, 0).
fn split_counter(key: &str) -> (&str, u64) {
    if let Some((base, n)) = key.rsplit_once('_')
        && !n.is_empty()
        && n.chars().all(|c| c.is_ascii_digit())
        && let Ok(n) = n.parse::<u64>()
    {
        return (base, n);
    }
    (key, 0)
}

/// Layers of a Keras 3 `.weights.h5`, depth-first; children of one container in
/// (class key, counter) order, which is model order within each class.
fn layers_from_keras3_weights(
    file: &File,
    path: &str,
    depth: usize,
    out: &mut Vec<RawLayer>,
) -> Result<()> {
    if depth > 16 {
        return Err(h5(path, "layers nested too deep"));
    }
    let children = groups_of(file, path)?;
    if children.iter().any(|c| c == "vars") {
        let vpath = join(path, "vars");
        let mut vars: Vec<(u64, String)> = Vec::new();
        for d in datasets_of(file, &vpath)? {
            let i = d
                .parse::<u64>()
                .map_err(|_| h5(&join(&vpath, &d), "variable name is not an index"))?;
            vars.push((i, d));
        }
        vars.sort();
        if !vars.is_empty() {
            let key = path.rsplit('/').next().unwrap_or(path);
            let name = attrs_of(file, &vpath)?
                .get("name")
                .and_then(|v| v.as_str().map(|s| s.trim_end_matches('\0').to_string()))
                .unwrap_or_else(|| key.to_string());
            out.push(RawLayer {
                name,
                class_hint: Some(split_counter(key).0.to_string()),
                vars: vars
                    .into_iter()
                    .map(|(_, d)| (None, join(&vpath, &d)))
                    .collect(),
            });
        }
    }
    for container in ["layers", "_layer_checkpoint_dependencies"] {
        if children.iter().any(|c| c == container) {
            let cpath = join(path, container);
            let mut keys = groups_of(file, &cpath)?;
            keys.sort_by(|a, b| split_counter(a).cmp(&split_counter(b)));
            for k in keys {
                layers_from_keras3_weights(file, &join(&cpath, &k), depth + 1, out)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Datasets.

fn is_ieee_half(l: &FloatingPointLayout) -> bool {
    l.bit_offset == 0
        && l.bit_precision == 16
        && l.exponent_location == 10
        && l.exponent_size == 5
        && l.mantissa_location == 0
        && l.mantissa_size == 10
        && l.exponent_bias == 15
}

fn describe(dt: &Datatype) -> String {
    match dt {
        Datatype::FixedPoint { size, .. } => format!("integer ({} bits)", size * 8),
        Datatype::FloatingPoint { size, .. } => {
            format!("float ({} bits, non-IEEE layout)", size * 8)
        }
        Datatype::String { .. }
        | Datatype::VariableLength {
            is_string: true, ..
        } => "string".into(),
        other => {
            let s = format!("{other:?}");
            s.chars().take(80).collect()
        }
    }
}

fn read_array(file: &File, path: &str) -> Result<KerasArray> {
    let ds = file.dataset(path).map_err(|e| h5(path, e))?;
    let shape = ds
        .shape()
        .map_err(|e| h5(path, e))?
        .into_iter()
        .map(usize::try_from)
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|e| h5(path, e))?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| h5(path, "shape overflows"))?;
    let dt = ds.datatype().map_err(|e| h5(path, e))?;
    let data = match &dt {
        Datatype::FloatingPoint { size: 4 | 8, .. } => ds.read_f32().map_err(|e| h5(path, e))?,
        Datatype::FloatingPoint {
            size: 2,
            byte_order,
            layout,
        } if is_ieee_half(layout) => {
            let raw = ds.read_raw().map_err(|e| h5(path, e))?;
            if raw.len() % 2 != 0 {
                return Err(h5(path, "odd byte count for float16 data"));
            }
            let be = matches!(byte_order, DatatypeByteOrder::BigEndian);
            raw.chunks_exact(2)
                .map(|c| {
                    let bits = if be {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    };
                    half::f16::from_bits(bits).to_f32()
                })
                .collect()
        }
        other => {
            return Err(KerasImportError::Dtype {
                name: path.to_string(),
                found: describe(other),
            });
        }
    };
    if data.len() != count {
        return Err(h5(
            path,
            format!("{} values stored for shape {shape:?}", data.len()),
        ));
    }
    Ok(KerasArray { shape, data })
}

// ---------------------------------------------------------------------------
// model_config.

/// A leaf layer of `model_config`, nested models flattened, in model order.
struct ConfigLayer {
    class: String,
    name: String,
    config: Value,
}

fn parse_config(v: &AttrValue) -> Result<Vec<ConfigLayer>> {
    let text = match v {
        AttrValue::U8Array(b) => String::from_utf8_lossy(b).into_owned(),
        other => other
            .as_str()
            .ok_or_else(|| KerasImportError::Config("attribute is not a string".into()))?
            .trim_end_matches('\0')
            .to_string(),
    };
    let json: Value =
        serde_json::from_str(&text).map_err(|e| KerasImportError::Config(e.to_string()))?;
    let mut out = Vec::new();
    flatten_config(&json, 0, &mut out)?;
    Ok(out)
}

fn flatten_config(v: &Value, depth: usize, out: &mut Vec<ConfigLayer>) -> Result<()> {
    if depth > 16 {
        return Err(KerasImportError::Config("models nested too deep".into()));
    }
    let class = v
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| KerasImportError::Config("layer without class_name".into()))?;
    let config = v.get("config").cloned().unwrap_or(Value::Null);
    // Sequential (a list in Keras <= 2.2, {"layers": [...]} later), Functional, Model.
    let children = match &config {
        Value::Array(a) => Some(a.clone()),
        Value::Object(o) => o.get("layers").and_then(Value::as_array).cloned(),
        _ => None,
    };
    if let Some(children) = children {
        for c in &children {
            flatten_config(c, depth + 1, out)?;
        }
        return Ok(());
    }
    let name = config
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    out.push(ConfigLayer {
        class: class.to_string(),
        name,
        config,
    });
    Ok(())
}

fn cfg_str<'a>(c: &'a ConfigLayer, key: &str) -> Option<&'a str> {
    c.config.get(key).and_then(Value::as_str)
}

/// An int or a list of ints (`2`, `[2, 2]`).
fn cfg_ints(c: &ConfigLayer, key: &str) -> Option<Vec<i64>> {
    match c.config.get(key)? {
        Value::Number(n) => n.as_i64().map(|n| vec![n]),
        Value::Array(a) => a.iter().map(Value::as_i64).collect(),
        _ => None,
    }
}

fn cfg_activation(c: &ConfigLayer) -> Option<String> {
    match c.config.get("activation")? {
        Value::String(s) => Some(s.clone()),
        // Keras 3 may serialise a function as {"class_name": "function", "config": "relu"}.
        Value::Object(o) => o.get("config").and_then(|c| {
            c.as_str()
                .map(str::to_string)
                .or_else(|| c.get("name").and_then(Value::as_str).map(str::to_string))
        }),
        _ => None,
    }
}

/// Check `model_config` against the recipe; returns the layers of the recipe sequence.
fn check_recipe(layers: &[ConfigLayer]) -> Result<Vec<&ConfigLayer>> {
    let seq: Vec<&ConfigLayer> = layers.iter().filter(|l| l.class != "InputLayer").collect();
    let norm = |c: &str| -> String {
        match c {
            "Convolution2D" => "Conv2D".into(),
            other => other.into(),
        }
    };
    let mut expected = vec!["Dense", "Reshape"];
    for _ in 0..BLOCKS {
        expected.extend(["UpSampling2D", "Conv2D", "BatchNormalization", "Activation"]);
    }
    expected.extend(["Conv2D", "Activation"]);
    let found: Vec<String> = seq.iter().map(|l| norm(&l.class)).collect();
    if found != expected {
        return Err(KerasImportError::Topology(format!(
            "model_config layers {found:?} are not the recipe {expected:?}"
        )));
    }
    let bad = |l: &ConfigLayer, what: String| {
        KerasImportError::Topology(format!("layer `{}`: {what}", l.name))
    };
    let mut activations = Vec::new();
    for l in &seq {
        if let Some(df) = cfg_str(l, "data_format")
            && df != "channels_last"
        {
            return Err(bad(l, format!("data_format {df}")));
        }
        match norm(&l.class).as_str() {
            "Dense" => {
                let a = cfg_activation(l).unwrap_or_else(|| "linear".into());
                if a != "relu" {
                    return Err(bad(l, format!("Dense activation {a}, expected relu")));
                }
            }
            "Conv2D" => {
                if let Some(p) = cfg_str(l, "padding")
                    && p != "same"
                {
                    return Err(bad(l, format!("padding {p}, expected same")));
                }
                for key in ["strides", "dilation_rate", "groups"] {
                    if let Some(v) = cfg_ints(l, key)
                        && v.iter().any(|&x| x != 1)
                    {
                        return Err(bad(l, format!("{key} {v:?}, expected 1")));
                    }
                }
                let a = cfg_activation(l).unwrap_or_else(|| "linear".into());
                if a != "linear" {
                    return Err(bad(l, format!("Conv2D activation {a}, expected linear")));
                }
            }
            "UpSampling2D" => {
                if let Some(i) = cfg_str(l, "interpolation")
                    && i != "nearest"
                {
                    return Err(bad(l, format!("interpolation {i}, expected nearest")));
                }
            }
            "BatchNormalization" => {
                if let Some(axis) = cfg_ints(l, "axis")
                    && axis != [-1]
                    && axis != [3]
                {
                    return Err(bad(l, format!("axis {axis:?}, expected -1")));
                }
            }
            "Activation" => activations.push(cfg_activation(l).unwrap_or_default()),
            _ => {}
        }
    }
    let want: Vec<&str> = ["relu"; BLOCKS].into_iter().chain(["tanh"]).collect();
    if activations != want {
        return Err(KerasImportError::Topology(format!(
            "activations {activations:?}, expected {want:?}"
        )));
    }
    Ok(seq)
}

fn upsample_factor(l: &ConfigLayer) -> Result<usize> {
    let size = cfg_ints(l, "size").unwrap_or_else(|| vec![2, 2]);
    let s = match size.as_slice() {
        [s] => *s,
        [a, b] if a == b => *a,
        other => {
            return Err(KerasImportError::Topology(format!(
                "layer `{}`: non-square upsampling {other:?}",
                l.name
            )));
        }
    };
    usize::try_from(s).ok().filter(|&s| s >= 1).ok_or_else(|| {
        KerasImportError::Topology(format!("layer `{}`: upsampling size {s}", l.name))
    })
}

// ---------------------------------------------------------------------------
// Matching raw layers to the recipe.

fn classify(layer: &RawLayer, shapes: &[Vec<usize>]) -> Result<Kind> {
    let names: Vec<&str> = layer
        .vars
        .iter()
        .filter_map(|(n, _)| n.as_deref())
        .collect();
    let by_hint = match layer.class_hint.as_deref() {
        Some("dense") => Some(Kind::Dense),
        Some("conv2d") | Some("convolution2d") => Some(Kind::Conv),
        Some("batch_normalization") => Some(Kind::BatchNorm),
        Some(other) => {
            return Err(KerasImportError::Topology(format!(
                "layer `{}` ({other}) has weights but is not Dense, Conv2D or BatchNormalization",
                layer.name
            )));
        }
        None => None,
    };
    let by_names = if names
        .iter()
        .any(|n| matches!(*n, "gamma" | "beta" | "moving_mean" | "moving_variance"))
    {
        Some(Kind::BatchNorm)
    } else {
        None
    };
    let by_shape = match shapes.first().map(Vec::len) {
        Some(2) => Some(Kind::Dense),
        Some(4) => Some(Kind::Conv),
        Some(1) if shapes.len() == 4 => Some(Kind::BatchNorm),
        _ => None,
    };
    by_hint.or(by_names).or(by_shape).ok_or_else(|| {
        KerasImportError::Topology(format!(
            "cannot tell the class of layer `{}` (weights {shapes:?})",
            layer.name
        ))
    })
}

/// Pick the recipe's variables of `layer` by name, or by position when unnamed.
fn take_vars(
    layer: &RawLayer,
    arrays: Vec<KerasArray>,
    roles: &[&str],
) -> Result<Vec<(String, KerasArray)>> {
    let named = layer.vars.iter().all(|(n, _)| n.is_some());
    let mut slots: Vec<Option<(String, KerasArray)>> = layer
        .vars
        .iter()
        .zip(arrays)
        .map(|((_, p), a)| Some((p.clone(), a)))
        .collect();
    let mut out = Vec::with_capacity(roles.len());
    for (i, role) in roles.iter().enumerate() {
        let idx = if named {
            layer
                .vars
                .iter()
                .position(|(n, _)| n.as_deref() == Some(*role))
        } else {
            (i < slots.len()).then_some(i)
        };
        let taken = idx.and_then(|i| slots[i].take());
        out.push(taken.ok_or_else(|| KerasImportError::MissingWeight {
            layer: layer.name.clone(),
            weight: role.to_string(),
        })?);
    }
    if let Some((path, _)) = slots.into_iter().flatten().next() {
        return Err(KerasImportError::Topology(format!(
            "layer `{}` has an unexpected weight `{path}`",
            layer.name
        )));
    }
    Ok(out)
}

fn shape_err(name: &str, expected: String, found: &[usize]) -> KerasImportError {
    KerasImportError::Shape {
        name: name.to_string(),
        expected,
        found: found.to_vec(),
    }
}

fn expect_shape(name: &str, a: &KerasArray, want: &[usize]) -> Result<()> {
    if a.shape != want {
        return Err(shape_err(name, format!("{want:?}"), &a.shape));
    }
    Ok(())
}

fn assemble(
    file: &File,
    layers: Vec<RawLayer>,
    config: Option<&Vec<ConfigLayer>>,
) -> Result<KerasGenerator> {
    let recipe = config.map(|c| check_recipe(c)).transpose()?;

    let mut dense: Vec<(RawLayer, Vec<(String, KerasArray)>)> = Vec::new();
    let mut convs = Vec::new();
    let mut bns = Vec::new();
    let mut kinds = Vec::new();
    for layer in layers {
        let arrays = layer
            .vars
            .iter()
            .map(|(_, p)| read_array(file, p))
            .collect::<Result<Vec<_>>>()?;
        let shapes: Vec<Vec<usize>> = arrays.iter().map(|a| a.shape.clone()).collect();
        let kind = classify(&layer, &shapes)?;
        kinds.push(kind);
        match kind {
            Kind::Dense => {
                let v = take_vars(&layer, arrays, &["kernel", "bias"])?;
                dense.push((layer, v));
            }
            Kind::Conv => {
                let v = take_vars(&layer, arrays, &["kernel", "bias"])?;
                convs.push((layer, v));
            }
            Kind::BatchNorm => {
                let v = take_vars(
                    &layer,
                    arrays,
                    &["gamma", "beta", "moving_mean", "moving_variance"],
                )?;
                bns.push((layer, v));
            }
        }
    }
    if dense.len() != 1 || convs.len() != BLOCKS + 1 || bns.len() != BLOCKS {
        return Err(KerasImportError::Topology(format!(
            "found {} Dense, {} Conv2D, {} BatchNormalization weighted layers; expected 1, {}, {}",
            dense.len(),
            convs.len(),
            bns.len(),
            BLOCKS + 1,
            BLOCKS
        )));
    }

    // Config layers of each kind, in model order (the recipe check fixed their count).
    let (mut cfg_bn, mut factors, mut reshape) = (Vec::new(), Vec::new(), None);
    if let Some(recipe) = &recipe {
        for l in recipe {
            match l.class.as_str() {
                "BatchNormalization" => cfg_bn.push(*l),
                "UpSampling2D" => factors.push(upsample_factor(l)?),
                "Reshape" => reshape = cfg_ints(l, "target_shape"),
                _ => {}
            }
        }
        // With names from layer_names, file order is model order: check it.
        let mut want = vec![Kind::Dense];
        for _ in 0..BLOCKS {
            want.extend([Kind::Conv, Kind::BatchNorm]);
        }
        want.push(Kind::Conv);
        if kinds != want {
            return Err(KerasImportError::Topology(format!(
                "weighted layers in file order are {:?}",
                kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>()
            )));
        }
    }

    // Shapes.
    let (dense_layer, mut dv) = dense.pop().expect("one dense layer");
    let (bias_name, dense_bias) = dv.pop().expect("dense bias");
    let (kernel_name, dense_kernel) = dv.pop().expect("dense kernel");
    let (latent_dim, units) = match dense_kernel.shape.as_slice() {
        [l, u] if *l > 0 && *u > 0 && u % 16 == 0 => (*l, *u),
        other => return Err(shape_err(&kernel_name, "[latent, 16*F0]".into(), other)),
    };
    expect_shape(&bias_name, &dense_bias, &[units])?;
    let f0 = units / 16;
    if let Some(r) = &reshape
        && r.as_slice() != [4, 4, f0 as i64]
    {
        return Err(KerasImportError::Topology(format!(
            "Reshape target {r:?} does not match the Dense layer `{}` (4, 4, {f0})",
            dense_layer.name
        )));
    }
    // Input shapes (InputLayer, or `batch_input_shape` on the first layer) against the kernel.
    for l in config.into_iter().flatten() {
        for key in ["batch_input_shape", "batch_shape"] {
            if let Some(Value::Array(s)) = l.config.get(key)
                && let Some(last) = s.last().and_then(Value::as_u64)
                && usize::try_from(last).ok() != Some(latent_dim)
            {
                return Err(KerasImportError::Topology(format!(
                    "layer `{}`: input shape {s:?} does not match the Dense kernel's {latent_dim} rows",
                    l.name
                )));
            }
        }
    }

    let mut cin = f0;
    let mut out_convs = Vec::with_capacity(convs.len());
    let n_convs = convs.len();
    for (i, (layer, mut v)) in convs.into_iter().enumerate() {
        let (bname, bias) = v.pop().expect("conv bias");
        let (kname, kernel) = v.pop().expect("conv kernel");
        let last = i + 1 == n_convs;
        let cout = match kernel.shape.as_slice() {
            [3, 3, ci, co] if *ci == cin && *co > 0 && (!last || *co == 3 || *co == 4) => *co,
            other => {
                let out = if last {
                    "3 or 4".to_string()
                } else {
                    "*".to_string()
                };
                return Err(shape_err(&kname, format!("[3, 3, {cin}, {out}]"), other));
            }
        };
        expect_shape(&bname, &bias, &[cout])?;
        out_convs.push(KerasConv2d {
            name: layer.name,
            kernel,
            bias,
        });
        cin = cout;
    }
    let mut out_bns = Vec::with_capacity(bns.len());
    for (i, (layer, v)) in bns.into_iter().enumerate() {
        let c = out_convs[i].kernel.shape[3];
        for (name, a) in &v {
            expect_shape(name, a, &[c])?;
        }
        let (epsilon, momentum) = match cfg_bn.get(i) {
            Some(l) => (
                l.config
                    .get("epsilon")
                    .and_then(Value::as_f64)
                    .unwrap_or(DEFAULT_EPSILON),
                l.config
                    .get("momentum")
                    .and_then(Value::as_f64)
                    .unwrap_or(KERAS_DEFAULT_MOMENTUM),
            ),
            None => (DEFAULT_EPSILON, DEFAULT_MOMENTUM),
        };
        let mut it = v.into_iter().map(|(_, a)| a);
        let mut next = || it.next().expect("four batch-norm arrays");
        out_bns.push(KerasBatchNorm {
            name: layer.name,
            gamma: next(),
            beta: next(),
            moving_mean: next(),
            moving_variance: next(),
            epsilon,
            momentum,
        });
    }

    let resolution = if factors.is_empty() {
        None
    } else {
        factors.iter().try_fold(4usize, |a, &f| a.checked_mul(f))
    };
    Ok(KerasGenerator {
        latent_dim,
        dense_kernel,
        dense_bias,
        convs: out_convs,
        batch_norms: out_bns,
        upsample_factors: factors,
        resolution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdf5_pure::FileBuilder;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keras")
            .join(name)
    }

    fn read(name: &str) -> KerasGenerator {
        read_keras_generator(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Every array of a generator, in a fixed order.
    fn arrays(g: &KerasGenerator) -> Vec<&KerasArray> {
        let mut v = vec![&g.dense_kernel, &g.dense_bias];
        for c in &g.convs {
            v.extend([&c.kernel, &c.bias]);
        }
        for b in &g.batch_norms {
            v.extend([&b.gamma, &b.beta, &b.moving_mean, &b.moving_variance]);
        }
        v
    }

    /// The tiny fixtures: F = 4, 6, 5, 4 (F0 = 4).
    fn check_tiny(g: &KerasGenerator, latent: usize) {
        assert_eq!(g.latent_dim, latent);
        assert_eq!(g.dense_kernel.shape, vec![latent, 64]);
        assert_eq!(g.dense_bias.shape, vec![64]);
        let convs: Vec<_> = g.convs.iter().map(|c| c.kernel.shape.clone()).collect();
        assert_eq!(
            convs,
            vec![
                vec![3, 3, 4, 4],
                vec![3, 3, 4, 6],
                vec![3, 3, 6, 5],
                vec![3, 3, 5, 4],
                vec![3, 3, 4, 3]
            ]
        );
        let bns: Vec<_> = g.batch_norms.iter().map(|b| b.gamma.shape[0]).collect();
        assert_eq!(bns, vec![4, 6, 5, 4]);
        for b in &g.batch_norms {
            assert_eq!(b.epsilon, 1e-3);
            assert!((b.momentum - 0.8).abs() < 1e-12);
            assert!(b.moving_variance.data.iter().all(|&v| v > 0.4));
        }
        for a in arrays(g) {
            assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
        }
    }

    #[test]
    fn reads_every_fixture_form() {
        for (stem, latent, factors) in [
            ("tiny96", 100, vec![2, 2, 2, 3]),
            ("tiny128", 128, vec![2, 2, 2, 4]),
        ] {
            let k2 = read(&format!("{stem}.keras2.h5"));
            let k3 = read(&format!("{stem}.keras3.h5"));
            let w = read(&format!("{stem}.weights.h5"));
            for g in [&k2, &k3, &w] {
                check_tiny(g, latent);
            }
            let res = 4 * factors.iter().product::<usize>();
            for g in [&k2, &k3] {
                assert_eq!(g.upsample_factors, factors, "{stem}");
                assert_eq!(g.resolution, Some(res), "{stem}");
            }
            assert!(w.upsample_factors.is_empty());
            assert_eq!(w.resolution, None);
            // Same weights in all three forms, bit for bit.
            assert_eq!(arrays(&k2), arrays(&k3), "{stem}: keras2 vs keras3");
            assert_eq!(arrays(&k2), arrays(&w), "{stem}: keras2 vs weights");
            // Layer names survive (Keras' default names).
            assert_eq!(k2.convs[0].name, "conv2d");
            assert_eq!(w.batch_norms[3].name, "batch_normalization_3");
        }
    }

    #[test]
    fn reads_float16_and_fixed_length_strings() {
        // Conv/Dense weights stored as float16, BatchNorm as float32, and every
        // string attribute fixed-length (as Keras <= 2.2 with h5py 2 wrote them).
        let f16 = read("tiny96.f16.keras2.h5");
        let f32 = read("tiny96.keras2.h5");
        check_tiny(&f16, 100);
        assert_eq!(f16.upsample_factors, vec![2, 2, 2, 3]);
        assert_eq!(f16.resolution, Some(96));
        for (a, b) in arrays(&f16).into_iter().zip(arrays(&f32)) {
            assert_eq!(a.shape, b.shape);
            for (x, y) in a.data.iter().zip(&b.data) {
                assert_eq!(*x, half::f16::from_f32(*y).to_f32());
            }
        }
    }

    #[test]
    fn bytes_and_path_agree() {
        let bytes = std::fs::read(fixture("tiny128.keras3.h5")).unwrap();
        assert_eq!(
            read_keras_generator_bytes(&bytes).unwrap(),
            read("tiny128.keras3.h5")
        );
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error() {
        for name in ["tiny96.keras2.h5", "tiny96.keras3.h5", "tiny96.weights.h5"] {
            let bytes = std::fs::read(fixture(name)).unwrap();
            for cut in [0, 7, 512, 2048, bytes.len() / 2, bytes.len() - 1] {
                assert!(
                    read_keras_generator_bytes(&bytes[..cut]).is_err(),
                    "{name} cut at {cut}"
                );
            }
        }
        assert!(read_keras_generator_bytes(b"definitely not hdf5").is_err());
        let io = std::fs::read(fixture("tiny96.io.safetensors")).unwrap();
        assert!(read_keras_generator_bytes(&io).is_err());
    }

    #[test]
    fn missing_file_is_io_error() {
        let err = read_keras_generator(&fixture("no-such-file.h5")).unwrap_err();
        assert!(matches!(err, KerasImportError::Io { .. }), "{err}");
    }

    // --- Synthetic Keras 2 style files for the error paths. ---

    /// How to spoil a synthetic generator.
    #[derive(Clone, Copy, PartialEq)]
    enum Spoil {
        None,
        BnSize,
        IntKernel,
        NoBias,
        DenseUnits,
        LastConv8,
    }

    /// A Keras 2 `save_weights`-style file (root `layer_names`) of a tiny generator.
    fn synthetic(spoil: Spoil) -> Vec<u8> {
        let latent = 5usize;
        let f = [4usize, 6, 5, 4];
        let mut fb = FileBuilder::new();
        let mut names = vec!["dense".to_string()];
        let add_layer = |fb: &mut FileBuilder, name: &str, vars: Vec<(&str, Vec<usize>)>| {
            let mut g = fb.create_group(name);
            let mut inner = g.create_group(name);
            let mut wn = Vec::new();
            for (var, shape) in vars {
                let n: usize = shape.iter().product();
                let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
                let ds = inner.create_dataset(&format!("{var}:0"));
                if spoil == Spoil::IntKernel && name == "conv2d_2" && var == "kernel" {
                    ds.with_i32_data(&vec![1; n]).with_shape(&shape64);
                } else {
                    ds.with_f32_data(&vec![0.5; n]).with_shape(&shape64);
                }
                wn.push(format!("{name}/{var}:0"));
            }
            g.add_group(inner.finish());
            g.set_attr("weight_names", AttrValue::StringArray(wn));
            fb.add_group(g.finish());
        };
        let units = if spoil == Spoil::DenseUnits { 60 } else { 64 };
        add_layer(
            &mut fb,
            "dense",
            vec![("kernel", vec![latent, units]), ("bias", vec![units])],
        );
        let last = if spoil == Spoil::LastConv8 { 8 } else { 3 };
        let mut cin = f[0];
        for (i, &cout) in f.iter().chain([&last]).enumerate() {
            let conv = if i == 0 {
                "conv2d".to_string()
            } else {
                format!("conv2d_{i}")
            };
            let mut vars = vec![("kernel", vec![3, 3, cin, cout])];
            if !(spoil == Spoil::NoBias && i == 1) {
                vars.push(("bias", vec![cout]));
            }
            add_layer(&mut fb, &conv, vars);
            names.push(conv);
            if i < 4 {
                let bn = if i == 0 {
                    "batch_normalization".to_string()
                } else {
                    format!("batch_normalization_{i}")
                };
                let c = if spoil == Spoil::BnSize && i == 2 {
                    cout + 1
                } else {
                    cout
                };
                add_layer(
                    &mut fb,
                    &bn,
                    vec![
                        ("gamma", vec![c]),
                        ("beta", vec![c]),
                        ("moving_mean", vec![c]),
                        ("moving_variance", vec![c]),
                    ],
                );
                names.push(bn);
            }
            cin = cout;
        }
        fb.set_attr("layer_names", AttrValue::StringArray(names));
        fb.finish().unwrap()
    }

    #[test]
    fn synthetic_generator_reads() {
        let g = read_keras_generator_bytes(&synthetic(Spoil::None)).unwrap();
        assert_eq!(g.latent_dim, 5);
        assert_eq!(g.convs.len(), 5);
        assert_eq!(g.convs[4].kernel.shape, vec![3, 3, 4, 3]);
        assert!(g.upsample_factors.is_empty());
        assert_eq!(g.resolution, None);
    }

    #[test]
    fn typed_errors_name_the_tensor() {
        match read_keras_generator_bytes(&synthetic(Spoil::BnSize)).unwrap_err() {
            KerasImportError::Shape { name, found, .. } => {
                assert_eq!(name, "batch_normalization_2/batch_normalization_2/gamma:0");
                assert_eq!(found, vec![6]);
            }
            e => panic!("{e}"),
        }
        match read_keras_generator_bytes(&synthetic(Spoil::IntKernel)).unwrap_err() {
            KerasImportError::Dtype { name, .. } => assert_eq!(name, "conv2d_2/conv2d_2/kernel:0"),
            e => panic!("{e}"),
        }
        match read_keras_generator_bytes(&synthetic(Spoil::NoBias)).unwrap_err() {
            KerasImportError::MissingWeight { layer, weight } => {
                assert_eq!((layer.as_str(), weight.as_str()), ("conv2d_1", "bias"));
            }
            e => panic!("{e}"),
        }
        match read_keras_generator_bytes(&synthetic(Spoil::DenseUnits)).unwrap_err() {
            KerasImportError::Shape { name, .. } => assert_eq!(name, "dense/dense/kernel:0"),
            e => panic!("{e}"),
        }
        match read_keras_generator_bytes(&synthetic(Spoil::LastConv8)).unwrap_err() {
            KerasImportError::Shape { name, expected, .. } => {
                assert_eq!(name, "conv2d_4/conv2d_4/kernel:0");
                assert_eq!(expected, "[3, 3, 4, 3 or 4]");
            }
            e => panic!("{e}"),
        }
    }
}
