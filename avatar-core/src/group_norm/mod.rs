//! Group normalisation, optionally followed by SiLU, as one pass on the CPU.
//!
//! burn's `GroupNorm` is composed of tensor operations (mean, subtract, square, mean, divide,
//! multiply, add), each a pass over the whole activation, and SiLU after it two or three more;
//! at the VAE decoder's 128-channel 512 px maps (33.5 M values) each pass costs tens of
//! milliseconds, and under autodiff every intermediate is kept for the backward pass. PyTorch runs
//! GroupNorm as one kernel. [`group_norm`] and [`group_norm_silu`] are drop-in replacements for
//! `GroupNorm::forward` (and `silu(norm.forward(x))`): on a flex device with f32 data they run
//! through a burn backend extension ([`GroupNormBackend`]) that reads the input twice for the
//! statistics of each (image, group) and writes the output once, with the activation applied in
//! the same pass; its autodiff implementation keeps only the input and computes the gradients of
//! the input, the scale and the shift from it (statistics again, then two passes). Every other
//! device, dtype and a norm without affine parameters take burn's own operations, so model code
//! stays backend-generic (values agree within ~1e-6: SiLU's `exp` here is a polynomial).

mod autodiff;
mod flex;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::nn::GroupNorm;
use burn::tensor::{DType, Tensor};

use crate::activation::silu;

/// What a fused group norm computes besides its input and affine parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormOptions {
    /// The number of channel groups (divides the channel count).
    pub groups: usize,
    /// Added to the variance before its square root.
    pub epsilon: f64,
    /// Whether SiLU (`x * sigmoid(x)`) follows the affine transform.
    pub silu: bool,
}

/// The backend operation behind [`group_norm`] and [`group_norm_silu`].
#[backend_extension(Flex, Autodiff)]
pub trait GroupNormBackend: Backend {
    /// `x [N, C, L]` normalised per (image, group of `C / groups` channels), scaled by
    /// `gamma [C]`, shifted by `beta [C]`, then SiLU when `options.silu`. The caller checks the
    /// shapes ([`group_norm`] does): rank 3, no empty axis, `groups` dividing `C`.
    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> FloatTensor<Self>;
}

/// The gradients of [`GroupNormBackend::fused_group_norm`], for the backends that run it.
pub(crate) trait GroupNormGradient: Backend {
    /// `(dx, dgamma, dbeta)` from the forward pass's inputs and the output gradient `grad`.
    fn fused_group_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `norm.forward(x)`, in one pass on flex devices.
///
/// ```
/// use avatar_core::burn::nn::GroupNormConfig;
/// use avatar_core::burn::tensor::{Device, Tensor};
/// let device = Device::flex();
/// let norm = GroupNormConfig::new(2, 4).init(&device);
/// let x = Tensor::<4>::random([1, 4, 3, 3], avatar_core::burn::tensor::Distribution::Default, &device);
/// let ours = avatar_core::group_norm::group_norm(x.clone(), &norm);
/// let burns = norm.forward(x);
/// assert!(ours.sub(burns).abs().max().into_scalar::<f32>() < 1e-5);
/// ```
pub fn group_norm<const D: usize>(x: Tensor<D>, norm: &GroupNorm) -> Tensor<D> {
    match fused_options(&x, norm, false) {
        Some(options) => fused(x, norm, options),
        None => norm.forward(x),
    }
}

/// `silu(norm.forward(x))`, in one pass on flex devices.
pub fn group_norm_silu<const D: usize>(x: Tensor<D>, norm: &GroupNorm) -> Tensor<D> {
    match fused_options(&x, norm, true) {
        Some(options) => fused(x, norm, options),
        None => silu(norm.forward(x)),
    }
}

/// The fused operation's options, or `None` where it does not apply (another device or dtype,
/// no affine parameters, a shape that `GroupNorm::forward` would reject with its own message).
fn fused_options<const D: usize>(
    x: &Tensor<D>,
    norm: &GroupNorm,
    silu: bool,
) -> Option<GroupNormOptions> {
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return None;
    };
    let shape = x.dims();
    let applies = D >= 3
        && norm.affine
        && shape.iter().all(|&size| size > 0)
        && shape[1] == norm.num_channels
        && norm.num_groups > 0
        && norm.num_channels.is_multiple_of(norm.num_groups)
        && crate::gemm_conv::is_flex(&x.device())
        && [x.dtype(), gamma.val().dtype(), beta.val().dtype()] == [DType::F32; 3];
    applies.then_some(GroupNormOptions {
        groups: norm.num_groups,
        epsilon: norm.epsilon,
        silu,
    })
}

/// [`GroupNormBackend::fused_group_norm`] on `x` viewed as `[N, C, rest]`.
fn fused<const D: usize>(x: Tensor<D>, norm: &GroupNorm, options: GroupNormOptions) -> Tensor<D> {
    let parameter = |p: &Option<burn::module::Param<Tensor<1>>>| {
        p.as_ref()
            .expect("checked by fused_options")
            .val()
            .into_dispatch()
    };
    let shape = x.dims();
    let rest = shape[2..].iter().product::<usize>();
    let x = x.reshape([shape[0], shape[1], rest]);
    let y = <burn::backend::Dispatch as GroupNormBackend>::fused_group_norm(
        x.into_dispatch(),
        parameter(&norm.gamma),
        parameter(&norm.beta),
        options,
    );
    Tensor::<3>::from_dispatch(y).reshape(shape)
}

#[cfg(test)]
mod tests;
