//! Foreground segmentation for background removal: U²-Net ([`u2net`]) run as rembg does
//! ([`background_removal`]), and [`BackgroundRemoval`], the choice between it and the keying of
//! plain backgrounds that needs no model.

pub mod background_removal;
pub mod u2net;

use std::path::Path;
use std::sync::Arc;

use burn::tensor::Device;

use image::RgbaImage;

pub use background_removal::BackgroundRemover;
pub use u2net::{U2Net, U2NetConfig};

use crate::error::Result;
use crate::imaging::{MatteOptions, key_background};

/// How backgrounds are removed.
#[derive(Debug, Clone)]
pub enum BackgroundRemoval {
    /// Key out a plain background connected to the border (no model; what the seed's default
    /// prompt, "plain background", produces).
    Keying(MatteOptions),
    /// Cut the subject out with a segmentation model (any background).
    Segmentation(Arc<BackgroundRemover>),
}

impl Default for BackgroundRemoval {
    fn default() -> Self {
        BackgroundRemoval::Keying(MatteOptions::default())
    }
}

impl BackgroundRemoval {
    /// A U²-Net loaded from `model` when one is given (see [`BackgroundRemover::load`]), else
    /// keying with the default settings.
    pub fn from_model(model: Option<&Path>, device: &Device) -> Result<Self> {
        Ok(match model {
            Some(path) => {
                BackgroundRemoval::Segmentation(Arc::new(BackgroundRemover::load(path, device)?))
            }
            None => BackgroundRemoval::default(),
        })
    }

    /// `image` with its background made transparent.
    pub fn apply(&self, image: &RgbaImage) -> Result<RgbaImage> {
        match self {
            BackgroundRemoval::Keying(options) => Ok(key_background(image, *options)),
            BackgroundRemoval::Segmentation(remover) => remover.remove(image),
        }
    }
}
