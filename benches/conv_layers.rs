//! The discriminator's strided convolutions (k4, stride 2, pad 1, batch 32, the 128 px widths)
//! on flex, one operation at a time: the forward pass, the input gradient and the weight gradient
//! as burn computes them, and the same through `avatar_core::gemm_conv` (im2col + gemm for
//! the forward pass and the weight gradient); then both under autodiff (forward, then both
//! gradients), as a training step runs them. Then the generator's stride-2 transposed
//! convolutions (flex's own; `gemm_conv` keeps them). Last, the stride-1 3x3 convolutions of
//! Stable Diffusion's UNet and VAE decoder and of the VQGAN decoder, flex's and `gemm_conv`'s;
//! at the VQGAN shapes also the input gradient alone (flex's transposed convolution against a
//! convolution with the flipped weight) and under autodiff with a frozen weight.
//!
//! `cargo bench -p avatar-core --bench conv_layers` (`benches/compare_conv.py` times the same
//! operations in PyTorch and prints both).

use avatar_core::DeviceSpec;
use avatar_core::gemm_conv::{self, GemmConvBackend};
use burn::backend::Dispatch;
use burn::tensor::module::{conv_transpose2d, conv2d, conv2d_weight_backward};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Distribution, Tensor};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};

/// (input channels, output channels, input size).
const LAYERS: [(usize, usize, usize); 4] =
    [(4, 32, 128), (32, 64, 64), (64, 128, 32), (128, 256, 16)];
const BATCH: usize = 32;

fn read_back(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().expect("f32")
}

/// burn's `conv2d`, then `gemm_conv`'s, under autodiff: the forward pass, then both gradients
/// of `sum(y * grad)`, as a training step runs them.
fn bench_forward_backward(
    group: &mut BenchmarkGroup<'_, WallTime>,
    label: &str,
    [x, weight, grad]: [Tensor<4>; 3],
    options: &ConvOptions<2>,
) {
    let autodiff = x.device().autodiff();
    let tracked = |t: Tensor<4>| Tensor::<4>::from_data(t.into_data(), &autodiff);
    let (x, weight, grad) = (tracked(x), tracked(weight), tracked(grad));
    for (name, gemm) in [("forward_backward", false), ("gemm_forward_backward", true)] {
        group.bench_function(BenchmarkId::new(name, label), |b| {
            b.iter(|| {
                let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
                let y = if gemm {
                    gemm_conv::conv2d(x.clone(), weight.clone(), None, options.clone())
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

/// `gemm_conv`'s `conv2d` under autodiff with a frozen weight, as VQGAN+CLIP runs its decoder:
/// the forward pass, then the input gradient of `sum(y * grad)` alone.
fn bench_forward_input_grad(
    group: &mut BenchmarkGroup<'_, WallTime>,
    label: &str,
    [x, weight, grad]: [&Tensor<4>; 3],
    options: &ConvOptions<2>,
) {
    let autodiff = x.device().autodiff();
    let tracked = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &autodiff);
    let (x, weight, grad) = (tracked(x), tracked(weight), tracked(grad));
    group.bench_function(BenchmarkId::new("gemm_forward_input_grad", label), |b| {
        b.iter(|| {
            let x = x.clone().require_grad();
            let y = gemm_conv::conv2d(x.clone(), weight.clone(), None, options.clone());
            let grads = (y * grad.clone()).sum().backward();
            read_back(x.grad(&grads).expect("input gradient"))
        })
    });
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
        group.bench_function(BenchmarkId::new("forward", &label), |b| {
            b.iter(|| read_back(conv2d(x.clone(), weight.clone(), None, options.clone())))
        });
        group.bench_function(BenchmarkId::new("gemm_forward", &label), |b| {
            b.iter(|| {
                read_back(gemm_conv::conv2d(
                    x.clone(),
                    weight.clone(),
                    None,
                    options.clone(),
                ))
            })
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
        group.bench_function(BenchmarkId::new("gemm_input_grad", &label), |b| {
            b.iter(|| {
                read_back(Tensor::from_dispatch(
                    <Dispatch as GemmConvBackend>::gemm_conv2d_x_backward(
                        x.clone().into_dispatch(),
                        weight.clone().into_dispatch(),
                        grad.clone().into_dispatch(),
                        options.clone(),
                    ),
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
        group.bench_function(BenchmarkId::new("gemm_weight_grad", &label), |b| {
            b.iter(|| {
                read_back(Tensor::from_dispatch(
                    <Dispatch as GemmConvBackend>::gemm_conv2d_weight_backward(
                        x.clone().into_dispatch(),
                        weight.clone().into_dispatch(),
                        grad.clone().into_dispatch(),
                        options.clone(),
                    ),
                ))
            })
        });
        bench_forward_backward(&mut group, &label, [x, weight, grad], &options);
    }
    group.finish();
}

/// The generator's stride-2 transposed convolutions (k4, pad 1, batch 32, the 128 px widths):
/// input channels, output channels, input size.
const TRANSPOSED_LAYERS: [(usize, usize, usize); 4] =
    [(256, 128, 8), (128, 64, 16), (64, 32, 32), (32, 3, 64)];

fn transposed_convolutions(c: &mut Criterion) {
    let device = DeviceSpec::Cpu.device().expect("cpu");
    let random =
        |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let options = ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1);
    let mut group = c.benchmark_group("generator_conv_transpose");
    group.sample_size(10);
    for (cin, cout, size) in TRANSPOSED_LAYERS {
        let label = format!("{cin}-{cout}@{size}");
        let x = random([BATCH, cin, size, size]);
        let weight = random([cin, cout, 4, 4]);
        group.bench_function(BenchmarkId::new("forward", &label), |b| {
            b.iter(|| {
                read_back(conv_transpose2d(
                    x.clone(),
                    weight.clone(),
                    None,
                    options.clone(),
                ))
            })
        });
        group.bench_function(BenchmarkId::new("gemm_forward", &label), |b| {
            b.iter(|| {
                read_back(Tensor::from_dispatch(
                    <Dispatch as GemmConvBackend>::gemm_conv_transpose2d(
                        x.clone().into_dispatch(),
                        weight.clone().into_dispatch(),
                        options.clone(),
                    ),
                ))
            })
        });
    }
    group.finish();
}

/// The stride-1 3x3 convolutions of Stable Diffusion 1.5's UNet (batch 2, a 32x32 latent) and
/// VAE decoder (batch 1, 64x64 latent -> 512 px), forward only: batch, channels, size.
const DIFFUSION_LAYERS: [(usize, usize, usize); 8] = [
    (2, 320, 32),
    (2, 640, 16),
    (2, 1280, 8),
    (2, 1280, 4),
    (1, 512, 64),
    (1, 512, 128),
    (1, 256, 256),
    (1, 128, 512),
];

/// The VQGAN decoder's stride-1 3x3 convolutions at 256 px (batch 1), forward and under
/// autodiff (VQGAN+CLIP differentiates through the decoder every iteration).
const VQGAN_LAYERS: [(usize, usize, usize); 3] = [(1, 512, 16), (1, 256, 64), (1, 128, 256)];

fn same_size_convolutions(c: &mut Criterion) {
    let device = DeviceSpec::Cpu.device().expect("cpu");
    let random =
        |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let mut group = c.benchmark_group("conv3x3");
    group.sample_size(10);
    let layers = DIFFUSION_LAYERS.iter().map(|&layer| (layer, false));
    for ((batch, channels, size), backward) in
        layers.chain(VQGAN_LAYERS.iter().map(|&layer| (layer, true)))
    {
        let label = format!("{batch}x{channels}@{size}");
        let x = random([batch, channels, size, size]);
        let weight = random([channels, channels, 3, 3]);
        let bias = random([1, channels, 1, 1]).reshape([channels]);
        for (name, gemm) in [("forward", false), ("gemm_forward", true)] {
            group.bench_function(BenchmarkId::new(name, &label), |b| {
                b.iter(|| {
                    let (x, w, bias) = (x.clone(), weight.clone(), Some(bias.clone()));
                    read_back(if gemm {
                        gemm_conv::conv2d(x, w, bias, options.clone())
                    } else {
                        conv2d(x, w, bias, options.clone())
                    })
                })
            });
        }
        if !backward {
            continue;
        }
        let grad = random([batch, channels, size, size]);
        // The input gradient alone: flex's (a transposed convolution, gemm + col2im), then
        // `gemm_conv`'s (a convolution with the channel-transposed, flipped weight).
        let transposed = ConvTransposeOptions::new([1, 1], [1, 1], [0, 0], [1, 1], 1);
        group.bench_function(BenchmarkId::new("input_grad", &label), |b| {
            b.iter(|| {
                let (grad, w) = (grad.clone(), weight.clone());
                read_back(conv_transpose2d(grad, w, None, transposed.clone()))
            })
        });
        group.bench_function(BenchmarkId::new("gemm_input_grad", &label), |b| {
            b.iter(|| {
                let flipped = weight.clone().swap_dims(0, 1).flip([2, 3]);
                read_back(gemm_conv::conv2d(
                    grad.clone(),
                    flipped,
                    None,
                    options.clone(),
                ))
            })
        });
        bench_forward_input_grad(&mut group, &label, [&x, &weight, &grad], &options);
        bench_forward_backward(&mut group, &label, [x, weight, grad], &options);
    }
    group.finish();
}

criterion_group!(
    benches,
    strided_convolutions,
    transposed_convolutions,
    same_size_convolutions
);
criterion_main!(benches);
