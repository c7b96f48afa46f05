//! Seed 001's face-avatar task: `batch` images drawn from a reference photo with a configured
//! Stable Diffusion model (`app_id`), one progress step per denoising step.

use std::collections::BTreeMap;
use std::sync::Arc;

use avatar_core::AvatarError;
use avatar_core::diffusion::avatar_gen::InstantId;
use avatar_core::diffusion::face_avatar::{FaceAvatarOptions, FaceAvatarTools, face_avatars};
use avatar_core::diffusion::pipeline::StableDiffusion;
use avatar_core::diffusion::safety_checker::{Obfuscation, SafetyFilter};
use avatar_core::face_analysis::{DetectionOptions, FaceAnalysis};
use avatar_core::imaging::{ImageFormat, encode};
use avatar_core::segmentation::BackgroundRemoval;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::job::{Artifact, Job, JobContext, JobError};

/// The task kind.
pub const KIND: &str = "diffusion.face_avatar";
/// The lane name.
pub const LANE: &str = "diffusion";

/// The configured Stable Diffusion pipelines by `app_id`, the safety checker, InstantID and the
/// background removal (loaded once, shared by every lane and route).
#[derive(Debug, Clone, Default)]
pub struct DiffusionApps {
    apps: Arc<BTreeMap<String, Arc<StableDiffusion>>>,
    safety: Option<Arc<SafetyFilter>>,
    instant_id: Option<Arc<InstantId>>,
    background: BackgroundRemoval,
    faces: Option<(Arc<FaceAnalysis>, DetectionOptions)>,
}

/// What [`DiffusionApps::load`] loads.
#[derive(Debug, Clone, Default)]
pub struct DiffusionSetup {
    /// `(app_id, diffusers folder)`.
    pub apps: Vec<(String, std::path::PathBuf)>,
    /// The safety checker folder and its default obfuscation.
    pub safety: Option<(std::path::PathBuf, Obfuscation)>,
    /// The `default` model's IP-Adapter.
    pub ip_adapter: Option<crate::config::IpAdapterPaths>,
    /// InstantID (seed 002).
    pub instant_id: Option<crate::config::InstantIdPaths>,
    /// U²-Net weights for `remove_background` (else plain backgrounds are keyed).
    pub background_model: Option<std::path::PathBuf>,
    /// The SCRFD detector and ArcFace recogniser (seed 002 then analyses `init_image` itself).
    pub face_analysis: Option<crate::config::FaceAnalysisSetup>,
    /// Compute precision of every Stable Diffusion model.
    pub precision: avatar_core::diffusion::precision::Precision,
}

impl DiffusionApps {
    /// Loads every configured model on `device` (blocking).
    pub fn load(setup: &DiffusionSetup, device: avatar_core::DeviceSpec) -> Result<Self, String> {
        let device = device.device().map_err(|e| e.to_string())?;
        let mut loaded = BTreeMap::new();
        for (id, dir) in &setup.apps {
            let mut pipeline = StableDiffusion::load(dir, &device)
                .map_err(|e| format!("model {id:?} ({}): {e}", dir.display()))?;
            pipeline
                .set_precision(setup.precision)
                .map_err(|e| format!("--sd-precision: {e}"))?;
            if let (Some(paths), "default") = (&setup.ip_adapter, id.as_str()) {
                pipeline
                    .load_ip_adapter(&paths.adapter, paths.image_encoder.as_deref())
                    .map_err(|e| format!("IP-Adapter ({}): {e}", paths.adapter.display()))?;
            }
            loaded.insert(id.clone(), Arc::new(pipeline));
        }
        if setup.ip_adapter.is_some() && !loaded.contains_key("default") {
            return Err("--sd-ip-adapter needs --sd-model (the default model)".into());
        }
        let instant_id = match &setup.instant_id {
            Some(paths) => {
                let mut base = StableDiffusion::load(&paths.model, &device)
                    .map_err(|e| format!("InstantID model ({}): {e}", paths.model.display()))?;
                base.set_precision(setup.precision)
                    .map_err(|e| format!("--sd-precision: {e}"))?;
                Some(Arc::new(
                    InstantId::new(
                        base,
                        &paths.adapter,
                        &paths.identitynet,
                        paths.pose.as_deref(),
                        paths.canny.as_deref(),
                    )
                    .map_err(|e| format!("InstantID: {e}"))?,
                ))
            }
            None => None,
        };
        let safety = setup
            .safety
            .as_ref()
            .map(|(dir, how)| (dir.as_path(), *how));
        let safety = match safety {
            Some((dir, how)) => Some(Arc::new(
                SafetyFilter::load(dir, how, &device)
                    .map_err(|e| format!("safety checker ({}): {e}", dir.display()))?,
            )),
            None => None,
        };
        // The loader's errors name the file.
        let background = BackgroundRemoval::from_model(setup.background_model.as_deref(), &device)
            .map_err(|e| format!("background model: {e}"))?;
        let faces = match &setup.face_analysis {
            Some(setup) => {
                let faces = FaceAnalysis::load(&setup.detector, &setup.recognizer, &device)
                    .map_err(|e| format!("face analysis: {e}"))?;
                if let Some(model) = &instant_id {
                    // A recogniser whose embedding the InstantID adapter cannot take is a
                    // configuration error: say so now, not on the first request.
                    let width = faces
                        .recognizer()
                        .embedding_width()
                        .map_err(|e| format!("face recognizer: {e}"))?;
                    model
                        .check_face(&vec![0.0; width], &[(0.0, 0.0); 5])
                        .map_err(|e| format!("--face-recognizer does not fit InstantID: {e}"))?;
                }
                Some((Arc::new(faces), setup.options))
            }
            None => None,
        };
        Ok(DiffusionApps {
            apps: Arc::new(loaded),
            safety,
            instant_id,
            background,
            faces,
        })
    }

    /// InstantID, when configured (`--instantid-model`).
    pub fn instant_id(&self) -> Option<&Arc<InstantId>> {
        self.instant_id.as_ref()
    }

    /// The pipeline of `app_id`.
    pub fn get(&self, app_id: &str) -> Option<&Arc<StableDiffusion>> {
        self.apps.get(app_id)
    }

    /// The safety checker, when configured (`--safety-checker`).
    pub fn safety(&self) -> Option<&Arc<SafetyFilter>> {
        self.safety.as_ref()
    }

    /// Face detection + recognition, when configured (`--face-detector`, `--face-recognizer`).
    pub fn face_analysis(&self) -> Option<&(Arc<FaceAnalysis>, DetectionOptions)> {
        self.faces.as_ref()
    }

    /// How `remove_background` works: the U²-Net of `--background-model`, else keying.
    pub fn background(&self) -> &BackgroundRemoval {
        &self.background
    }

    /// What seed 001's face avatars use: the background removal and, for a FaceID adapter,
    /// the face analysis.
    pub fn face_avatar_tools(&self) -> FaceAvatarTools {
        FaceAvatarTools {
            background: self.background.clone(),
            faces: self.faces.clone(),
        }
    }

    /// The configured ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.apps.keys().cloned().collect()
    }

    /// Every pipeline by id.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<StableDiffusion>)> {
        self.apps.iter()
    }

    /// Whether no model is configured (neither Stable Diffusion apps nor InstantID).
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.instant_id.is_none()
    }
}

/// The persisted parameters of a face-avatar task (the fetched reference travels with it, so
/// a task re-queued after a restart draws the same images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceAvatarSpec {
    /// The model.
    pub app_id: String,
    /// The reference photo, PNG, base64.
    pub reference_png: String,
    /// The validated options.
    pub options: FaceAvatarOptions,
}

/// The job.
#[derive(Debug)]
pub struct FaceAvatarJob {
    spec: FaceAvatarSpec,
}

impl FaceAvatarJob {
    /// A job for a validated spec.
    pub fn new(spec: FaceAvatarSpec) -> Self {
        FaceAvatarJob { spec }
    }

    /// Rebuilds a job from its persisted spec.
    pub fn from_spec(spec: &serde_json::Value) -> Result<Self, String> {
        let spec: FaceAvatarSpec =
            serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
        spec.options.validate().map_err(|e| e.to_string())?;
        Ok(FaceAvatarJob { spec })
    }
}

/// A base64 PNG carried in a task's spec, decoded.
pub(crate) fn decode_png(data: &str) -> Result<image::RgbaImage, String> {
    let png = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| e.to_string())?;
    Ok(image::load_from_memory(&png)
        .map_err(|e| e.to_string())?
        .to_rgba8())
}

impl Job<DiffusionApps> for FaceAvatarJob {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn total_steps(&self) -> u32 {
        self.spec.options.num_inference_steps as u32
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::to_value(&self.spec).unwrap_or_default()
    }

    fn run(&mut self, apps: &mut DiffusionApps, ctx: &JobContext) -> Result<(), JobError> {
        let failed = |e: &dyn std::fmt::Display| JobError::Failed(e.to_string());
        let pipeline = apps.get(&self.spec.app_id).ok_or_else(|| {
            JobError::Failed(format!(
                "model {:?} is no longer configured",
                self.spec.app_id
            ))
        })?;
        let reference = decode_png(&self.spec.reference_png).map_err(|e| failed(&e))?;
        let options = &self.spec.options;
        let tools = apps.face_avatar_tools();
        let images = face_avatars(pipeline, &reference, options, &tools, |p| {
            ctx.progress(p.done as u32, p.total as u32);
            !ctx.is_cancelled()
        })
        .map_err(|e| match e {
            AvatarError::Cancelled => JobError::Cancelled,
            other => failed(&other),
        })?;
        let (images, flagged) = match apps.safety() {
            Some(filter) => filter.filter(images, None).map_err(|e| failed(&e))?,
            None => {
                let n = images.len();
                (images, vec![false; n])
            }
        };
        for (index, image) in images.iter().enumerate() {
            let bytes = encode(image, ImageFormat::Png).map_err(|e| failed(&e))?;
            ctx.push_result(Artifact {
                bytes,
                content_type: "image/png".into(),
                meta: serde_json::json!({
                    "app_id": self.spec.app_id,
                    "seed": options.seed,
                    "index": index,
                    "nsfw_content_detected": flagged[index],
                    "width": image.width(),
                    "height": image.height(),
                }),
            })?;
        }
        Ok(())
    }
}
