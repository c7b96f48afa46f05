//! ControlNet conditioning images against OpenCV (`cv2` 5.0.0, identical with 4.14.0), written by
//! `tools/reference/face_adapters/make_control_image_fixtures.py`: grey conversion, Canny on the
//! grey image and on the colour image (InstantID's `get_canny_image`), and InstantID's keypoint
//! image `draw_kps`. Every comparison is exact, pixel by pixel.

use std::path::{Path, PathBuf};

use avatar_core::AvatarError;
use avatar_core::imaging::{canny, canny_image, draw_kps, rgb_to_gray};
use image::{GrayImage, RgbImage, RgbaImage};

const IMAGES: [&str; 3] = ["photo", "posterised", "random"];
const GRAY_THRESHOLDS: [(f64, f64); 3] = [(100.0, 200.0), (50.0, 150.0), (30.5, 90.9)];
const BGR_THRESHOLDS: [(f64, f64); 2] = [(100.0, 200.0), (50.0, 150.0)];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/control_images")
}

fn open(name: &str) -> image::DynamicImage {
    let path = fixtures().join(name);
    image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rgba(name: &str) -> RgbaImage {
    open(&format!("{name}.png")).to_rgba8()
}

fn gray(name: &str) -> GrayImage {
    open(name).to_luma8()
}

/// Number of pixels that differ, after checking the sizes.
fn differing<P: image::Pixel + PartialEq>(
    what: &str,
    ours: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    theirs: &image::ImageBuffer<P, Vec<P::Subpixel>>,
) -> usize {
    assert_eq!(ours.dimensions(), theirs.dimensions(), "{what}: size");
    ours.pixels()
        .zip(theirs.pixels())
        .filter(|(a, b)| a != b)
        .count()
}

#[test]
fn gray_matches_opencv() {
    for name in IMAGES {
        let ours = rgb_to_gray(&rgba(name));
        let diff = differing(name, &ours, &gray(&format!("{name}_gray.png")));
        assert_eq!(
            diff, 0,
            "{name}: {diff} grey pixels differ from cv2.cvtColor"
        );
    }
}

#[test]
fn canny_matches_opencv() {
    for name in IMAGES {
        let g = gray(&format!("{name}_gray.png"));
        for (low, high) in GRAY_THRESHOLDS {
            let reference = gray(&format!("{name}_canny_gray_{low}_{high}.png"));
            let ours = canny(&g, low, high);
            let diff = differing(name, &ours, &reference);
            println!("{name} canny({low}, {high}): {diff} pixels differ");
            assert_eq!(diff, 0, "{name} canny({low}, {high}): {diff} pixels differ");
            // Swapped thresholds are swapped back, as in OpenCV.
            assert_eq!(
                canny(&g, high, low),
                reference,
                "{name} canny({high}, {low})"
            );
            // And the grey conversion feeds the same edges.
            assert_eq!(canny(&rgb_to_gray(&rgba(name)), low, high), reference);
        }
    }
}

#[test]
fn canny_step_edge() {
    let gray = GrayImage::from_fn(8, 6, |x, _| image::Luma([if x < 4 { 10 } else { 200 }]));
    let edges = canny(&gray, 100.0, 200.0);
    for (x, y, p) in edges.enumerate_pixels() {
        assert_eq!(p.0[0], if x == 3 { 255 } else { 0 }, "({x}, {y})");
    }
    assert_eq!(canny(&GrayImage::new(0, 0), 1.0, 2.0).dimensions(), (0, 0));
    assert_eq!(
        canny_image(&RgbaImage::new(0, 3), 1.0, 2.0).dimensions(),
        (0, 3)
    );
}

#[test]
fn canny_image_matches_instantid() {
    for name in IMAGES {
        let image = rgba(name);
        for (low, high) in BGR_THRESHOLDS {
            let reference = gray(&format!("{name}_canny_bgr_{low}_{high}.png"));
            let ours = canny_image(&image, low, high);
            assert_eq!(ours.dimensions(), reference.dimensions());
            let diff = ours
                .pixels()
                .zip(reference.pixels())
                .filter(|(a, b)| a.0 != [b.0[0], b.0[0], b.0[0], 255])
                .count();
            println!("{name} canny_image({low}, {high}): {diff} pixels differ");
            assert_eq!(
                diff, 0,
                "{name} canny_image({low}, {high}): {diff} pixels differ"
            );
        }
    }
}

#[derive(serde::Deserialize)]
struct KeypointCases {
    cases: Vec<KeypointCase>,
}

#[derive(serde::Deserialize)]
struct KeypointCase {
    name: String,
    width: u32,
    height: u32,
    kps: Vec<[f64; 2]>,
}

#[test]
fn draw_kps_matches_instantid() {
    let json = std::fs::read_to_string(fixtures().join("keypoints.json")).unwrap();
    let cases: KeypointCases = serde_json::from_str(&json).unwrap();
    assert!(cases.cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases.cases {
        // The JSON holds float32 values exactly.
        let kps: Vec<(f32, f32)> = case
            .kps
            .iter()
            .map(|&[x, y]| (x as f32, y as f32))
            .collect();
        let ours = draw_kps(case.width, case.height, &kps).unwrap();
        assert!(
            ours.pixels().all(|p| p.0[3] == 255),
            "{}: not opaque",
            case.name
        );
        let ours: RgbImage = image::DynamicImage::ImageRgba8(ours).to_rgb8();
        let reference = open(&format!("kps_{}.png", case.name)).to_rgb8();
        let diff = differing(&case.name, &ours, &reference);
        println!("draw_kps {}: {diff} pixels differ", case.name);
        if diff != 0 {
            failures.push(format!("{} ({diff} pixels)", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "draw_kps differs from OpenCV: {failures:?}"
    );
}

#[test]
fn draw_kps_rejects_bad_keypoints() {
    let face = [
        (30.0, 50.0),
        (66.0, 50.0),
        (48.0, 67.0),
        (35.0, 88.0),
        (61.0, 88.0),
    ];
    assert!(draw_kps(96, 128, &face).is_ok());
    let bad: [Vec<(f32, f32)>; 5] = [
        face[..4].to_vec(),
        [&face[..], &face[..1]].concat(),
        vec![face[0], face[1], (f32::NAN, 67.0), face[3], face[4]],
        vec![face[0], face[1], face[2], (35.0, f32::INFINITY), face[4]],
        vec![face[0], face[1], face[2], face[3], (-2.0e6, 88.0)],
    ];
    for kps in bad {
        match draw_kps(96, 128, &kps) {
            Err(AvatarError::InvalidOption { field, .. }) => assert_eq!(field, "face_keypoints"),
            other => panic!("{kps:?}: expected an invalid face_keypoints, got {other:?}"),
        }
    }
    assert!(matches!(
        draw_kps(0, 128, &face),
        Err(AvatarError::InvalidOption { field: "size", .. })
    ));
}
