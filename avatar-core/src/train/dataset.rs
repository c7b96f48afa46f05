use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbaImage;
use rayon::prelude::*;

use crate::error::{AvatarError, Result};
use crate::imaging::{Color, composite_over, resize};
use crate::seed::SplitMix64;

/// Image files found under a folder, decoded and resized to the training resolution in memory.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    resolution: usize,
    channels: usize,
    /// `resolution x resolution x 4` RGBA bytes per image.
    pixels: Vec<Vec<u8>>,
}

const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

impl ImageDataset {
    /// Loads every PNG/JPEG/WebP/BMP under `dir` (recursively, sorted by path), RGB or RGBA,
    /// resized to `resolution`. For 3-channel training transparent images are composited on
    /// white. `limit` keeps the first N files.
    pub fn load(
        dir: &Path,
        resolution: usize,
        channels: usize,
        limit: Option<usize>,
    ) -> Result<Self> {
        if !(channels == 3 || channels == 4) {
            return Err(AvatarError::invalid(
                "channels",
                format!("{channels}: expected 3 or 4"),
            ));
        }
        let meta = std::fs::metadata(dir).map_err(|e| AvatarError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(AvatarError::invalid(
                "data",
                format!("{} is not a folder", dir.display()),
            ));
        }
        let mut files = Vec::new();
        collect_images(dir, &mut files)?;
        files.sort();
        if let Some(limit) = limit {
            files.truncate(limit);
        }
        if files.is_empty() {
            return Err(AvatarError::invalid(
                "data",
                format!(
                    "no images ({}) under {}",
                    EXTENSIONS.join(", "),
                    dir.display()
                ),
            ));
        }
        let size = resolution as u32;
        let pixels = files
            .par_iter()
            .map(|path| {
                let image = image::open(path)
                    .map_err(|e| AvatarError::Image(format!("{}: {e}", path.display())))?
                    .into_rgba8();
                let mut image = square_crop(image);
                image = resize(&image, size);
                if channels == 3 {
                    image = composite_over(&image, Color::WHITE);
                }
                Ok(image.into_raw())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageDataset {
            resolution,
            channels,
            pixels,
        })
    }

    /// Builds a dataset from images already in memory (tests, synthetic data).
    pub fn from_images(images: Vec<RgbaImage>, channels: usize) -> Result<Self> {
        let resolution = images.first().map(|i| i.width() as usize).unwrap_or(0);
        if images.is_empty()
            || images
                .iter()
                .any(|i| i.width() as usize != resolution || i.height() as usize != resolution)
        {
            return Err(AvatarError::invalid(
                "data",
                "need at least one image, all square and of one size",
            ));
        }
        Ok(ImageDataset {
            resolution,
            channels,
            pixels: images.into_iter().map(|i| i.into_raw()).collect(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len()
    }

    /// Whether the dataset is empty (never true for a loaded dataset).
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Image side in pixels.
    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// One image as RGBA.
    pub fn image(&self, index: usize) -> RgbaImage {
        let r = self.resolution as u32;
        RgbaImage::from_raw(r, r, self.pixels[index].clone()).expect("sizes checked at load")
    }

    /// A batch `[N, C, R, R]` in [-1, 1] of images drawn uniformly with replacement from `rng`,
    /// each mirrored left-right with probability 1/2 when `flip` is set.
    pub fn sample_batch(
        &self,
        batch: usize,
        flip: bool,
        rng: &mut SplitMix64,
        device: &Device,
    ) -> Tensor<4> {
        let (r, c) = (self.resolution, self.channels);
        let plane = r * r;
        let mut values = vec![0f32; batch * c * plane];
        for b in 0..batch {
            let index = rng.below(self.pixels.len() as u64) as usize;
            let mirror = flip && rng.next_u64() & 1 == 1;
            let src = &self.pixels[index];
            let dst = &mut values[b * c * plane..(b + 1) * c * plane];
            for y in 0..r {
                for x in 0..r {
                    let sx = if mirror { r - 1 - x } else { x };
                    let p = &src[(y * r + sx) * 4..(y * r + sx) * 4 + 4];
                    for ch in 0..c {
                        dst[ch * plane + y * r + x] = p[ch] as f32 / 127.5 - 1.0;
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(values, [batch, c, r, r]), device)
    }
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| AvatarError::io(dir, e))? {
        let path = entry.map_err(|e| AvatarError::io(dir, e))?.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

fn square_crop(image: RgbaImage) -> RgbaImage {
    let (w, h) = image.dimensions();
    if w == h {
        return image;
    }
    let side = w.min(h);
    image::imageops::crop_imm(&image, (w - side) / 2, (h - side) / 2, side, side).to_image()
}
