//! The denoising loop shared by the text-to-image and image-to-image pipelines: classifier-free
//! guidance over a UNet and a scheduler, as diffusers' Stable Diffusion pipelines run it.

use burn::tensor::Tensor;

use super::attention::AttentionInjection;
use super::controlnet::ControlNetModel;
use super::schedulers::Scheduler;
use super::unet::{AddedConditioning, ControlResiduals, UNet2DConditionModel};
use super::vae::{AutoencoderKL, VaeConfig};
use crate::avatar::Progress;
use crate::error::{AvatarError, Result};

/// Conditioning of one denoising run.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `[2B, T, D]` prompt embeddings, negative (unconditional) first, as diffusers batches them;
    /// `[B, T, D]` positive only when `guidance_scale <= 1`.
    pub prompt_embeds: Tensor<3>,
    /// SDXL's added conditioning, batched like `prompt_embeds`.
    pub added: Option<AddedConditioning>,
    /// Classifier-free guidance weight (`<= 1` turns guidance off).
    pub guidance_scale: f64,
    /// Adapter additions to the UNet's attention (IP-Adapter tokens batched like
    /// `prompt_embeds`, FaceID LoRA).
    pub attention: AttentionInjection,
    /// ControlNets to run at every step (their residuals are summed).
    pub control: Vec<ControlInput>,
}

/// One ControlNet's input for a run.
#[derive(Debug, Clone)]
pub struct ControlInput {
    /// Index of the ControlNet in the list given to [`denoise`].
    pub net: usize,
    /// Conditioning image `[B or 2B, 3, H, W]` in [0, 1], batched like the UNet's input.
    pub image: Tensor<4>,
    /// What the ControlNet attends to instead of the prompt (InstantID's face tokens), batched
    /// like `prompt_embeds`.
    pub context: Option<Tensor<3>>,
    /// Conditioning scale.
    pub scale: f32,
    /// Fraction of the steps after which the ControlNet starts.
    pub guidance_start: f64,
    /// Fraction of the steps after which it stops.
    pub guidance_end: f64,
}

impl Conditioning {
    fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// Runs `scheduler` (already given its timesteps; for img2img, starting at `start` with latents
/// noised to that point) from `latents` `[B, C, h, w]`. `latents` are the initial noise for
/// text-to-image and are scaled by the scheduler's `init_noise_sigma` when `scale_initial` is set.
/// `noise` supplies standard-normal tensors of a given shape for schedulers that draw noise per
/// step; `progress` is called after each step and may return `false` to cancel; `preview` gets
/// the step, the step count and the scheduler's x₀ estimate (the new latents for schedulers
/// without one) after each step.
#[allow(clippy::too_many_arguments)]
pub fn denoise(
    unet: &UNet2DConditionModel,
    controlnets: &[ControlNetModel],
    scheduler: &mut Scheduler,
    latents: Tensor<4>,
    scale_initial: bool,
    start: usize,
    conditioning: &Conditioning,
    mut noise: impl FnMut([usize; 4]) -> Tensor<4>,
    mut progress: impl FnMut(Progress) -> bool,
    mut preview: impl FnMut(usize, usize, Tensor<4>) -> Result<()>,
) -> Result<Tensor<4>> {
    let timesteps: Vec<f64> = scheduler.timesteps().to_vec();
    if start > timesteps.len() {
        return Err(AvatarError::invalid(
            "strength",
            "leaves no denoising step to run",
        ));
    }
    let guided = conditioning.guided();
    let batch = latents.dims()[0];
    let embeds_batch = conditioning.prompt_embeds.dims()[0];
    if embeds_batch != if guided { 2 * batch } else { batch } {
        return Err(AvatarError::invalid(
            "prompt_embeds",
            format!("batch {embeds_batch} does not fit {batch} latents with guidance={guided}"),
        ));
    }
    let mut latents = if scale_initial {
        latents.mul_scalar(scheduler.init_noise_sigma())
    } else {
        latents
    };
    let total = timesteps.len() - start;
    for (i, &t) in timesteps[start..].iter().enumerate() {
        let input = if guided {
            Tensor::cat(vec![latents.clone(), latents.clone()], 0)
        } else {
            latents.clone()
        };
        let input = scheduler.scale_model_input(input, t)?;
        let times = vec![t as f32; input.dims()[0]];
        let mut residuals: Option<ControlResiduals> = None;
        for control in &conditioning.control {
            // diffusers' `controlnet_keep`: 0 outside [start, end] of the steps.
            let before = (i as f64 / total as f64) < control.guidance_start;
            let after = ((i + 1) as f64 / total as f64) > control.guidance_end;
            if before || after || control.scale == 0.0 {
                continue;
            }
            let net = controlnets.get(control.net).ok_or_else(|| {
                AvatarError::invalid("controlnet", format!("no ControlNet {}", control.net))
            })?;
            let context = control
                .context
                .clone()
                .unwrap_or_else(|| conditioning.prompt_embeds.clone());
            let out = net.forward(
                input.clone(),
                &times,
                context,
                conditioning.added.as_ref(),
                control.image.clone(),
                control.scale,
            )?;
            residuals = Some(match residuals {
                None => out,
                Some(sum) => ControlResiduals {
                    down: sum
                        .down
                        .into_iter()
                        .zip(out.down)
                        .map(|(a, b)| a + b)
                        .collect(),
                    mid: sum.mid + out.mid,
                },
            });
        }
        let prediction = unet.forward_with(
            input,
            &times,
            conditioning.prompt_embeds.clone(),
            conditioning.added.as_ref(),
            &conditioning.attention,
            residuals.as_ref(),
        )?;
        let prediction = if guided {
            let [b2, c, h, w] = prediction.dims();
            let uncond = prediction.clone().slice([0..b2 / 2, 0..c, 0..h, 0..w]);
            let cond = prediction.slice([b2 / 2..b2, 0..c, 0..h, 0..w]);
            uncond.clone() + (cond - uncond).mul_scalar(conditioning.guidance_scale)
        } else {
            prediction
        };
        let out = scheduler.step_with(prediction, t, latents, |sample| noise(sample.dims()))?;
        latents = out.prev_sample;
        let estimate = out.pred_original_sample.unwrap_or_else(|| latents.clone());
        preview(i + 1, total, estimate)?;
        if !progress(Progress { done: i + 1, total }) {
            return Err(AvatarError::Cancelled);
        }
    }
    Ok(latents)
}

/// Latents -> images in [0, 1] (`vae.decode(latents / scaling_factor)`, then `x / 2 + 0.5`
/// clamped), as diffusers' image processor does before converting to 8 bits. With `tiled`, latents
/// larger than one tile (`sample_size / 2^(levels - 1)`, 64 for SD 1.5) are decoded in overlapping
/// tiles as diffusers' `enable_tiling` does.
pub fn decode_latents(
    vae: &AutoencoderKL,
    config: &VaeConfig,
    latents: Tensor<4>,
    tiled: bool,
) -> Tensor<4> {
    let latents = latents.div_scalar(config.scaling_factor);
    let levels = config.block_out_channels.len().saturating_sub(1);
    let tile = config
        .sample_size
        .map(|size| size >> levels)
        .filter(|&t| t > 0);
    let [_, _, h, w] = latents.dims();
    let decoded = match tile {
        Some(tile) if tiled && (h > tile || w > tile) => {
            vae.decode_tiled(latents, tile, 1 << levels, 0.25)
        }
        _ => vae.decode(latents),
    };
    decoded.div_scalar(2.0).add_scalar(0.5).clamp(0.0, 1.0)
}
