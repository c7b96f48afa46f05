//! Image post-processing shared by every model: colours, background keying, compositing,
//! resizing and encoding.

mod color;
mod encode;
mod matte;

pub use color::Color;
pub use encode::{ImageFormat, encode, resize};
pub use matte::{MatteOptions, composite_over, key_background};
