//! The safety checker against diffusers 0.42.1 / transformers 5.23 on a tiny random-weight
//! checker (`tools/reference/safety_checker/make_fixtures.py`): pooled output, embeddings and
//! cosines within 1e-5, and the verdicts — including a concept flagged only through the
//! special-care adjustment; plus the obfuscations.

use crate::common;

use std::path::{Path, PathBuf};

use avatar_core::diffusion::safety_checker::{Obfuscation, SafetyChecker, obfuscate};
use burn::tensor::Device;
use common::tensors::{TensorFile, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safety_checker")
}

#[test]
fn the_checker_matches_diffusers() {
    let device = Device::flex();
    let checker = SafetyChecker::load(&fixtures(), &device).unwrap();
    let r = TensorFile::open(&fixtures().join("reference.safetensors"));
    let pixels = r.float::<4>("pixel_values", &device);
    let (_, pooled) = checker.vision_model.forward(pixels.clone());
    let error = max_abs_diff(pooled, r.float("pooled", &device));
    assert!(error < 1e-5, "pooled output: {error}");
    let error = max_abs_diff(
        checker.image_embeds(pixels.clone()),
        r.float("image_embeds", &device),
    );
    assert!(error < 1e-5, "image embeds: {error}");
    let (cos, special) = checker.cosines(pixels.clone());
    assert!(max_abs_diff(cos, r.float("cos_dist", &device)) < 1e-5);
    assert!(max_abs_diff(special, r.float("special_cos_dist", &device)) < 1e-5);

    let verdicts = checker.check(pixels).unwrap();
    let expected: Vec<bool> = r.ints("has_nsfw").1.iter().map(|&v| v != 0).collect();
    let got: Vec<bool> = verdicts.iter().map(|v| v.has_nsfw_concept).collect();
    assert_eq!(got, expected);
    assert_eq!(got, [true, false, true]);
    assert_eq!(verdicts[0].bad_concepts, [3]);
    assert!(verdicts[1].bad_concepts.is_empty());
    // Image 2: special-care concept 1 raises every score by 0.01, which tips concept 5 over.
    assert!(verdicts[2].special_scores[1] > 0.0);
    assert_eq!(verdicts[2].bad_concepts, [5]);
    assert!((verdicts[2].concept_scores[5] - 0.005).abs() < 1.5e-3);
}

#[test]
fn images_are_preprocessed_and_obfuscated() {
    let device = Device::flex();
    let checker = SafetyChecker::load(&fixtures(), &device).unwrap();
    let image = image::RgbaImage::from_fn(80, 48, |x, y| {
        image::Rgba([(x * 3) as u8, (y * 5) as u8, 90, 255])
    });
    assert_eq!(checker.preprocess(&image, &device).dims(), [1, 3, 32, 32]);
    assert_eq!(
        checker
            .check_images(&[image.clone(), image.clone()], &device)
            .unwrap()
            .len(),
        2
    );

    let black = obfuscate(&image, Obfuscation::Black);
    assert!(black.pixels().all(|p| p.0 == [0, 0, 0, 255]));
    let blurred = obfuscate(&image, Obfuscation::Blur);
    assert_eq!(blurred.dimensions(), (80, 48));
    assert_ne!(blurred, image);
    let pixelated = obfuscate(&image, Obfuscation::Pixelate);
    assert_eq!(pixelated.dimensions(), (80, 48));
    assert_eq!(
        pixelated.get_pixel(0, 0),
        pixelated.get_pixel(1, 1),
        "blocks of equal pixels"
    );
    let text = obfuscate(&image, Obfuscation::SensitiveContentText);
    let bright = text.pixels().filter(|p| p[0] > 200).count();
    assert!(bright > 50, "the words are drawn ({bright} bright pixels)");
    assert!("nope".parse::<Obfuscation>().is_err());
    assert_eq!(
        "sensitive_content_text".parse::<Obfuscation>().unwrap(),
        Obfuscation::SensitiveContentText
    );
    assert!(SafetyChecker::load(&fixtures().join("missing"), &device).is_err());
}

/// The hub's checkpoints (transformers 4) nest the tower as `vision_model.vision_model.*`.
#[test]
fn transformers_4_key_layout_loads_too() {
    let device = Device::flex();
    let bytes = std::fs::read(fixtures().join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| match name.strip_prefix("vision_model.") {
            Some(rest) => (format!("vision_model.vision_model.{rest}"), view),
            None => (name, view),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    safetensors::serialize_to_file(renamed, None, &dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(
        fixtures().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let checker = SafetyChecker::load(dir.path(), &device).unwrap();
    let r = TensorFile::open(&fixtures().join("reference.safetensors"));
    let embeds = checker.image_embeds(r.float::<4>("pixel_values", &device));
    assert!(max_abs_diff(embeds, r.float("image_embeds", &device)) < 1e-5);
}
