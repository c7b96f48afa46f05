//! The gemm path against burn's own convolutions: values and all three gradients.

use burn::tensor::module;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Tensor, TensorData, Tolerance};

use super::{conv_transpose2d, conv2d};
use crate::seed::NormalStream;

/// `(output, d input, d weight, d bias)` of `loss = sum(y^2)`.
type Gradients = (TensorData, TensorData, TensorData, TensorData);

/// Equal up to summation order: within 1e-4 relative, or 1e-5 of the largest magnitude (sums of
/// thousands of products differ by more than 2e-4 on their small elements). Over 60 seeds of the
/// two gradient tests the largest difference outside 1e-4 relative was 0.08 of this bound.
fn close(ours: &Gradients, burns: &Gradients) {
    let pairs = [
        (&ours.0, &burns.0),
        (&ours.1, &burns.1),
        (&ours.2, &burns.2),
        (&ours.3, &burns.3),
    ];
    for (ours, burns) in pairs {
        let largest = burns.iter::<f32>().fold(0.0f32, |m, v| m.max(v.abs()));
        let tolerance = Tolerance::<f32>::absolute((1e-5 * largest).max(2e-4)).set_relative(1e-4);
        ours.assert_approx_eq(burns, tolerance);
    }
}

fn gradients(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    forward: impl Fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4>,
) -> Gradients {
    let (x, weight, bias) = (x.require_grad(), weight.require_grad(), bias.require_grad());
    let y = forward(x.clone(), weight.clone(), bias.clone());
    let grads = (y.clone() * y.clone()).sum().backward();
    (
        y.into_data(),
        x.grad(&grads).expect("x gradient").into_data(),
        weight.grad(&grads).expect("weight gradient").into_data(),
        bias.grad(&grads).expect("bias gradient").into_data(),
    )
}

#[test]
fn conv2d_matches_burn_with_gradients() {
    let device = Device::flex().autodiff();
    let mut normal = NormalStream::new(41);
    // (batch, in, out, size (h, w), kernel, stride, padding, dilation); then uneven padding
    let cases = [
        (3, 4, 8, [16, 16], [4, 4], [2, 2], [1, 1], [1, 1]), // DCGAN discriminator stage
        (1, 5, 6, [17, 15], [4, 4], [2, 2], [1, 1], [1, 1]), // one image, odd sizes
        (2, 3, 4, [10, 11], [3, 3], [3, 2], [2, 0], [1, 1]),
        (2, 5, 6, [9, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
        (2, 3, 4, [11, 10], [3, 2], [2, 3], [0, 2], [1, 1]),
        (1, 2, 3, [12, 12], [3, 3], [1, 2], [2, 1], [2, 2]),
        (4, 16, 1, [4, 4], [4, 4], [1, 1], [0, 0], [1, 1]), // discriminator output
        (3, 6, 2, [5, 3], [5, 3], [2, 2], [0, 0], [1, 1]),  // one output pixel, strided
        (3, 16, 8, [64, 64], [4, 4], [2, 2], [1, 1], [1, 1]), // 1 MiB im2col: a group per image
        (4, 2, 3, [32, 32], [3, 3], [1, 1], [1, 1], [1, 1]), // 4 images of 32^2 in one group
        (2, 64, 4, [130, 90], [3, 3], [1, 2], [1, 1], [1, 1]), // 13 MiB per image: bands of rows
        (2, 3, 4, [4, 5], [3, 3], [1, 1], [8, 8], [8, 8]),  // U²-Net: taps wholly in the padding
        (2, 3, 4, [6, 7], [1, 1], [1, 1], [1, 1], [1, 1]),  // padded 1x1: a border of bias alone
        // 256^2 planes: the input gradient as a convolution with the flipped weight
        (1, 3, 4, [256, 256], [3, 3], [1, 1], [1, 1], [1, 1]),
        (1, 2, 3, [260, 256], [3, 5], [1, 1], [0, 2], [1, 1]),
    ];
    let cases = cases.map(|(n, cin, cout, size, kernel, stride, padding, dilation)| {
        let options = ConvOptions::new(stride, padding, dilation, 1);
        (n, cin, cout, size, kernel, options)
    });
    let uneven = ConvOptions::new_with_padding([2, 1], [(0, 2), (1, 0)], [1, 1], 1);
    let uneven_stride_one = ConvOptions::new_with_padding([1, 1], [(0, 2), (2, 1)], [1, 2], 1);
    for (n, cin, cout, [h, w], kernel, options) in cases.into_iter().chain([
        (2, 3, 5, [8, 9], [3, 3], uneven),
        (2, 3, 5, [8, 9], [3, 3], uneven_stride_one),
    ]) {
        let x = normal.tensor([n, cin, h, w], &device);
        let weight = normal.tensor([cout, cin, kernel[0], kernel[1]], &device);
        let bias = normal.tensor([cout], &device);
        let ours = gradients(x.clone(), weight.clone(), bias.clone(), |x, w, b| {
            conv2d(x, w, Some(b), options.clone())
        });
        let burns = gradients(x, weight, bias, |x, w, b| {
            module::conv2d(x, w, Some(b), options.clone())
        });
        close(&ours, &burns);
    }
}

#[test]
fn conv_transpose2d_matches_burn_with_gradients() {
    let device = Device::flex().autodiff();
    let mut normal = NormalStream::new(42);
    // (batch, in, out, size, kernel, stride, padding, output padding, dilation)
    let cases = [
        (3, 8, 4, [8, 8], [4, 4], [2, 2], [1, 1], [0, 0], [1, 1]), // DCGAN generator stage
        (2, 10, 6, [1, 1], [6, 6], [1, 1], [0, 0], [0, 0], [1, 1]), // latent projection
        (3, 5, 4, [1, 1], [4, 3], [2, 3], [0, 0], [0, 0], [1, 1]), // one pixel: stride unused
        (2, 5, 4, [1, 1], [4, 4], [2, 2], [1, 1], [0, 0], [1, 1]), // one pixel, padded: phased
        (2, 3, 5, [5, 6], [3, 3], [2, 2], [1, 1], [1, 1], [1, 1]),
        (1, 4, 3, [4, 5], [3, 2], [3, 2], [1, 0], [2, 1], [2, 1]),
        (3, 8, 16, [32, 32], [4, 4], [2, 2], [1, 1], [0, 0], [1, 1]), // a group per image
        (1, 6, 4, [7, 9], [4, 4], [2, 2], [1, 1], [1, 0], [1, 1]), // one image: channels in parallel
        (2, 3, 4, [5, 4], [1, 2], [2, 3], [0, 0], [1, 2], [1, 1]), // phases without taps: zeros
        (2, 3, 4, [6, 5], [5, 3], [3, 2], [2, 1], [0, 1], [1, 1]),
        (2, 3, 4, [4, 5], [5, 5], [3, 3], [1, 1], [0, 0], [1, 1]), // seed Keras x3 upsampling
        (1, 2, 3, [3, 4], [6, 6], [4, 4], [1, 1], [0, 0], [1, 1]), // seed Keras x4 upsampling
        (2, 3, 4, [6, 6], [2, 2], [2, 2], [2, 2], [0, 0], [1, 1]), // beyond the taps' reach: flex's
    ];
    for (n, cin, cout, [h, w], kernel, stride, padding, padding_out, dilation) in cases {
        let x = normal.tensor([n, cin, h, w], &device);
        let weight = normal.tensor([cin, cout, kernel[0], kernel[1]], &device);
        let bias = normal.tensor([cout], &device);
        let options = ConvTransposeOptions::new(stride, padding, padding_out, dilation, 1);
        let ours = gradients(x.clone(), weight.clone(), bias.clone(), |x, w, b| {
            conv_transpose2d(x, w, Some(b), options.clone())
        });
        let burns = gradients(x, weight, bias, |x, w, b| {
            module::conv_transpose2d(x, w, Some(b), options.clone())
        });
        close(&ours, &burns);
    }
}

#[test]
fn grouped_and_untracked_convolutions_give_burns_values() {
    let device = Device::flex();
    let mut normal = NormalStream::new(43);
    let x = normal.tensor([2, 4, 9, 9], &device);
    let grouped = ConvOptions::new([2, 2], [1, 1], [1, 1], 2);
    let weight = normal.tensor([6, 2, 3, 3], &device);
    conv2d(x.clone(), weight.clone(), None, grouped.clone())
        .into_data()
        .assert_eq(
            &module::conv2d(x.clone(), weight, None, grouped).into_data(),
            true,
        );
    // No autodiff: the plain forward of both.
    let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    let weight = normal.tensor([3, 4, 4, 4], &device);
    conv2d(x.clone(), weight.clone(), None, options.clone())
        .into_data()
        .assert_approx_eq::<f32>(
            &module::conv2d(x.clone(), weight, None, options).into_data(),
            Tolerance::absolute(1e-4),
        );
    // Transposed: strided (phased col2im), and from one pixel (one matrix product).
    let up = ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1);
    let weight = normal.tensor([4, 3, 4, 4], &device);
    let latent = normal.tensor([3, 4, 1, 1], &device);
    let project = ConvTransposeOptions::new([1, 1], [0, 0], [0, 0], [1, 1], 1);
    for (x, options) in [(x, up), (latent, project)] {
        conv_transpose2d(x.clone(), weight.clone(), None, options.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &module::conv_transpose2d(x, weight.clone(), None, options).into_data(),
                Tolerance::absolute(1e-4),
            );
    }
}

#[test]
fn a_frozen_weight_or_input_gets_no_gradient_and_the_other_does() {
    let device = Device::flex().autodiff();
    let mut normal = NormalStream::new(44);
    let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    let x = normal.tensor([2, 3, 8, 8], &device).require_grad();
    let weight = normal.tensor([4, 3, 4, 4], &device);
    let grads = conv2d(x.clone(), weight.clone(), None, options.clone())
        .sum()
        .backward();
    assert!(x.grad(&grads).is_some());
    assert!(weight.grad(&grads).is_none());
    let weight = weight.require_grad();
    let x = Tensor::<4>::from_data(x.into_data(), &device);
    let grads = conv2d(x.clone(), weight.clone(), None, options)
        .sum()
        .backward();
    assert!(weight.grad(&grads).is_some());
    assert!(x.grad(&grads).is_none());
}

#[test]
fn flex_devices_take_the_gemm_path_with_or_without_autodiff() {
    assert!(super::is_flex(&Device::flex()));
    assert!(super::is_flex(&Device::flex().autodiff()));
}
