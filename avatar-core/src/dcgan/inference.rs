//! Generators prepared for inference: each batch norm (running statistics) folded into the
//! convolution before it, and the seed's `UpSampling2D -> Conv2D` blocks rewritten as transposed
//! convolutions, once at load time instead of on every forward pass.

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{BatchNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::ops::ConvTransposeOptions;

use super::generator::Generator;
use super::keras_upsample::KerasUpsampleGenerator;
use super::transposed::TransposedGenerator;
use super::upsample_conv::{is_same_3x3, transposed_kernel, upsample_nearest};
use crate::activation::tanh;

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
    /// `conv(upsample_nearest(x, factor)) * scale + shift` (`affine` from a batch norm): the
    /// convolutions the transposed rewrite does not cover, kept as they are.
    Upsampled {
        factor: usize,
        conv: Conv2d,
        affine: Option<(Tensor<1>, Tensor<1>)>,
    },
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
        if factor == 1 || !is_same_3x3(conv) {
            return FoldedLayer::Upsampled {
                factor,
                conv: conv.clone(),
                affine: norm.map(inference_affine),
            };
        }
        let (weight, bias) = fold(
            conv.weight.val(),
            0,
            conv.bias.as_ref().map(|b| b.val()),
            norm,
        );
        let (weight, options) = transposed_kernel(weight, factor);
        FoldedLayer::Transposed {
            weight,
            bias,
            options,
        }
    }

    pub(super) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            FoldedLayer::Transposed {
                weight,
                bias,
                options,
            } => {
                crate::gemm_conv::conv_transpose2d(x, weight.clone(), bias.clone(), options.clone())
            }
            FoldedLayer::Upsampled {
                factor,
                conv,
                affine,
            } => {
                let y = crate::gemm_conv::conv2d_layer(upsample_nearest(x, *factor), conv);
                match affine {
                    Some((scale, shift)) => {
                        let c = scale.dims()[0];
                        y * scale.clone().reshape([1, c, 1, 1])
                            + shift.clone().reshape([1, c, 1, 1])
                    }
                    None => y,
                }
            }
        }
    }
}

/// The inference batch norm `norm` as `y * scale + shift` per channel: scale = gamma /
/// sqrt(var + eps), shift = beta - mean * scale.
fn inference_affine(norm: &BatchNorm) -> (Tensor<1>, Tensor<1>) {
    let scale = norm.gamma.val() / norm.running_var.value().add_scalar(norm.epsilon).sqrt();
    let shift = norm.beta.val() - norm.running_mean.value() * scale.clone();
    (scale, shift)
}

/// `weight` and `bias` of a convolution followed by the inference batch norm `norm`
/// ([`inference_affine`]), as one convolution; `out_axis` is the weight's output-channel axis (0
/// for conv, 1 for transposed).
fn fold(
    weight: Tensor<4>,
    out_axis: usize,
    bias: Option<Tensor<1>>,
    norm: Option<&BatchNorm>,
) -> (Tensor<4>, Option<Tensor<1>>) {
    let Some(norm) = norm else {
        return (weight, bias);
    };
    let (scale, shift) = inference_affine(norm);
    let mut shape = [1; 4];
    shape[out_axis] = scale.dims()[0];
    let weight = weight * scale.clone().reshape(shape);
    let bias = match bias {
        Some(b) => b * scale + shift,
        None => shift,
    };
    (weight, Some(bias))
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
        let device = latent.device();
        crate::worker_pool::on_worker(&device, || self.forward_here(latent))
    }

    fn forward_here(&self, latent: Tensor<2>) -> Tensor<4> {
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
    use burn::module::{Module, Param};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{BatchNormConfig, PaddingConfig2d};
    use burn::tensor::{Device, Distribution};

    use super::super::config::GeneratorConfig;
    use super::super::upsample_conv::upsample_conv;
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
    fn a_folded_batch_norm_equals_applying_it_after_the_convolution() {
        let device = Device::default();
        let normal = Distribution::Normal(0.0, 1.0);
        let same = Conv2dConfig::new([3, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let valid = Conv2dConfig::new([3, 4], [3, 3]).init(&device);
        let mut norm = BatchNormConfig::new(4).init(&device);
        randomise_norm(&mut norm, &device);
        // Factors 2 and 3 take the transposed rewrite; factor 1 and the 'valid' conv do not.
        for (conv, factor) in [(&same, 2), (&same, 3), (&same, 1), (&valid, 2)] {
            let x = Tensor::<4>::random([2, 3, 5, 4], normal, &device);
            let expected = norm.forward(upsample_conv(x.clone(), conv, factor));
            let folded = FoldedLayer::upsample_conv(conv, factor, Some(&norm)).forward(x);
            let error = (folded - expected).abs().max().into_scalar::<f32>();
            assert!(error < 1e-4, "factor {factor}: {error}");
        }
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
