//! Pillow's resampling: 33 resizes of three 8-bit RGB images (random and smooth) with BICUBIC,
//! LANCZOS and BILINEAR, down and up, one axis or both
//! (`tools/reference/imaging/make_pil_resize_fixtures.py`, Pillow 13), every one bit-exact in one
//! of the two pass orders (Pillow 13 chooses per size pair) and, in the default order, equal or a
//! few levels off where Pillow 13 ran the other one; and transformers'
//! CLIPImageProcessor on a 45x37 image.

use crate::common;

use std::path::{Path, PathBuf};

use avatar_core::diffusion::clip_vision::clip_preprocess;
use avatar_core::imaging::pil_resize::{
    PassOrder, PilFilter, resize_gray, resize_rgb, resize_rgb_with_order,
};
use burn::tensor::Device;
use common::tensors::{TensorFile, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pil_resize")
}

#[test]
fn every_filter_and_size_matches_pillow_in_one_pass_order() {
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 33);
    for case in cases {
        let source = image::open(fixtures().join(case["source"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let filter = match case["filter"].as_str().unwrap() {
            "bicubic" => PilFilter::Bicubic,
            "lanczos" => PilFilter::Lanczos,
            _ => PilFilter::Bilinear,
        };
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let expected = image::open(fixtures().join(case["file"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let exact = [PassOrder::HorizontalFirst, PassOrder::VerticalFirst]
            .into_iter()
            .any(|order| resize_rgb_with_order(&source, w, h, filter, order) == expected);
        assert!(exact, "{}: neither pass order is Pillow's", case["file"]);
        let ours = resize_rgb(&source, w, h, filter);
        let worst = ours
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        // The other order rounds its intermediate differently: a few levels on noise (Lanczos's
        // lobes clip), less on smooth content.
        assert!(worst <= 8, "{}: {worst}", case["file"]);
        if source.width() == w || source.height() == h {
            assert!(worst == 0, "{}: one axis is exact", case["file"]);
            // A single channel resamples the same way.
            let red = image::GrayImage::from_fn(source.width(), source.height(), |x, y| {
                image::Luma([source.get_pixel(x, y)[0]])
            });
            let red = resize_gray(&red, w, h, filter);
            assert!(
                red.pixels()
                    .zip(expected.pixels())
                    .all(|(a, b)| a[0] == b[0])
            );
        }
    }
}

#[test]
fn clip_preprocessing_is_transformers() {
    let device = Device::flex();
    let image = image::open(fixtures().join("a.png")).unwrap().to_rgba8();
    let ours = clip_preprocess(&image, 24, &device);
    let r = TensorFile::open(&fixtures().join("clip.safetensors"));
    // Within one 8-bit level of the resized pixels (the pass order, see above), normalised.
    let error = max_abs_diff(ours, r.float("clip_a", &device));
    assert!(error <= 1.0 / 255.0 / 0.26 + 1e-5, "{error}");
}
