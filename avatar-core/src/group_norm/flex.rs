//! The flex implementation: one task per (image, group), whose channels are contiguous in an
//! `[N, C, L]` tensor; statistics accumulated in eight f32 lanes folded into f64.

use burn::backend::Flex;
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{GroupNormBackend, GroupNormGradient, GroupNormOptions};
use crate::vector_dispatch::{LANES, lane_sum, widest};

impl GroupNormBackend for Flex {
    fn fused_group_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        options: GroupNormOptions,
    ) -> FlexTensor {
        let shape = dims(&x);
        let [_, channels, length] = shape;
        let (x, gamma, beta) = (f32s(&x), f32s(&gamma), f32s(&beta));
        let per_group = channels / options.groups;
        // Written once, element by element, below (not zeroed first: that would be one more
        // pass over an activation-sized buffer).
        let mut output = Vec::<f32>::with_capacity(x.len());
        output.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(per_group * length)
            .zip(x.par_chunks(per_group * length))
            .enumerate()
            .for_each(|(block, (output, x))| {
                widest(
                    #[inline(always)]
                    || {
                        let first = block % options.groups * per_group;
                        let (mean, rstd) = statistics(x, options.epsilon);
                        let channels = output.chunks_mut(length).zip(x.chunks(length));
                        for (c, (output, x)) in (first..).zip(channels) {
                            // PyTorch's CPU kernel's arithmetic (`x * scale + shift`, the
                            // mean folded into the shift), which the VQGAN+CLIP Adam
                            // trajectory test follows within 1e-3 and `(x - mean) * scale +
                            // beta` does not quite (1.03e-3). It loses ~|mean| / std ulps where
                            // the mean dwarfs the spread, as PyTorch's does.
                            let scale = gamma[c] * rstd;
                            let shift = beta[c] - mean * scale;
                            if options.silu {
                                for (o, &v) in output.iter_mut().zip(x) {
                                    o.write(silu(v * scale + shift));
                                }
                            } else {
                                for (o, &v) in output.iter_mut().zip(x) {
                                    o.write(v * scale + shift);
                                }
                            }
                        }
                    },
                )
            });
        // SAFETY: the blocks above cover all `x.len()` elements, and each wrote every one of its
        // elements.
        unsafe { output.set_len(x.len()) };
        FlexTensor::from_data(TensorData::new(output, shape))
    }
}

impl GroupNormGradient for Flex {
    fn fused_group_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        grad: FlexTensor,
        options: GroupNormOptions,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = dims(&x);
        let [n, channels, length] = shape;
        let (x, gamma, beta, grad) = (f32s(&x), f32s(&gamma), f32s(&beta), f32s(&grad));
        let per_group = channels / options.groups;
        let block = per_group * length;
        let mut dx = vec![0.0f32; x.len()];
        // Per image and channel: the sums of `g * xhat` and of `g` (`g` the gradient reaching the
        // affine output), reduced over the images in order afterwards.
        let mut affine = vec![[0.0f64; 2]; n * channels];
        dx.par_chunks_mut(block)
            .zip(affine.par_chunks_mut(per_group))
            .zip(x.par_chunks(block).zip(grad.par_chunks(block)))
            .enumerate()
            .for_each(|(index, ((dx, affine), (x, grad)))| {
                widest(
                    #[inline(always)]
                    || {
                        let first = index % options.groups * per_group;
                        let (mean, rstd) = statistics(x, options.epsilon);
                        // dxhat = g * gamma, stored in `dx`; the group's sums of dxhat and dxhat * xhat.
                        let (mut sum, mut sum_xhat) = (0.0f64, 0.0f64);
                        let planes = dx
                            .chunks_mut(length)
                            .zip(x.chunks(length).zip(grad.chunks(length)));
                        for ((c, (dx, (x, grad))), affine) in
                            (first..).zip(planes).zip(affine.iter_mut())
                        {
                            // Loop invariants as locals, so that the lanes below vectorise.
                            let (scale, shift, silu) = (gamma[c], beta[c], options.silu);
                            let terms = |x: f32, g: f32| {
                                let xhat = (x - mean) * rstd;
                                let g = if silu {
                                    silu_derivative(scale * xhat + shift) * g
                                } else {
                                    g
                                };
                                let dxhat = g * scale;
                                (dxhat, [g * xhat, g, dxhat, dxhat * xhat])
                            };
                            let mut totals = [0.0f64; 4];
                            let blocks = dx
                                .chunks_mut(4096)
                                .zip(x.chunks(4096).zip(grad.chunks(4096)));
                            for (dx, (x, grad)) in blocks {
                                let mut lanes = [[0.0f32; LANES]; 4];
                                // Fixed-size chunks (no bounds checks), each chunk's terms
                                // computed as one array: the form the compiler vectorises (a
                                // loop accumulating lane by lane stayed scalar).
                                let (dx_lanes, _) = dx.as_chunks_mut::<LANES>();
                                let (x_lanes, _) = x.as_chunks::<LANES>();
                                let (g_lanes, _) = grad.as_chunks::<LANES>();
                                let chunks = dx_lanes.iter_mut().zip(x_lanes);
                                for ((dx, x), g) in chunks.zip(g_lanes) {
                                    let terms: [_; LANES] =
                                        std::array::from_fn(|lane| terms(x[lane], g[lane]));
                                    for (lane, (dxhat, terms)) in terms.into_iter().enumerate() {
                                        dx[lane] = dxhat;
                                        for (sums, t) in lanes.iter_mut().zip(terms) {
                                            sums[lane] += t;
                                        }
                                    }
                                }
                                let whole = x.len() / LANES * LANES;
                                for i in whole..x.len() {
                                    let (dxhat, terms) = terms(x[i], grad[i]);
                                    dx[i] = dxhat;
                                    for (total, t) in totals.iter_mut().zip(terms) {
                                        *total += t as f64;
                                    }
                                }
                                for (total, sums) in totals.iter_mut().zip(&lanes) {
                                    *total += sums.iter().map(|&v| v as f64).sum::<f64>();
                                }
                            }
                            *affine = [totals[0], totals[1]];
                            sum += totals[2];
                            sum_xhat += totals[3];
                        }
                        // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
                        let count = block as f64;
                        let (mean_dxhat, mean_dxhat_xhat) =
                            ((sum / count) as f32, (sum_xhat / count) as f32);
                        for (dx, &x) in dx.iter_mut().zip(x) {
                            let xhat = (x - mean) * rstd;
                            *dx = rstd * (*dx - mean_dxhat - xhat * mean_dxhat_xhat);
                        }
                    },
                )
            });
        let (mut dgamma, mut dbeta) = (vec![0.0f64; channels], vec![0.0f64; channels]);
        for image in affine.chunks(channels) {
            for ((dg, db), [g_xhat, g]) in dgamma.iter_mut().zip(&mut dbeta).zip(image) {
                *dg += g_xhat;
                *db += g;
            }
        }
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

/// The mean and `1 / sqrt(variance + epsilon)` of a group's values (two passes: the variance
/// from the deviations, not from the mean square, so that a large mean loses no precision).
#[inline(always)]
fn statistics(x: &[f32], epsilon: f64) -> (f32, f32) {
    let count = x.len().max(1) as f64;
    let mean = (lane_sum(x, |v| v) / count) as f32;
    let variance = lane_sum(x, |v| (v - mean) * (v - mean)) / count;
    (mean, (1.0 / (variance + epsilon).sqrt()) as f32)
}

/// `x * sigmoid(x)`.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `d silu(y) / dy = s (1 + y (1 - s))` with `s = sigmoid(y)`.
#[inline(always)]
fn silu_derivative(y: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-y));
    s * (1.0 + y * (1.0 - s))
}

/// `e^x` without a branch or a library call, so that loops over it vectorise: Cephes' `expf`
/// (range reduction by `ln 2` in two parts, a degree-5 polynomial, the power of two written
/// into the exponent bits); within 2.5e-7 relative of `exp` on `[-87.3, 88]`, and clamped there
/// (about 2^-126 below, e^88 above: finite, where `f32::exp` overflows past 88.7), NaN in, NaN out.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // `clamp` keeps a NaN, which then runs through to the result.
    let x = x.clamp(-87.336_55, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    y * f32::from_bits((exponent.wrapping_add(127) as u32) << 23)
}

fn dims(x: &FlexTensor) -> [usize; 3] {
    let shape = x.layout().shape();
    [shape[0], shape[1], shape[2]]
}

/// A tensor's values, contiguous (copied only when the layout is not).
fn f32s(x: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    debug_assert_eq!(x.dtype(), DType::F32);
    match x.as_slice::<f32>() {
        Some(values) => std::borrow::Cow::Borrowed(values),
        _ => std::borrow::Cow::Owned(
            x.to_contiguous()
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32"),
        ),
    }
}
