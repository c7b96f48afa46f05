//! The DCGAN batch task: `n` avatars from one request, one progress step per stored image.

use std::sync::Arc;

use avatar_core::imaging::{Color, ImageFormat};
use avatar_core::{AvatarError, AvatarGenerator, GenerateOptions, ModelSize, Seed};
use serde::{Deserialize, Serialize};

use super::job::{Artifact, Job, JobContext, JobError};
use crate::metrics::Metrics;
use crate::models::ModelCatalog;

/// The task kind.
pub const KIND: &str = "dcgan.batch";
/// The lane name.
pub const LANE: &str = "dcgan";
/// Images per forward pass inside a task.
const CHUNK: usize = 8;

/// Both DCGAN generators, owned by one task worker thread.
#[derive(Debug)]
pub struct DcganModels {
    small: AvatarGenerator,
    large: AvatarGenerator,
}

impl DcganModels {
    /// Loads both sizes (call on the worker thread).
    pub fn load(catalog: &ModelCatalog) -> Result<Self, AvatarError> {
        Ok(DcganModels {
            small: catalog.generator(ModelSize::Small)?,
            large: catalog.generator(ModelSize::Large)?,
        })
    }

    fn get(&self, size: ModelSize) -> &AvatarGenerator {
        match size {
            ModelSize::Small => &self.small,
            ModelSize::Large => &self.large,
        }
    }
}

/// The validated parameters of a batch, persisted with the task (seeds are resolved at
/// submission, so a task resumed after a restart draws the same avatars).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DcganBatchSpec {
    /// `small` or `large`.
    pub size: String,
    /// One seed per image.
    pub seeds: Vec<String>,
    /// Transparent background.
    pub transparent: bool,
    /// Background colour.
    pub bg_color: Option<String>,
    /// `png`, `webp` or `jpeg`.
    pub format: String,
    /// Output side in pixels.
    pub output_size: Option<u32>,
}

impl DcganBatchSpec {
    /// Parses the spec with avatar-core's parsers and validates the options.
    pub fn resolve(&self) -> Result<(ModelSize, GenerateOptions), AvatarError> {
        let size = self.size.parse::<ModelSize>()?;
        let options = GenerateOptions {
            seed: None,
            transparent: self.transparent,
            bg_color: self
                .bg_color
                .as_deref()
                .map(str::parse::<Color>)
                .transpose()?,
            output_size: self.output_size,
            format: self.format.parse::<ImageFormat>()?,
        };
        options.validate()?;
        Ok((size, options))
    }
}

/// Draws the seeds of an `n`-image batch: a numeric seed `s` gives `s, s+1, ...`; a text seed
/// `t` gives `t, t-1, t-2, ...`; no seed gives random ones.
pub fn batch_seeds(seed: Option<&Seed>, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match seed {
            Some(Seed::Number(s)) => s.wrapping_add(i as u64).to_string(),
            Some(Seed::Text(t)) if i == 0 => t.clone(),
            Some(Seed::Text(t)) => format!("{t}-{i}"),
            None => Seed::random().to_string(),
        })
        .collect()
}

/// The job.
#[derive(Debug)]
pub struct DcganBatchJob {
    spec: DcganBatchSpec,
    metrics: Arc<Metrics>,
}

impl DcganBatchJob {
    /// A job for a validated spec.
    pub fn new(spec: DcganBatchSpec, metrics: Arc<Metrics>) -> Self {
        DcganBatchJob { spec, metrics }
    }

    /// Rebuilds a job from its persisted spec.
    pub fn from_spec(spec: &serde_json::Value, metrics: Arc<Metrics>) -> Result<Self, String> {
        let spec: DcganBatchSpec =
            serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
        spec.resolve().map_err(|e| e.to_string())?;
        Ok(DcganBatchJob { spec, metrics })
    }
}

impl Job<DcganModels> for DcganBatchJob {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn total_steps(&self) -> u32 {
        self.spec.seeds.len() as u32
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::to_value(&self.spec).unwrap_or_default()
    }

    fn run(&mut self, models: &mut DcganModels, ctx: &JobContext) -> Result<(), JobError> {
        let (size, options) = self
            .spec
            .resolve()
            .map_err(|e| JobError::Failed(e.to_string()))?;
        let generator = models.get(size);
        let total = self.total_steps();
        let side = options.output_size.unwrap_or(generator.resolution());
        let mut done = 0u32;
        ctx.progress(0, total);
        for chunk in self.spec.seeds.chunks(CHUNK) {
            ctx.checkpoint()?;
            let seeds: Vec<Seed> = chunk.iter().map(|s| Seed::from(s.as_str())).collect();
            let images = generator
                .generate_batch(&seeds, &options)
                .map_err(|e| JobError::Failed(e.to_string()))?;
            self.metrics
                .record_images(size.as_str(), "task", images.len());
            for (seed, image) in chunk.iter().zip(images) {
                let bytes = avatar_core::imaging::encode(&image, options.format)
                    .map_err(|e| JobError::Failed(e.to_string()))?;
                ctx.push_result(Artifact {
                    bytes,
                    content_type: options.format.mime().to_string(),
                    meta: serde_json::json!({
                        "seed": seed,
                        "width": side,
                        "height": side,
                        "format": self.spec.format,
                        "size": self.spec.size,
                    }),
                })?;
                done += 1;
                ctx.progress(done, total);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_seeds_are_reproducible() {
        assert_eq!(batch_seeds(Some(&Seed::from("41")), 3), ["41", "42", "43"]);
        assert_eq!(
            batch_seeds(Some(&Seed::from(u64::MAX)), 2),
            [u64::MAX.to_string(), "0".into()]
        );
        assert_eq!(
            batch_seeds(Some(&Seed::from("alice")), 3),
            ["alice", "alice-1", "alice-2"]
        );
        let random = batch_seeds(None, 2);
        assert_ne!(random[0], random[1]);
    }

    #[test]
    fn specs_are_validated_by_avatar_core() {
        let spec = DcganBatchSpec {
            size: "small".into(),
            seeds: vec!["1".into()],
            transparent: true,
            bg_color: None,
            format: "jpeg".into(),
            output_size: None,
        };
        let error = spec.resolve().unwrap_err();
        assert!(matches!(
            error,
            AvatarError::InvalidOption {
                field: "format",
                ..
            }
        ));
    }
}
