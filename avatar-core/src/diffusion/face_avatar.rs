//! Face avatars (the Face Avatar API of seed 001): new images that start from a reference photo,
//! with the seed's default avatar prompt, ranges and background options.
//!
//! The reference steers the result through image-to-image (its layout and colours are kept in
//! proportion to `1 - strength`) and, when the pipeline has one image IP-Adapter loaded (e.g.
//! IP-Adapter Plus-Face), through the adapter too (`ip_adapter_scale`), which keeps the face's
//! identity while the prompt restyles it.

use image::RgbaImage;
use serde::{Deserialize, Serialize};

use super::ip_adapter::IpAdapterPrompt;
use super::pipeline::{StableDiffusion, TextToImageOptions};
use crate::avatar::Progress;
use crate::error::{AvatarError, Result};
use crate::imaging::{Color, composite_over};
use crate::seed::Seed;
use crate::segmentation::BackgroundRemoval;

/// The seed's default prompt; `{gender_word}` is filled from `gender`.
pub const DEFAULT_PROMPT: &str = "SFW Content, black plain background, joyous dating profile, \
VECTOR CARTOON ILLUSTRATION, half-body shot portrait enjoyable pleasing pleasurable nice \
{gender_word}, looking at camera, Relaxed, Charming, Cordial, Gracious, 5 o clock shadow, 3d \
bitmoji avatar render, pixar, high def textures 8k, highly detailed, 3d render, award winning, no \
background elements";

/// Largest reference side: bigger references are fitted inside it, keeping their aspect ratio.
pub const MAX_REFERENCE_SIDE: u32 = 1536;
/// Output sides allowed.
pub const SIDE_RANGE: std::ops::RangeInclusive<u32> = 256..=1536;
/// Images per request allowed.
pub const BATCH_RANGE: std::ops::RangeInclusive<usize> = 1..=8;
/// Denoising steps allowed.
pub const STEPS_RANGE: std::ops::RangeInclusive<usize> = 1..=50;
/// Guidance allowed.
pub const GUIDANCE_RANGE: std::ops::RangeInclusive<f64> = 1.0..=30.0;

/// Options of one face-avatar request (the seed's names; `strength` and `seed` are additions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaceAvatarOptions {
    /// The prompt; `None` uses [`DEFAULT_PROMPT`] with `gender`.
    pub prompt: Option<String>,
    /// What to avoid.
    pub negative_prompt: String,
    /// The word for `{gender_word}` (`male` -> `man`, `female` -> `woman`, else as given;
    /// default `person`).
    pub gender: Option<String>,
    /// Images to draw (1-8).
    pub batch: usize,
    /// Output width (256-1536, rounded down to a multiple of 8).
    pub width: u32,
    /// Output height (256-1536, rounded down to a multiple of 8).
    pub height: u32,
    /// Denoising steps actually run (1-50; the schedule is lengthened by `1 / strength`).
    pub num_inference_steps: usize,
    /// Guidance (1-30).
    pub guidance_scale: f64,
    /// How much of the reference is redrawn (0, 1].
    pub strength: f64,
    /// Make the background transparent (with the caller's [`BackgroundRemoval`]: a U²-Net when
    /// one is loaded, else keying of the plain background).
    pub remove_background: bool,
    /// Composite onto this colour (`#rrggbb`), after the removal when both are set.
    pub bg_color: Option<String>,
    /// Seed of the noise (the batch uses consecutive draws of its stream).
    pub seed: u64,
    /// Weight of the reference through the pipeline's image IP-Adapter, when one is loaded
    /// (0-2).
    pub ip_adapter_scale: f32,
}

impl Default for FaceAvatarOptions {
    fn default() -> Self {
        FaceAvatarOptions {
            prompt: None,
            negative_prompt: String::new(),
            gender: None,
            batch: 1,
            width: 512,
            height: 512,
            num_inference_steps: 30,
            guidance_scale: 7.5,
            strength: 0.6,
            remove_background: false,
            bg_color: None,
            seed: 0,
            ip_adapter_scale: 0.6,
        }
    }
}

impl FaceAvatarOptions {
    /// Checks every option against the seed's ranges, naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |field: &'static str, message: String| Err(AvatarError::invalid(field, message));
        if !BATCH_RANGE.contains(&self.batch) {
            return invalid("batch", format!("{} is outside 1..=8", self.batch));
        }
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if !SIDE_RANGE.contains(&side) {
                return invalid(field, format!("{side} is outside 256..=1536"));
            }
        }
        if !STEPS_RANGE.contains(&self.num_inference_steps) {
            return invalid(
                "num_inference_steps",
                format!("{} is outside 1..=50", self.num_inference_steps),
            );
        }
        if !GUIDANCE_RANGE.contains(&self.guidance_scale) {
            return invalid(
                "guidance_scale",
                format!("{} is outside 1..=30", self.guidance_scale),
            );
        }
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            return invalid("strength", format!("{} is outside (0, 1]", self.strength));
        }
        if self.num_inference_steps as f64 / self.strength > 1000.0 {
            return invalid(
                "strength",
                format!(
                    "{} is too small for {} steps (the schedule would exceed 1000 timesteps)",
                    self.strength, self.num_inference_steps
                ),
            );
        }
        if !(0.0..=2.0).contains(&self.ip_adapter_scale) {
            return invalid(
                "ip_adapter_scale",
                format!("{} is outside 0..=2", self.ip_adapter_scale),
            );
        }
        if let Some(color) = &self.bg_color {
            color.parse::<Color>().map_err(|e| match e {
                AvatarError::InvalidOption { message, .. } => {
                    AvatarError::invalid("bg_color", message)
                }
                other => other,
            })?;
        }
        if matches!(&self.prompt, Some(p) if p.trim().is_empty()) {
            return invalid(
                "prompt",
                "is empty (send null for the default prompt)".into(),
            );
        }
        Ok(())
    }

    /// The prompt actually drawn: the given one, or the default with the gender word.
    pub fn resolved_prompt(&self) -> String {
        match &self.prompt {
            Some(prompt) => prompt.clone(),
            None => DEFAULT_PROMPT.replace("{gender_word}", &gender_word(self.gender.as_deref())),
        }
    }
}

/// `male` -> `man`, `female` -> `woman` (and a few synonyms); other words as given; none ->
/// `person`.
pub fn gender_word(gender: Option<&str>) -> String {
    match gender.map(|g| g.trim().to_lowercase()) {
        None => "person".into(),
        Some(g) if g.is_empty() => "person".into(),
        Some(g) => match g.as_str() {
            "male" | "m" | "man" | "boy" => "man".into(),
            "female" | "f" | "woman" | "girl" => "woman".into(),
            _ => g,
        },
    }
}

/// The schedule length that makes image-to-image at `strength` run exactly `steps` denoising
/// steps (it runs `floor(length * strength)` of them, as diffusers does): the seed's
/// `num_inference_steps` counts the steps actually run.
/// `strength` must be in (0, 1] with `steps / strength <= 1000` (see
/// [`FaceAvatarOptions::validate`]); other inputs are clamped into that range.
pub fn schedule_length(steps: usize, strength: f64) -> usize {
    let steps = steps.clamp(1, 1000);
    let strength = if strength.is_finite() {
        strength.clamp(steps as f64 / 1000.0, 1.0)
    } else {
        1.0
    };
    let mut length = ((steps as f64 / strength).ceil() as usize).clamp(steps, 1000);
    // Float rounding can put `floor(length * strength)` one off `steps`: nudge, within bounds.
    while length > steps && ((length as f64) * strength) as usize > steps {
        length -= 1;
    }
    while length < 1000 && (((length as f64) * strength) as usize) < steps {
        length += 1;
    }
    length
}

/// Fits `image` inside [`MAX_REFERENCE_SIDE`] squared, keeping its aspect ratio.
pub fn fit_reference(image: RgbaImage) -> RgbaImage {
    let (w, h) = image.dimensions();
    if w <= MAX_REFERENCE_SIDE && h <= MAX_REFERENCE_SIDE {
        return image;
    }
    let scale = f64::from(MAX_REFERENCE_SIDE) / f64::from(w.max(h));
    let (nw, nh) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    image::imageops::resize(&image, nw, nh, image::imageops::FilterType::Lanczos3)
}

/// Removes the background (`removal`: keying or a segmentation model) and/or composites onto
/// `bg_color`, as the options ask.
pub fn finish_background(
    image: RgbaImage,
    options: &FaceAvatarOptions,
    removal: &BackgroundRemoval,
) -> Result<RgbaImage> {
    let mut image = image;
    if options.remove_background {
        image = removal.apply(&image)?;
    }
    if let Some(color) = &options.bg_color {
        image = composite_over(&image, color.parse::<Color>()?);
    }
    Ok(image)
}

/// What face avatars use besides the pipeline: how backgrounds are removed and, for a loaded
/// IP-Adapter-FaceID(-Plus), the face analysis that gives the reference's face embedding.
#[derive(Debug, Clone, Default)]
pub struct FaceAvatarTools {
    /// `remove_background`'s method.
    pub background: BackgroundRemoval,
    /// Face detection + recognition, and its settings.
    #[cfg(feature = "face-analysis")]
    pub faces: Option<(
        std::sync::Arc<crate::face_analysis::FaceAnalysis>,
        crate::face_analysis::DetectionOptions,
    )>,
}

/// The IP-Adapter prompt of a face-avatar request: the reference image for image adapters
/// (Plus-Face, ...); for FaceID, the embedding (and for FaceID-Plus the aligned crop) of the
/// reference's largest face when face analysis is available; nothing otherwise.
fn adapter_prompts(
    pipeline: &StableDiffusion,
    reference: &RgbaImage,
    start: &RgbaImage,
    options: &FaceAvatarOptions,
    tools: &FaceAvatarTools,
) -> Result<Vec<IpAdapterPrompt>> {
    let [adapter] = pipeline.ip_adapters() else {
        return Ok(Vec::new());
    };
    let kind = adapter.kind();
    if !kind.takes_face_embedding() {
        return Ok(vec![IpAdapterPrompt::image(
            start.clone(),
            options.ip_adapter_scale,
        )]);
    }
    #[cfg(feature = "face-analysis")]
    if let Some((faces, detection)) = &tools.faces {
        use super::ip_adapter::IpAdapterKind;
        let rgb = image::DynamicImage::ImageRgba8(reference.clone()).to_rgb8();
        let face = faces.reference_face(&rgb, detection, "image")?;
        return Ok(match kind {
            IpAdapterKind::FaceId => vec![IpAdapterPrompt::face(
                face.embedding,
                options.ip_adapter_scale,
            )],
            IpAdapterKind::FaceIdPlus => {
                // IP-Adapter-FaceID-Plus's recipe: the 224 px insightface crop as the image.
                let (crop, _) = crate::face_analysis::align::norm_crop(&rgb, &face.keypoints, 224)?;
                let crop = image::DynamicImage::ImageRgb8(crop).to_rgba8();
                vec![IpAdapterPrompt::face_plus(
                    crop,
                    face.embedding,
                    options.ip_adapter_scale,
                    None,
                )]
            }
            _ => Vec::new(),
        });
    }
    let _ = (reference, tools);
    Ok(Vec::new())
}

/// Draws `options.batch` avatars from `reference` (any size; fitted, then resized to the
/// output size), with `tools` (background removal, face analysis for FaceID). `progress` is
/// called after every denoising step; returning `false` cancels.
pub fn face_avatars(
    pipeline: &StableDiffusion,
    reference: &RgbaImage,
    options: &FaceAvatarOptions,
    tools: &FaceAvatarTools,
    progress: impl FnMut(Progress) -> bool,
) -> Result<Vec<RgbaImage>> {
    options.validate()?;
    let (w, h) = (options.width / 8 * 8, options.height / 8 * 8);
    let reference = fit_reference(reference.clone());
    // Cover the output size and crop the overflow (centred): no stretching of the face.
    let start = image::DynamicImage::ImageRgba8(reference.clone())
        .resize_to_fill(w, h, image::imageops::FilterType::Lanczos3)
        .to_rgba8();
    let ip_adapter = adapter_prompts(pipeline, &reference, &start, options, tools)?;
    let diffusion = TextToImageOptions {
        prompt: options.resolved_prompt(),
        negative_prompt: options.negative_prompt.clone(),
        num_inference_steps: schedule_length(options.num_inference_steps, options.strength),
        guidance_scale: options.guidance_scale,
        num_images: options.batch,
        seed: Some(Seed::Number(options.seed)),
        ip_adapter,
        ..Default::default()
    };
    pipeline
        .image_to_image(&start, options.strength, &diffusion, progress)?
        .into_iter()
        .map(|image| finish_background(image, options, &tools.background))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_the_seed_ranges() {
        let ok = FaceAvatarOptions::default();
        assert!(ok.validate().is_ok());
        let field = |o: FaceAvatarOptions| match o.validate() {
            Err(AvatarError::InvalidOption { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(FaceAvatarOptions {
                batch: 9,
                ..ok.clone()
            }),
            "batch"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                batch: 0,
                ..ok.clone()
            }),
            "batch"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                width: 255,
                ..ok.clone()
            }),
            "width"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                height: 1537,
                ..ok.clone()
            }),
            "height"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                num_inference_steps: 51,
                ..ok.clone()
            }),
            "num_inference_steps"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                guidance_scale: 0.5,
                ..ok.clone()
            }),
            "guidance_scale"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                bg_color: Some("#12".into()),
                ..ok.clone()
            }),
            "bg_color"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                strength: 0.0,
                ..ok.clone()
            }),
            "strength"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                strength: 1e-300,
                ..ok.clone()
            }),
            "strength"
        );
        assert_eq!(
            field(FaceAvatarOptions {
                prompt: Some(" ".into()),
                ..ok
            }),
            "prompt"
        );
    }

    #[test]
    fn the_schedule_runs_exactly_the_steps_asked_for() {
        for steps in 1..=50 {
            for strength in [0.05, 0.3, 0.6, 0.75, 0.99, 1.0] {
                let length = schedule_length(steps, strength);
                assert_eq!(
                    ((length as f64) * strength) as usize,
                    steps,
                    "{steps} at {strength}"
                );
            }
        }
        assert_eq!(schedule_length(30, 1.0), 30);
        // Out-of-range inputs terminate (validate() refuses them first).
        assert_eq!(schedule_length(30, 1e-300), 1000);
        assert_eq!(schedule_length(30, f64::NAN), 30);
        assert_eq!(schedule_length(1, 0.6), 2);
    }

    #[test]
    fn default_prompt_takes_the_gender_word() {
        let female = FaceAvatarOptions {
            gender: Some("Female".into()),
            ..Default::default()
        };
        assert!(
            female
                .resolved_prompt()
                .contains("pleasurable nice woman, looking")
        );
        assert!(
            FaceAvatarOptions::default()
                .resolved_prompt()
                .contains("nice person,")
        );
        let custom = FaceAvatarOptions {
            prompt: Some("a knight".into()),
            gender: Some("male".into()),
            ..Default::default()
        };
        assert_eq!(custom.resolved_prompt(), "a knight");
        assert_eq!(gender_word(Some("non-binary")), "non-binary");
    }

    #[test]
    fn references_are_fitted_and_backgrounds_keyed_and_composited() {
        let fitted = fit_reference(RgbaImage::new(3072, 1000));
        assert_eq!(fitted.dimensions(), (1536, 500));
        assert_eq!(
            fit_reference(RgbaImage::new(800, 600)).dimensions(),
            (800, 600)
        );

        // A black plain background around a bright square.
        let image = RgbaImage::from_fn(64, 64, |x, y| {
            if (16..48).contains(&x) && (16..48).contains(&y) {
                image::Rgba([240, 200, 40, 255])
            } else {
                image::Rgba([0, 0, 0, 255])
            }
        });
        let keyed = finish_background(
            image.clone(),
            &FaceAvatarOptions {
                remove_background: true,
                ..Default::default()
            },
            &BackgroundRemoval::default(),
        )
        .unwrap();
        assert_eq!(keyed.get_pixel(2, 2)[3], 0, "the background is transparent");
        assert_eq!(keyed.get_pixel(32, 32)[3], 255, "the subject stays opaque");
        let recoloured = finish_background(
            image,
            &FaceAvatarOptions {
                remove_background: true,
                bg_color: Some("#ff0000".into()),
                ..Default::default()
            },
            &BackgroundRemoval::default(),
        )
        .unwrap();
        assert_eq!(recoloured.get_pixel(2, 2).0, [255, 0, 0, 255]);
        assert_eq!(recoloured.get_pixel(32, 32).0, [240, 200, 40, 255]);
    }
}
