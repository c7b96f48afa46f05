//! Face analysis as insightface's `FaceAnalysis` does it (the input InstantID and
//! IP-Adapter-FaceID need): SCRFD detection ([`scrfd`]) of boxes and five keypoints, alignment
//! ([`align`]) and an ArcFace embedding ([`arcface`]) per face, from user-supplied ONNX files
//! (antelopev2's `scrfd_10g_bnkps.onnx` + `glintr100.onnx`, or buffalo_l's `det_10g.onnx` +
//! `w600k_r50.onnx`; insightface's models are licensed for non-commercial research only, so
//! nothing here ships or downloads them). The graphs run on burn through [`crate::onnx`].
//!
//! ```no_run
//! use avatar_core::face_analysis::{DetectionOptions, FaceAnalysis};
//! let device = burn::tensor::Device::flex();
//! let analysis = FaceAnalysis::load(
//!     "antelopev2/scrfd_10g_bnkps.onnx".as_ref(),
//!     "antelopev2/glintr100.onnx".as_ref(),
//!     &device,
//! )?;
//! let photo = image::open("me.jpg").unwrap().to_rgb8();
//! let faces = analysis.analyze(&photo, &DetectionOptions::default())?;
//! if let Some(face) = avatar_core::face_analysis::largest(&faces) {
//!     println!("{} keypoints, {}-d embedding", face.keypoints.len(), face.embedding.len());
//! }
//! # Ok::<(), avatar_core::AvatarError>(())
//! ```

pub mod align;
pub mod arcface;
pub mod scrfd;

use std::path::Path;

use burn::tensor::Device;
use image::RgbImage;

pub use arcface::ArcFace;
pub use scrfd::{Detection, DetectionOptions, ScrfdDetector};

use crate::error::{AvatarError, Result};

/// One analysed face, in the image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Detection confidence.
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corners (`[x, y]`).
    pub keypoints: [[f32; 2]; 5],
    /// The raw ArcFace embedding (insightface's `face.embedding`: what InstantID takes;
    /// IP-Adapter-FaceID L2-normalises it itself).
    pub embedding: Vec<f32>,
}

impl Face {
    /// The box's area.
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }

    /// The embedding scaled to unit length (insightface's `normed_embedding`).
    pub fn normed_embedding(&self) -> Vec<f32> {
        let norm = self.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        self.embedding
            .iter()
            .map(|v| v / norm.max(f32::EPSILON))
            .collect()
    }
}

/// The largest face (InstantID's choice of reference face).
pub fn largest(faces: &[Face]) -> Option<&Face> {
    faces.iter().max_by(|a, b| a.area().total_cmp(&b.area()))
}

/// An SCRFD detector and an ArcFace recogniser.
#[derive(Debug)]
pub struct FaceAnalysis {
    detector: ScrfdDetector,
    recognizer: ArcFace,
}

impl FaceAnalysis {
    /// Loads the detector (with keypoints) and the recogniser.
    pub fn load(detector: &Path, recognizer: &Path, device: &Device) -> Result<Self> {
        let detector = ScrfdDetector::load(detector, device)?;
        if !detector.has_keypoints() {
            return Err(AvatarError::Weights(
                "the SCRFD model predicts no keypoints (use a *_kps / bnkps model): faces \
                 cannot be aligned for recognition"
                    .into(),
            ));
        }
        Ok(FaceAnalysis {
            detector,
            recognizer: ArcFace::load(recognizer, device)?,
        })
    }

    /// The detector.
    pub fn detector(&self) -> &ScrfdDetector {
        &self.detector
    }

    /// The recogniser.
    pub fn recognizer(&self) -> &ArcFace {
        &self.recognizer
    }

    /// The largest face of `image` (InstantID's reference face); an image without a face is
    /// an [`AvatarError::InvalidOption`] on `field`.
    pub fn reference_face(
        &self,
        image: &RgbImage,
        options: &DetectionOptions,
        field: &'static str,
    ) -> Result<Face> {
        // Only the chosen face is aligned and embedded (as [`largest`] picks it).
        let largest = self
            .detector
            .detect(image, options)?
            .into_iter()
            .max_by(|a, b| a.area().total_cmp(&b.area()))
            .ok_or_else(|| {
                AvatarError::invalid(
                    field,
                    format!(
                        "no face was found in the image (no detection scored {} or more)",
                        options.threshold
                    ),
                )
            })?;
        Ok(self.embed(image, vec![largest])?.remove(0))
    }

    /// Every face in `image` with its keypoints and embedding, in detection order.
    pub fn analyze(&self, image: &RgbImage, options: &DetectionOptions) -> Result<Vec<Face>> {
        let detections = self.detector.detect(image, options)?;
        self.embed(image, detections)
    }

    /// Aligns and embeds `detections` of `image`.
    fn embed(&self, image: &RgbImage, detections: Vec<Detection>) -> Result<Vec<Face>> {
        let size = self.recognizer.input_size();
        let mut crops = Vec::with_capacity(detections.len());
        for d in &detections {
            let keypoints = d
                .keypoints
                .expect("checked at load: the detector has keypoints");
            crops.push(align::norm_crop(image, &keypoints, size)?.0);
        }
        let embeddings = self.recognizer.embed(&crops)?;
        Ok(detections
            .into_iter()
            .zip(embeddings)
            .map(|(d, embedding)| Face {
                bbox: d.bbox,
                score: d.score,
                keypoints: d.keypoints.expect("checked at load"),
                embedding,
            })
            .collect())
    }
}
