//! The default DCGAN weights: compiled in (feature `embedded-weights`) or read from
//! `$AVATAR_WEIGHTS_DIR`.

use std::borrow::Cow;

use crate::avatar::ModelSize;
use crate::error::{AvatarError, Result};

/// File name of a shipped model inside `avatar-core/weights/` or `$AVATAR_WEIGHTS_DIR`.
pub fn file_name(size: ModelSize) -> &'static str {
    match size {
        ModelSize::Small => "dcgan_small.safetensors",
        ModelSize::Large => "dcgan_large.safetensors",
    }
}

/// The safetensors bytes of a shipped model.
pub fn weights(size: ModelSize) -> Result<Cow<'static, [u8]>> {
    if let Ok(dir) = std::env::var("AVATAR_WEIGHTS_DIR") {
        let path = std::path::Path::new(&dir).join(file_name(size));
        return std::fs::read(&path)
            .map(Cow::Owned)
            .map_err(|e| AvatarError::io(path, e));
    }
    compiled(size).map(Cow::Borrowed).ok_or_else(|| {
        AvatarError::Weights(
            "this build has no embedded weights (feature `embedded-weights`); set AVATAR_WEIGHTS_DIR".into(),
        )
    })
}

#[cfg(feature = "embedded-weights")]
fn compiled(size: ModelSize) -> Option<&'static [u8]> {
    Some(match size {
        ModelSize::Small => include_bytes!("../weights/dcgan_small.safetensors"),
        ModelSize::Large => include_bytes!("../weights/dcgan_large.safetensors"),
    })
}

#[cfg(not(feature = "embedded-weights"))]
fn compiled(_size: ModelSize) -> Option<&'static [u8]> {
    None
}
