//! ArcFace face recognition (insightface's `w600k_r50.onnx`, `glintr100.onnx`, ...), run as
//! insightface's `ArcFaceONNX` does: the aligned crop as `(x - 127.5) / 127.5` RGB (or raw pixels
//! for the MXNet exports whose graph starts with its own `Sub`/`Mul`), one embedding per face.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use crate::error::{AvatarError, Result};
use crate::onnx::{OnnxGraph, Value};

/// A loaded ArcFace recogniser.
#[derive(Debug)]
pub struct ArcFace {
    graph: OnnxGraph,
    input_size: u32,
    mean: f32,
    std: f32,
}

impl ArcFace {
    /// Loads an ArcFace `.onnx` file (one input `[N, 3, S, S]`, one output `[N, D]`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let graph = OnnxGraph::load(path, device)?;
        if graph.inputs().len() != 1 || graph.outputs().len() != 1 {
            return Err(AvatarError::Weights(format!(
                "{}: not an ArcFace recogniser ({} inputs, {} outputs; expected 1 and 1)",
                path.display(),
                graph.inputs().len(),
                graph.outputs().len()
            )));
        }
        let input_size = match graph.input_dims()[0].as_slice() {
            [_, _, Some(h), Some(w)] if h == w => *h as u32,
            [_, _, None, None] | [] => 112,
            other => {
                return Err(AvatarError::Weights(format!(
                    "{}: input shape {other:?} is not a square image batch",
                    path.display()
                )));
            }
        };
        // insightface: MXNet exports normalise inside the graph (Sub and Mul among the first
        // eight nodes); the others take (x - 127.5) / 127.5.
        let first: Vec<&str> = graph.node_names().take(8).collect();
        let has = |prefixes: [&str; 2]| {
            first
                .iter()
                .any(|n| prefixes.iter().any(|p| n.starts_with(p)))
        };
        let (mean, std) = if has(["Sub", "_minus"]) && has(["Mul", "_mul"]) {
            (0.0, 1.0)
        } else {
            (127.5, 127.5)
        };
        Ok(ArcFace {
            graph,
            input_size,
            mean,
            std,
        })
    }

    /// The side of the aligned crop the model takes (112).
    pub fn input_size(&self) -> u32 {
        self.input_size
    }

    /// The embedding width `D` (runs the model once on a blank crop).
    pub fn embedding_width(&self) -> Result<usize> {
        let blank = RgbImage::new(self.input_size, self.input_size);
        Ok(self.embed(&[blank])?.remove(0).len())
    }

    /// The embeddings of aligned crops (each `input_size` squared), raw (not normalised).
    pub fn embed(&self, crops: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.input_size;
        let plane = (s * s) as usize;
        let mut values = vec![0f32; crops.len() * 3 * plane];
        for (n, crop) in crops.iter().enumerate() {
            if crop.dimensions() != (s, s) {
                return Err(AvatarError::invalid(
                    "crop",
                    format!("{:?}, expected {s}x{s}", crop.dimensions()),
                ));
            }
            for (i, p) in crop.pixels().enumerate() {
                for c in 0..3 {
                    values[(n * 3 + c) * plane + i] =
                        (f32::from(p[c]) - self.mean) * (1.0 / self.std);
                }
            }
        }
        let shape = [crops.len(), 3, s as usize, s as usize];
        let tensor = Tensor::from_data(TensorData::new(values, shape), self.graph.device());
        let out = self
            .graph
            .run(vec![(
                self.graph.inputs()[0].clone(),
                Value::device(tensor, shape.to_vec()),
            )])?
            .remove(0);
        let (data, out_shape, _) = out.to_host()?;
        let width = match out_shape.as_slice() {
            [n, d] if *n == crops.len() => *d,
            other => {
                return Err(AvatarError::Weights(format!(
                    "ArcFace: output shape {other:?}, expected [{}, D]",
                    crops.len()
                )));
            }
        };
        Ok(data
            .chunks(width)
            .map(|row| row.iter().map(|&v| v as f32).collect())
            .collect())
    }
}
