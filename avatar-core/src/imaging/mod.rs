//! Image post-processing shared by every model: colours, background keying, compositing,
//! resizing, encoding, and conversion to and from tensors.

mod color;
mod encode;
mod matte;
mod tensor;

pub use color::Color;
pub use encode::{ImageFormat, encode, resize};
pub use matte::{MatteOptions, composite_over, key_background};
pub use tensor::{CLIP_MEAN, CLIP_STD, clip_normalize, rgb_to_tensor, tensor_to_rgba};
