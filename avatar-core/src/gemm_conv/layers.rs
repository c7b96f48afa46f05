//! burn's convolution modules run through [`crate::gemm_conv`]: on flex, im2col + gemm for the
//! passes flex's own convolutions run slowly (same values and gradients, tested).

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::tensor::Tensor;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

/// `conv.forward(x)`: the layer's weight and bias, padding and options, through
/// [`super::conv2d`].
pub fn conv2d_layer(x: Tensor<4>, conv: &Conv2d) -> Tensor<4> {
    conv2d_with_weight(x, conv, conv.weight.val())
}

/// `conv.forward(x)` computed with `weight` in place of the layer's own (e.g. spectrally
/// normalised), keeping gradients to both.
pub fn conv2d_with_weight(x: Tensor<4>, conv: &Conv2d, weight: Tensor<4>) -> Tensor<4> {
    let [_, _, kh, kw] = weight.dims();
    let [_, _, h, w] = x.dims();
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => [
            same_padding(h, kh, conv.stride[0], conv.dilation[0]),
            same_padding(w, kw, conv.stride[1], conv.dilation[1]),
        ],
    };
    super::conv2d(
        x,
        weight,
        conv.bias.as_ref().map(|b| b.val()),
        ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups),
    )
}

/// `(before, after)` padding that keeps `ceil(size / stride)` outputs (TensorFlow's "same").
fn same_padding(size: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let outputs = size.div_ceil(stride);
    let span = (kernel - 1) * dilation + 1;
    let total = ((outputs - 1) * stride + span).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// `conv.forward(x)`, through [`super::conv_transpose2d`].
pub fn conv_transpose2d_layer(x: Tensor<4>, conv: &ConvTranspose2d) -> Tensor<4> {
    super::conv_transpose2d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        ConvTransposeOptions::new(
            conv.stride,
            conv.padding,
            conv.padding_out,
            conv.dilation,
            conv.groups,
        ),
    )
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::{Conv2dConfig, ConvTranspose2dConfig};
    use burn::tensor::{Device, Distribution};

    use super::*;

    #[test]
    fn layers_give_the_modules_values_and_gradients() {
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
        let gradients = |ours: bool| {
            let y = if ours {
                conv_transpose2d_layer(conv2d_layer(x.clone(), &conv), &up)
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
        let (modules, ours) = (gradients(false), gradients(true));
        let tolerance = burn::tensor::Tolerance::<f32>::absolute(1e-4);
        modules.0.assert_approx_eq(&ours.0, tolerance);
        modules.1.assert_approx_eq(&ours.1, tolerance);
        modules.2.assert_approx_eq(&ours.2, tolerance);
        modules.3.assert_approx_eq(&ours.3, tolerance);
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
