//! SCRFD face detection (insightface's `det_10g.onnx`, `scrfd_10g_bnkps.onnx`, ...), run as
//! insightface's `SCRFD.detect` does: the image letterboxed into the detector size with OpenCV's
//! bilinear resize, `(x - 127.5) / 128` RGB, anchor-free distance decoding per stride, a stable
//! score sort, NMS with `+1` areas, and the optional `max_num` pick of large, central faces.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use crate::error::{AvatarError, Result};
use crate::imaging::cv_geometry::resize_linear;
use crate::onnx::{OnnxGraph, Value};

/// One detected face: box, score and (for `*_kps` models) the five keypoints (left eye, right
/// eye, nose, left mouth corner, right mouth corner), in the image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Confidence (0-1).
    pub score: f32,
    /// The five keypoints `[x, y]`, when the model predicts them.
    pub keypoints: Option<[[f32; 2]; 5]>,
}

impl Detection {
    /// The box's area.
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }
}

/// Detection settings (insightface's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectionOptions {
    /// The detector's input `(width, height)`; the image is letterboxed into it (multiples of
    /// 32; 640x640 as insightface's `det_size`).
    pub input_size: (u32, u32),
    /// Minimum score.
    pub threshold: f32,
    /// Boxes overlapping a better one by more than this IoU are dropped.
    pub nms_threshold: f32,
    /// Keep at most this many faces, preferring large ones near the centre (0: all).
    pub max_faces: usize,
}

impl Default for DetectionOptions {
    fn default() -> Self {
        DetectionOptions {
            input_size: (640, 640),
            threshold: 0.5,
            nms_threshold: 0.4,
            max_faces: 0,
        }
    }
}

impl DetectionOptions {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let (w, h) = self.input_size;
        if w == 0 || h == 0 || w % 32 != 0 || h % 32 != 0 || w > 4096 || h > 4096 {
            return Err(AvatarError::invalid(
                "det_size",
                format!("{w}x{h}: both sides must be multiples of 32, at most 4096"),
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(AvatarError::invalid("det_thresh", "must be within 0-1"));
        }
        if !(0.0..=1.0).contains(&self.nms_threshold) {
            return Err(AvatarError::invalid("nms_thresh", "must be within 0-1"));
        }
        Ok(())
    }
}

/// A loaded SCRFD detector.
#[derive(Debug)]
pub struct ScrfdDetector {
    graph: OnnxGraph,
    strides: Vec<usize>,
    anchors: usize,
    keypoints: bool,
}

/// The letterboxed detector input and its scale.
#[derive(Debug, Clone)]
pub struct Letterbox {
    /// The image resized into the top-left corner, zeros elsewhere.
    pub image: RgbImage,
    /// `resized height / image height`.
    pub scale: f64,
}

impl ScrfdDetector {
    /// Loads an SCRFD `.onnx` file (6, 9, 10 or 15 outputs: scores, boxes and optional
    /// keypoints for 3 strides with 2 anchors or 5 strides with 1).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let graph = OnnxGraph::load(path, device)?;
        let (strides, anchors, keypoints) = match graph.outputs().len() {
            6 => (vec![8, 16, 32], 2, false),
            9 => (vec![8, 16, 32], 2, true),
            10 => (vec![8, 16, 32, 64, 128], 1, false),
            15 => (vec![8, 16, 32, 64, 128], 1, true),
            n => {
                return Err(AvatarError::Weights(format!(
                    "{}: not an SCRFD detector ({n} outputs; expected 6, 9, 10 or 15)",
                    path.display()
                )));
            }
        };
        if graph.inputs().len() != 1 {
            return Err(AvatarError::Weights(format!(
                "{}: not an SCRFD detector ({} inputs)",
                path.display(),
                graph.inputs().len()
            )));
        }
        Ok(ScrfdDetector {
            graph,
            strides,
            anchors,
            keypoints,
        })
    }

    /// Whether the model predicts the five keypoints (needed for alignment).
    pub fn has_keypoints(&self) -> bool {
        self.keypoints
    }

    /// insightface's letterbox: the image resized (keeping its aspect ratio) into the top-left
    /// corner of the detector input.
    pub fn letterbox(image: &RgbImage, input_size: (u32, u32)) -> Letterbox {
        let (w, h) = image.dimensions();
        let (iw, ih) = input_size;
        let image_ratio = f64::from(h) / f64::from(w);
        let model_ratio = f64::from(ih) / f64::from(iw);
        let (nw, nh) = if image_ratio > model_ratio {
            ((f64::from(ih) / image_ratio) as u32, ih)
        } else {
            (iw, (f64::from(iw) * image_ratio) as u32)
        };
        let (nw, nh) = (nw.clamp(1, iw), nh.clamp(1, ih));
        let resized = resize_linear(image, nw, nh);
        let mut canvas = RgbImage::new(iw, ih);
        image::imageops::replace(&mut canvas, &resized, 0, 0);
        Letterbox {
            image: canvas,
            scale: f64::from(nh) / f64::from(h),
        }
    }

    /// The raw network outputs for a letterboxed input (`(x - 127.5) / 128`, RGB), each as
    /// row-major values (the batch dimension of batched exports dropped).
    pub fn forward(&self, input: &RgbImage) -> Result<Vec<Vec<f32>>> {
        let (w, h) = input.dimensions();
        let plane = (w * h) as usize;
        let mut values = vec![0f32; 3 * plane];
        for (i, p) in input.pixels().enumerate() {
            for c in 0..3 {
                values[c * plane + i] = (f32::from(p[c]) - 127.5) * (1.0 / 128.0);
            }
        }
        let shape = [1, 3, h as usize, w as usize];
        let tensor = Tensor::from_data(TensorData::new(values, shape), self.graph.device());
        let outputs = self.graph.run(vec![(
            self.graph.inputs()[0].clone(),
            Value::device(tensor, shape.to_vec()),
        )])?;
        outputs
            .into_iter()
            .map(|v| Ok(v.to_host()?.0.into_iter().map(|x| x as f32).collect()))
            .collect()
    }

    /// The faces in `image`, best first (after NMS; `max_faces` then reorders by size and
    /// centrality as insightface does).
    pub fn detect(&self, image: &RgbImage, options: &DetectionOptions) -> Result<Vec<Detection>> {
        options.validate()?;
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(AvatarError::invalid("image", "the image is empty"));
        }
        let letterbox = Self::letterbox(image, options.input_size);
        let outputs = self.forward(&letterbox.image)?;
        let candidates = self.decode(&outputs, options.input_size, options.threshold)?;
        let scale = letterbox.scale as f32;
        let mut candidates: Vec<Detection> = candidates
            .into_iter()
            .map(|mut d| {
                d.bbox = d.bbox.map(|v| v / scale);
                if let Some(kps) = &mut d.keypoints {
                    *kps = kps.map(|p| p.map(|v| v / scale));
                }
                d
            })
            .collect();
        // Stable sort by descending score (numpy's argsort(-score, kind="stable")).
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut kept = nms(candidates, options.nms_threshold);
        if options.max_faces > 0 && kept.len() > options.max_faces {
            let (cx, cy) = ((w / 2) as f32, (h / 2) as f32);
            let value = |d: &Detection| {
                let ox = (d.bbox[0] + d.bbox[2]) / 2.0 - cx;
                let oy = (d.bbox[1] + d.bbox[3]) / 2.0 - cy;
                d.area() - (ox * ox + oy * oy) * 2.0
            };
            kept.sort_by(|a, b| value(b).total_cmp(&value(a)));
            kept.truncate(options.max_faces);
        }
        Ok(kept)
    }

    /// Decodes the network outputs at the detector input's scale: every anchor scoring at
    /// least `threshold`, stride by stride.
    pub fn decode(
        &self,
        outputs: &[Vec<f32>],
        input_size: (u32, u32),
        threshold: f32,
    ) -> Result<Vec<Detection>> {
        let levels = self.strides.len();
        let mut found = Vec::new();
        for (idx, &stride) in self.strides.iter().enumerate() {
            let (width, height) = (
                input_size.0 as usize / stride,
                input_size.1 as usize / stride,
            );
            let count = width * height * self.anchors;
            let scores = &outputs[idx];
            let boxes = &outputs[idx + levels];
            let kps = self.keypoints.then(|| &outputs[idx + 2 * levels]);
            if scores.len() != count
                || boxes.len() != 4 * count
                || kps.is_some_and(|k| k.len() != 10 * count)
            {
                return Err(AvatarError::Weights(format!(
                    "SCRFD: stride {stride} outputs {} scores, expected {count} ({width}x{height} \
                     x {} anchors)",
                    scores.len(),
                    self.anchors
                )));
            }
            let s = stride as f32;
            for (i, &score) in scores.iter().enumerate() {
                if score < threshold {
                    continue;
                }
                let cell = i / self.anchors;
                let (cx, cy) = ((cell % width) as f32 * s, (cell / width) as f32 * s);
                let d = &boxes[4 * i..4 * i + 4];
                let bbox = [cx - d[0] * s, cy - d[1] * s, cx + d[2] * s, cy + d[3] * s];
                let keypoints = kps.map(|k| {
                    let k = &k[10 * i..10 * i + 10];
                    std::array::from_fn(|p| [cx + k[2 * p] * s, cy + k[2 * p + 1] * s])
                });
                found.push(Detection {
                    bbox,
                    score,
                    keypoints,
                });
            }
        }
        Ok(found)
    }
}

/// insightface's NMS over detections sorted by descending score: `+1` pixel areas, a box is
/// kept when its IoU with every better kept box is at most `threshold`.
fn nms(sorted: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    let area = |d: &Detection| (d.bbox[2] - d.bbox[0] + 1.0) * (d.bbox[3] - d.bbox[1] + 1.0);
    let mut remaining: Vec<usize> = (0..sorted.len()).collect();
    let mut keep = Vec::new();
    while let Some(&i) = remaining.first() {
        keep.push(i);
        let a = &sorted[i];
        remaining = remaining[1..]
            .iter()
            .copied()
            .filter(|&j| {
                let b = &sorted[j];
                let w = (a.bbox[2].min(b.bbox[2]) - a.bbox[0].max(b.bbox[0]) + 1.0).max(0.0);
                let h = (a.bbox[3].min(b.bbox[3]) - a.bbox[1].max(b.bbox[1]) + 1.0).max(0.0);
                let inter = w * h;
                inter / (area(a) + area(b) - inter) <= threshold
            })
            .collect();
    }
    let mut sorted: Vec<Option<Detection>> = sorted.into_iter().map(Some).collect();
    keep.into_iter()
        .map(|i| sorted[i].take().expect("each index kept once"))
        .collect()
}
