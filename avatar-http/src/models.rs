//! Which DCGAN weights the server runs: the ones compiled into the binary, or a directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use avatar_core::{AvatarError, AvatarGenerator, DeviceSpec, ModelSize, WeightsSource};
use sha2::{Digest, Sha256};

/// The weights of one model size, kept as bytes so every worker thread can load its own copy.
#[derive(Clone)]
pub struct ModelWeights {
    /// The model size.
    pub size: ModelSize,
    /// The safetensors bytes (config in the metadata).
    pub bytes: Arc<Vec<u8>>,
    /// The first 16 hex digits of the bytes' SHA-256: part of every ETag, so a new model
    /// invalidates cached avatars.
    pub fingerprint: String,
    /// Where the bytes came from, for logs.
    pub origin: String,
}

impl std::fmt::Debug for ModelWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelWeights")
            .field("size", &self.size)
            .field("bytes", &self.bytes.len())
            .field("fingerprint", &self.fingerprint)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The weights of both model sizes and the device they run on.
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    models: BTreeMap<&'static str, ModelWeights>,
    device: DeviceSpec,
}

impl ModelCatalog {
    /// Reads both models from `weights_dir` (`dcgan_small.safetensors`, `dcgan_large.safetensors`)
    /// or, without one, the weights compiled into avatar-core.
    pub fn load(weights_dir: Option<&Path>, device: DeviceSpec) -> Result<Self, AvatarError> {
        let mut models = BTreeMap::new();
        for size in ModelSize::ALL {
            let (bytes, origin) = match weights_dir {
                Some(dir) => {
                    let path: PathBuf = dir.join(avatar_core::embedded::file_name(size));
                    let bytes = std::fs::read(&path).map_err(|e| AvatarError::io(&path, e))?;
                    (bytes, path.display().to_string())
                }
                None => (
                    avatar_core::embedded::weights(size)?.into_owned(),
                    "embedded".to_string(),
                ),
            };
            if bytes.is_empty() {
                return Err(AvatarError::Weights(format!(
                    "the {} model's weights ({origin}) are empty; pass --weights-dir DIR with \
                     dcgan_small.safetensors and dcgan_large.safetensors",
                    size.as_str()
                )));
            }
            let digest = Sha256::digest(&bytes);
            let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            models.insert(
                size.as_str(),
                ModelWeights {
                    size,
                    bytes: Arc::new(bytes),
                    fingerprint,
                    origin,
                },
            );
        }
        Ok(ModelCatalog { models, device })
    }

    /// The weights of one size.
    pub fn weights(&self, size: ModelSize) -> &ModelWeights {
        self.models
            .get(size.as_str())
            .expect("both sizes are loaded")
    }

    /// The compute device.
    pub fn device(&self) -> DeviceSpec {
        self.device
    }

    /// Builds a generator (call it on the thread that will use it).
    pub fn generator(&self, size: ModelSize) -> Result<AvatarGenerator, AvatarError> {
        let weights = self.weights(size);
        let generator = AvatarGenerator::load(
            WeightsSource::Bytes(weights.bytes.as_ref().clone()),
            &self.device,
        )?;
        if generator.resolution() != size.resolution() {
            return Err(AvatarError::Config(format!(
                "the {} model ({}) draws {} px avatars, expected {}",
                size.as_str(),
                weights.origin,
                generator.resolution(),
                size.resolution()
            )));
        }
        Ok(generator)
    }
}
