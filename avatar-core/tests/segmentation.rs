//! U²-Net background removal against the reference network (the official `model/u2net.py`
//! topology, widths as parameters) on tiny random weights with randomised batch-norm statistics
//! (`tools/reference/segmentation/make_u2net_fixtures.py`), and against rembg's pre- and
//! post-processing (PIL Lanczos resizes) on a 90x70 picture.

use crate::common;

use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::segmentation::{BackgroundRemoval, BackgroundRemover, U2Net, U2NetConfig};
use burn::module::Module;
use burn::tensor::Device;
use common::tensors::{TensorFile, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/segmentation")
}

fn figure() -> image::RgbaImage {
    image::open(fixtures().join("figure.png"))
        .unwrap()
        .to_rgba8()
}

#[test]
fn the_official_state_dict_gives_the_reference_side_outputs() {
    let device = Device::flex();
    let model = U2Net::load(&fixtures().join("u2net_tiny.pth"), &device).unwrap();
    let r = TensorFile::open(&fixtures().join("outputs.safetensors"));
    let outputs = model.forward(r.float::<4>("input", &device));
    assert_eq!(outputs.len(), 7);
    for (k, output) in outputs.into_iter().enumerate() {
        let error = max_abs_diff(output, r.float(&format!("d{k}"), &device));
        assert!(error < 1e-5, "d{k}: {error}");
    }
    // 37x45: odd sizes at every level (ceil-mode pooling, bilinear resizes to odd targets).
    let odd = model.forward(r.float::<4>("odd_input", &device)).remove(0);
    assert_eq!(odd.dims(), [1, 1, 37, 45]);
    let error = max_abs_diff(odd, r.float("odd_d0", &device));
    assert!(error < 1e-5, "odd-sized d0: {error}");
}

#[test]
fn the_safetensors_conversion_loads_the_same_network() {
    let device = Device::flex();
    let from_pth = U2Net::load(&fixtures().join("u2net_tiny.pth"), &device).unwrap();
    let from_st = U2Net::load(&fixtures().join("u2net_tiny.safetensors"), &device).unwrap();
    let r = TensorFile::open(&fixtures().join("outputs.safetensors"));
    let x = r.float::<4>("input", &device);
    let error = max_abs_diff(
        from_pth.forward(x.clone()).remove(0),
        from_st.forward(x).remove(0),
    );
    assert!(error < 1e-7, "{error}");
}

#[test]
fn widths_come_from_the_file_and_the_official_configs_have_the_published_sizes() {
    let shapes =
        avatar_core::diffusion::weights::tensor_shapes(&fixtures().join("u2net_tiny.pth")).unwrap();
    let config = U2NetConfig::from_shapes(&shapes).unwrap();
    let widths: Vec<_> = config
        .stages
        .iter()
        .map(|s| (s.in_channels, s.mid_channels, s.out_channels))
        .collect();
    assert_eq!(widths[0], (3, 1, 2));
    assert_eq!(widths[6], (32, 8, 16));
    assert_eq!(widths[10], (4, 1, 2));
    let device = Device::flex();
    // The official U2NET and U2NETP: torch counts 44,009,869 and 1,131,181 parameters plus
    // 28,800 and 5,696 batch-norm statistics (burn counts both).
    assert_eq!(
        U2NetConfig::full().init(&device).num_params(),
        44_009_869 + 28_800
    );
    assert_eq!(
        U2NetConfig::small().init(&device).num_params(),
        1_131_181 + 5_696
    );
}

#[test]
fn the_mask_follows_rembg() {
    let device = Device::flex();
    let remover = BackgroundRemover::load(&fixtures().join("u2net_tiny.pth"), &device)
        .unwrap()
        .with_input_size(64)
        .unwrap();
    let r = TensorFile::open(&fixtures().join("outputs.safetensors"));
    // Our Lanczos resize (the image crate) against PIL's: within two 8-bit levels, normalised.
    let error = max_abs_diff(remover.input_tensor(&figure()), r.float("input", &device));
    assert!(error < 2.0 / 255.0 / 0.224, "network input: {error}");

    let mask = remover.mask(&figure()).unwrap();
    let reference = image::open(fixtures().join("figure_mask.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(mask.dimensions(), reference.dimensions());
    let diffs: Vec<i32> = mask
        .pixels()
        .zip(reference.pixels())
        .map(|(a, b)| (i32::from(a[0]) - i32::from(b[0])).abs())
        .collect();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    let max = *diffs.iter().max().unwrap();
    assert!(
        mean < 0.5 && max <= 2,
        "mask vs rembg: mean {mean}, max {max}"
    );

    // The cut-out keeps the colours and takes the mask as alpha.
    let cut = BackgroundRemoval::Segmentation(std::sync::Arc::new(remover))
        .apply(&figure())
        .unwrap();
    for ((c, o), m) in cut.pixels().zip(figure().pixels()).zip(mask.pixels()) {
        assert_eq!(c.0[..3], o.0[..3]);
        assert_eq!(c[3], m[0]);
    }
}

#[test]
fn wrong_or_incomplete_weights_are_refused_by_name() {
    let device = Device::flex();
    // Not a U²-Net at all.
    let dcgan = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safety_checker");
    let other = std::fs::read_dir(&dcgan)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let err = U2Net::load(&other, &device).unwrap_err().to_string();
    assert!(err.contains("stage1.rebnconvin.conv_s1.weight"), "{err}");

    // One batch-norm statistic dropped from a real one.
    let bytes = std::fs::read(fixtures().join("u2net_tiny.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "stage3d.rebnconv2d.bn_s1.running_var")
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.safetensors");
    std::fs::write(&path, safetensors::serialize(kept, None).unwrap()).unwrap();
    match U2Net::load(&path, &device) {
        Err(AvatarError::WeightKeys { missing, .. }) => {
            assert!(
                missing
                    .iter()
                    .any(|m| m.contains("stage3d.rebnconv2d.bn_s1.running_var")),
                "{missing:?}"
            )
        }
        other => panic!("expected a WeightKeys error, got {other:?}"),
    }

    let err = BackgroundRemover::load(&fixtures().join("u2net_tiny.pth"), &device)
        .unwrap()
        .with_input_size(8)
        .unwrap_err();
    assert!(matches!(
        err,
        AvatarError::InvalidOption {
            field: "input_size",
            ..
        }
    ));
}
