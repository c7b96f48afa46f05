//! Convolutions on the CPU: im2col + gemm for the passes flex does slowly.
//!
//! burn's CPU backend (flex) computes a convolution's weight gradient with burn's generic
//! formula, a `conv2d` in which the batch is the reduction axis and the whole output gradient is a
//! dilated kernel; PyTorch computes it as one im2col + gemm, 2-4x faster at DCGAN's shapes
//! (`benches/RESULTS.md`, session 13). The input gradient of a transposed convolution is a strided
//! `conv2d`, which flex runs through a scalar gather. Flex's forward `conv2d` re-lays out the
//! whole weight and the whole input (to channels-last) on one thread at every call, which costs
//! more than the gemm itself at Stable Diffusion's 1280-channel 8x8 layers. Training spends most
//! of its time in these, diffusion and VQGAN decoding a good part.
//!
//! [`conv2d`] and [`conv_transpose2d`] are drop-in replacements for `burn::tensor::module`'s (and
//! [`conv2d_layer`] / [`conv_transpose2d_layer`] for burn's modules' `forward`): on a flex device
//! they run through a burn backend extension ([`GemmConvBackend`]) whose autodiff
//! implementation computes
//!
//! - a `conv2d`'s forward pass and weight gradient as gemms over im2col matrices
//!   `[in_channels * kh * kw, images * out_h * out_w]`, a group of images at a time whose matrix
//!   stays in cache (1 MiB; a weight gradient's groups also span at least 1,024 output pixels, and
//!   their partial gradients are summed), or, where one image's matrix exceeds 8 MiB, bands of
//!   about 512 output pixels in parallel; its input gradient, for strided convolutions, with the
//!   transposed convolution below, for stride-1 convolutions on planes of 256^2 pixels or more
//!   (where col2im costs more than an im2col) as the im2col `conv2d` of the output gradient with
//!   the flipped weight, for a convolution to one pixel over its whole unpadded input (a
//!   discriminator's last layer) as one matrix product, and otherwise with flex's own (gemm +
//!   col2im);
//! - a strided `conv_transpose2d`'s forward pass as a gemm per image and group of output
//!   channels (about 1 MiB of columns, read back while in cache) followed by a col2im that
//!   builds each output row one stride phase at a time from contiguous vector adds (flex's
//!   col2im adds element by element into strided pixels), and one from one-pixel images (a
//!   generator's first layer, from the latent) as one matrix product `[N, C] x [C, O kh kw]`
//!   (flex: a matrix-vector product per image, then its col2im); its input gradient with the
//!   im2col `conv2d` above and its weight gradient as gemms against the im2col of the output
//!   gradient, grouped the same way. The forward pass takes this route with or without
//!   autodiff (inference too).
//!
//! Every other device (wgpu, CUDA), dtype (f16, bf16) and every grouped convolution takes burn's
//! own operations, as does a pointwise (1x1, stride 1, unpadded) `conv2d` recording no gradient
//! (flex multiplies those in place), so model code stays backend-generic and gives the same
//! values everywhere.

mod autodiff;
mod flex;
mod layers;

pub use layers::{conv_transpose2d_layer, conv2d_layer, conv2d_with_weight};

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, DispatchDevice, backend_extension};
use burn::tensor::module;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{DType, Device, Tensor};

/// The backend operations behind [`conv2d`] and [`conv_transpose2d`] (no bias: it is added as a
/// broadcast tensor, whose gradient burn derives).
#[backend_extension(Flex, Autodiff)]
pub trait GemmConvBackend: Backend {
    /// `conv2d(x, weight)` without bias.
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// The gradient of [`GemmConvBackend::gemm_conv2d`] with respect to its input.
    fn gemm_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// The gradient of [`GemmConvBackend::gemm_conv2d`] with respect to its weight.
    fn gemm_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }

    /// `conv_transpose2d(x, weight)` without bias.
    fn gemm_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv_transpose2d(x, weight, None, options)
    }

    /// The gradient of [`GemmConvBackend::gemm_conv_transpose2d`] with respect to its weight.
    fn gemm_conv_transpose2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv_transpose2d_weight_backward(x, weight, output_grad, options)
    }
}

/// `burn::tensor::module::conv2d`, through [`GemmConvBackend`] on flex devices.
///
/// ```
/// use avatar_core::burn::tensor::{Device, Tensor, ops::ConvOptions};
/// let device = Device::flex();
/// let x = Tensor::<4>::ones([1, 2, 4, 4], &device);
/// let weight = Tensor::<4>::ones([3, 2, 2, 2], &device);
/// let y = avatar_core::gemm_conv::conv2d(x, weight, None, ConvOptions::new([2, 2], [0, 0], [1, 1], 1));
/// assert_eq!(y.dims(), [1, 3, 2, 2]);
/// assert_eq!(y.into_data().to_vec::<f32>().unwrap(), vec![8.0; 12]);
/// ```
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let [_, _, kh, kw] = weight.dims();
    let [_, _, h, w] = x.dims();
    let fits = [(h, kh), (w, kw)]
        .into_iter()
        .zip(options.padding)
        .zip(options.dilation)
        .all(|(((size, kernel), (begin, end)), dilation)| {
            size + begin + end > dilation * (kernel - 1)
        });
    let pointwise = [kh, kw] == [1, 1]
        && options.stride == [1, 1]
        && options.padding == [(0, 0), (0, 0)]
        && !x.device().is_autodiff();
    if options.groups != 1 || !fits || pointwise || !takes_gemm_path(&x, &weight) {
        return module::conv2d(x, weight, bias, options);
    }
    let y = Tensor::from_dispatch(<burn::backend::Dispatch as GemmConvBackend>::gemm_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ));
    add_bias(y, bias)
}

/// `burn::tensor::module::conv_transpose2d`, through [`GemmConvBackend`] on flex devices (with
/// or without autodiff).
pub fn conv_transpose2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvTransposeOptions<2>,
) -> Tensor<4> {
    // The input gradient is a `conv2d` landing on the input's size when `padding_out < stride`.
    let lands = (0..2).all(|axis| options.padding_out[axis] < options.stride[axis]);
    if options.groups != 1 || !lands || !takes_gemm_path(&x, &weight) {
        return module::conv_transpose2d(x, weight, bias, options);
    }
    let y = Tensor::from_dispatch(
        <burn::backend::Dispatch as GemmConvBackend>::gemm_conv_transpose2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            options,
        ),
    );
    add_bias(y, bias)
}

/// f32 tensors on a flex device (with or without autodiff).
fn takes_gemm_path(x: &Tensor<4>, weight: &Tensor<4>) -> bool {
    is_flex(&x.device()) && x.dtype() == DType::F32 && weight.dtype() == DType::F32
}

pub(crate) fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

fn add_bias(y: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    match bias {
        Some(bias) => {
            let [channels] = bias.dims();
            y + bias.reshape([1, channels, 1, 1])
        }
        None => y,
    }
}

#[cfg(test)]
mod tests;
