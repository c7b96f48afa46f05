//! Hugging Face Hub references: every model loader that takes a path (diffusion pipelines and
//! their components, VQGAN and CLIP weights and configs, U²-Net, the ONNX face models) also takes
//! `hf://owner/name[@revision][/path][?variant=fp16]` and, with the `hub` feature, downloads what
//! it needs into the Hugging Face cache on first use (nothing is ever downloaded implicitly: only a
//! path the caller wrote as `hf://...` is fetched, and no repository id is built in).
//!
//! - `hf://owner/name` or `hf://owner/name/sub/folder`: a diffusers pipeline (a folder with
//!   `model_index.json`: every listed component's configs, tokenizer files and one safetensors
//!   weights file per component) or a single component folder (`config.json` + weights, e.g. a
//!   ControlNet or a CLIP image encoder).
//! - `hf://owner/name/path/file.safetensors`: one file (an IP-Adapter, a single-file checkpoint, a
//!   taming `.ckpt` or `.yaml`, an open_clip state dict, a `.pth`, an `.onnx` model).
//! - `@revision`: a branch, tag or commit (default `main`; write `/` in a branch name as `%2F`).
//! - `?variant=fp16`: prefer `*.fp16.safetensors` weights, as diffusers' `variant="fp16"`; without
//!   it the plain `*.safetensors` is taken, or the only variant a component has.
//!
//! The cache and the endpoint follow the Hugging Face conventions: `HF_HOME` (default
//! `~/.cache/huggingface`), `HF_ENDPOINT` (default `https://huggingface.co`), `HF_TOKEN` (else the
//! token file in `HF_HOME`), `HF_HUB_OFFLINE=1` (use the cache only). A folder already in the
//! cache is used as it is when the hub cannot be reached.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;

use crate::diffusion::weights::{is_weights_of, pick_weights};
use crate::error::{AvatarError, Result};

/// The scheme that marks a hub reference.
pub const SCHEME: &str = "hf://";

/// File extensions that make the last segment of a reference a file rather than a folder.
const FILE_EXTENSIONS: &[&str] = &[
    "safetensors",
    "bin",
    "ckpt",
    "pt",
    "pth",
    "onnx",
    "json",
    "yaml",
    "yml",
    "txt",
    "h5",
    "gz",
];

/// A parsed `hf://owner/name[@revision][/path][?variant=...]` reference.
///
/// ```
/// use avatar_core::hub::HubRef;
/// let r: HubRef = "hf://h94/IP-Adapter@main/models/ip-adapter_sd15.safetensors".parse().unwrap();
/// assert_eq!(r.repo_id, "h94/IP-Adapter");
/// assert_eq!(r.path, "models/ip-adapter_sd15.safetensors");
/// assert!(r.is_file());
/// let r: HubRef = "hf://owner/pipeline?variant=fp16".parse().unwrap();
/// assert_eq!((r.revision.as_str(), r.variant.as_deref()), ("main", Some("fp16")));
/// assert!(!r.is_file());
/// assert!("hf://only-a-name".parse::<HubRef>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/name`.
    pub repo_id: String,
    /// Branch, tag or commit (`main` unless given).
    pub revision: String,
    /// A file or folder inside the repository (`""` = its root).
    pub path: String,
    /// The weights variant to prefer (`fp16`, ...).
    pub variant: Option<String>,
}

impl HubRef {
    /// Whether the reference names one file (by its extension) rather than a folder.
    pub fn is_file(&self) -> bool {
        Path::new(&self.path)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| FILE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
    }

    /// The reference as written (`hf://owner/name@revision/path`).
    pub fn to_uri(&self) -> String {
        let path = if self.path.is_empty() {
            String::new()
        } else {
            format!("/{}", self.path)
        };
        let variant = self
            .variant
            .as_ref()
            .map(|v| format!("?variant={v}"))
            .unwrap_or_default();
        format!(
            "{SCHEME}{}@{}{path}{variant}",
            self.repo_id,
            self.revision.replace('/', "%2F")
        )
    }
}

impl FromStr for HubRef {
    type Err = AvatarError;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = |why: &str| {
            AvatarError::invalid(
                "model",
                format!(
                    "{text:?}: {why} (expected hf://owner/name[@revision][/path][?variant=fp16])"
                ),
            )
        };
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("not an hf:// reference"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let variant = match query {
            None => None,
            Some(query) => {
                let value = query
                    .strip_prefix("variant=")
                    .filter(|v| !v.is_empty() && v.chars().all(is_name_char))
                    .ok_or_else(|| invalid("the only query is variant=NAME"))?;
                Some(value.to_owned())
            }
        };
        let mut segments = rest.split('/');
        let owner = segments.next().unwrap_or_default();
        let name_rev = segments
            .next()
            .ok_or_else(|| invalid("no repository name"))?;
        let (name, revision) = match name_rev.split_once('@') {
            Some((name, revision)) => (name, revision.replace("%2F", "/")),
            None => (name_rev, "main".to_owned()),
        };
        let good = |s: &str| !s.is_empty() && s.chars().all(is_name_char);
        if !good(owner) || !good(name) {
            return Err(invalid(
                "owner and name are letters, digits, '-', '_' and '.'",
            ));
        }
        if revision.is_empty() || revision.contains("..") {
            return Err(invalid("empty or malformed revision"));
        }
        let path: Vec<&str> = segments.collect();
        if path.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
            return Err(invalid("empty, '.' or '..' path segment"));
        }
        Ok(HubRef {
            repo_id: format!("{owner}/{name}"),
            revision,
            path: path.join("/"),
            variant,
        })
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// `path` itself, or for an `hf://` reference its local copy: the file, or the folder with every
/// file a loader needs (downloaded into the cache first when missing). Without the `hub` feature an
/// `hf://` reference is an [`AvatarError::InvalidOption`] on `model`.
pub fn resolve(path: &Path) -> Result<Cow<'_, Path>> {
    match path.to_str() {
        Some(text) if text.starts_with(SCHEME) => {
            let reference: HubRef = text.parse()?;
            fetch(&reference).map(Cow::Owned)
        }
        _ => Ok(Cow::Borrowed(path)),
    }
}

#[cfg(not(feature = "hub"))]
fn fetch(reference: &HubRef) -> Result<std::path::PathBuf> {
    Err(AvatarError::invalid(
        "model",
        format!(
            "{}: this build has no `hub` feature; download the files and pass a local path",
            reference.to_uri()
        ),
    ))
}

#[cfg(feature = "hub")]
fn fetch(reference: &HubRef) -> Result<std::path::PathBuf> {
    download::fetch(reference)
}

/// The repository files a folder reference needs: for a pipeline (`folder/model_index.json` in
/// `files`) those of every component `model_index` lists, else those of `folder` itself; per
/// folder its `.json` / `.txt` files and one safetensors file per weights stem (the `variant` if
/// there is one, else the plain file, else the only variant). Files of other formats are skipped;
/// a component whose weights exist only as PyTorch `.bin` is an error.
///
/// ```
/// use avatar_core::hub::plan_folder;
/// let files: Vec<String> = ["vae/config.json", "vae/diffusion_pytorch_model.safetensors",
///     "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.bin"]
///     .iter().map(|s| s.to_string()).collect();
/// let plan = plan_folder(&files, "vae", None, Some("fp16")).unwrap();
/// assert_eq!(plan, ["vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"]);
/// ```
pub fn plan_folder(
    files: &[String],
    folder: &str,
    model_index: Option<&serde_json::Value>,
    variant: Option<&str>,
) -> Result<Vec<String>> {
    let Some(index) = model_index else {
        return plan_component(files, folder, variant);
    };
    let components = index
        .as_object()
        .ok_or_else(|| AvatarError::Config("model_index.json is not an object".into()))?
        .iter()
        .filter(|(_, value)| {
            value
                .as_array()
                .is_some_and(|v| v.first().is_some_and(|lib| !lib.is_null()))
        })
        .map(|(name, _)| name.clone());
    let mut plan = vec![join(folder, "model_index.json")];
    for component in components {
        plan.extend(plan_component(files, &join(folder, &component), variant)?);
    }
    Ok(plan)
}

fn plan_component(files: &[String], folder: &str, variant: Option<&str>) -> Result<Vec<String>> {
    let children: Vec<&str> = files
        .iter()
        .filter_map(|f| {
            if folder.is_empty() {
                Some(f.as_str())
            } else {
                f.strip_prefix(folder)?.strip_prefix('/')
            }
        })
        .filter(|name| !name.contains('/'))
        .collect();
    if children.is_empty() {
        return Err(AvatarError::Config(format!(
            "the repository has no folder `{folder}`"
        )));
    }
    let mut plan: Vec<String> = children
        .iter()
        .filter(|n| n.ends_with(".json") || n.ends_with(".txt"))
        .map(|n| join(folder, n))
        .collect();
    plan.sort();
    let safetensors: Vec<&str> = children
        .iter()
        .copied()
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    let mut stems: Vec<&str> = safetensors
        .iter()
        .map(|n| n.split('.').next().unwrap_or(n))
        .collect();
    stems.sort_unstable();
    stems.dedup();
    for stem in stems {
        let candidates: Vec<&str> = safetensors
            .iter()
            .copied()
            .filter(|n| is_weights_of(n, stem))
            .collect();
        let chosen = pick_weights(stem, &candidates, variant).ok_or_else(|| {
            AvatarError::Config(format!(
                "{folder}: several weight variants of `{stem}` ({}) and no plain file; \
                 choose one with ?variant=",
                candidates.join(", ")
            ))
        })?;
        plan.push(join(folder, chosen));
    }
    let pickles = children.iter().any(|n| n.ends_with(".bin"));
    if safetensors.is_empty() && pickles {
        return Err(AvatarError::Config(format!(
            "{folder}: weights only as PyTorch .bin; the folder loaders read safetensors \
             (name the .bin file itself where a loader takes files)"
        )));
    }
    Ok(plan)
}

/// `folder/name` in a repository's path space (`name` alone at the root).
fn join(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_owned()
    } else {
        format!("{folder}/{name}")
    }
}

#[cfg(feature = "hub")]
mod download {
    use std::io::IsTerminal;
    use std::path::{Path, PathBuf};

    use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
    use hf_hub::{Cache, Repo, RepoType};

    use super::{HubRef, join, plan_folder};
    use crate::error::{AvatarError, Result};

    pub(super) fn fetch(reference: &HubRef) -> Result<PathBuf> {
        let cache = Cache::from_env();
        let repo = Repo::with_revision(
            reference.repo_id.clone(),
            RepoType::Model,
            reference.revision.clone(),
        );
        let cached = |file: &str| cache.repo(repo.clone()).get(file);
        if reference.is_file() {
            if let Some(path) = cached(&reference.path) {
                return Ok(path);
            }
            let api = api(cache.clone(), reference)?;
            return api
                .repo(repo)
                .get(&reference.path)
                .map_err(|e| failed(reference, &reference.path, e));
        }
        let marker = |name: &str| join(&reference.path, name);
        let cached_folder = cached(&marker("model_index.json"))
            .or_else(|| cached(&marker("config.json")))
            .map(|file| file.parent().map(Path::to_path_buf).unwrap_or_default());
        if offline() {
            return cached_folder.ok_or_else(|| {
                failed_with(
                    reference,
                    "HF_HUB_OFFLINE is set and the folder is not cached",
                )
            });
        }
        let api = api(cache.clone(), reference)?;
        let api_repo = api.repo(repo);
        let files = match api_repo.info() {
            Ok(info) => info
                .siblings
                .into_iter()
                .map(|s| s.rfilename)
                .collect::<Vec<_>>(),
            Err(e) => {
                // Offline with a cached copy: use it as it is.
                return cached_folder.ok_or_else(|| failed(reference, "", e));
            }
        };
        let index_name = marker("model_index.json");
        let index = if files.contains(&index_name) {
            let local = get(&api_repo, reference, &index_name)?;
            let text = std::fs::read_to_string(&local).map_err(|e| AvatarError::io(&local, e))?;
            Some(
                serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                    AvatarError::Config(format!("{}: model_index.json: {e}", reference.to_uri()))
                })?,
            )
        } else {
            None
        };
        let plan = plan_folder(
            &files,
            &reference.path,
            index.as_ref(),
            reference.variant.as_deref(),
        )
        .map_err(|e| failed_with(reference, &e.to_string()))?;
        let mut root = None;
        for file in &plan {
            let local = get(&api_repo, reference, file)?;
            // The snapshot folder: the local file minus the file's path in the repository.
            root.get_or_insert_with(|| {
                let depth = file.split('/').count();
                local
                    .ancestors()
                    .nth(depth)
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            });
        }
        let root = root.ok_or_else(|| failed_with(reference, "nothing to download"))?;
        Ok(if reference.path.is_empty() {
            root
        } else {
            root.join(&reference.path)
        })
    }

    fn api(cache: Cache, reference: &HubRef) -> Result<Api> {
        let mut builder = ApiBuilder::from_cache(cache)
            .with_progress(std::io::stderr().is_terminal())
            .with_retries(2);
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
        }
        if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
            builder = builder.with_token(Some(token));
        }
        builder.build().map_err(|e| failed(reference, "", e))
    }

    fn get(repo: &ApiRepo, reference: &HubRef, file: &str) -> Result<PathBuf> {
        repo.get(file).map_err(|e| failed(reference, file, e))
    }

    fn offline() -> bool {
        std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
    }

    fn failed(reference: &HubRef, file: &str, error: ApiError) -> AvatarError {
        let what = if file.is_empty() {
            "the repository listing".to_owned()
        } else {
            file.to_owned()
        };
        failed_with(reference, &format!("{what}: {error}"))
    }

    fn failed_with(reference: &HubRef, message: &str) -> AvatarError {
        AvatarError::Download {
            reference: reference.to_uri(),
            message: message.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn references_parse_and_print() {
        let r: HubRef = "hf://a/b@feature%2Fx/sub/dir".parse().unwrap();
        assert_eq!(r.revision, "feature/x");
        assert_eq!(r.path, "sub/dir");
        assert_eq!(r.to_uri(), "hf://a/b@feature%2Fx/sub/dir");
        for bad in [
            "hf://",
            "hf://a",
            "hf://a/b/../c",
            "hf://a/b//c",
            "hf://a/b?variant=",
            "hf://a/b?revision=x",
            "hf://a b/c",
            "file:///a/b",
        ] {
            let error = bad.parse::<HubRef>().unwrap_err();
            assert_eq!(error.field(), Some("model"), "{bad}");
        }
        assert!(matches!(
            resolve(Path::new("relative/dir")).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_pipeline_plan_takes_each_listed_component_once() {
        let repo = files(&[
            "model_index.json",
            "README.md",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.bin",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "text_encoder/flax_model.msgpack",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "scheduler/scheduler_config.json",
            "vae_decoder/model.onnx",
        ]);
        let index = serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "safety_checker": [null, null],
            "requires_safety_checker": false
        });
        let plan = plan_folder(&repo, "", Some(&index), None).unwrap();
        assert_eq!(
            plan,
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "tokenizer/merges.txt",
                "tokenizer/vocab.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
            ]
        );
        let fp16 = plan_folder(&repo, "", Some(&index), Some("fp16")).unwrap();
        assert!(fp16.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(fp16.contains(&"text_encoder/model.safetensors".to_string()));
    }

    #[test]
    fn unusable_folders_are_explained() {
        let pickles = files(&["config.json", "pytorch_model.bin"]);
        let error = plan_folder(&pickles, "", None, None).unwrap_err();
        assert!(error.to_string().contains(".bin"), "{error}");
        let ambiguous = files(&[
            "a/config.json",
            "a/m.fp16.safetensors",
            "a/m.bf16.safetensors",
        ]);
        let error = plan_folder(&ambiguous, "a", None, None).unwrap_err();
        assert!(error.to_string().contains("variant"), "{error}");
        assert_eq!(
            plan_folder(&ambiguous, "a", None, Some("bf16")).unwrap(),
            ["a/config.json", "a/m.bf16.safetensors"]
        );
        let error = plan_folder(&ambiguous, "b", None, None).unwrap_err();
        assert!(error.to_string().contains("no folder `b`"), "{error}");
    }
}
