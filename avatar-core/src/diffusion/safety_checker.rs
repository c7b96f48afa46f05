//! diffusers' `StableDiffusionSafetyChecker`: a CLIP vision tower and projection whose image
//! embedding is compared (cosine) with 17 concept and 3 special-care embeddings against their
//! thresholds; an image with any concept over its threshold is flagged. A special-care hit
//! raises every concept score by 0.01, as diffusers does. Plus the obfuscations the seed API
//! offers for flagged images.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use image::RgbaImage;
use serde::{Deserialize, Serialize};

use super::clip_vision::{ClipVisionConfig, ClipVisionTransformer, clip_preprocess};
use super::weights::{KeyMap, component_weights, load_strict, tensor_names};
use crate::error::{AvatarError, Result};
use crate::host::f32_values;

/// The checker's `config.json` (transformers' `CLIPConfig`; only the vision part is used).
#[derive(Debug, Clone, Deserialize)]
pub struct SafetyCheckerConfig {
    /// The vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the projected embedding.
    pub projection_dim: usize,
}

/// The model (`safety_checker/` of a diffusers pipeline).
#[derive(Module, Debug)]
pub struct SafetyChecker {
    /// The vision tower.
    pub vision_model: ClipVisionTransformer,
    /// Pooled output -> embedding (no bias).
    pub visual_projection: Linear,
    /// `[17, P]`.
    pub concept_embeds: Param<Tensor<2>>,
    /// `[3, P]`.
    pub special_care_embeds: Param<Tensor<2>>,
    /// `[17]` thresholds.
    pub concept_embeds_weights: Param<Tensor<1>>,
    /// `[3]` thresholds.
    pub special_care_embeds_weights: Param<Tensor<1>>,
}

/// One image's verdict, with diffusers' rounded scores.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyVerdict {
    /// Whether any concept is over its threshold.
    pub has_nsfw_concept: bool,
    /// `round(cos - threshold, 3)` per special-care concept.
    pub special_scores: Vec<f32>,
    /// `round(cos - threshold + adjustment, 3)` per concept.
    pub concept_scores: Vec<f32>,
    /// The concepts over their thresholds.
    pub bad_concepts: Vec<usize>,
}

/// Python's `round(x, 3)` on a float32 score computed in float64 as numpy does.
fn round3(x: f64) -> f64 {
    let scaled = x * 1000.0;
    let rounded = scaled.round();
    // Python rounds exact halves to even.
    let rounded = if (scaled - scaled.trunc()).abs() == 0.5 && rounded % 2.0 != 0.0 {
        rounded - scaled.signum()
    } else {
        rounded
    };
    rounded / 1000.0
}

fn rows(t: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [n, m] = t.dims();
    let values = f32_values(t)?;
    Ok((0..n)
        .map(|i| values[i * m..(i + 1) * m].to_vec())
        .collect())
}

/// Rows scaled to unit length.
fn normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt();
    x / norm
}

impl SafetyCheckerConfig {
    /// Builds the model with default-initialised weights.
    pub fn init(&self, device: &Device) -> Result<SafetyChecker> {
        let p = self.projection_dim;
        Ok(SafetyChecker {
            vision_model: self.vision_config.init(device)?,
            visual_projection: LinearConfig::new(self.vision_config.hidden_size, p)
                .with_bias(false)
                .init(device),
            concept_embeds: Param::from_tensor(Tensor::ones([17, p], device)),
            special_care_embeds: Param::from_tensor(Tensor::ones([3, p], device)),
            concept_embeds_weights: Param::from_tensor(Tensor::ones([17], device)),
            special_care_embeds_weights: Param::from_tensor(Tensor::ones([3], device)),
        })
    }
}

impl SafetyChecker {
    /// Loads a diffusers `safety_checker/` folder (`config.json` + `model.safetensors`; keys
    /// with transformers 4's `vision_model.vision_model.` prefix or transformers 5's
    /// `vision_model.`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let dir = &*crate::hub::resolve(dir)?;
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| AvatarError::io(config_path.clone(), e))?;
        let config: SafetyCheckerConfig = serde_json::from_str(&text)
            .map_err(|e| AvatarError::Config(format!("{}: {e}", config_path.display())))?;
        let weights = component_weights(dir, "model")?;
        let names = tensor_names(&weights)?;
        let mut keys = KeyMap::default().ignore("position_ids");
        if names
            .iter()
            .any(|n| n.starts_with("vision_model.vision_model."))
        {
            keys = keys.remap(r"^vision_model\.vision_model\.", "vision_model.");
        }
        load_strict(config.init(device)?, &weights, &keys)
    }

    /// The side of the input images (224 for the real checker).
    pub fn image_size(&self) -> usize {
        self.vision_model.image_size()
    }

    /// The projected embeddings `[B, P]` of CLIP-normalised pixels `[B, 3, S, S]`.
    pub fn image_embeds(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        let (_, pooled) = self.vision_model.forward(pixel_values);
        self.visual_projection.forward(pooled)
    }

    /// `(concept cosines [B, 17], special-care cosines [B, 3])`.
    pub fn cosines(&self, pixel_values: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let embeds = normalize(self.image_embeds(pixel_values));
        let concepts = normalize(self.concept_embeds.val());
        let special = normalize(self.special_care_embeds.val());
        (
            embeds.clone().matmul(concepts.transpose()),
            embeds.matmul(special.transpose()),
        )
    }

    /// The verdict of each image in CLIP-normalised pixels `[B, 3, S, S]`.
    pub fn check(&self, pixel_values: Tensor<4>) -> Result<Vec<SafetyVerdict>> {
        let (cos, special) = self.cosines(pixel_values);
        let (cos, special) = (rows(cos)?, rows(special)?);
        let concept_w = f32_values(self.concept_embeds_weights.val())?;
        let special_w = f32_values(self.special_care_embeds_weights.val())?;
        Ok(cos
            .iter()
            .zip(&special)
            .map(|(cos, special)| {
                let mut adjustment = 0.0;
                let mut special_scores = Vec::new();
                for (c, w) in special.iter().zip(&special_w) {
                    let score = round3(f64::from(*c) - f64::from(*w) + adjustment);
                    special_scores.push(score as f32);
                    if score > 0.0 {
                        adjustment = 0.01;
                    }
                }
                let mut concept_scores = Vec::new();
                let mut bad_concepts = Vec::new();
                for (i, (c, w)) in cos.iter().zip(&concept_w).enumerate() {
                    let score = round3(f64::from(*c) - f64::from(*w) + adjustment);
                    concept_scores.push(score as f32);
                    if score > 0.0 {
                        bad_concepts.push(i);
                    }
                }
                SafetyVerdict {
                    has_nsfw_concept: !bad_concepts.is_empty(),
                    special_scores,
                    concept_scores,
                    bad_concepts,
                }
            })
            .collect())
    }

    /// CLIP's preprocessing of an image for this checker ([`clip_preprocess`]).
    pub fn preprocess(&self, image: &RgbaImage, device: &Device) -> Tensor<4> {
        clip_preprocess(image, self.image_size(), device)
    }

    /// The verdicts of RGBA images (preprocessed here).
    pub fn check_images(
        &self,
        images: &[RgbaImage],
        device: &Device,
    ) -> Result<Vec<SafetyVerdict>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let batch = Tensor::cat(
            images
                .iter()
                .map(|image| self.preprocess(image, device))
                .collect(),
            0,
        );
        self.check(batch)
    }
}

/// What replaces a flagged image (seed 002's `safety_checker_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Obfuscation {
    /// A black image (diffusers' behaviour).
    Black,
    /// A strong Gaussian blur.
    Blur,
    /// Large pixels (1/16 of the short side).
    Pixelate,
    /// A dark image with "SENSITIVE CONTENT" written across it.
    SensitiveContentText,
}

impl std::str::FromStr for Obfuscation {
    type Err = AvatarError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "black" => Ok(Obfuscation::Black),
            "blur" => Ok(Obfuscation::Blur),
            "pixelate" => Ok(Obfuscation::Pixelate),
            "sensitive_content_text" => Ok(Obfuscation::SensitiveContentText),
            other => Err(AvatarError::invalid(
                "safety_checker_type",
                format!("{other:?} is not black, blur, pixelate or sensitive_content_text"),
            )),
        }
    }
}

/// 5x7 glyphs of the letters of "SENSITIVE CONTENT" (rows top to bottom, 5 bits each).
fn glyph(c: char) -> [u8; 7] {
    match c {
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'N' => [0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        _ => [0; 7],
    }
}

/// Replaces `image` as `how` says (same size; alpha kept).
pub fn obfuscate(image: &RgbaImage, how: Obfuscation) -> RgbaImage {
    let (w, h) = image.dimensions();
    match how {
        Obfuscation::Black => RgbaImage::from_fn(w, h, |x, y| {
            image::Rgba([0, 0, 0, image.get_pixel(x, y)[3]])
        }),
        Obfuscation::Blur => {
            let sigma = (w.min(h) as f32 / 12.0).max(4.0);
            image::imageops::blur(image, sigma)
        }
        Obfuscation::Pixelate => {
            let cells = 16u32;
            let (sw, sh) = (
                (w / (w.min(h) / cells).max(1)).max(1),
                (h / (w.min(h) / cells).max(1)).max(1),
            );
            let small =
                image::imageops::resize(image, sw, sh, image::imageops::FilterType::Triangle);
            image::imageops::resize(&small, w, h, image::imageops::FilterType::Nearest)
        }
        Obfuscation::SensitiveContentText => {
            let mut out = RgbaImage::from_pixel(w, h, image::Rgba([24, 24, 24, 255]));
            let lines = ["SENSITIVE", "CONTENT"];
            // 6 columns per letter (5 + space), scaled to fit 80% of the width.
            let scale = ((w as f32 * 0.8) / (9.0 * 6.0)).floor().max(1.0) as u32;
            let line_height = 9 * scale;
            let top = (h / 2).saturating_sub(line_height);
            for (row, line) in lines.iter().enumerate() {
                let width = line.len() as u32 * 6 * scale;
                let left = w.saturating_sub(width) / 2;
                let y0 = top + row as u32 * line_height;
                for (i, c) in line.chars().enumerate() {
                    for (gy, bits) in glyph(c).iter().enumerate() {
                        for gx in 0..5u32 {
                            if bits & (0x10 >> gx) == 0 {
                                continue;
                            }
                            for dy in 0..scale {
                                for dx in 0..scale {
                                    let x = left + (i as u32 * 6 + gx) * scale + dx;
                                    let y = y0 + gy as u32 * scale + dy;
                                    if x < w && y < h {
                                        out.put_pixel(x, y, image::Rgba([235, 235, 235, 255]));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            out
        }
    }
}

/// A loaded checker and what it does to flagged images.
#[derive(Debug)]
pub struct SafetyFilter {
    checker: SafetyChecker,
    obfuscation: Obfuscation,
    device: Device,
}

impl SafetyFilter {
    /// Loads a `safety_checker/` folder on `device`.
    pub fn load(dir: &Path, obfuscation: Obfuscation, device: &Device) -> Result<Self> {
        Ok(SafetyFilter {
            checker: SafetyChecker::load(dir, device)?,
            obfuscation,
            device: device.clone(),
        })
    }

    /// The obfuscation applied to flagged images.
    pub fn obfuscation(&self) -> Obfuscation {
        self.obfuscation
    }

    /// Checks `images`; flagged ones are replaced (with `how`, else the filter's default).
    /// Returns the images and, per image, whether it was flagged.
    pub fn filter(
        &self,
        images: Vec<RgbaImage>,
        how: Option<Obfuscation>,
    ) -> Result<(Vec<RgbaImage>, Vec<bool>)> {
        let verdicts = self.checker.check_images(&images, &self.device)?;
        let how = how.unwrap_or(self.obfuscation);
        let flags: Vec<bool> = verdicts.iter().map(|v| v.has_nsfw_concept).collect();
        let images = images
            .into_iter()
            .zip(&flags)
            .map(|(image, &flagged)| {
                if flagged {
                    obfuscate(&image, how)
                } else {
                    image
                }
            })
            .collect();
        Ok((images, flags))
    }
}
