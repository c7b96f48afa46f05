//! # avatar-core
//!
//! Avatar generation written once in [burn](https://burn.dev): every model runs on the CPU
//! (`flex`), wgpu or CUDA, chosen at run time with a [`DeviceSpec`].
//!
//! - [`dcgan`]: DCGAN cartoon-avatar generators (the seed service's Keras recipe, and our own
//!   trained RGBA models shipped in the crate), with training under the `train` feature.
//! - [`diffusion`]: Stable Diffusion 1.5 / SDXL text-to-image and image-to-image.
//! - [`vqgan_clip`]: VQGAN+CLIP optimisation from text and image prompts, with progress.
//! - [`face_analysis`]: SCRFD face detection + ArcFace embeddings from insightface's ONNX files
//!   (feature `face-analysis`), run on burn by the [`onnx`] interpreter.
//! - [`segmentation`]: background removal with U²-Net (rembg's models) or plain-background keying.
//! - [`AvatarGenerator`]: the high-level API (seeds, transparency, colours, sizes, formats).
//!
//! ```no_run
//! use avatar_core::{AvatarGenerator, DeviceSpec, GenerateOptions, ModelSize};
//! let generator = AvatarGenerator::load(ModelSize::Large, &"cpu".parse::<DeviceSpec>()?)?;
//! let png = generator.generate_encoded(&GenerateOptions { seed: Some(7.into()), ..Default::default() })?;
//! std::fs::write("avatar.png", png.bytes).unwrap();
//! # Ok::<(), avatar_core::AvatarError>(())
//! ```

pub mod activation;
pub mod allocator;
pub mod avatar;
pub mod batch_norm;
pub mod dcgan;
pub mod device;
pub mod diffusion;
pub mod embedded;
pub mod error;
#[cfg(feature = "face-analysis")]
pub mod face_analysis;
pub mod gemm_conv;
pub mod group_norm;
mod host;
pub mod hub;
pub mod imaging;
#[cfg(feature = "face-analysis")]
pub mod onnx;
pub mod seed;
pub mod segmentation;
#[cfg(feature = "train")]
pub mod train;
mod vector_dispatch;
pub mod vqgan_clip;
mod worker_pool;

pub use avatar::{
    AvatarGenerator, EncodedAvatar, GenerateOptions, ModelSize, Progress, WeightsSource,
};
pub use burn;
pub use device::DeviceSpec;
pub use error::{AvatarError, Result};
pub use seed::Seed;
