//! Images <-> `[N, 3, H, W]` float tensors in [0, 1] (channel-first, as the models take them).

use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbaImage;

use crate::error::Result;
use crate::host::f32_values;

/// CLIP's image normalisation mean (RGB), digits as OpenAI published them.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's image normalisation standard deviation (RGB), digits as published.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];

/// `(x - mean) / std` per channel with CLIP's statistics, for `[N, 3, H, W]` in [0, 1].
pub fn clip_normalize(images: Tensor<4>) -> Tensor<4> {
    let device = images.device();
    let mean = Tensor::<1>::from_data(TensorData::new(CLIP_MEAN.to_vec(), [3]), &device)
        .reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_data(TensorData::new(CLIP_STD.to_vec(), [3]), &device)
        .reshape([1, 3, 1, 1]);
    (images - mean) / std
}

/// Bilinear resize of `[N, C, H, W]` to `[N, C, height, width]`, PyTorch's
/// `F.interpolate(x, size, mode="bilinear", align_corners=False)`; `x` itself when it already has
/// that size.
pub fn resize_bilinear(x: Tensor<4>, [height, width]: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if (h, w) == (height, width) {
        return x;
    }
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size([height, width]),
    )
}

/// An image's RGB channels as a `[1, 3, H, W]` tensor in [0, 1] (alpha is dropped).
pub fn rgb_to_tensor(image: &RgbaImage, device: &Device) -> Tensor<4> {
    let (w, h) = image.dimensions();
    let plane = (w * h) as usize;
    let mut values = vec![0f32; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            values[c * plane + i] = f32::from(pixel[c]) / 255.0;
        }
    }
    Tensor::from_data(
        TensorData::new(values, [1, 3, h as usize, w as usize]),
        device,
    )
}

/// `[N, 3, H, W]` in [0, 1] -> opaque RGBA images (rounded like diffusers' `numpy_to_pil`).
pub fn tensor_to_rgba(images: Tensor<4>) -> Result<Vec<RgbaImage>> {
    let [n, _, h, w] = images.dims();
    let values = f32_values(images)?;
    let plane = h * w;
    Ok((0..n)
        .map(|i| {
            let image = &values[i * 3 * plane..(i + 1) * 3 * plane];
            RgbaImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                let u8_of = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
                image::Rgba([
                    u8_of(image[p]),
                    u8_of(image[plane + p]),
                    u8_of(image[2 * plane + p]),
                    255,
                ])
            })
        })
        .collect())
}
