//! Face analysis at full size with random weights (no download): our ONNX interpreter on burn
//! (flex) running an ArcFace IResNet-50 (w600k_r50's architecture) on 1 and 8 aligned crops and
//! an SCRFD-style detector on a 640x640 input. The models come from
//! `compare_face_analysis.py --export DIR`, which times onnxruntime on the same files; results go
//! to `benches/RESULTS.md`.
//!
//! ```text
//! cargo bench -p avatar-core --bench face_analysis_shapes -- DIR [--runs N]
//! ```

use std::path::PathBuf;

use avatar_core::face_analysis::{ArcFace, ScrfdDetector};
use burn::tensor::Device;
use image::RgbImage;

mod common;

use common::{bench_args, time};

fn main() {
    let Some((args, runs)) = bench_args("face_analysis_shapes") else {
        return;
    };
    let Some(dir) = args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_err())
    else {
        println!("face_analysis_shapes: pass the directory of compare_face_analysis.py --export");
        return;
    };
    let dir = PathBuf::from(dir);
    let device = Device::flex();
    let recognizer = ArcFace::load(&dir.join("arcface_r50.onnx"), &device).unwrap();
    let crop = RgbImage::from_fn(112, 112, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 90])
    });
    for batch in [1, 8] {
        let crops = vec![crop.clone(); batch];
        time(&format!("arcface r50 batch {batch}"), runs, || {
            recognizer.embed(&crops).unwrap();
        });
    }
    let detector = ScrfdDetector::load(&dir.join("scrfd_wide.onnx"), &device).unwrap();
    let input = RgbImage::from_fn(640, 640, |x, y| image::Rgb([x as u8, y as u8, 128]));
    time("scrfd-style 640x640", runs, || {
        detector.forward(&input).unwrap();
    });
}
