//! IP-Adapter against diffusers 0.42.1 (`tools/reference/face_adapters/make_ip_adapter_fixtures.py`):
//! the tiny CLIP image encoder, every variant's image tokens (conditional and unconditional),
//! whole SD1.5 / SDXL runs with each adapter (and two at once), and the errors for mixed-up
//! weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::diffusion::image_encoder::ImageEncoder;
use avatar_core::diffusion::ip_adapter::{IpAdapter, IpAdapterKind, IpAdapterPrompt};
use avatar_core::diffusion::pipeline::{StableDiffusion, TextToImageOptions};
use avatar_core::diffusion::single_file::to_safetensors;
use avatar_core::diffusion::weights::read_tensors;
use burn::tensor::{Device, Tensor};

use crate::common;

use common::adapters::{fixtures, pipeline, reference_options};
use common::tensors::{TensorFile, max_abs_diff};

fn adapters() -> PathBuf {
    fixtures().join("ip_adapter")
}

fn reference<const D: usize>(name: &str, device: &Device) -> Tensor<D> {
    TensorFile::open(&adapters().join("reference.safetensors")).float(name, device)
}

fn reference_image() -> image::RgbaImage {
    image::open(adapters().join("reference.png"))
        .unwrap()
        .to_rgba8()
}

fn face_embedding(device: &Device) -> Vec<f32> {
    reference::<2>("face_embedding", device)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn options(device: &Device, ip_adapter: Vec<IpAdapterPrompt>) -> TextToImageOptions {
    TextToImageOptions {
        ip_adapter,
        ..reference_options(reference("latents", device))
    }
}

/// The tiny `model` with the fixture adapter `file` (and the CLIP image encoder when
/// `encoder`).
fn with_adapter(model: &str, file: &str, encoder: bool, device: &Device) -> StableDiffusion {
    let mut sd = pipeline(model, device);
    let encoder = encoder.then(|| adapters().join("image_encoder"));
    sd.load_ip_adapter(&adapters().join(file), encoder.as_deref())
        .unwrap();
    sd
}

fn check_image(pipeline: &StableDiffusion, options: &TextToImageOptions, expected: &str) {
    let device = Device::flex();
    let image = pipeline.text_to_image_tensor(options, |_| true).unwrap();
    let diff = max_abs_diff(image, reference(expected, &device));
    eprintln!("{expected}: max abs diff {diff:e}");
    assert!(diff < 1e-3, "{expected}: {diff}");
}

#[test]
fn image_encoder_matches_transformers() {
    let device = Device::flex();
    let encoder = ImageEncoder::load(&adapters().join("image_encoder"), &device).unwrap();
    let pixels = encoder.preprocess(&reference_image(), &device);
    assert!(max_abs_diff(pixels.clone(), reference("pixel_values", &device)) < 1e-5);
    let embeds = encoder.image_embeds(pixels.clone());
    assert!(max_abs_diff(embeds, reference("image_embeds", &device)) < 1e-4);
    let hidden = encoder.penultimate_hidden_states(pixels.clone());
    assert!(max_abs_diff(hidden, reference("penultimate", &device)) < 1e-4);
    let zeros = encoder.penultimate_hidden_states(pixels.zeros_like());
    assert!(max_abs_diff(zeros, reference("penultimate_zeros", &device)) < 1e-4);
}

#[test]
fn every_variant_projects_like_diffusers() {
    let device = Device::flex();
    let sd = pipeline("sd15_tiny", &device);
    let encoder = ImageEncoder::load(&adapters().join("image_encoder"), &device).unwrap();
    let image = reference_image();
    let face = face_embedding(&device);
    for (file, kind, key, prompt) in [
        (
            "ip_adapter.safetensors",
            IpAdapterKind::Basic,
            "basic",
            IpAdapterPrompt::image(image.clone(), 1.0),
        ),
        (
            "ip_adapter_plus.bin",
            IpAdapterKind::Plus,
            "plus",
            IpAdapterPrompt::image(image.clone(), 1.0),
        ),
        (
            "ip_adapter_full_face.bin",
            IpAdapterKind::FullFace,
            "full_face",
            IpAdapterPrompt::image(image.clone(), 1.0),
        ),
        (
            "ip_adapter_faceid.bin",
            IpAdapterKind::FaceId,
            "faceid",
            IpAdapterPrompt::face(face.clone(), 1.0),
        ),
    ] {
        let adapter = IpAdapter::load(&adapters().join(file), sd.unet(), &device).unwrap();
        assert_eq!(adapter.kind(), kind);
        let (uncond, cond) = adapter.tokens(&prompt, Some(&encoder), &device).unwrap();
        let expected = reference::<3>(&format!("{key}_tokens"), &device);
        let diff = max_abs_diff(Tensor::cat(vec![uncond, cond], 0), expected);
        eprintln!("{key} tokens: max abs diff {diff:e}");
        assert!(diff < 1e-4, "{key}: {diff}");
    }
}

#[test]
fn sd15_runs_with_each_adapter_match_diffusers() {
    let device = Device::flex();
    let image = reference_image();
    for (file, scale, expected) in [
        ("ip_adapter.safetensors", 0.7, "basic_image"),
        ("ip_adapter_plus.bin", 1.0, "plus_image"),
        ("ip_adapter_full_face.bin", 0.6, "full_face_image"),
    ] {
        let mut sd = pipeline("sd15_tiny", &device);
        let index = sd
            .load_ip_adapter(
                &adapters().join(file),
                Some(&adapters().join("image_encoder")),
            )
            .unwrap();
        assert_eq!(index, 0);
        let options = options(&device, vec![IpAdapterPrompt::image(image.clone(), scale)]);
        check_image(&sd, &options, expected);
    }
    // FaceID: the raw embedding is normalised here; its LoRA changes every attention layer.
    let sd = with_adapter("sd15_tiny", "ip_adapter_faceid.bin", false, &device);
    let face = face_embedding(&device);
    let options = options(&device, vec![IpAdapterPrompt::face(face, 0.8)]);
    check_image(&sd, &options, "faceid_image");
}

#[test]
fn two_adapters_at_once_match_diffusers() {
    let device = Device::flex();
    let mut sd = pipeline("sd15_tiny", &device);
    let encoder = adapters().join("image_encoder");
    sd.load_ip_adapter(&adapters().join("ip_adapter.safetensors"), Some(&encoder))
        .unwrap();
    sd.load_ip_adapter(&adapters().join("ip_adapter_plus.bin"), None)
        .unwrap();
    let image = reference_image();
    let options = options(
        &device,
        vec![
            IpAdapterPrompt::image(image.clone(), 0.5),
            IpAdapterPrompt::image(image, 0.8),
        ],
    );
    check_image(&sd, &options, "multi_image");
}

#[test]
fn sdxl_run_with_adapter_matches_diffusers() {
    let device = Device::flex();
    let sd = with_adapter("sdxl_tiny", "ip_adapter_sdxl.safetensors", true, &device);
    let options = options(
        &device,
        vec![IpAdapterPrompt::image(reference_image(), 0.9)],
    );
    check_image(&sd, &options, "sdxl_image");
}

fn write_without(source: &str, drop: impl Fn(&str) -> bool, target: &Path) {
    let tensors: BTreeMap<_, _> = read_tensors(&adapters().join(source))
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !drop(k))
        .collect();
    std::fs::write(target, to_safetensors(&tensors).unwrap()).unwrap();
}

#[test]
fn mixed_up_weights_are_typed_errors() {
    let device = Device::flex();
    let sd15 = pipeline("sd15_tiny", &device);
    let sdxl = pipeline("sdxl_tiny", &device);
    // An SD1.5 adapter on the SDXL UNet and the other way round.
    let err = IpAdapter::load(
        &adapters().join("ip_adapter.safetensors"),
        sdxl.unet(),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, AvatarError::Weights(_)), "{err}");
    let err = IpAdapter::load(
        &adapters().join("ip_adapter_sdxl.safetensors"),
        sd15.unet(),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, AvatarError::Weights(_)), "{err}");
    eprintln!("{err}");

    let dir = tempfile::tempdir().unwrap();
    // FaceID without its LoRA.
    let no_lora = dir.path().join("faceid_no_lora.safetensors");
    write_without("ip_adapter_faceid.bin", |k| k.contains("_lora."), &no_lora);
    let err = IpAdapter::load(&no_lora, sd15.unet(), &device).unwrap_err();
    assert!(err.to_string().contains("LoRA"), "{err}");
    // A missing key-value layer.
    let missing = dir.path().join("missing.safetensors");
    write_without(
        "ip_adapter.safetensors",
        |k| k == "ip_adapter.3.to_v_ip.weight",
        &missing,
    );
    assert!(IpAdapter::load(&missing, sd15.unet(), &device).is_err());
    // Not an adapter at all.
    let err = IpAdapter::load(
        &fixtures().join("diffusion/sd15_tiny/vae/diffusion_pytorch_model.safetensors"),
        sd15.unet(),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, AvatarError::Weights(_)), "{err}");
    // InstantID's adapter is a Resampler.
    assert!(
        IpAdapter::load_instantid(
            &adapters().join("ip_adapter.safetensors"),
            sd15.unet(),
            &device
        )
        .is_err()
    );
    // An image adapter without an encoder.
    let mut sd = pipeline("sd15_tiny", &device);
    let err = sd
        .load_ip_adapter(&adapters().join("ip_adapter_plus.bin"), None)
        .unwrap_err();
    assert!(matches!(err, AvatarError::Config(_)), "{err}");
}

#[test]
fn adapter_prompts_are_validated() {
    let device = Device::flex();
    let sd = with_adapter("sd15_tiny", "ip_adapter_faceid.bin", false, &device);
    let run = |prompts: Vec<IpAdapterPrompt>| {
        sd.text_to_image_tensor(&options(&device, prompts), |_| true)
            .unwrap_err()
    };
    // A face adapter given an image, a wrong-length embedding, an out-of-range scale, too many
    // prompts.
    let err = run(vec![IpAdapterPrompt::image(reference_image(), 1.0)]);
    assert_eq!(err.field(), Some("face_embedding"));
    let err = run(vec![IpAdapterPrompt::face(vec![0.5; 7], 1.0)]);
    assert_eq!(err.field(), Some("face_embedding"));
    let face = face_embedding(&device);
    let err = run(vec![IpAdapterPrompt::face(face.clone(), 3.0)]);
    assert_eq!(err.field(), Some("ip_adapter_scale"));
    let err = run(vec![
        IpAdapterPrompt::face(face.clone(), 1.0),
        IpAdapterPrompt::face(face, 1.0),
    ]);
    assert_eq!(err.field(), Some("ip_adapter"));
}

fn faceid_plus_reference<const D: usize>(name: &str, device: &Device) -> Tensor<D> {
    TensorFile::open(&fixtures().join("ip_adapter_faceid_plus/reference.safetensors"))
        .float(name, device)
}

#[test]
fn faceid_plus_v1_and_v2_match_diffusers() {
    let device = Device::flex();
    let file = fixtures().join("ip_adapter_faceid_plus/ip_adapter_faceid_plus.bin");
    let face: Vec<f32> = faceid_plus_reference::<2>("face_embedding", &device)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    for (key, s_scale) in [("v2", Some(1.3)), ("v1", None)] {
        let mut sd = pipeline("sd15_tiny", &device);
        sd.load_ip_adapter(&file, Some(&adapters().join("image_encoder")))
            .unwrap();
        assert_eq!(sd.ip_adapters()[0].kind(), IpAdapterKind::FaceIdPlus);
        let prompt = IpAdapterPrompt::face_plus(reference_image(), face.clone(), 0.8, s_scale);
        let encoder = ImageEncoder::load(&adapters().join("image_encoder"), &device).unwrap();
        let (uncond, cond) = sd.ip_adapters()[0]
            .tokens(&prompt, Some(&encoder), &device)
            .unwrap();
        let diff = max_abs_diff(
            Tensor::cat(vec![uncond, cond], 0),
            faceid_plus_reference(&format!("{key}_tokens"), &device),
        );
        assert!(diff < 1e-4, "{key} tokens: {diff}");
        let options = TextToImageOptions {
            latents: Some(faceid_plus_reference("latents", &device)),
            ..options(&device, vec![prompt])
        };
        let image = sd.text_to_image_tensor(&options, |_| true).unwrap();
        let diff = max_abs_diff(
            image,
            faceid_plus_reference(&format!("{key}_image"), &device),
        );
        eprintln!("faceid plus {key}: max abs diff {diff:e}");
        assert!(diff < 1e-3, "{key}: {diff}");
    }
    // s_scale out of range; the face crop is required.
    let mut sd = pipeline("sd15_tiny", &device);
    sd.load_ip_adapter(&file, Some(&adapters().join("image_encoder")))
        .unwrap();
    let run = |prompt: IpAdapterPrompt| {
        sd.text_to_image_tensor(&options(&device, vec![prompt]), |_| true)
            .unwrap_err()
    };
    let err = run(IpAdapterPrompt::face_plus(
        reference_image(),
        face.clone(),
        1.0,
        Some(2.5),
    ));
    assert_eq!(err.field(), Some("s_scale"));
    let err = run(IpAdapterPrompt::face(face, 1.0));
    assert_eq!(err.field(), Some("ip_adapter_image"));
}

#[test]
fn face_avatars_keep_the_face_through_a_loaded_adapter() {
    use avatar_core::diffusion::face_avatar::{FaceAvatarOptions, face_avatars};
    let device = Device::flex();
    let sd = with_adapter("sd15_tiny_f8", "ip_adapter.safetensors", true, &device);
    let options = |ip_adapter_scale| FaceAvatarOptions {
        width: 256,
        height: 256,
        num_inference_steps: 1,
        guidance_scale: 1.0,
        seed: 3,
        ip_adapter_scale,
        ..Default::default()
    };
    let photo = image::imageops::resize(
        &reference_image(),
        300,
        200,
        image::imageops::FilterType::Triangle,
    );
    let draw =
        |scale| face_avatars(&sd, &photo, &options(scale), &Default::default(), |_| true).unwrap();
    let (without, with) = (draw(0.0), draw(1.0));
    assert_eq!(with[0].dimensions(), (256, 256));
    assert_ne!(without[0], with[0], "the adapter steers the drawing");
    let err = face_avatars(&sd, &photo, &options(2.5), &Default::default(), |_| true).unwrap_err();
    assert_eq!(err.field(), Some("ip_adapter_scale"));
}

#[test]
fn per_block_scales_match_diffusers() {
    use avatar_core::diffusion::ip_adapter_scale::BlockScales;
    let device = Device::flex();
    let sd = with_adapter("sd15_tiny", "ip_adapter.safetensors", true, &device);
    let blocks = BlockScales::from_json(
        r#"{"down": {"block_0": 0.3}, "mid": 0.6, "up": {"block_1": [1.0, 0.0]}}"#,
    )
    .unwrap();
    let prompt = IpAdapterPrompt::image(reference_image(), 1.0).with_block_scales(blocks);
    check_image(&sd, &options(&device, vec![prompt]), "blocks_image");

    // diffusers' errors: a block without attentions, a list of the wrong length, a bad value.
    for (json, says) in [
        (r#"{"down": {"block_1": 1.0}}"#, "down.block_1"),
        (
            r#"{"up": {"block_1": [1.0, 0.0, 1.0]}}"#,
            "expected 2 scales for up.block_1",
        ),
        (r#"{"mid": [1.0, 2.0]}"#, "expected 1 scale for mid"),
        (r#"{"mid": 3.0}"#, "out of range"),
    ] {
        let prompt = IpAdapterPrompt::image(reference_image(), 1.0)
            .with_block_scales(BlockScales::from_json(json).unwrap());
        let err = sd
            .text_to_image_tensor(&options(&device, vec![prompt]), |_| true)
            .unwrap_err();
        assert!(
            matches!(
                err,
                avatar_core::AvatarError::InvalidOption {
                    field: "ip_adapter_scale",
                    ..
                }
            ) && err.to_string().contains(says),
            "{json}: {err}"
        );
    }
    assert!(BlockScales::from_json(r#"{"sideways": 1}"#).is_err());
}

#[test]
fn sdxl_per_block_scales_match_diffusers() {
    use avatar_core::diffusion::ip_adapter_scale::BlockScales;
    let device = Device::flex();
    let sd = with_adapter("sdxl_tiny", "ip_adapter_sdxl.safetensors", true, &device);
    // Only the second attention of up block 0 (InstantStyle's "style" pattern on the tiny UNet);
    // each of its two transformer layers takes the weight.
    let blocks = BlockScales::from_json(r#"{"up": {"block_0": [0.0, 1.2]}}"#).unwrap();
    let prompt = IpAdapterPrompt::image(reference_image(), 1.0).with_block_scales(blocks);
    check_image(&sd, &options(&device, vec![prompt]), "sdxl_blocks_image");
}

#[test]
fn face_avatars_give_faceid_the_largest_face_of_the_reference() {
    use avatar_core::diffusion::face_avatar::{FaceAvatarOptions, FaceAvatarTools, face_avatars};
    use avatar_core::face_analysis::{DetectionOptions, FaceAnalysis};
    let device = Device::flex();
    let sd = with_adapter("sd15_tiny_f8", "ip_adapter_faceid.bin", false, &device);
    let faces = adapters().join("../face_analysis");
    let analysis = std::sync::Arc::new(
        FaceAnalysis::load(
            &faces.join("det_tiny.onnx"),
            &faces.join("rec_tiny.onnx"),
            &device,
        )
        .unwrap(),
    );
    let photo = image::open(faces.join("faces.png")).unwrap().to_rgba8();
    let options = FaceAvatarOptions {
        width: 256,
        height: 256,
        num_inference_steps: 1,
        guidance_scale: 1.0,
        seed: 3,
        ip_adapter_scale: 1.0,
        ..Default::default()
    };
    let with_faces = |threshold: f32| FaceAvatarTools {
        faces: Some((
            analysis.clone(),
            DetectionOptions {
                input_size: (160, 160),
                threshold,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let steered = face_avatars(&sd, &photo, &options, &with_faces(0.5), |_| true).unwrap();
    // Without face analysis a FaceID adapter has no input and stays off.
    let plain = face_avatars(&sd, &photo, &options, &Default::default(), |_| true).unwrap();
    assert_ne!(steered, plain, "the face embedding steers the drawing");
    // No face found: an error naming the reference image.
    let err = face_avatars(&sd, &photo, &options, &with_faces(1.0), |_| true).unwrap_err();
    assert_eq!(err.field(), Some("image"));
}
