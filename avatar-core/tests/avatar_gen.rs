//! Seed 002's InstantID avatars on the tiny SDXL fixtures: defaults, the pose and canny
//! ControlNets, reproducibility, and every option's validation. (The InstantID wiring itself is
//! parity-tested against diffusers in `controlnet.rs`.)

use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::diffusion::avatar_gen::{
    AvatarGenOptions, ControlSelection, FaceReference, InstantId,
};
use avatar_core::diffusion::pipeline::StableDiffusion;
use burn::tensor::Device;
use image::RgbaImage;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn instantid(with_controls: bool) -> InstantId {
    let device = Device::flex();
    let sd = StableDiffusion::load(&fixtures().join("diffusion/sdxl_tiny"), &device).unwrap();
    let nets = fixtures().join("controlnet");
    let extra = nets.join("sdxl_controlnet");
    InstantId::new(
        sd,
        &nets.join("instantid_ip_adapter.bin"),
        &nets.join("sdxl_identitynet"),
        with_controls.then_some(extra.as_path()),
        with_controls.then_some(extra.as_path()),
    )
    .unwrap()
}

fn face() -> FaceReference {
    let image = image::open(fixtures().join("ip_adapter/reference.png"))
        .unwrap()
        .to_rgba8();
    let image = image::imageops::resize(&image, 80, 96, image::imageops::FilterType::Triangle);
    FaceReference {
        image,
        embedding: (0..16).map(|i| (i as f32 * 0.7).sin() * 3.0).collect(),
        keypoints: vec![
            (28.0, 38.0),
            (52.0, 38.0),
            (40.0, 52.0),
            (31.0, 66.0),
            (49.0, 66.0),
        ],
    }
}

fn options() -> AvatarGenOptions {
    AvatarGenOptions {
        prompt: "pretty woman".into(),
        negative_prompt: "blurry".into(),
        width: 64,
        height: 64,
        seed: 7,
        ..Default::default()
    }
}

fn generate(
    model: &InstantId,
    pose: Option<&RgbaImage>,
    options: &AvatarGenOptions,
) -> (Vec<RgbaImage>, Vec<ControlSelection>) {
    let mut steps = 0;
    let out = model
        .generate(&face(), pose, options, |_| {
            steps += 1;
            true
        })
        .unwrap();
    assert_eq!(steps, options.num_inference_steps);
    (out.images, out.controls_used)
}

#[test]
fn draws_reproducible_avatars_with_the_selected_controls() {
    let model = instantid(true);
    assert_eq!(
        model.controls_available(),
        vec![ControlSelection::Pose, ControlSelection::Canny]
    );
    let two = AvatarGenOptions {
        samples: 2,
        ..options()
    };
    // The default selection is pose; without a pose image only the IdentityNet runs.
    let (images, used) = generate(&model, None, &two);
    assert_eq!(images.len(), 2);
    assert!(used.is_empty());
    assert_eq!(images[0].dimensions(), (64, 64));
    assert_ne!(images[0], images[1]);
    let (again, _) = generate(&model, None, &two);
    assert_eq!(images, again);

    let pose = image::open(fixtures().join("controlnet/control_1.png"))
        .unwrap()
        .to_rgba8();
    let both = AvatarGenOptions {
        controlnet_selection: vec![ControlSelection::Pose, ControlSelection::Canny],
        ..options()
    };
    let (posed, used) = generate(&model, Some(&pose), &both);
    assert_eq!(used, vec![ControlSelection::Pose, ControlSelection::Canny]);
    assert_ne!(posed[0], images[0]);

    // The face weights change the result.
    let (weaker, _) = generate(
        &model,
        None,
        &AvatarGenOptions {
            adapter_strength_ratio: 0.2,
            identitynet_strength_ratio: 0.1,
            ..options()
        },
    );
    assert_ne!(weaker[0], images[0]);
    let (no_structure, _) = generate(
        &model,
        None,
        &AvatarGenOptions {
            s_scale: 0.0,
            ..options()
        },
    );
    assert_ne!(no_structure[0], images[0]);
}

#[test]
fn options_are_validated() {
    let bad = [
        (
            AvatarGenOptions {
                num_inference_steps: 20,
                ..options()
            },
            "num_inference_steps",
        ),
        (
            AvatarGenOptions {
                width: 768,
                height: 768,
                ..options()
            },
            "width",
        ),
        (
            AvatarGenOptions {
                height: 100,
                ..options()
            },
            "height",
        ),
        (
            AvatarGenOptions {
                samples: 3,
                ..options()
            },
            "samples",
        ),
        (
            AvatarGenOptions {
                s_scale: 2.5,
                ..options()
            },
            "s_scale",
        ),
        (
            AvatarGenOptions {
                pose_strength: 1.5,
                ..options()
            },
            "pose_strength",
        ),
        (
            AvatarGenOptions {
                guidance_scale: 0.5,
                ..options()
            },
            "guidance_scale",
        ),
        (
            AvatarGenOptions {
                prompt: " ".into(),
                ..options()
            },
            "prompt",
        ),
    ];
    for (options, field) in bad {
        assert_eq!(options.validate().unwrap_err().field(), Some(field));
    }
    assert_eq!(
        "depth".parse::<ControlSelection>().unwrap_err().field(),
        Some("controlnet_selection")
    );
    assert_eq!(
        " Canny".parse::<ControlSelection>().unwrap(),
        ControlSelection::Canny
    );

    let model = instantid(false);
    let mut wrong = face();
    wrong.keypoints.pop();
    let err = model
        .generate(&wrong, None, &options(), |_| true)
        .unwrap_err();
    assert_eq!(err.field(), Some("face_keypoints"));
    let mut wrong = face();
    wrong.embedding.truncate(10);
    let err = model
        .generate(&wrong, None, &options(), |_| true)
        .unwrap_err();
    assert_eq!(err.field(), Some("face_embedding"));
    // Cancelling stops the run.
    let err = model
        .generate(&face(), None, &options(), |_| false)
        .unwrap_err();
    assert!(matches!(err, AvatarError::Cancelled));

    // InstantID is SDXL-only.
    let device = Device::flex();
    let sd15 = StableDiffusion::load(&fixtures().join("diffusion/sd15_tiny"), &device).unwrap();
    let nets = fixtures().join("controlnet");
    let err = InstantId::new(
        sd15,
        &nets.join("instantid_ip_adapter.bin"),
        &nets.join("sdxl_identitynet"),
        None,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, AvatarError::Config(_)), "{err}");
}
