//! Training-mode batch normalisation followed by its activation, as one operation on the CPU.
//!
//! burn's `BatchNorm::forward` in training runs `batch_norm_train`, one autodiff node, but flex
//! computes it from generic tensor operations: the channel statistics through `swap_dims` and
//! `reshape` copies of the whole activation, then subtract, divide, multiply and add passes; its
//! backward pass the same again. In DCGAN training that was ~11% of the time (profile in
//! `benches/RESULTS.md`, session 24), and the ReLU or LeakyReLU after it two to four more passes
//! with their own saved tensors. [`batch_norm_activation`] replaces `act(norm.forward(x))`: on a
//! flex device under autodiff, in training mode, with f32 data it runs through a burn backend
//! extension ([`BatchNormBackend`]) that reads each `[N, C, L]` plane once for its statistics
//! (merged per channel in f64) and writes the activated output once; its autodiff node keeps
//! the input, the affine parameters and the statistics, and its backward pass takes two passes.
//! The running statistics are updated as burn's `BatchNorm` does (momentum, biased variance).
//! Measured (session 25, ABBA): DCGAN training 19-27% more images/s, peak RSS 482 -> 423 MiB
//! (96 px, widths 256-..-32, batch 64); the fused forward + backward are 4% of a step's profile
//! where burn's were 10.5%.
//! Outside autodiff graphs (inference, e.g. U²-Net's background removal) a second operation
//! ([`BatchNormInferenceBackend`]) normalises with the running statistics and activates in one
//! pass, where burn's `batch_norm` takes four and the activation one or more. Everywhere else
//! (other devices and dtypes, evaluation mode inside an autodiff graph) it is burn's own
//! `BatchNorm::forward` followed by the activation, so model code stays backend-generic.

mod autodiff;
mod flex;

use burn::backend::Dispatch;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::module::RunningState;
use burn::nn::BatchNorm;
use burn::tensor::activation::relu;
use burn::tensor::{DType, Tensor};

/// The activation applied after the normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// None: the normalised, scaled and shifted values.
    Identity,
    /// `max(z, 0)`.
    Relu,
    /// `z` where positive, `slope * z` elsewhere.
    LeakyRelu {
        /// The slope on the negative side.
        slope: f64,
    },
}

impl Activation {
    /// The slope on the negative side: 1 for the identity, 0 for ReLU.
    fn negative_slope(self) -> f32 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => 0.0,
            Activation::LeakyRelu { slope } => slope as f32,
        }
    }

    /// The activation as tensor operations (the path off the fused kernel). LeakyReLU is
    /// `(1 - slope) relu(z) + slope z`: the same function, but under autodiff burn builds
    /// `leaky_relu` from a comparison, a scaled copy and a `mask_where` (and their backward
    /// passes), while `relu` has a fused backward: measured faster on flex.
    pub fn apply<const D: usize>(self, z: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Identity => z,
            Activation::Relu => relu(z),
            Activation::LeakyRelu { slope } => {
                relu(z.clone()).mul_scalar(1.0 - slope) + z.mul_scalar(slope)
            }
        }
    }
}

/// What the fused batch norm computes besides its input and affine parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Added to the variance before its square root.
    pub epsilon: f64,
    /// The activation's slope below zero (1 for none, 0 for ReLU).
    pub negative_slope: f32,
}

/// The backend operation behind [`batch_norm_activation`].
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormBackend: Backend {
    /// `x [N, C, L]` normalised per channel with the batch's mean and biased variance, scaled
    /// by `gamma [C]`, shifted by `beta [C]`, then `z` or `negative_slope * z` by the sign of
    /// `z`; returns `(output, mean [C], variance [C])`. The caller checks the shapes
    /// ([`batch_norm_activation`] does): rank 3, no empty axis, `C` parameters.
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        options: BatchNormOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The inference-mode operation behind [`batch_norm_activation`], outside autodiff graphs.
#[backend_extension(Flex)]
pub trait BatchNormInferenceBackend: Backend {
    /// `x [N, C, L]` normalised per channel with the given `mean [C]` and `variance [C]` (the
    /// running statistics), scaled, shifted and activated as in
    /// [`BatchNormBackend::fused_batch_norm_train`].
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        options: BatchNormOptions,
    ) -> FloatTensor<Self>;
}

/// The gradients of [`BatchNormBackend::fused_batch_norm_train`], for the backends that run it.
pub(crate) trait BatchNormGradient: Backend {
    /// `(dx, dgamma, dbeta)` from the forward pass's inputs, its statistics and the output
    /// gradient `grad`.
    #[allow(clippy::too_many_arguments)]
    fn fused_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: BatchNormOptions,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// `activation.apply(norm.forward(x))`, as one operation on flex (training under autodiff, or
/// inference outside it); updates the running statistics in training mode as `norm.forward`
/// does.
///
/// ```
/// use avatar_core::batch_norm::{Activation, batch_norm_activation};
/// use avatar_core::burn::nn::BatchNormConfig;
/// use avatar_core::burn::tensor::{Device, Distribution, Tensor};
/// let device = Device::flex().autodiff();
/// let norm = BatchNormConfig::new(4).init(&device);
/// let x = Tensor::<4>::random([2, 4, 3, 3], Distribution::Default, &device);
/// let ours = batch_norm_activation(x.clone(), &norm, Activation::Relu);
/// let burns = Activation::Relu.apply(norm.forward(x));
/// assert!(ours.sub(burns).abs().max().into_scalar::<f32>() < 1e-5);
/// ```
pub fn batch_norm_activation<const D: usize>(
    x: Tensor<D>,
    norm: &BatchNorm,
    activation: Activation,
) -> Tensor<D> {
    let Some(path) = fused_path(&x, norm) else {
        return activation.apply(norm.forward(x));
    };
    let shape = x.dims();
    let rest = shape[2..].iter().product::<usize>();
    let x = x.reshape([shape[0], shape[1], rest]).into_dispatch();
    let options = BatchNormOptions {
        epsilon: norm.epsilon,
        negative_slope: activation.negative_slope(),
    };
    let (gamma, beta) = (
        norm.gamma.val().into_dispatch(),
        norm.beta.val().into_dispatch(),
    );
    let y = match path {
        FusedPath::Training => {
            let (y, mean, variance) =
                <Dispatch as BatchNormBackend>::fused_batch_norm_train(x, gamma, beta, options);
            // burn's `BatchNorm::forward_train`, step for step.
            let running = |state: &RunningState<Tensor<1>>, batch: Tensor<1>| {
                let updated = state
                    .value_sync()
                    .to_device(&batch.device())
                    .mul_scalar(1.0 - norm.momentum)
                    .add(batch.detach().mul_scalar(norm.momentum));
                state.update(updated.detach());
            };
            running(&norm.running_mean, Tensor::from_dispatch(mean));
            running(&norm.running_var, Tensor::from_dispatch(variance));
            y
        }
        FusedPath::Inference { statistics } => {
            let [mean, variance] = *statistics;
            <Dispatch as BatchNormInferenceBackend>::fused_batch_norm(
                x,
                gamma,
                beta,
                mean.into_dispatch(),
                variance.into_dispatch(),
                options,
            )
        }
    };
    Tensor::<3>::from_dispatch(y).reshape(shape)
}

/// How [`batch_norm_activation`] runs on a flex device.
enum FusedPath {
    /// Under autodiff in training mode (where `norm.forward` uses the batch's statistics).
    Training,
    /// Outside autodiff (where `norm.forward` uses the running statistics, given here).
    Inference {
        /// The running mean and variance (boxed: a tensor handle is large).
        statistics: Box<[Tensor<1>; 2]>,
    },
}

/// The fused operation that `x` takes, if any: on flex, f32 throughout, a shape
/// `norm.forward` accepts; `None` in autodiff graphs in evaluation mode and everywhere else.
fn fused_path<const D: usize>(x: &Tensor<D>, norm: &BatchNorm) -> Option<FusedPath> {
    let shape = x.dims();
    let device = x.device();
    let applies = D >= 2
        && shape.iter().all(|&size| size > 0)
        && norm.gamma.val().dims() == [shape[1]]
        && norm.beta.val().dims() == [shape[1]]
        && crate::gemm_conv::is_flex(&device)
        && [x.dtype(), norm.gamma.val().dtype(), norm.beta.val().dtype()] == [DType::F32; 3];
    if !applies {
        return None;
    }
    if device.is_autodiff() {
        return norm.training.is_enabled().then_some(FusedPath::Training);
    }
    let [mean, variance] =
        [&norm.running_mean, &norm.running_var].map(|state| state.value().to_device(&device));
    let statistics_apply = [&mean, &variance]
        .iter()
        .all(|s| s.dims() == [shape[1]] && s.dtype() == DType::F32);
    statistics_apply.then(|| FusedPath::Inference {
        statistics: Box::new([mean, variance]),
    })
}

#[cfg(test)]
mod tests;
