//! Reading reference tensors from safetensors fixtures (f32, f64 or i64) into burn tensors.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// A safetensors fixture file held in memory.
pub struct TensorFile {
    bytes: Vec<u8>,
}

impl TensorFile {
    /// Reads `path`.
    pub fn open(path: &Path) -> Self {
        TensorFile {
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    fn view(&self, name: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let file = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = file
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        (view.shape().to_vec(), view.dtype(), view.data().to_vec())
    }

    /// A float tensor's shape and values (f32 or f64 stored).
    pub fn values(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, dtype, data) = self.view(name);
        let values = match dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{name}: {other:?} is not a float type"),
        };
        (shape, values)
    }

    /// A u8 tensor's shape and values (images).
    pub fn bytes(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let (shape, dtype, data) = self.view(name);
        assert_eq!(dtype, Dtype::U8, "{name}");
        (shape, data)
    }

    /// An f64 tensor's values, unrounded.
    pub fn doubles(&self, name: &str) -> Vec<f64> {
        let (_, dtype, data) = self.view(name);
        assert_eq!(dtype, Dtype::F64, "{name}");
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// An i64 tensor's shape and values.
    pub fn ints(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (shape, dtype, data) = self.view(name);
        assert_eq!(dtype, Dtype::I64, "{name}");
        let values = data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (shape, values)
    }

    /// A float tensor of rank `D` on `device`.
    pub fn float<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (shape, values) = self.values(name);
        assert_eq!(shape.len(), D, "{name} has shape {shape:?}");
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// An int tensor of rank `D` on `device`.
    pub fn int<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D, Int> {
        let (shape, values) = self.ints(name);
        assert_eq!(shape.len(), D, "{name} has shape {shape:?}");
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// The largest absolute difference between two same-shaped tensors.
pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar::<f32>()
}
