//! The flex implementation: tasks over the `[N, C, L]` tensor's contiguous `L`-value planes;
//! per-plane sums in eight f32 lanes folded into f64, merged per channel in f64.

use burn::backend::Flex;
use burn::tensor::TensorData;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{BatchNormBackend, BatchNormGradient, BatchNormInferenceBackend, BatchNormOptions};
use crate::vector_dispatch::{LANES, lane_sum, widest};

impl BatchNormBackend for Flex {
    fn fused_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        options: BatchNormOptions,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = dims(&x);
        let [n, channels, length] = shape;
        let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
        let (x, gamma, beta) = (f32s(&x), f32s(&gamma), f32s(&beta));
        let mut moments = vec![[0.0f64; 2]; n * channels];
        moments
            .par_iter_mut()
            .zip(x.par_chunks(length))
            .with_min_len(planes_per_task(length))
            .for_each(|(moments, x)| {
                widest(
                    #[inline(always)]
                    || *moments = plane_moments(x),
                )
            });
        let (mean, variance) = channel_statistics(&moments, channels, length);
        let affine = channel_affine(gamma, beta, &mean, &variance, options.epsilon);
        let output = normalise(x, &affine, length, options.negative_slope);
        (
            FlexTensor::from_data(TensorData::new(output, shape)),
            FlexTensor::from_data(TensorData::new(mean, [channels])),
            FlexTensor::from_data(TensorData::new(variance, [channels])),
        )
    }
}

impl BatchNormInferenceBackend for Flex {
    fn fused_batch_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        options: BatchNormOptions,
    ) -> FlexTensor {
        let shape = dims(&x);
        let [x, gamma, beta, mean, variance] = [x, gamma, beta, mean, variance].map(contiguous);
        let affine = channel_affine(
            f32s(&gamma),
            f32s(&beta),
            f32s(&mean),
            f32s(&variance),
            options.epsilon,
        );
        let output = normalise(f32s(&x), &affine, shape[2], options.negative_slope);
        FlexTensor::from_data(TensorData::new(output, shape))
    }
}

impl BatchNormGradient for Flex {
    fn fused_batch_norm_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        grad: FlexTensor,
        options: BatchNormOptions,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = dims(&x);
        let [n, channels, length] = shape;
        let [x, gamma, beta, mean, variance, grad] =
            [x, gamma, beta, mean, variance, grad].map(contiguous);
        let (x, grad) = (f32s(&x), f32s(&grad));
        let (mean, variance) = (f32s(&mean), f32s(&variance));
        let affine = channel_affine(f32s(&gamma), f32s(&beta), mean, variance, options.epsilon);
        // Each channel's constants, copied into the kernels by value (held in registers there:
        // read through a captured reference, they kept the loops scalar).
        let channel = |c: usize| ChannelGradient {
            affine: affine[c],
            mean: mean[c],
            slope: options.negative_slope,
        };
        // Per plane: the sums of `g` and `g x̂`, reduced over the images in order afterwards.
        let mut sums = vec![[0.0f64; 2]; n * channels];
        sums.par_iter_mut()
            .zip(x.par_chunks(length).zip(grad.par_chunks(length)))
            .enumerate()
            .with_min_len(planes_per_task(length))
            .for_each(|(plane, (sums, (x, grad)))| {
                widest(
                    #[inline(always)]
                    || {
                        let channel = channel(plane % channels);
                        *sums = pair_sum(x, grad, |x, dy| {
                            let (g, x_hat) = channel.terms(x, dy);
                            [g, g * x_hat]
                        });
                    },
                )
            });
        let (mut dbeta, mut dgamma) = (vec![0.0f64; channels], vec![0.0f64; channels]);
        for image in sums.chunks(channels) {
            for ((db, dg), [g, g_x_hat]) in dbeta.iter_mut().zip(&mut dgamma).zip(image) {
                *db += g;
                *dg += g_x_hat;
            }
        }
        // dx = gamma rstd (g - mean(g) - x̂ mean(g x̂)), as burn's `batch_norm_train_backward`.
        let count = (n * length) as f64;
        let mean_g: Vec<f32> = dbeta.iter().map(|&s| (s / count) as f32).collect();
        let mean_g_x_hat: Vec<f32> = dgamma.iter().map(|&s| (s / count) as f32).collect();
        let gamma = f32s(&gamma);
        let mut dx = Vec::<f32>::with_capacity(x.len());
        dx.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(length)
            .zip(x.par_chunks(length).zip(grad.par_chunks(length)))
            .enumerate()
            .with_min_len(planes_per_task(length))
            .for_each(|(plane, (dx, (x, grad)))| {
                widest(
                    #[inline(always)]
                    || {
                        let c = plane % channels;
                        let channel = channel(c);
                        let (mean_g, mean_g_x_hat) = (mean_g[c], mean_g_x_hat[c]);
                        let k = gamma[c] * channel.affine.rstd;
                        for (dx, (&x, &dy)) in dx.iter_mut().zip(x.iter().zip(grad)) {
                            let (g, x_hat) = channel.terms(x, dy);
                            dx.write(k * (g - mean_g - x_hat * mean_g_x_hat));
                        }
                    },
                )
            });
        // SAFETY: the planes above cover all `x.len()` elements, each writing every one of its own.
        unsafe { dx.set_len(x.len()) };
        let narrow = |v: Vec<f64>| {
            let v: Vec<f32> = v.into_iter().map(|v| v as f32).collect();
            FlexTensor::from_data(TensorData::new(v, [channels]))
        };
        (
            FlexTensor::from_data(TensorData::new(dx, shape)),
            narrow(dgamma),
            narrow(dbeta),
        )
    }
}

/// One channel's normalisation as `x * scale + shift`, and `1 / sqrt(variance + epsilon)`.
#[derive(Clone, Copy, Debug)]
struct Affine {
    scale: f32,
    shift: f32,
    rstd: f32,
}

/// What the backward pass needs of one channel.
#[derive(Clone, Copy, Debug)]
struct ChannelGradient {
    affine: Affine,
    mean: f32,
    slope: f32,
}

impl ChannelGradient {
    /// The gradient reaching the normalised values, `g` (the output gradient `dy` through the
    /// activation), and the normalised input `x̂`, recomputed exactly as the forward pass did.
    #[inline(always)]
    fn terms(self, x: f32, dy: f32) -> (f32, f32) {
        let z = x * self.affine.scale + self.affine.shift;
        let g = dy * if z > 0.0 { 1.0 } else { self.slope };
        (g, (x - self.mean) * self.affine.rstd)
    }
}

/// Each channel's [`Affine`] from its statistics, computed the same way in both passes so that
/// the backward pass sees the very values (and activation signs) the forward pass produced.
/// PyTorch's CPU kernel's arithmetic: the mean folded into the shift.
fn channel_affine(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    variance: &[f32],
    epsilon: f64,
) -> Vec<Affine> {
    (0..gamma.len())
        .map(|c| {
            let rstd = (1.0 / (variance[c] as f64 + epsilon).sqrt()) as f32;
            let scale = gamma[c] * rstd;
            Affine {
                scale,
                shift: beta[c] - mean[c] * scale,
                rstd,
            }
        })
        .collect()
}

/// `activate(x * scale + shift, slope)` per `length`-value plane of `x`, the planes' channels
/// cycling through `affine`.
fn normalise(x: &[f32], affine: &[Affine], length: usize, slope: f32) -> Vec<f32> {
    // Written once, element by element, below (not zeroed first: that would be one more pass
    // over an activation-sized buffer).
    let mut output = Vec::<f32>::with_capacity(x.len());
    output.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(length)
        .zip(x.par_chunks(length))
        .enumerate()
        .with_min_len(planes_per_task(length))
        .for_each(|(plane, (output, x))| {
            widest(
                #[inline(always)]
                || {
                    let Affine { scale, shift, .. } = affine[plane % affine.len()];
                    for (o, &v) in output.iter_mut().zip(x) {
                        o.write(activate(v * scale + shift, slope));
                    }
                },
            )
        });
    // SAFETY: the planes above cover all `x.len()` elements, and each wrote every one of its
    // elements.
    unsafe { output.set_len(x.len()) };
    output
}

/// `z` where positive, `slope * z` elsewhere (NaN stays NaN).
#[inline(always)]
fn activate(z: f32, slope: f32) -> f32 {
    if z > 0.0 { z } else { z * slope }
}

/// A plane's mean, and its sum of squared deviations from that mean (f64): the deviations are
/// taken from the f32-rounded mean `c` and corrected by `L (mean - c)^2`.
#[inline(always)]
fn plane_moments(x: &[f32]) -> [f64; 2] {
    let count = x.len() as f64;
    let mean = lane_sum(x, |v| v) / count;
    let centre = mean as f32;
    let squares = lane_sum(x, |v| (v - centre) * (v - centre));
    let offset = mean - centre as f64;
    [mean, (squares - count * offset * offset).max(0.0)]
}

/// Each channel's mean and biased variance from its planes' [`plane_moments`] (all planes hold
/// `length` values): Chan et al.'s merge, `M2 = Σ m2_p + L Σ (mean_p - mean)^2`.
fn channel_statistics(
    moments: &[[f64; 2]],
    channels: usize,
    length: usize,
) -> (Vec<f32>, Vec<f32>) {
    let images = moments.len() / channels;
    let plane = |n: usize, c: usize| moments[n * channels + c];
    (0..channels)
        .map(|c| {
            let mean = (0..images).map(|n| plane(n, c)[0]).sum::<f64>() / images as f64;
            let m2 = (0..images)
                .map(|n| {
                    let [plane_mean, plane_m2] = plane(n, c);
                    plane_m2 + length as f64 * (plane_mean - mean) * (plane_mean - mean)
                })
                .sum::<f64>();
            (mean as f32, (m2 / (images * length) as f64) as f32)
        })
        .unzip()
}

/// `[Σ f(x, y)[0], Σ f(x, y)[1]]` over two equally long slices, in [`LANES`] f32 lanes per
/// block of 4,096 values, each block's totals added in f64.
#[inline(always)]
fn pair_sum(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> [f32; 2]) -> [f64; 2] {
    let mut totals = [0.0f64; 2];
    for (x, y) in x.chunks(4096).zip(y.chunks(4096)) {
        let mut lanes = [[0.0f32; LANES]; 2];
        // Fixed-size chunks and a fixed-count inner loop, which the compiler unrolls and
        // vectorises (`std::array::from_fn` here was left as a call per chunk: 8% of training).
        let (x_lanes, x_tail) = x.as_chunks::<LANES>();
        let (y_lanes, y_tail) = y.as_chunks::<LANES>();
        for (x, y) in x_lanes.iter().zip(y_lanes) {
            for lane in 0..LANES {
                let [a, b] = f(x[lane], y[lane]);
                lanes[0][lane] += a;
                lanes[1][lane] += b;
            }
        }
        for (&x, &y) in x_tail.iter().zip(y_tail) {
            for (total, t) in totals.iter_mut().zip(f(x, y)) {
                *total += t as f64;
            }
        }
        for (total, sums) in totals.iter_mut().zip(&lanes) {
            *total += sums.iter().map(|&v| v as f64).sum::<f64>();
        }
    }
    totals
}

/// Planes per parallel task: at least ~4,096 values, so small planes do not become one task each.
fn planes_per_task(length: usize) -> usize {
    (4096 / length).max(1)
}

fn dims(x: &FlexTensor) -> [usize; 3] {
    let shape = x.layout().shape();
    [shape[0], shape[1], shape[2]]
}

fn contiguous(x: FlexTensor) -> FlexTensor {
    x.to_contiguous()
}

fn f32s(x: &FlexTensor) -> &[f32] {
    x.as_slice().expect("contiguous f32")
}
