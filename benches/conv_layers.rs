//! The discriminator's strided convolutions (k4, stride 2, pad 1, batch 32, the 128 px widths)
//! on flex, one operation at a time: the forward pass, the input gradient and the weight gradient
//! as burn's autodiff computes them, plus a gemm rewrite of the forward pass (space-to-depth, one
//! matmul over all taps, four shifted adds) that shows how much of flex's `conv2d` is not gemm;
//! and both forms under autodiff (forward, then both gradients), as a training step runs them.
//!
//! `cargo bench -p avatar-core --bench conv_layers` (`benches/compare_conv.py` times the same
//! operations in PyTorch and prints both).

use avatar_core::DeviceSpec;
use burn::tensor::module::{conv_transpose2d, conv2d, conv2d_weight_backward};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions, PadMode};
use burn::tensor::{Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// (input channels, output channels, input size); the first layer's RGBA input carries the zero
/// fifth channel `dcgan::small_channels` adds.
const LAYERS: [(usize, usize, usize); 4] =
    [(5, 32, 128), (32, 64, 64), (64, 128, 32), (128, 256, 16)];
const BATCH: usize = 32;

fn read_back(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().expect("f32")
}

/// `x` padded by one and rearranged so that a k4 stride-2 convolution becomes a k2 stride-1 one
/// over four times the channels: `[n, c, h + 2, w + 2] -> [n, 4c, h / 2 + 1, w / 2 + 1]`.
fn space_to_depth(x: Tensor<4>) -> Tensor<4> {
    let x = x.pad((1, 1, 1, 1), PadMode::Constant(0.0));
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / 2, 2, w / 2, 2])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([n, c * 4, h / 2, w / 2])
}

/// The k4 stride-2 weight `[out, in, 4, 4]` as the four taps of the k2 stride-1 convolution over
/// [`space_to_depth`], stacked for one matmul: `[4 * out, 4 * in]`.
fn tap_matrix(weight: Tensor<4>) -> Tensor<2> {
    let [out, cin, ..] = weight.dims();
    weight
        .reshape([out, cin, 2, 2, 2, 2])
        .permute([2, 4, 0, 1, 3, 5])
        .reshape([4 * out, 4 * cin])
}

/// The k4 stride-2 pad-1 convolution as one matmul over all taps and four shifted adds.
fn gemm_conv(x: Tensor<4>, taps: &Tensor<2>) -> Tensor<4> {
    let x = space_to_depth(x);
    let [n, c4, h, w] = x.dims();
    let out = taps.dims()[0] / 4;
    let z = taps
        .clone()
        .unsqueeze::<3>()
        .matmul(x.reshape([n, c4, h * w]))
        .reshape([n, 4 * out, h, w]);
    let tap = |t: usize, dy: usize, dx: usize| {
        z.clone()
            .slice([0..n, t * out..(t + 1) * out, dy..dy + h - 1, dx..dx + w - 1])
    };
    tap(0, 0, 0) + tap(1, 0, 1) + tap(2, 1, 0) + tap(3, 1, 1)
}

fn strided_convolutions(c: &mut Criterion) {
    let device = DeviceSpec::Cpu.device().expect("cpu");
    let random =
        |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    let transposed = ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1);
    let mut group = c.benchmark_group("discriminator_conv");
    group.sample_size(10);
    for (cin, cout, size) in LAYERS {
        let label = format!("{cin}-{cout}@{size}");
        let x = random([BATCH, cin, size, size]);
        let weight = random([cout, cin, 4, 4]);
        let grad = random([BATCH, cout, size / 2, size / 2]);
        let taps = tap_matrix(weight.clone());
        let reference = conv2d(x.clone(), weight.clone(), None, options.clone());
        let error: f32 = (gemm_conv(x.clone(), &taps) - reference.clone())
            .abs()
            .max()
            .into_scalar();
        let scale: f32 = reference.abs().max().into_scalar();
        assert!(
            error <= 1e-5 * scale,
            "gemm rewrite off by {error} (outputs up to {scale})"
        );
        group.bench_function(BenchmarkId::new("forward", &label), |b| {
            b.iter(|| read_back(conv2d(x.clone(), weight.clone(), None, options.clone())))
        });
        group.bench_function(BenchmarkId::new("input_grad", &label), |b| {
            b.iter(|| {
                read_back(conv_transpose2d(
                    grad.clone(),
                    weight.clone(),
                    None,
                    transposed.clone(),
                ))
            })
        });
        group.bench_function(BenchmarkId::new("weight_grad", &label), |b| {
            b.iter(|| {
                read_back(conv2d_weight_backward(
                    x.clone(),
                    weight.clone(),
                    grad.clone(),
                    options.clone(),
                ))
            })
        });
        group.bench_function(BenchmarkId::new("gemm_forward", &label), |b| {
            b.iter(|| read_back(gemm_conv(x.clone(), &taps)))
        });
        let autodiff = device.clone().autodiff();
        let tracked = |t: Tensor<4>| Tensor::<4>::from_data(t.into_data(), &autodiff);
        let (x, weight, grad) = (tracked(x), tracked(weight), tracked(grad));
        for (name, rewrite) in [("forward_backward", false), ("gemm_forward_backward", true)] {
            group.bench_function(BenchmarkId::new(name, &label), |b| {
                b.iter(|| {
                    let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
                    let y = if rewrite {
                        gemm_conv(x.clone(), &tap_matrix(weight.clone()))
                    } else {
                        conv2d(x.clone(), weight.clone(), None, options.clone())
                    };
                    let grads = (y * grad.clone()).sum().backward();
                    let input_grad = x.grad(&grads).expect("input gradient");
                    let weight_grad = weight.grad(&grads).expect("weight gradient");
                    (read_back(input_grad), read_back(weight_grad))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, strided_convolutions);
criterion_main!(benches);
