//! Convolutions with an image (four or fewer channels) on one side, given one zero channel.
//!
//! flex, burn's CPU backend, runs a `conv2d` with at most 4 input and 16 output channels on a
//! direct scalar loop instead of its im2col + gemm path (a heuristic for 3-channel filters); at
//! stride 2 that loop does not vectorise. Our discriminator's first layer (RGBA -> 16, stride 2)
//! is such a convolution, and so is the input gradient of the generator's last transposed
//! convolution (16 -> RGBA): together about a quarter of a training step's time in a `perf`
//! profile. One zero channel on the image side leaves every value and every gradient unchanged
//! and sends both to gemm.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::tensor::Tensor;
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions, PadMode};

/// Image-side channel count from which flex takes its gemm path.
const GEMM_CHANNELS: usize = 5;

/// `conv.forward(x)`, with zero input channels added up to [`GEMM_CHANNELS`].
pub(super) fn conv2d_image(x: Tensor<4>, conv: &Conv2d) -> Tensor<4> {
    let [_, channels, ..] = x.dims();
    if channels >= GEMM_CHANNELS || conv.groups != 1 {
        return conv.forward(x);
    }
    conv2d_with_weight(x, conv, conv.weight.val())
}

/// `conv.forward(x)` computed with `weight` in place of the layer's own (e.g. spectrally
/// normalised), keeping gradients to both; zero input channels added up to [`GEMM_CHANNELS`].
pub(super) fn conv2d_with_weight(x: Tensor<4>, conv: &Conv2d, weight: Tensor<4>) -> Tensor<4> {
    let [_, _, kh, kw] = weight.dims();
    let [_, _, h, w] = x.dims();
    let [(top, bottom), (left, right)] = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => [
            same_padding(h, kh, conv.stride[0], conv.dilation[0]),
            same_padding(w, kw, conv.stride[1], conv.dilation[1]),
        ],
    };
    let (x, padding) = if top == bottom && left == right {
        (x, [top, left])
    } else {
        (
            x.pad((left, right, top, bottom), PadMode::Constant(0.0)),
            [0, 0],
        )
    };
    let [n, channels, h, w] = x.dims();
    let (x, weight) = if channels < GEMM_CHANNELS && conv.groups == 1 {
        let extra = GEMM_CHANNELS - channels;
        let device = x.device();
        let [out, ..] = weight.dims();
        (
            Tensor::cat(vec![x, Tensor::zeros([n, extra, h, w], &device)], 1),
            Tensor::cat(
                vec![weight, Tensor::zeros([out, extra, kh, kw], &device)],
                1,
            ),
        )
    } else {
        (x, weight)
    };
    conv2d(
        x,
        weight,
        conv.bias.as_ref().map(|b| b.val()),
        ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups),
    )
}

/// `(before, after)` padding that keeps `ceil(size / stride)` outputs (TensorFlow's "same").
fn same_padding(size: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let outputs = size.div_ceil(stride);
    let span = (kernel - 1) * dilation + 1;
    let total = ((outputs - 1) * stride + span).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// `conv.forward(x)`, with zero output channels up to [`GEMM_CHANNELS`] (dropped from the result)
/// when gradients are recorded: only the backward pass (a `conv2d` from the output side) needs
/// them.
pub(super) fn conv_transpose2d_image(x: Tensor<4>, conv: &ConvTranspose2d) -> Tensor<4> {
    let weight = conv.weight.val();
    let [inputs, channels, kh, kw] = weight.dims();
    if channels >= GEMM_CHANNELS || conv.groups != 1 || !x.device().is_autodiff() {
        return conv.forward(x);
    }
    let extra = GEMM_CHANNELS - channels;
    let device = x.device();
    let bias = conv
        .bias
        .as_ref()
        .map(|b| Tensor::cat(vec![b.val(), Tensor::zeros([extra], &device)], 0));
    conv_transpose2d(
        x,
        Tensor::cat(
            vec![weight, Tensor::zeros([inputs, extra, kh, kw], &device)],
            1,
        ),
        bias,
        ConvTransposeOptions::new(
            conv.stride,
            conv.padding,
            conv.padding_out,
            conv.dilation,
            1,
        ),
    )
    .narrow(1, 0, channels)
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::{Conv2dConfig, ConvTranspose2dConfig};
    use burn::tensor::{Device, Distribution};

    use super::*;

    #[test]
    fn padded_convolutions_give_the_same_values_and_gradients() {
        let device = Device::default().autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        let conv = Conv2dConfig::new([4, 6], [4, 4])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let up = ConvTranspose2dConfig::new([6, 4], [4, 4])
            .with_stride([2, 2])
            .with_padding([1, 1])
            .init(&device);
        let x = Tensor::<4>::random([2, 4, 8, 8], normal, &device).require_grad();
        let gradients = |padded: bool| {
            let y = if padded {
                conv_transpose2d_image(conv2d_image(x.clone(), &conv), &up)
            } else {
                up.forward(conv.forward(x.clone()))
            };
            let grads = (y.clone() * y.clone()).sum().backward();
            let values = |t: Option<Tensor<4>>| t.expect("gradient").into_data();
            (
                y.into_data(),
                values(x.grad(&grads)),
                values(conv.weight.grad(&grads)),
                values(up.weight.grad(&grads)),
            )
        };
        let (plain, padded) = (gradients(false), gradients(true));
        let tolerance = burn::tensor::Tolerance::<f32>::absolute(1e-5);
        plain.0.assert_approx_eq(&padded.0, tolerance);
        plain.1.assert_approx_eq(&padded.1, tolerance);
        plain.2.assert_approx_eq(&padded.2, tolerance);
        plain.3.assert_approx_eq(&padded.3, tolerance);
    }

    #[test]
    fn a_given_weight_matches_the_layer_for_every_padding_kind() {
        let device = Device::default();
        let normal = Distribution::Normal(0.0, 1.0);
        for channels in [3, 8] {
            for padding in [
                PaddingConfig2d::Valid,
                PaddingConfig2d::Same,
                PaddingConfig2d::Explicit(1, 1, 1, 1),
                PaddingConfig2d::Explicit(0, 2, 1, 1),
            ] {
                let conv = Conv2dConfig::new([channels, 6], [3, 3])
                    .with_padding(padding.clone())
                    .init(&device);
                let x = Tensor::<4>::random([2, channels, 7, 7], normal, &device);
                let ours = conv2d_with_weight(x.clone(), &conv, conv.weight.val());
                ours.into_data().assert_approx_eq(
                    &conv.forward(x).into_data(),
                    burn::tensor::Tolerance::<f32>::absolute(1e-5),
                );
            }
        }
    }
}
