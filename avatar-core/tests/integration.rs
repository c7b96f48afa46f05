//! The integration tests of avatar-core, one binary (one link of burn) for all of them: each
//! module is one capability, checked against the committed fixtures of `tools/reference/`.
//! The wgpu correctness set (`tests/wgpu.rs`, run one test at a time) and the hub test
//! (`tests/hub.rs`, which sets environment variables) are binaries of their own.

mod common;

mod avatar_gen;
mod control_images;
mod controlnet;
mod diffusion_clip;
mod diffusion_pipeline;
mod diffusion_precision;
mod diffusion_schedulers;
mod diffusion_text_to_image;
mod diffusion_tokenizer;
mod diffusion_unet;
mod diffusion_vae;
mod diffusion_vae_tiled;
mod face_analysis;
mod generator;
mod ip_adapter;
mod keras;
mod pil_resize;
mod safety_checker;
mod segmentation;
mod train;
mod vqgan_clip;
