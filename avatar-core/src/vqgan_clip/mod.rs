//! VQGAN+CLIP: images optimised from text (and image) prompts, as in Katherine Crowson's
//! notebook, the engine of the seed's AI Art Generator API.
//!
//! - [`vqgan`]: taming-transformers' `VQModel` (encoder, decoder, codebook), official `.ckpt` files.
//! - [`open_clip`]: CLIP's image and text towers in OpenAI's / open_clip's layout.
//! - [`prompts`]: `"text:weight:stop"` prompts and the spherical-distance loss.
//! - [`cutouts`]: random cutouts and their augmentations.
//! - [`run`]: the optimisation loop, with progress and a cancellable, thread-shared observer.
//!
//! ```no_run
//! use avatar_core::vqgan_clip::{OpenClipConfig, PromptSpec, RunObserver, RunOptions, VqganClip};
//! use std::path::Path;
//! let engine = VqganClip::load(
//!     Path::new("vqgan_imagenet_f16_16384.yaml"),
//!     Path::new("vqgan_imagenet_f16_16384.ckpt"),
//!     &OpenClipConfig::vit_b_32(),
//!     Path::new("open_clip_pytorch_model.bin"),
//!     &avatar_core::burn::tensor::Device::flex(),
//! )?;
//! let options = RunOptions {
//!     prompts: PromptSpec::parse_list("a cartoon avatar of a fox|blurry:-0.5")?,
//!     width: 128,
//!     height: 128,
//!     iterations: 50,
//!     ..Default::default()
//! };
//! let image = engine.run(&options, &RunObserver::new(), |p| {
//!     eprintln!("{}/{} loss {:.3}", p.iteration, p.total, p.loss);
//!     true
//! })?;
//! image.save("fox.png").unwrap();
//! # Ok::<(), avatar_core::AvatarError>(())
//! ```

pub mod cutouts;
pub mod open_clip;
pub mod prompts;
pub mod run;
pub mod vqgan;

pub use cutouts::{Augmentations, Cutout};
pub use open_clip::{OpenClip, OpenClipConfig};
pub use prompts::{Prompt, PromptSpec};
pub use run::{
    LatentOptimizer, LossParts, Objective, RunObserver, RunOptions, RunProgress, VqganClip,
};
pub use vqgan::{VqModel, VqganConfig};
