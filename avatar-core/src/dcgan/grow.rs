//! Warm starts: a trained transposed generator re-fitted to another resolution or latent size.
//!
//! The stride-2 stages and the output layer of a transposed generator do not depend on the
//! resolution: only the projection (latent -> `s0 x s0`) does. A 96 px model (6x6 start) thus
//! becomes a 128 px model (8x8 start) by resizing its projection kernels bilinearly, which draws
//! the same avatars 4/3 larger, and fine-tuning from there costs a fraction of training from
//! scratch.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use super::config::{Architecture, GeneratorConfig};
use super::generator::Generator;
use super::transposed::TransposedGenerator;
use crate::error::{AvatarError, Result};
use crate::imaging::resize_bilinear;

/// `source` (a transposed generator built for `source_config`) re-fitted to `target`, on `device`.
///
/// Every stage after the projection, every batch norm and the output layer are copied. The
/// projection's `[latent, width, s, s]` kernel is resized bilinearly to the target's initial
/// size, and its latent rows are truncated, or padded with zeros so that the new latent
/// dimensions start with no effect (they still receive gradients when training resumes).
///
/// Errors unless both configs are `transposed` with the same widths and channels.
pub fn grow_generator(
    source: &Generator,
    source_config: &GeneratorConfig,
    target: &GeneratorConfig,
    device: &Device,
) -> Result<Generator> {
    let mismatch = |what: &str| {
        AvatarError::invalid(
            "warm_start",
            format!("the source generator's {what} differ from the target's"),
        )
    };
    if source_config.architecture != Architecture::Transposed
        || target.architecture != Architecture::Transposed
    {
        return Err(AvatarError::invalid(
            "warm_start",
            "only transposed generators can be grown",
        ));
    }
    if source_config.widths != target.widths {
        return Err(mismatch("widths"));
    }
    if source_config.channels != target.channels {
        return Err(mismatch("channels"));
    }
    let Generator::Transposed(source) = source else {
        return Err(mismatch("architecture"));
    };
    let size = target.initial_size()?;
    let mut grown = TransposedGenerator::new(target, device)?;
    let projection = source.blocks[0].conv.weight.val().to_device(device);
    let projection =
        resize_latent_rows(resize_bilinear(projection, [size, size]), target.latent_dim);
    grown.blocks[0].conv.weight = Param::from_tensor(projection);
    grown.blocks[0].norm = source.blocks[0].norm.clone().to_device(device);
    for (grown, source) in grown.blocks.iter_mut().zip(&source.blocks).skip(1) {
        *grown = source.clone().to_device(device);
    }
    grown.output = source.output.clone().to_device(device);
    Ok(Generator::Transposed(grown))
}

/// Keeps the first `latent` rows of `[z, c, s, s]`, padding with zero rows when `latent > z`.
fn resize_latent_rows(kernel: Tensor<4>, latent: usize) -> Tensor<4> {
    let [z, c, h, w] = kernel.dims();
    if latent <= z {
        return kernel.narrow(0, 0, latent);
    }
    let zeros = Tensor::zeros([latent - z, c, h, w], &kernel.device());
    Tensor::cat(vec![kernel, zeros], 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcgan::latents_for_seeds;
    use crate::seed::Seed;

    fn config(latent: usize, resolution: usize) -> GeneratorConfig {
        GeneratorConfig::transposed(latent, resolution, 4, vec![16, 8]).unwrap()
    }

    #[test]
    fn same_shape_growth_is_the_identity() {
        let device = Device::flex();
        let small = config(12, 24);
        let source = small.init(&device).unwrap().valid();
        let grown = grow_generator(&source, &small, &small, &device).unwrap();
        let latents = latents_for_seeds(&[Seed::Number(3), Seed::Number(4)], 12, &device);
        let a = source.forward(latents.clone());
        let b = grown.valid().forward(latents);
        let diff = (a - b).abs().max().into_scalar::<f32>();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn growth_resizes_the_projection_and_zero_pads_new_latents() {
        let device = Device::flex();
        let (small, large) = (config(12, 24), config(16, 32));
        let source = small.init(&device).unwrap();
        let grown = grow_generator(&source, &small, &large, &device).unwrap();
        let (Generator::Transposed(s), Generator::Transposed(g)) = (&source, &grown) else {
            unreachable!()
        };
        let kernel = g.blocks[0].conv.weight.val();
        assert_eq!(kernel.dims(), [16, 16, 8, 8]);
        let padded = kernel
            .clone()
            .narrow(0, 12, 4)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(padded, 0.0);
        // A constant kernel stays constant under bilinear resizing: check the mean is kept.
        let mean_src = s.blocks[0].conv.weight.val().mean().into_scalar::<f32>();
        let mean_grown = kernel.narrow(0, 0, 12).mean().into_scalar::<f32>();
        assert!(
            (mean_src - mean_grown).abs() < 2e-3,
            "{mean_src} vs {mean_grown}"
        );
        let copied = (s.blocks[1].conv.weight.val() - g.blocks[1].conv.weight.val())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(copied, 0.0);
        let out = grown.forward(latents_for_seeds(&[Seed::Number(1)], 16, &device));
        assert_eq!(out.dims(), [1, 4, 32, 32]);
    }

    #[test]
    fn mismatched_widths_are_a_typed_error() {
        let device = Device::flex();
        let small = config(12, 24);
        let other = GeneratorConfig::transposed(12, 32, 4, vec![8, 8]).unwrap();
        let source = small.init(&device).unwrap();
        let err = grow_generator(&source, &small, &other, &device).unwrap_err();
        assert!(err.to_string().contains("widths"), "{err}");
    }
}
