//! Reading tensors back to the host.

use burn::tensor::Tensor;

use crate::error::{AvatarError, Result};

/// The values of `t` as `f32` (row-major), whatever float type the backend computed in.
pub(crate) fn f32_values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| AvatarError::Backend(format!("{e:?}")))
}
