//! Seed 002's `avatar_gen` task: InstantID avatars of a face (its photo, embedding and
//! keypoints travel with the task so that a re-queued task draws the same images).

use avatar_core::AvatarError;
use avatar_core::diffusion::avatar_gen::{AvatarGenOptions, FaceReference};
use avatar_core::diffusion::safety_checker::Obfuscation;
use avatar_core::imaging::{ImageFormat, encode};
use serde::{Deserialize, Serialize};

use super::face_avatar::{DiffusionApps, decode_png};
use super::job::{Artifact, Job, JobContext, JobError};

/// The task kind.
pub const KIND: &str = "diffusion.avatar_gen";

/// The persisted parameters of an `avatar_gen` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvatarGenSpec {
    /// How the request named the photo (its URL, or a description of inline data).
    pub face_image: String,
    /// The face photo, PNG, base64.
    pub reference_png: String,
    /// The pose skeleton image, PNG, base64.
    pub pose_png: Option<String>,
    /// The face's insightface embedding.
    pub face_embedding: Vec<f32>,
    /// The face's five keypoints in the photo's pixels.
    pub face_keypoints: Vec<(f32, f32)>,
    /// The validated options.
    pub options: AvatarGenOptions,
    /// Run the safety checker.
    pub safety_checker: bool,
    /// What replaces a flagged image.
    pub safety_checker_type: Obfuscation,
}

/// The job.
#[derive(Debug)]
pub struct AvatarGenJob {
    spec: AvatarGenSpec,
}

impl AvatarGenJob {
    /// A job for a validated spec.
    pub fn new(spec: AvatarGenSpec) -> Self {
        AvatarGenJob { spec }
    }

    /// Rebuilds a job from its persisted spec.
    pub fn from_spec(spec: &serde_json::Value) -> Result<Self, String> {
        let spec: AvatarGenSpec =
            serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
        spec.options.validate().map_err(|e| e.to_string())?;
        Ok(AvatarGenJob { spec })
    }
}

impl Job<DiffusionApps> for AvatarGenJob {
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
        let model = apps
            .instant_id()
            .ok_or_else(|| JobError::Failed("InstantID is no longer configured".into()))?;
        let face = FaceReference {
            image: decode_png(&self.spec.reference_png).map_err(|e| failed(&e))?,
            embedding: self.spec.face_embedding.clone(),
            keypoints: self.spec.face_keypoints.clone(),
        };
        let pose = match &self.spec.pose_png {
            Some(png) => Some(decode_png(png).map_err(|e| failed(&e))?),
            None => None,
        };
        let options = &self.spec.options;
        let output = model
            .generate(&face, pose.as_ref(), options, |p| {
                ctx.progress(p.done as u32, p.total as u32);
                !ctx.is_cancelled()
            })
            .map_err(|e| match e {
                AvatarError::Cancelled => JobError::Cancelled,
                other => failed(&other),
            })?;
        let images = output.images;
        let (images, flagged) = match (self.spec.safety_checker, apps.safety()) {
            (true, Some(filter)) => filter
                .filter(images, Some(self.spec.safety_checker_type))
                .map_err(|e| failed(&e))?,
            (true, None) => {
                return Err(JobError::Failed(
                    "the safety checker is no longer configured".into(),
                ));
            }
            (false, _) => {
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
                    "seed": options.seed,
                    "index": index,
                    "nsfw_content_detected": flagged[index],
                    "controlnets": output.controls_used,
                    "width": image.width(),
                    "height": image.height(),
                }),
            })?;
        }
        Ok(())
    }
}
