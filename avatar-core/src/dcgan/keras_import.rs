//! Builds our burn generator from the seed's Keras `.h5` files (see [`super::keras`]).

use std::path::Path;

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};

use super::config::GeneratorConfig;
use super::generator::Generator;
use super::keras::{KerasArray, KerasGenerator, read_keras_generator, read_keras_generator_bytes};
use crate::error::{AvatarError, Result};

impl From<super::keras::KerasImportError> for AvatarError {
    fn from(error: super::keras::KerasImportError) -> Self {
        AvatarError::Weights(format!("keras: {error}"))
    }
}

fn tensor<const D: usize>(array: &KerasArray, device: &Device) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(array.data.clone(), array.shape.clone()),
        device,
    )
}

/// Keras Conv2D kernel HWIO `[kh, kw, in, out]` -> burn/PyTorch OIHW `[out, in, kh, kw]`.
fn conv_kernel(array: &KerasArray, device: &Device) -> Tensor<4> {
    tensor::<4>(array, device).permute([3, 2, 0, 1])
}

/// The config our model needs to reproduce a Keras generator (`resolution` is required for
/// `.weights.h5` files, which do not record their upsampling factors).
pub fn keras_config(keras: &KerasGenerator, resolution: Option<usize>) -> Result<GeneratorConfig> {
    let resolution = match (keras.resolution, resolution) {
        (Some(found), Some(asked)) if found != asked => {
            return Err(AvatarError::Config(format!(
                "the Keras file is {found} px, not {asked}"
            )));
        }
        (Some(found), _) => found,
        (None, Some(asked)) => asked,
        (None, None) => {
            return Err(AvatarError::Config(
                "this Keras file does not record its upsampling factors: give the resolution"
                    .into(),
            ));
        }
    };
    let dense_out = keras.dense_kernel.shape[1];
    let mut widths = vec![dense_out / 16];
    widths.extend(keras.convs[..4].iter().map(|c| c.kernel.shape[3]));
    let channels = keras.convs[4].kernel.shape[3];
    let epsilon = keras.batch_norms.first().map(|b| b.epsilon).unwrap_or(1e-3);
    let momentum = keras.batch_norms.first().map(|b| b.momentum).unwrap_or(0.8);
    let config = GeneratorConfig::new(
        keras.latent_dim,
        resolution,
        super::Architecture::KerasUpsample,
        widths,
    )
    .with_channels(channels)
    .with_bn_epsilon(epsilon)
    .with_bn_momentum(1.0 - momentum);
    config.validate()?;
    if !keras.upsample_factors.is_empty() && keras.upsample_factors != config.upsample_factors()? {
        return Err(AvatarError::Config(format!(
            "upsampling factors {:?} differ from the seed recipe's {:?}",
            keras.upsample_factors,
            config.upsample_factors()?
        )));
    }
    Ok(config)
}

/// Converts read Keras weights into a generator on `device`.
pub fn generator_from_keras(
    keras: &KerasGenerator,
    resolution: Option<usize>,
    device: &Device,
) -> Result<(GeneratorConfig, Generator)> {
    let config = keras_config(keras, resolution)?;
    let Generator::KerasUpsample(mut model) = config.init(device)? else {
        unreachable!("keras config builds the keras architecture")
    };
    model.dense.weight = Param::from_tensor(tensor::<2>(&keras.dense_kernel, device));
    model.dense.bias = Some(Param::from_tensor(tensor::<1>(&keras.dense_bias, device)));
    for ((block, conv), norm) in model
        .blocks
        .iter_mut()
        .zip(&keras.convs)
        .zip(&keras.batch_norms)
    {
        block.conv.weight = Param::from_tensor(conv_kernel(&conv.kernel, device));
        block.conv.bias = Some(Param::from_tensor(tensor::<1>(&conv.bias, device)));
        block.norm.gamma = Param::from_tensor(tensor::<1>(&norm.gamma, device));
        block.norm.beta = Param::from_tensor(tensor::<1>(&norm.beta, device));
        block.norm.running_mean = RunningState::new(tensor::<1>(&norm.moving_mean, device));
        block.norm.running_var = RunningState::new(tensor::<1>(&norm.moving_variance, device));
    }
    model.output.weight = Param::from_tensor(conv_kernel(&keras.convs[4].kernel, device));
    model.output.bias = Some(Param::from_tensor(tensor::<1>(
        &keras.convs[4].bias,
        device,
    )));
    Ok((config, Generator::KerasUpsample(model)))
}

/// Loads the seed's `face_generator_96.h5` / `face_generator_128.h5` (or a `.weights.h5`).
pub fn load_keras_generator(
    path: &Path,
    resolution: Option<usize>,
    device: &Device,
) -> Result<(GeneratorConfig, Generator)> {
    generator_from_keras(&read_keras_generator(path)?, resolution, device)
}

/// [`load_keras_generator`] from bytes.
pub fn load_keras_generator_bytes(
    bytes: &[u8],
    resolution: Option<usize>,
    device: &Device,
) -> Result<(GeneratorConfig, Generator)> {
    generator_from_keras(&read_keras_generator_bytes(bytes)?, resolution, device)
}
