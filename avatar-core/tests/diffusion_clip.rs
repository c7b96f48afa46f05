//! CLIP text encoders against transformers 5.23 (fixtures by
//! `tools/reference/diffusion/make_fixtures.py`): SD1.5's encoder, SDXL's two.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::diffusion::clip_text::{ClipTextConfig, ClipTextModel};
use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion")
}

/// A fixture file's tensors as (shape, f32 values) or (shape, i64 values).
struct Fixture {
    floats: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ints: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

fn read(path: &Path) -> Fixture {
    let bytes = std::fs::read(path).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut fixture = Fixture {
        floats: HashMap::new(),
        ints: HashMap::new(),
    };
    for (name, view) in tensors.tensors() {
        let shape = view.shape().to_vec();
        match view.dtype() {
            Dtype::F32 => {
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                fixture.floats.insert(name, (shape, values));
            }
            Dtype::I64 => {
                let values = view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                fixture.ints.insert(name, (shape, values));
            }
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }
    fixture
}

fn max_abs_diff<const D: usize>(ours: Tensor<D>, expected: &(Vec<usize>, Vec<f32>)) -> f32 {
    assert_eq!(ours.dims().to_vec(), expected.0, "shape");
    let ours = ours
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    ours.iter()
        .zip(&expected.1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn check_encoder(model_dir: &str, io: &str, has_projection: bool) {
    let device = Device::flex();
    let model = ClipTextModel::load(&fixtures().join(model_dir), &device).unwrap();
    assert_eq!(model.text_projection.is_some(), has_projection);
    let fixture = read(&fixtures().join("io").join(io));
    let (shape, ids) = &fixture.ints["input_ids"];
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [shape[0], shape[1]]), &device);
    let out = model.forward(ids);
    let mut checks = vec![
        (
            "last_hidden_state",
            max_abs_diff(
                out.last_hidden_state.clone(),
                &fixture.floats["last_hidden_state"],
            ),
        ),
        (
            "pooler_output",
            max_abs_diff(out.pooled.clone(), &fixture.floats["pooler_output"]),
        ),
    ];
    for (i, state) in out.hidden_states.iter().enumerate() {
        let name = format!("hidden_states.{i}");
        checks.push((
            "hidden_states",
            max_abs_diff(state.clone(), &fixture.floats[&name]),
        ));
    }
    assert_eq!(out.hidden_states.len(), 3);
    let penultimate = max_abs_diff(out.penultimate(), &fixture.floats["hidden_states.1"]);
    checks.push(("penultimate", penultimate));
    if has_projection {
        let embeds = out.text_embeds.clone().expect("a projection");
        checks.push((
            "text_embeds",
            max_abs_diff(embeds, &fixture.floats["text_embeds"]),
        ));
    } else {
        assert!(out.text_embeds.is_none());
    }
    for (name, diff) in checks {
        eprintln!("{model_dir} {name}: max abs diff {diff:e}");
        assert!(diff < 1e-4, "{model_dir} {name}: max abs diff {diff}");
    }
}

#[test]
fn sd15_text_encoder_matches_transformers() {
    check_encoder(
        "sd15_tiny/text_encoder",
        "sd15_text_encoder.safetensors",
        false,
    );
}

#[test]
fn sdxl_text_encoders_match_transformers() {
    check_encoder(
        "sdxl_tiny/text_encoder",
        "sdxl_text_encoder.safetensors",
        false,
    );
    check_encoder(
        "sdxl_tiny/text_encoder_2",
        "sdxl_text_encoder_2.safetensors",
        true,
    );
}

#[test]
fn configs_parse_the_hub_fields() {
    let text =
        std::fs::read_to_string(fixtures().join("sdxl_tiny/text_encoder_2/config.json")).unwrap();
    let config = ClipTextConfig::from_hub_json(&text).unwrap();
    assert_eq!(config.projection_dim, Some(24));
    assert_eq!(
        config.hidden_act,
        avatar_core::diffusion::clip_text::ClipActivation::Gelu
    );
    let bad = text.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 5");
    assert!(matches!(
        ClipTextConfig::from_hub_json(&bad),
        Err(AvatarError::Config(_))
    ));
}

#[test]
fn mismatched_weights_list_every_offending_key() {
    let device = Device::flex();
    let dir = fixtures().join("sd15_tiny/text_encoder");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    // One layer more than the file has: its 16 tensors are missing. A wider MLP: fc1's weight and
    // bias and fc2's weight have the wrong shape in both layers.
    let deeper = ClipTextConfig::from_hub_json(
        &text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    match ClipTextModel::load_file(&deeper, &dir.join("model.safetensors"), &device) {
        Err(AvatarError::WeightKeys {
            missing,
            unexpected,
            ..
        }) => {
            assert!(
                missing
                    .iter()
                    .any(|k| k.contains("layers.2.self_attn.q_proj")),
                "{missing:?}"
            );
            assert_eq!(missing.len(), 16, "{missing:?}");
            assert!(unexpected.is_empty(), "{unexpected:?}");
        }
        other => panic!("{other:?}"),
    }
    let wider = ClipTextConfig::from_hub_json(
        &text.replace("\"intermediate_size\": 37", "\"intermediate_size\": 40"),
    )
    .unwrap();
    let err =
        ClipTextModel::load_file(&wider, &dir.join("model.safetensors"), &device).unwrap_err();
    match &err {
        AvatarError::WeightKeys { mismatched, .. } => {
            assert_eq!(mismatched.len(), 6, "{mismatched:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("fc1"), "{err}");
    // A file from another model: unexpected keys are listed too.
    let unet = fixtures().join("sd15_tiny/unet/diffusion_pytorch_model.safetensors");
    let config = ClipTextConfig::from_hub_json(&text).unwrap();
    match ClipTextModel::load_file(&config, &unet, &device) {
        Err(AvatarError::WeightKeys {
            missing,
            unexpected,
            ..
        }) => {
            assert!(!missing.is_empty() && !unexpected.is_empty());
        }
        other => panic!("{other:?}"),
    }
}
