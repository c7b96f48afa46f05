//! Nearest-neighbour upsampling followed by a 3x3 convolution (Keras' `UpSampling2D -> Conv2D`),
//! computed as one transposed convolution. (The same rewrite of diffusers' / taming's 2x
//! `Upsample2D` measured no gain on flex's own transposed convolution, whose element-by-element
//! col2im ate the saved multiply-adds, so the diffusion and VQGAN models keep the direct path;
//! not re-measured since `gemm_conv`'s phased col2im.)

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{ConvTransposeOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, TensorData};

use super::inference::FoldedLayer;

/// Nearest-neighbour upsampling by an integer factor (Keras `UpSampling2D`): output pixel `i`
/// copies input pixel `floor(i / factor)`. Uses the backend's interpolation kernel, 4x faster on
/// flex than materialising `expand` + `reshape`.
pub fn upsample_nearest(x: Tensor<4>, factor: usize) -> Tensor<4> {
    if factor == 1 {
        return x;
    }
    let [_, _, h, w] = x.dims();
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Nearest)
            .with_output_size([h * factor, w * factor]),
    )
}

/// `conv(upsample_nearest(x, factor))` for a 3x3 'same' convolution, computed on the small input
/// as one transposed convolution (stride `s` = `factor`, kernel `s + 2`, padding 1): output pixel
/// `s i + r` only sees input pixels `i + floor((r + dy) / s)` for the taps `dy` = -1, 0, 1, so
/// the taps that land on the same input pixel are summed into the transposed kernel. 2.25x
/// (`s` = 2) to 4x (`s` = 4) fewer multiply-adds than convolving the upsampled image, which is
/// never materialised; the same numbers up to float rounding (the summed taps). Other
/// convolutions take the direct path.
pub fn upsample_conv(x: Tensor<4>, conv: &Conv2d, factor: usize) -> Tensor<4> {
    FoldedLayer::upsample_conv(conv, factor, None).forward(x)
}

/// Whether `conv` is a 3x3 stride-1 convolution with one pixel of padding (Keras `same`).
pub(super) fn is_same_3x3(conv: &Conv2d) -> bool {
    conv.kernel_size == [3, 3]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(
            conv.padding,
            PaddingConfig2d::Same | PaddingConfig2d::Explicit(1, 1, 1, 1)
        )
}

/// The transposed convolution (kernel `[in, out, s + 2, s + 2]` and its options) equal to the
/// 3x3 'same' convolution `weight` `[out, in, 3, 3]` of the `factor`x upsampled input, as
/// described at [`upsample_conv`]: per channel pair, the 9 taps times a 0/1 matrix
/// `[9, (s+2)²]` that sums the taps landing on the same input pixel.
pub(super) fn transposed_kernel(
    weight: Tensor<4>,
    factor: usize,
) -> (Tensor<4>, ConvTransposeOptions<2>) {
    let s = factor as i64;
    let size = factor + 2;
    // Transposed-kernel position t (per axis) holds the output phase r = t - 1 + s o reading
    // input offset o; tap k (dy = k - 1) of phase r reads offset floor((r + k - 1) / s).
    let lands = |t: usize, k: usize| {
        let d = t as i64 - 1;
        let (offset, phase) = (-d.div_euclid(s), d.rem_euclid(s));
        (phase + k as i64 - 1).div_euclid(s) == offset
    };
    let mut sum = vec![0f32; 9 * size * size];
    for (ky, kx) in (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))) {
        for (ty, tx) in (0..size).flat_map(|ty| (0..size).map(move |tx| (ty, tx))) {
            if lands(ty, ky) && lands(tx, kx) {
                sum[(ky * 3 + kx) * size * size + ty * size + tx] = 1.0;
            }
        }
    }
    let [out_channels, in_channels, _, _] = weight.dims();
    let sum = Tensor::<2>::from_data(TensorData::new(sum, [9, size * size]), &weight.device())
        .cast(weight.dtype());
    let kernel = weight
        .reshape([out_channels * in_channels, 9])
        .matmul(sum)
        .reshape([out_channels, in_channels, size, size])
        .swap_dims(0, 1);
    (
        kernel,
        ConvTransposeOptions::new([factor, factor], [1, 1], [0, 0], [1, 1], 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Device;
    use burn::tensor::Distribution;

    #[test]
    fn transposed_convolution_equals_convolving_the_upsampled_image() {
        let device = Device::default();
        for (factor, (h, w)) in [(1, (5, 4)), (2, (5, 3)), (3, (4, 6)), (4, (3, 5))] {
            let conv = Conv2dConfig::new([3, 5], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device);
            let x = Tensor::<4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
            let direct = conv.forward(upsample_nearest(x.clone(), factor));
            let phased = upsample_conv(x, &conv, factor);
            assert_eq!(phased.dims(), direct.dims());
            let error = (phased - direct).abs().max().into_scalar::<f32>();
            assert!(error < 1e-5, "factor {factor}: {error}");
        }
        // Anything but a 3x3 'same' convolution takes the direct path (through `gemm_conv`:
        // the same result up to summation order).
        let valid = Conv2dConfig::new([3, 2], [3, 3]).init(&device);
        let x = Tensor::<4>::random([1, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let direct = valid.forward(upsample_nearest(x.clone(), 2));
        let fallback = upsample_conv(x, &valid, 2);
        assert_eq!(fallback.dims(), direct.dims());
        let error = (fallback - direct).abs().max().into_scalar::<f32>();
        assert!(error < 1e-5, "direct path: {error}");
    }
}
