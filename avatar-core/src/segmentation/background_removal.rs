//! Background removal with a U²-Net, as rembg's `U2netSession` does it: the RGB image resized to
//! a square (320 px by default; Pillow's Lanczos, bit-exact), scaled by its maximum,
//! ImageNet-normalised; the fused mask `d0` min-max stretched, quantised to 8 bits and resized
//! back (Lanczos) to the image as its alpha channel.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::{GrayImage, RgbaImage};

use super::u2net::U2Net;
use crate::error::{AvatarError, Result};
use crate::imaging::pil_resize::{PilFilter, resize_gray, resize_rgb};

/// ImageNet mean and standard deviation (rembg's normalisation for U²-Net).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A loaded U²-Net that cuts the subject out of images.
#[derive(Debug)]
pub struct BackgroundRemover {
    model: U2Net,
    device: Device,
    input_size: u32,
}

impl BackgroundRemover {
    /// rembg's input size for the U²-Net family.
    pub const DEFAULT_INPUT_SIZE: u32 = 320;

    /// Loads U²-Net weights (the official `.pth`, e.g. `u2net.pth` / `u2netp.pth` /
    /// `u2net_human_seg.pth`, or a safetensors conversion) onto `device`.
    pub fn load(weights: &Path, device: &Device) -> Result<Self> {
        Ok(BackgroundRemover {
            model: U2Net::load(weights, device)?,
            device: device.clone(),
            input_size: Self::DEFAULT_INPUT_SIZE,
        })
    }

    /// Runs the network at `size` x `size` instead of 320 (16 to 2048).
    pub fn with_input_size(mut self, size: u32) -> Result<Self> {
        if !(16..=2048).contains(&size) {
            return Err(AvatarError::InvalidOption {
                field: "input_size",
                message: format!("{size} is outside 16-2048"),
            });
        }
        self.input_size = size;
        Ok(self)
    }

    /// The square size the network runs at.
    pub fn input_size(&self) -> u32 {
        self.input_size
    }

    /// The network.
    pub fn model(&self) -> &U2Net {
        &self.model
    }

    /// rembg's input: RGB resized (Pillow's Lanczos) to the input size, divided by its largest value,
    /// ImageNet-normalised; `[1, 3, size, size]`.
    pub fn input_tensor(&self, image: &RgbaImage) -> Tensor<4> {
        let size = self.input_size;
        let rgb = image::DynamicImage::ImageRgba8(image.clone()).to_rgb8();
        let resized = resize_rgb(&rgb, size, size, PilFilter::Lanczos);
        let max = resized
            .pixels()
            .flat_map(|p| p.0[..3].iter().copied())
            .max()
            .unwrap_or(0);
        let scale = 1.0 / f32::from(max).max(1e-6);
        let plane = (size * size) as usize;
        let mut values = vec![0f32; 3 * plane];
        for (i, pixel) in resized.pixels().enumerate() {
            for c in 0..3 {
                values[c * plane + i] = (f32::from(pixel[c]) * scale - MEAN[c]) / STD[c];
            }
        }
        let size = size as usize;
        Tensor::from_data(TensorData::new(values, [1, 3, size, size]), &self.device)
    }

    /// The subject's mask at the image's size (255: subject, 0: background).
    pub fn mask(&self, image: &RgbaImage) -> Result<GrayImage> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(AvatarError::InvalidOption {
                field: "image",
                message: "the image is empty".into(),
            });
        }
        let d0 = self
            .model
            .forward(self.input_tensor(image))
            .into_iter()
            .next()
            .expect("U²-Net returns seven maps");
        let [_, _, mh, mw] = d0.dims();
        let saliency: Vec<f32> = d0
            .slice([0..1, 0..1])
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| AvatarError::Image(format!("U²-Net output: {e:?}")))?;
        let mask = stretch_to_u8(&saliency);
        let mask = GrayImage::from_raw(mw as u32, mh as u32, mask)
            .expect("the mask has the network's output size");
        Ok(resize_gray(&mask, w, h, PilFilter::Lanczos))
    }

    /// The image with its background transparent: alpha = mask x the image's own alpha; the
    /// colours are kept as they are (straight alpha).
    pub fn remove(&self, image: &RgbaImage) -> Result<RgbaImage> {
        let mask = self.mask(image)?;
        let mut out = image.clone();
        for (pixel, m) in out.pixels_mut().zip(mask.pixels()) {
            pixel[3] = ((u16::from(pixel[3]) * u16::from(m[0]) + 127) / 255) as u8;
        }
        Ok(out)
    }
}

/// `(x - min) / (max - min) * 255`, truncated to `u8` as rembg does; a constant map (nothing
/// salient to tell apart) becomes fully opaque rather than NaN.
fn stretch_to_u8(values: &[f32]) -> Vec<u8> {
    let (min, max) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = max - min;
    if !range.is_finite() || range <= 0.0 {
        return vec![255; values.len()];
    }
    values
        .iter()
        .map(|&v| (((v - min) / range) * 255.0).clamp(0.0, 255.0) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::stretch_to_u8;

    #[test]
    fn the_mask_is_stretched_to_the_full_range_and_a_flat_map_is_opaque() {
        assert_eq!(stretch_to_u8(&[0.2, 0.6, 0.4]), vec![0, 255, 127]);
        assert_eq!(stretch_to_u8(&[0.5, 0.5]), vec![255, 255]);
    }
}
