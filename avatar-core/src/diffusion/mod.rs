//! Latent diffusion (Stable Diffusion 1.5 / SDXL) building blocks, ported from
//! [diffusers](https://github.com/huggingface/diffusers) with numerical parity tests.
//!
//! - [`pipeline`]: text-to-image for SD1.5 and SDXL from a diffusers folder.
//! - [`avatar_gen`]: seed 002's InstantID avatars (face adapter, IdentityNet, pose / canny).
//! - [`face_avatar`]: seed 001's face avatars from a reference photo (options, ranges, default
//!   prompt, background keying).
//! - [`tokenizer`]: CLIP's byte-level BPE tokenizer.
//! - [`clip_text`]: the CLIP text encoders (SD1.5's CLIP-L, SDXL's CLIP-L + OpenCLIP bigG).
//! - [`clip_vision`]: transformers' CLIP vision tower; [`image_encoder`]: it with its projection
//!   (IP-Adapter's image encoder).
//! - [`controlnet`]: `ControlNetModel` (residuals for the UNet from a conditioning image).
//! - [`ip_adapter`]: IP-Adapter, Plus, Full-Face, FaceID and InstantID's face adapter.
//! - [`safety_checker`]: diffusers' `StableDiffusionSafetyChecker` and the obfuscations of
//!   flagged images.
//! - [`denoise`]: the guided denoising loop and latent decoding shared by the pipelines.
//! - [`unet`]: `UNet2DConditionModel` ([`transformer_2d`], [`attention`], [`embeddings`]).
//! - [`vae`]: the KL autoencoder (`AutoencoderKL`); [`resnet`]: blocks shared with the UNet.
//! - [`single_file`]: original single-file (LDM/SGM) checkpoints converted to diffusers' layout.
//! - [`precision`]: f32 / f16 / bf16 compute ([`precision::Precision`]).
//! - [`weights`]: strict safetensors loading shared by the components.
//! - [`schedulers`]: the noise schedulers (DDIM, Euler, Euler Ancestral, DPM++ 2M, LCM).

pub mod attention;
pub mod avatar_gen;
pub mod clip_text;
pub mod clip_vision;
pub mod controlnet;
pub mod denoise;
pub mod embeddings;
pub mod face_avatar;
pub mod image_encoder;
pub mod ip_adapter;
pub mod ip_adapter_scale;
pub mod pipeline;
pub mod precision;
pub mod preview;
pub mod resnet;
pub mod safety_checker;
pub mod schedulers;
pub mod single_file;
pub mod tokenizer;
pub mod transformer_2d;
pub mod unet;
pub mod vae;
pub mod weights;
