//! Face-consistent avatars with InstantID (seed 002's `avatar_gen`): an SDXL pipeline with
//! InstantID's face adapter (the face embedding's tokens in every cross-attention, weight
//! `adapter_strength_ratio`), its IdentityNet (a ControlNet that attends to those tokens and sees
//! the face's keypoints, weight `identitynet_strength_ratio`) and optional pose / canny
//! ControlNets (`controlnet_selection`, `pose_strength`, `canny_strength`), as InstantID's
//! multi-ControlNet app runs them.
//!
//! The face's identity comes as an insightface embedding (512 values, the raw `embedding`) and
//! its five keypoints (eyes, nose, mouth corners) in the reference photo's pixels: the
//! insightface models are non-commercial, so detecting them is left to the caller.

use std::path::Path;

use image::RgbaImage;
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use super::ip_adapter::IpAdapterPrompt;
use super::pipeline::{ControlNetPrompt, StableDiffusion, TextToImageOptions};
use crate::avatar::Progress;
use crate::error::{AvatarError, Result};
use crate::imaging::{canny_image, check_keypoints, draw_kps};
use crate::seed::Seed;

/// Denoising steps seed 002 accepts.
pub const STEPS_ALLOWED: [usize; 3] = [21, 31, 41];
/// Most images per request.
pub const MAX_SAMPLES: usize = 2;
/// Most pixels of an output (512 x 768).
pub const MAX_PIXELS: u32 = 512 * 768;
/// Sides allowed (multiples of 8).
pub const SIDE_RANGE: std::ops::RangeInclusive<u32> = 64..=768;
/// Canny thresholds of InstantID's app (`cv2.Canny(image, 100, 200)`).
pub const CANNY_THRESHOLDS: (f64, f64) = (100.0, 200.0);

/// An extra ControlNet of seed 002's `controlnet_selection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlSelection {
    /// OpenPose skeleton (from `pose_image`, a ready skeleton image).
    Pose,
    /// Canny edges of the pose image (or of the reference).
    Canny,
}

impl std::str::FromStr for ControlSelection {
    type Err = AvatarError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pose" => Ok(ControlSelection::Pose),
            "canny" => Ok(ControlSelection::Canny),
            other => Err(AvatarError::invalid(
                "controlnet_selection",
                format!("{other:?} is not one of pose, canny"),
            )),
        }
    }
}

/// The options of one request, with seed 002's names, ranges and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AvatarGenOptions {
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    pub negative_prompt: String,
    /// Output width (multiple of 8, `width x height <= 512 x 768`).
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// 21, 31 or 41.
    pub num_inference_steps: usize,
    /// Classifier-free guidance (1-20).
    pub guidance_scale: f64,
    /// Weight of the face structure (0-2): scales the keypoint image's IdentityNet residuals on
    /// top of `identitynet_strength_ratio`.
    pub s_scale: f32,
    /// Images (1-2).
    pub samples: usize,
    /// Seed of the noise.
    pub seed: u64,
    /// IdentityNet weight (0-1).
    pub identitynet_strength_ratio: f32,
    /// Face adapter weight (0-1).
    pub adapter_strength_ratio: f32,
    /// Pose ControlNet weight (0-1).
    pub pose_strength: f32,
    /// Canny ControlNet weight (0-1).
    pub canny_strength: f32,
    /// Extra ControlNets.
    pub controlnet_selection: Vec<ControlSelection>,
}

impl Default for AvatarGenOptions {
    fn default() -> Self {
        AvatarGenOptions {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            num_inference_steps: 21,
            guidance_scale: 7.5,
            s_scale: 1.0,
            samples: 1,
            seed: 0,
            identitynet_strength_ratio: 0.8,
            adapter_strength_ratio: 1.0,
            pose_strength: 0.4,
            canny_strength: 0.3,
            controlnet_selection: vec![ControlSelection::Pose],
        }
    }
}

impl AvatarGenOptions {
    /// Checks every option, naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |field: &'static str, message: String| Err(AvatarError::invalid(field, message));
        if self.prompt.trim().is_empty() {
            return invalid("prompt", "is empty".into());
        }
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if !SIDE_RANGE.contains(&side) || side % 8 != 0 {
                return invalid(field, format!("{side} must be a multiple of 8 in 64..=768"));
            }
        }
        if self.width * self.height > MAX_PIXELS {
            return invalid(
                "width",
                format!("{}x{} is larger than 512 x 768", self.width, self.height),
            );
        }
        if !STEPS_ALLOWED.contains(&self.num_inference_steps) {
            return invalid(
                "num_inference_steps",
                format!("{} is not one of 21, 31, 41", self.num_inference_steps),
            );
        }
        if !(1.0..=20.0).contains(&self.guidance_scale) {
            return invalid(
                "guidance_scale",
                format!("{} is outside 1..=20", self.guidance_scale),
            );
        }
        if !(0.0..=2.0).contains(&self.s_scale) {
            return invalid("s_scale", format!("{} is outside 0..=2", self.s_scale));
        }
        if !(1..=MAX_SAMPLES).contains(&self.samples) {
            return invalid("samples", format!("{} is outside 1..=2", self.samples));
        }
        for (field, value) in [
            (
                "identitynet_strength_ratio",
                self.identitynet_strength_ratio,
            ),
            ("adapter_strength_ratio", self.adapter_strength_ratio),
            ("pose_strength", self.pose_strength),
            ("canny_strength", self.canny_strength),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(field, format!("{value} is outside 0..=1"));
            }
        }
        Ok(())
    }
}

/// The face to keep: the reference photo, its insightface embedding and its five keypoints.
#[derive(Debug, Clone)]
pub struct FaceReference {
    /// The reference photo.
    pub image: RgbaImage,
    /// insightface's raw 512-d `embedding` (InstantID uses it unnormalised).
    pub embedding: Vec<f32>,
    /// insightface's `kps`: left eye, right eye, nose, left and right mouth corner, in the
    /// photo's pixels.
    pub keypoints: Vec<(f32, f32)>,
}

#[cfg(feature = "face-analysis")]
impl FaceReference {
    /// The reference with the embedding and keypoints of its largest face, found by `analysis`
    /// (as InstantID's app picks it); a photo without a face is an
    /// [`AvatarError::InvalidOption`] on `field`.
    pub fn from_image(
        image: RgbaImage,
        analysis: &crate::face_analysis::FaceAnalysis,
        options: &crate::face_analysis::DetectionOptions,
        field: &'static str,
    ) -> Result<Self> {
        let rgb = image::DynamicImage::ImageRgba8(image.clone()).to_rgb8();
        let face = analysis.reference_face(&rgb, options, field)?;
        Ok(FaceReference {
            image,
            keypoints: face.keypoints.iter().map(|p| (p[0], p[1])).collect(),
            embedding: face.embedding,
        })
    }
}

/// What a request produced.
#[derive(Debug, Clone)]
pub struct AvatarGenOutput {
    /// The images.
    pub images: Vec<RgbaImage>,
    /// The extra ControlNets that actually ran (pose needs a pose image and a pose ControlNet,
    /// canny a canny ControlNet).
    pub controls_used: Vec<ControlSelection>,
}

/// An SDXL pipeline with InstantID's face adapter and IdentityNet, and the optional pose and
/// canny ControlNets.
#[derive(Debug)]
pub struct InstantId {
    pipeline: StableDiffusion,
    adapter: usize,
    identitynet: usize,
    pose: Option<usize>,
    canny: Option<usize>,
}

/// `image` scaled to cover `width x height` and centre-cropped; returns the scale and offsets
/// that map its pixels into the result.
fn cover(image: &RgbaImage, width: u32, height: u32) -> (RgbaImage, f32, (f32, f32)) {
    let (w, h) = image.dimensions();
    let scale = (width as f32 / w.max(1) as f32).max(height as f32 / h.max(1) as f32);
    let (sw, sh) = (
        ((w as f32 * scale).round() as u32).max(width),
        ((h as f32 * scale).round() as u32).max(height),
    );
    let resized = image::imageops::resize(image, sw, sh, FilterType::Lanczos3);
    let (ox, oy) = ((sw - width) / 2, (sh - height) / 2);
    let cropped = image::imageops::crop_imm(&resized, ox, oy, width, height).to_image();
    (cropped, scale, (ox as f32, oy as f32))
}

impl InstantId {
    /// Wraps an SDXL `pipeline`, loading InstantID's `ip-adapter.bin`, the IdentityNet
    /// ControlNet folder and the optional pose / canny ControlNet folders.
    pub fn new(
        mut pipeline: StableDiffusion,
        ip_adapter: &Path,
        identitynet: &Path,
        pose: Option<&Path>,
        canny: Option<&Path>,
    ) -> Result<Self> {
        if !pipeline.is_xl() {
            return Err(AvatarError::Config(
                "InstantID needs an SDXL pipeline (its IdentityNet and adapter are SDXL-only)"
                    .into(),
            ));
        }
        let adapter = pipeline.load_instantid_adapter(ip_adapter)?;
        let identitynet = pipeline.load_controlnet(identitynet)?;
        let pose = pose.map(|p| pipeline.load_controlnet(p)).transpose()?;
        let canny = canny.map(|p| pipeline.load_controlnet(p)).transpose()?;
        Ok(InstantId {
            pipeline,
            adapter,
            identitynet,
            pose,
            canny,
        })
    }

    /// The underlying pipeline.
    pub fn pipeline(&self) -> &StableDiffusion {
        &self.pipeline
    }

    /// Checks a face's embedding (length of the adapter's input, finite) and keypoints (five,
    /// finite) before any work, naming the field.
    pub fn check_face(&self, embedding: &[f32], keypoints: &[(f32, f32)]) -> Result<()> {
        self.pipeline.ip_adapters()[self.adapter].check_face_embedding(embedding)?;
        check_keypoints(keypoints)
    }

    /// Which extra ControlNets are loaded.
    pub fn controls_available(&self) -> Vec<ControlSelection> {
        let mut out = Vec::new();
        if self.pose.is_some() {
            out.push(ControlSelection::Pose);
        }
        if self.canny.is_some() {
            out.push(ControlSelection::Canny);
        }
        out
    }

    /// Draws `options.samples` avatars of `face` (optionally in the pose of `pose_image`, a
    /// ready OpenPose skeleton image); `progress` after each step may cancel.
    pub fn generate(
        &self,
        face: &FaceReference,
        pose_image: Option<&RgbaImage>,
        options: &AvatarGenOptions,
        progress: impl FnMut(Progress) -> bool,
    ) -> Result<AvatarGenOutput> {
        options.validate()?;
        self.check_face(&face.embedding, &face.keypoints)?;
        let (width, height) = (options.width, options.height);
        let (w, h) = face.image.dimensions();
        if w < 8 || h < 8 {
            return Err(AvatarError::invalid(
                "init_image",
                format!("{w}x{h} is too small"),
            ));
        }
        let (fitted, scale, (ox, oy)) = cover(&face.image, width, height);
        let keypoints: Vec<(f32, f32)> = face
            .keypoints
            .iter()
            .map(|&(x, y)| (x * scale - ox, y * scale - oy))
            .collect();
        let kps = draw_kps(width, height, &keypoints)?;
        let pose = pose_image.map(|p| cover(p, width, height).0);

        let mut controlnet = vec![ControlNetPrompt {
            context_from_ip_adapter: Some(self.adapter),
            ..ControlNetPrompt::new(
                self.identitynet,
                kps,
                options.identitynet_strength_ratio * options.s_scale,
            )
        }];
        let mut controls_used = Vec::new();
        for selection in &options.controlnet_selection {
            if controls_used.contains(selection) {
                continue;
            }
            match selection {
                ControlSelection::Pose => {
                    if let (Some(net), Some(image)) = (self.pose, &pose) {
                        controlnet.push(ControlNetPrompt::new(
                            net,
                            image.clone(),
                            options.pose_strength,
                        ));
                        controls_used.push(ControlSelection::Pose);
                    }
                }
                ControlSelection::Canny => {
                    if let Some(net) = self.canny {
                        let source = pose.as_ref().unwrap_or(&fitted);
                        let (low, high) = CANNY_THRESHOLDS;
                        controlnet.push(ControlNetPrompt::new(
                            net,
                            canny_image(source, low, high),
                            options.canny_strength,
                        ));
                        controls_used.push(ControlSelection::Canny);
                    }
                }
            }
        }
        let request = TextToImageOptions {
            prompt: options.prompt.clone(),
            negative_prompt: options.negative_prompt.clone(),
            num_inference_steps: options.num_inference_steps,
            guidance_scale: options.guidance_scale,
            width: Some(width),
            height: Some(height),
            num_images: options.samples,
            seed: Some(Seed::from(options.seed)),
            ip_adapter: vec![IpAdapterPrompt::face(
                face.embedding.clone(),
                options.adapter_strength_ratio,
            )],
            controlnet,
            ..Default::default()
        };
        let images = self.pipeline.text_to_image(&request, progress)?;
        Ok(AvatarGenOutput {
            images,
            controls_used,
        })
    }
}
