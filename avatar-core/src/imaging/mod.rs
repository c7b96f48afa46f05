//! Image post-processing shared by every model: colours, background keying, compositing,
//! resizing, encoding, and conversion to and from tensors.

mod canny;
mod color;
pub mod cv_geometry;
mod encode;
mod keypoints;
mod matte;
pub mod pil_resize;
mod tensor;

pub use canny::{canny, canny_image, rgb_to_gray};
pub use color::Color;
pub use encode::{ImageFormat, encode, resize};
pub use keypoints::{check_keypoints, draw_kps};
pub use matte::{MatteOptions, composite_over, key_background};
pub use tensor::{
    CLIP_MEAN, CLIP_STD, clip_normalize, resize_bilinear, rgb_to_tensor, tensor_to_rgba,
};
