//! Generators prepared for inference: each batch norm (running statistics) folded into the
//! convolution before it, and the seed's `UpSampling2D -> Conv2D` blocks rewritten as transposed
//! convolutions, once at load time instead of on every forward pass.

use burn::module::Param;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{BatchNorm, Linear};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::ConvTransposeOptions;
use burn::tensor::{Tensor, TensorData};

use super::generator::Generator;
use super::keras_upsample::KerasUpsampleGenerator;
use super::transposed::TransposedGenerator;
use super::upsample_conv::{is_same_3x3, upsample_nearest};

/// One convolution layer with its batch norm folded in.
// A handful per generator, built once: the variants' size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(super) enum FoldedLayer {
    /// `conv_transpose2d(x, weight, bias)`.
    Transposed {
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: ConvTransposeOptions<2>,
    },
    /// `conv(upsample_nearest(x, factor))`: convolutions the transposed rewrite does not cover.
    Upsampled { factor: usize, conv: Conv2d },
}

impl FoldedLayer {
    /// A transposed convolution followed by `norm` (if any).
    pub(super) fn conv_transpose(conv: &ConvTranspose2d, norm: Option<&BatchNorm>) -> Self {
        let (weight, bias) = fold(
            conv.weight.val(),
            1,
            conv.bias.as_ref().map(|b| b.val()),
            norm,
        );
        FoldedLayer::Transposed {
            weight,
            bias,
            options: ConvTransposeOptions::new(
                conv.stride,
                conv.padding,
                conv.padding_out,
                conv.dilation,
                conv.groups,
            ),
        }
    }

    /// `UpSampling2D(factor) -> conv -> norm`. A 3x3 'same' convolution becomes one transposed
    /// convolution on the small input (see [`super::upsample_conv`]); any other convolution
    /// convolves the upsampled image.
    pub(super) fn upsample_conv(conv: &Conv2d, factor: usize, norm: Option<&BatchNorm>) -> Self {
        let (weight, bias) = fold(
            conv.weight.val(),
            0,
            conv.bias.as_ref().map(|b| b.val()),
            norm,
        );
        if factor == 1 || !is_same_3x3(conv) {
            let mut conv = conv.clone();
            conv.weight = Param::from_tensor(weight);
            conv.bias = bias.map(Param::from_tensor);
            return FoldedLayer::Upsampled { factor, conv };
        }
        FoldedLayer::Transposed {
            weight: phase_kernel(weight, factor),
            bias,
            options: ConvTransposeOptions::new([factor, factor], [1, 1], [0, 0], [1, 1], 1),
        }
    }

    pub(super) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            FoldedLayer::Transposed {
                weight,
                bias,
                options,
            } => conv_transpose2d(x, weight.clone(), bias.clone(), options.clone()),
            FoldedLayer::Upsampled { factor, conv } => conv.forward(upsample_nearest(x, *factor)),
        }
    }
}

/// `weight` and `bias` of a convolution followed by the inference batch norm `norm`
/// (`y * scale + shift`, scale = gamma / sqrt(var + eps), shift = beta - mean * scale), as one
/// convolution; `out_axis` is the weight's output-channel axis (0 for conv, 1 for transposed).
fn fold(
    weight: Tensor<4>,
    out_axis: usize,
    bias: Option<Tensor<1>>,
    norm: Option<&BatchNorm>,
) -> (Tensor<4>, Option<Tensor<1>>) {
    let Some(norm) = norm else {
        return (weight, bias);
    };
    let scale = norm.gamma.val() / norm.running_var.value().add_scalar(norm.epsilon).sqrt();
    let shift = norm.beta.val() - norm.running_mean.value() * scale.clone();
    let mut shape = [1; 4];
    shape[out_axis] = scale.dims()[0];
    let weight = weight * scale.clone().reshape(shape);
    let bias = match bias {
        Some(b) => b * scale + shift,
        None => shift,
    };
    (weight, Some(bias))
}

/// The transposed kernel `[in, out, s + 2, s + 2]` (stride `s` = `factor`, padding 1) equal to a
/// 3x3 'same' convolution `weight` `[out, in, 3, 3]` of the `factor`x nearest-upsampled input:
/// output pixel `s i + r` only sees input pixels `i + floor((r + dy) / s)` for the taps `dy` =
/// -1, 0, 1, so the taps that land on the same input pixel are summed into the transposed kernel
/// (`[9] x [9, (s+2)²]` per channel pair, a 0/1 matrix).
fn phase_kernel(weight: Tensor<4>, factor: usize) -> Tensor<4> {
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
    weight
        .reshape([out_channels * in_channels, 9])
        .matmul(sum)
        .reshape([out_channels, in_channels, size, size])
        .swap_dims(0, 1)
}

/// How the latent vector becomes the first feature map.
#[derive(Debug, Clone)]
enum Stem {
    /// Keras `Dense(4*4*F0, relu) -> Reshape((4, 4, F0))` (NHWC, then to NCHW).
    Dense(Linear),
    /// `[N, z] -> [N, z, 1, 1]` for the first transposed convolution.
    Latent,
}

/// A generator with its batch norms folded: the same images as [`Generator::forward`] in
/// inference mode, fewer passes over the feature maps. Built by [`Generator::for_inference`].
#[derive(Debug, Clone)]
pub struct InferenceGenerator {
    stem: Stem,
    /// Each followed by ReLU.
    blocks: Vec<FoldedLayer>,
    /// Followed by tanh.
    output: FoldedLayer,
}

impl InferenceGenerator {
    /// `[N, latent] -> [N, channels, R, R]` in [-1, 1].
    pub fn forward(&self, latent: Tensor<2>) -> Tensor<4> {
        let [n, z] = latent.dims();
        let mut x = match &self.stem {
            Stem::Dense(dense) => {
                let x = relu(dense.forward(latent));
                let features = x.dims()[1] / 16;
                x.reshape([n, 4, 4, features]).permute([0, 3, 1, 2])
            }
            Stem::Latent => latent.reshape([n, z, 1, 1]),
        };
        for block in &self.blocks {
            x = relu(block.forward(x));
        }
        tanh(self.output.forward(x))
    }
}

impl From<&KerasUpsampleGenerator> for InferenceGenerator {
    fn from(g: &KerasUpsampleGenerator) -> Self {
        InferenceGenerator {
            stem: Stem::Dense(g.dense.clone()),
            blocks: g
                .blocks
                .iter()
                .map(|b| FoldedLayer::upsample_conv(&b.conv, b.factor, Some(&b.norm)))
                .collect(),
            output: FoldedLayer::upsample_conv(&g.output, 1, None),
        }
    }
}

impl From<&TransposedGenerator> for InferenceGenerator {
    fn from(g: &TransposedGenerator) -> Self {
        InferenceGenerator {
            stem: Stem::Latent,
            blocks: g
                .blocks
                .iter()
                .map(|b| FoldedLayer::conv_transpose(&b.conv, Some(&b.norm)))
                .collect(),
            output: FoldedLayer::conv_transpose(&g.output, None),
        }
    }
}

impl Generator {
    /// This generator with its batch norms (running statistics) folded into its convolutions,
    /// for drawing images; training keeps using [`Generator::forward`].
    pub fn for_inference(&self) -> InferenceGenerator {
        match self {
            Generator::KerasUpsample(g) => g.into(),
            Generator::Transposed(g) => g.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Device, Distribution};

    use super::super::config::GeneratorConfig;
    use super::*;

    /// Random running statistics, so that folding them is actually exercised.
    fn randomise_norm(norm: &mut BatchNorm, device: &Device) {
        let c = norm.gamma.dims()[0];
        let normal = Distribution::Normal(0.0, 1.0);
        norm.gamma = Param::from_tensor(Tensor::random([c], normal, device));
        norm.beta = Param::from_tensor(Tensor::random([c], normal, device));
        norm.running_mean = burn::module::RunningState::new(Tensor::random([c], normal, device));
        norm.running_var = burn::module::RunningState::new(Tensor::random(
            [c],
            Distribution::Uniform(0.5, 2.0),
            device,
        ));
    }

    #[test]
    fn folded_generators_draw_what_the_modules_draw() {
        let device = Device::default();
        let configs = [
            GeneratorConfig {
                widths: vec![8, 8, 4, 4, 4],
                ..GeneratorConfig::keras_seed(96).unwrap()
            },
            GeneratorConfig::transposed(12, 32, 4, vec![16, 8, 4]).unwrap(),
        ];
        for config in configs {
            let mut generator = config.init(&device).unwrap();
            match &mut generator {
                Generator::KerasUpsample(g) => g
                    .blocks
                    .iter_mut()
                    .for_each(|b| randomise_norm(&mut b.norm, &device)),
                Generator::Transposed(g) => g
                    .blocks
                    .iter_mut()
                    .for_each(|b| randomise_norm(&mut b.norm, &device)),
            }
            let generator = generator.valid();
            let latents = Tensor::<2>::random(
                [3, config.latent_dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let expected = generator.forward(latents.clone());
            let folded = generator.for_inference().forward(latents);
            assert_eq!(folded.dims(), expected.dims());
            let error = (folded - expected).abs().max().into_scalar::<f32>();
            assert!(error < 1e-5, "{:?}: {error}", config.architecture);
        }
    }
}
