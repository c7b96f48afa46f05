//! Text-to-image with Stable Diffusion 1.5 and SDXL from a diffusers folder (`model_index.json`,
//! `tokenizer(_2)/`, `text_encoder(_2)/`, `unet/`, `vae/`, `scheduler/`), as diffusers'
//! `StableDiffusionPipeline` and `StableDiffusionXLPipeline` run it.

use std::path::Path;

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use image::RgbaImage;

use super::attention::AttentionInjection;
use super::clip_text::{ClipTextConfig, ClipTextModel};
use super::controlnet::{ControlNetConfig, ControlNetModel};
use super::denoise::{Conditioning, ControlInput, decode_latents, denoise};
use super::image_encoder::ImageEncoder;
use super::ip_adapter::{IpAdapter, IpAdapterPrompt};
use super::precision::{Precision, cast_module};
use super::preview::{Preview, PreviewMode, PreviewOptions, approximate_rgb};
use super::schedulers::{Scheduler, SchedulerConfig};
use super::single_file::{RawTensor, convert_single_file, to_safetensors};
use super::tokenizer::{ClipTokenizer, MAX_LENGTH};
use super::unet::{AddedConditioning, UNet2DConditionModel, UNetConfig};
use super::vae::{AutoencoderKL, VaeConfig};
use super::weights::read_config;
use crate::avatar::Progress;
use crate::error::{AvatarError, Result};
use crate::imaging::{rgb_to_tensor, tensor_to_rgba};
use crate::seed::Seed;

/// Most images per call.
pub const MAX_IMAGES: usize = 8;

/// Options of one text-to-image call (the parameter names of diffusers and seeds 001-003).
#[derive(Debug, Clone)]
pub struct TextToImageOptions {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from (classifier-free guidance's unconditional prompt).
    pub negative_prompt: String,
    /// Denoising steps.
    pub num_inference_steps: usize,
    /// Classifier-free guidance weight (`<= 1` turns it off).
    pub guidance_scale: f64,
    /// Output width in pixels (a multiple of 8; default: the UNet's sample size x 8).
    pub width: Option<u32>,
    /// Output height in pixels (a multiple of 8).
    pub height: Option<u32>,
    /// Images per prompt.
    pub num_images: usize,
    /// Seed of the initial noise (and of per-step noise); `None` draws one.
    pub seed: Option<Seed>,
    /// Scheduler name (`ddim`, `euler`, `euler_a`, `dpmpp_2m`, `dpmpp_2m_karras`, `lcm`);
    /// `None` uses the folder's scheduler when supported, else Euler.
    pub scheduler: Option<String>,
    /// Explicit initial latents `[num_images, C, h/8, w/8]` instead of seeded noise.
    pub latents: Option<Tensor<4>>,
    /// SDXL micro-conditioning: the (height, width) the training image had (default: the output
    /// size).
    pub original_size: Option<(u32, u32)>,
    /// SDXL micro-conditioning: the (top, left) crop (default (0, 0)).
    pub crops_coords_top_left: (u32, u32),
    /// SDXL micro-conditioning: the (height, width) aimed at (default: the output size).
    pub target_size: Option<(u32, u32)>,
    /// Decode the VAE in overlapping tiles (diffusers' `enable_tiling`): bounded memory for
    /// large images, at the cost of slight seam blending.
    pub vae_tiling: bool,
    /// One prompt per loaded IP-Adapter, in loading order (empty: adapters off).
    pub ip_adapter: Vec<IpAdapterPrompt>,
    /// Conditioning images for the loaded ControlNets (each names its ControlNet; several
    /// ControlNets add their residuals, as diffusers' `MultiControlNetModel`).
    pub controlnet: Vec<ControlNetPrompt>,
    /// Previews of the images while they are denoised.
    pub preview: Option<PreviewOptions>,
    /// Encode prompts longer than 75 tokens in 75-token windows (compel's / A1111's way)
    /// instead of truncating them as diffusers does.
    pub long_prompt: bool,
}

/// One ControlNet's input for a generation (diffusers' `image`,
/// `controlnet_conditioning_scale`, `control_guidance_start` / `_end`).
#[derive(Debug, Clone)]
pub struct ControlNetPrompt {
    /// Index of the loaded ControlNet ([`StableDiffusion::load_controlnet`]'s return value).
    pub net: usize,
    /// The conditioning image (pose skeleton, edges, depth, keypoints; resized to the output
    /// size if it differs).
    pub image: RgbaImage,
    /// Conditioning scale (0..=2).
    pub scale: f32,
    /// Fraction of the steps after which the ControlNet starts (0..=1).
    pub guidance_start: f64,
    /// Fraction of the steps after which it stops (`guidance_start..=1`).
    pub guidance_end: f64,
    /// Attend to this IP-Adapter's image tokens instead of the prompt (InstantID's IdentityNet
    /// takes the face tokens of the InstantID adapter).
    pub context_from_ip_adapter: Option<usize>,
}

impl ControlNetPrompt {
    /// `image` for ControlNet `net` at `scale`, over all steps, attending to the prompt.
    pub fn new(net: usize, image: RgbaImage, scale: f32) -> Self {
        ControlNetPrompt {
            net,
            image,
            scale,
            guidance_start: 0.0,
            guidance_end: 1.0,
            context_from_ip_adapter: None,
        }
    }
}

impl Default for TextToImageOptions {
    fn default() -> Self {
        TextToImageOptions {
            prompt: String::new(),
            negative_prompt: String::new(),
            num_inference_steps: 30,
            guidance_scale: 7.5,
            width: None,
            height: None,
            num_images: 1,
            seed: None,
            scheduler: None,
            latents: None,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            vae_tiling: false,
            ip_adapter: Vec::new(),
            controlnet: Vec::new(),
            preview: None,
            long_prompt: false,
        }
    }
}

/// One text encoder with its tokenizer.
#[derive(Debug)]
struct TextTower {
    tokenizer: ClipTokenizer,
    encoder: ClipTextModel,
}

/// A loaded Stable Diffusion (1.5-style or XL) pipeline.
#[derive(Debug)]
pub struct StableDiffusion {
    towers: Vec<TextTower>,
    unet: UNet2DConditionModel,
    unet_config: UNetConfig,
    vae: AutoencoderKL,
    vae_config: VaeConfig,
    scheduler_config: SchedulerConfig,
    force_zeros_for_empty_prompt: bool,
    ip_adapters: Vec<IpAdapter>,
    image_encoder: Option<ImageEncoder>,
    controlnets: Vec<ControlNetModel>,
    precision: Precision,
    device: Device,
}

impl StableDiffusion {
    /// Loads a diffusers pipeline folder (or an `hf://owner/name` reference, see [`crate::hub`]);
    /// SDXL is recognised by `text_encoder_2/`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let dir = &*crate::hub::resolve(dir)?;
        let index: serde_json::Value = read_config(&dir.join("model_index.json"))?;
        let mut towers = vec![TextTower {
            tokenizer: ClipTokenizer::load(&dir.join("tokenizer"))?,
            encoder: ClipTextModel::load(&dir.join("text_encoder"), device)?,
        }];
        if dir.join("text_encoder_2").is_dir() {
            towers.push(TextTower {
                tokenizer: ClipTokenizer::load(&dir.join("tokenizer_2"))?,
                encoder: ClipTextModel::load(&dir.join("text_encoder_2"), device)?,
            });
        }
        let (unet_config, unet) = UNet2DConditionModel::load(&dir.join("unet"), device)?;
        let (vae_config, vae) = AutoencoderKL::load(&dir.join("vae"), device)?;
        Self::assemble(
            dir,
            &index,
            towers,
            (unet_config, unet),
            (vae_config, vae),
            device,
        )
    }

    /// The pipeline from loaded parts; the scheduler config comes from `dir`.
    fn assemble(
        dir: &Path,
        index: &serde_json::Value,
        towers: Vec<TextTower>,
        (unet_config, unet): (UNetConfig, UNet2DConditionModel),
        (vae_config, vae): (VaeConfig, AutoencoderKL),
        device: &Device,
    ) -> Result<Self> {
        let scheduler_config =
            SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?;
        Ok(StableDiffusion {
            towers,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler_config,
            force_zeros_for_empty_prompt: index["force_zeros_for_empty_prompt"]
                .as_bool()
                .unwrap_or(false),
            ip_adapters: Vec::new(),
            image_encoder: None,
            controlnets: Vec::new(),
            precision: Precision::F32,
            device: device.clone(),
        })
    }

    /// The precision the models compute in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Computes in `precision` from now on: every loaded model's weights (and those of adapters
    /// and ControlNets loaded later) are cast to it. The VAE of an SDXL pipeline stays f32 when
    /// its config says `force_upcast` (as diffusers' SDXL pipelines upcast it). Going back to
    /// [`Precision::F32`] after half precision keeps the rounding of the half-precision weights.
    /// A device without the dtype is a typed error and changes nothing.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        precision.check(&self.device)?;
        let dtype = precision.float_dtype();
        for tower in &mut self.towers {
            tower.encoder = cast_module(tower.encoder.clone(), dtype);
        }
        self.unet = cast_module(self.unet.clone(), dtype);
        self.vae = cast_module(self.vae.clone(), self.vae_dtype(precision));
        self.controlnets = std::mem::take(&mut self.controlnets)
            .into_iter()
            .map(|net| cast_module(net, dtype))
            .collect();
        self.image_encoder = self
            .image_encoder
            .take()
            .map(|encoder| cast_module(encoder, dtype));
        self.ip_adapters = std::mem::take(&mut self.ip_adapters)
            .into_iter()
            .map(|adapter| adapter.with_dtype(dtype))
            .collect();
        self.precision = precision;
        Ok(())
    }

    /// The VAE's dtype under `precision`.
    fn vae_dtype(&self, precision: Precision) -> FloatDType {
        if self.is_xl() && self.vae_config.force_upcast {
            FloatDType::F32
        } else {
            precision.float_dtype()
        }
    }

    /// Loads an IP-Adapter file (`.bin` / `.safetensors`; IP-Adapter, Plus, Full-Face or FaceID,
    /// recognised from its keys) for this pipeline's UNet, as diffusers' `load_ip_adapter`;
    /// adapters that take images need a CLIP image encoder (a transformers
    /// `CLIPVisionModelWithProjection` folder), loaded once and shared by every adapter.
    /// Returns the adapter's position in [`TextToImageOptions::ip_adapter`].
    pub fn load_ip_adapter(&mut self, file: &Path, image_encoder: Option<&Path>) -> Result<usize> {
        let adapter = IpAdapter::load(file, &self.unet, &self.device)?;
        self.add_ip_adapter(adapter, image_encoder)
    }

    /// Loads InstantID's face adapter (`ip-adapter.bin`: a Resampler on the raw face embedding).
    pub fn load_instantid_adapter(&mut self, file: &Path) -> Result<usize> {
        let adapter = IpAdapter::load_instantid(file, &self.unet, &self.device)?;
        self.add_ip_adapter(adapter, None)
    }

    fn add_ip_adapter(
        &mut self,
        adapter: IpAdapter,
        image_encoder: Option<&Path>,
    ) -> Result<usize> {
        let dtype = self.precision.float_dtype();
        if let Some(dir) = image_encoder {
            self.image_encoder = Some(cast_module(ImageEncoder::load(dir, &self.device)?, dtype));
        }
        if adapter.needs_image_encoder() && self.image_encoder.is_none() {
            return Err(AvatarError::Config(format!(
                "the {:?} IP-Adapter needs a CLIP image encoder folder (image_encoder/)",
                adapter.kind()
            )));
        }
        self.ip_adapters.push(adapter.with_dtype(dtype));
        Ok(self.ip_adapters.len() - 1)
    }

    /// Loads a diffusers ControlNet folder (`config.json` + `diffusion_pytorch_model.safetensors`)
    /// made for this pipeline's base model; returns its index for [`ControlNetPrompt::net`].
    pub fn load_controlnet(&mut self, dir: &Path) -> Result<usize> {
        let (config, net): (ControlNetConfig, ControlNetModel) =
            ControlNetModel::load(dir, &self.device)?;
        net.check_compatible(&config, &self.unet_config, &dir.display().to_string())?;
        self.controlnets
            .push(cast_module(net, self.precision.float_dtype()));
        Ok(self.controlnets.len() - 1)
    }

    /// Number of loaded ControlNets.
    pub fn controlnet_count(&self) -> usize {
        self.controlnets.len()
    }

    /// The loaded IP-Adapters, in loading order.
    pub fn ip_adapters(&self) -> &[IpAdapter] {
        &self.ip_adapters
    }

    /// The UNet (for adapters that are checked against it).
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }

    /// The IP-Adapter additions for `n` images per prompt, batched like the prompt embeddings.
    fn ip_adapter_injection(
        &self,
        prompts: &[IpAdapterPrompt],
        n: usize,
        guided: bool,
    ) -> Result<(AttentionInjection, Vec<Tensor<3>>)> {
        let mut injection = AttentionInjection::default();
        let mut all_tokens = Vec::new();
        if prompts.is_empty() {
            return Ok((injection, all_tokens));
        }
        if prompts.len() != self.ip_adapters.len() {
            return Err(AvatarError::invalid(
                "ip_adapter",
                format!(
                    "{} IP-Adapter prompts for {} loaded adapters",
                    prompts.len(),
                    self.ip_adapters.len()
                ),
            ));
        }
        for (adapter, prompt) in self.ip_adapters.iter().zip(prompts) {
            if !(0.0..=2.0).contains(&prompt.scale) {
                return Err(AvatarError::invalid(
                    "ip_adapter_scale",
                    format!("{} is out of range 0..=2", prompt.scale),
                ));
            }
            let (uncond, cond) =
                adapter.tokens(prompt, self.image_encoder.as_ref(), &self.device)?;
            let cond = Tensor::cat(vec![cond; n], 0);
            let tokens = if guided {
                Tensor::cat(vec![Tensor::cat(vec![uncond; n], 0), cond], 0)
            } else {
                cond
            };
            match &prompt.block_scales {
                None => adapter.inject(tokens.clone(), |_| prompt.scale, &mut injection),
                Some(blocks) => {
                    let by_location = blocks.resolve(&self.unet)?;
                    let by_processor: std::collections::HashMap<usize, f32> = self
                        .unet
                        .attention_processors()
                        .into_iter()
                        .map(|p| {
                            (
                                p.index,
                                by_location.get(&p.location).copied().unwrap_or(0.0),
                            )
                        })
                        .collect();
                    adapter.inject(
                        tokens.clone(),
                        |index| by_processor.get(&index).copied().unwrap_or(0.0),
                        &mut injection,
                    );
                }
            }
            all_tokens.push(tokens);
        }
        Ok((injection, all_tokens))
    }

    /// The ControlNet inputs for `n` images of `height` x `width`, batched for guidance.
    fn control_inputs(
        &self,
        prompts: &[ControlNetPrompt],
        ip_tokens: &[Tensor<3>],
        (n, height, width): (usize, usize, usize),
        guided: bool,
    ) -> Result<Vec<ControlInput>> {
        prompts
            .iter()
            .map(|prompt| {
                if prompt.net >= self.controlnets.len() {
                    return Err(AvatarError::invalid(
                        "controlnet",
                        format!(
                            "ControlNet {} is not loaded ({} loaded)",
                            prompt.net,
                            self.controlnets.len()
                        ),
                    ));
                }
                if !(0.0..=2.0).contains(&prompt.scale) {
                    return Err(AvatarError::invalid(
                        "controlnet_conditioning_scale",
                        format!("{} is out of range 0..=2", prompt.scale),
                    ));
                }
                if !(0.0..=1.0).contains(&prompt.guidance_start)
                    || !(prompt.guidance_start..=1.0).contains(&prompt.guidance_end)
                {
                    return Err(AvatarError::invalid(
                        "control_guidance",
                        format!(
                            "start {} and end {} must satisfy 0 <= start <= end <= 1",
                            prompt.guidance_start, prompt.guidance_end
                        ),
                    ));
                }
                let context = match prompt.context_from_ip_adapter {
                    None => None,
                    Some(k) => Some(ip_tokens.get(k).cloned().ok_or_else(|| {
                        AvatarError::invalid(
                            "controlnet",
                            format!("no tokens of IP-Adapter {k} in this request"),
                        )
                    })?),
                };
                let (w, h) = (width as u32, height as u32);
                let image = if prompt.image.dimensions() == (w, h) {
                    prompt.image.clone()
                } else {
                    image::imageops::resize(
                        &prompt.image,
                        w,
                        h,
                        image::imageops::FilterType::Lanczos3,
                    )
                };
                let image = Tensor::cat(vec![rgb_to_tensor(&image, &self.device); n], 0);
                let image = if guided {
                    Tensor::cat(vec![image.clone(), image], 0)
                } else {
                    image
                };
                Ok(ControlInput {
                    net: prompt.net,
                    image,
                    context,
                    scale: prompt.scale,
                    guidance_start: prompt.guidance_start,
                    guidance_end: prompt.guidance_end,
                })
            })
            .collect()
    }

    /// Loads a single-file checkpoint (original LDM/SGM key names, as shared on model hubs),
    /// taking configs, tokenizers and the scheduler from the diffusers folder `config_dir` (as
    /// diffusers' `from_single_file(..., config=...)` does; nothing is downloaded).
    pub fn load_single_file(file: &Path, config_dir: &Path, device: &Device) -> Result<Self> {
        let file = &*crate::hub::resolve(file)?;
        let config_dir = &*crate::hub::resolve(config_dir)?;
        let index: serde_json::Value = read_config(&config_dir.join("model_index.json"))?;
        let unet_config: UNetConfig = read_config(&config_dir.join("unet/config.json"))?;
        let vae_config: VaeConfig = read_config(&config_dir.join("vae/config.json"))?;
        let parts = convert_single_file(
            file,
            unet_config.layers_per_block,
            vae_config.block_out_channels.len(),
        )?;
        let label = |part: &str| format!("{} ({part})", file.display());
        let clip = |dir: &str,
                    tensors: &std::collections::BTreeMap<String, RawTensor>|
         -> Result<TextTower> {
            let text = std::fs::read_to_string(config_dir.join(dir).join("config.json"))
                .map_err(|e| AvatarError::io(config_dir.join(dir).join("config.json"), e))?;
            let config = ClipTextConfig::from_hub_json(&text)?;
            let tokenizer_dir = dir.replace("text_encoder", "tokenizer");
            Ok(TextTower {
                tokenizer: ClipTokenizer::load(&config_dir.join(tokenizer_dir))?,
                encoder: ClipTextModel::load_bytes(
                    &config,
                    to_safetensors(tensors)?,
                    &label(dir),
                    device,
                )?,
            })
        };
        let mut towers = vec![clip("text_encoder", &parts.text_encoder)?];
        if !parts.text_encoder_2.is_empty() {
            towers.push(clip("text_encoder_2", &parts.text_encoder_2)?);
        }
        let unet = UNet2DConditionModel::load_bytes(
            &unet_config,
            to_safetensors(&parts.unet)?,
            &label("unet"),
            device,
        )?;
        let vae = AutoencoderKL::load_bytes(
            &vae_config,
            to_safetensors(&parts.vae)?,
            &label("vae"),
            device,
        )?;
        Self::assemble(
            config_dir,
            &index,
            towers,
            (unet_config, unet),
            (vae_config, vae),
            device,
        )
    }

    /// Whether this is an SDXL pipeline (two text encoders, added conditioning).
    pub fn is_xl(&self) -> bool {
        self.towers.len() == 2
    }

    /// How many 75-token windows `text` fills (at least 1).
    pub fn prompt_windows(&self, text: &str) -> usize {
        self.towers[0]
            .tokenizer
            .encode(text)
            .len()
            .div_ceil(MAX_LENGTH - 2)
            .max(1)
    }

    /// `(prompt_embeds [1, 77 * windows, D], pooled [1, P])` of one text: one window is how the
    /// diffusers pipelines encode it (truncated to 75 tokens); more windows encode each run of
    /// 75 tokens on its own and concatenate them (SDXL's pooled embedding from the first).
    pub fn encode_prompt(&self, text: &str, windows: usize) -> (Tensor<3>, Option<Tensor<2>>) {
        let windows = windows.max(1);
        let outputs: Vec<_> = self
            .towers
            .iter()
            .map(|tower| {
                let ids: Vec<i64> = tower
                    .tokenizer
                    .encode_windows(text, MAX_LENGTH, windows)
                    .into_iter()
                    .flatten()
                    .map(i64::from)
                    .collect();
                let ids = Tensor::<2, Int>::from_data(
                    TensorData::new(ids, [windows, MAX_LENGTH]),
                    &self.device,
                );
                tower.encoder.forward(ids)
            })
            .collect();
        let joined = |t: Tensor<3>| {
            let [_, _, d] = t.dims();
            t.reshape([1, windows * MAX_LENGTH, d])
        };
        if self.is_xl() {
            let embeds = Tensor::cat(outputs.iter().map(|o| o.penultimate()).collect(), 2);
            let pooled = outputs[1].text_embeds.clone().map(|p| {
                let [_, d] = p.dims();
                p.slice([0..1, 0..d])
            });
            (joined(embeds), pooled)
        } else {
            (joined(outputs[0].last_hidden_state.clone()), None)
        }
    }

    fn scheduler(&self, name: Option<&str>) -> Result<Scheduler> {
        match name {
            Some(name) => Scheduler::from_name(name, &self.scheduler_config),
            None => Scheduler::from_config(&self.scheduler_config)
                .or_else(|_| Scheduler::from_name("euler", &self.scheduler_config)),
        }
    }

    fn size(&self, options: &TextToImageOptions) -> Result<(usize, usize)> {
        let factor = 1usize << (self.vae_config.block_out_channels.len() - 1);
        let default = self.unet_config.sample_size.unwrap_or(64) * factor;
        let check = |field: &'static str, value: Option<u32>| -> Result<usize> {
            let value = value.map(|v| v as usize).unwrap_or(default);
            if value == 0 || !value.is_multiple_of(8) || value > 2048 {
                return Err(AvatarError::invalid(
                    field,
                    format!("{value} must be a multiple of 8 in 8..=2048"),
                ));
            }
            Ok(value)
        };
        Ok((
            check("height", options.height)?,
            check("width", options.width)?,
        ))
    }

    /// Checks the shared options and builds the guidance conditioning for `n` images.
    fn conditioning(
        &self,
        options: &TextToImageOptions,
        height: usize,
        width: usize,
    ) -> Result<Conditioning> {
        if !(1..=MAX_IMAGES).contains(&options.num_images) {
            return Err(AvatarError::invalid(
                "num_images",
                format!("{} is out of range 1..={MAX_IMAGES}", options.num_images),
            ));
        }
        if !(0.0..=50.0).contains(&options.guidance_scale) {
            return Err(AvatarError::invalid(
                "guidance_scale",
                format!("{} is out of range 0..=50", options.guidance_scale),
            ));
        }
        let n = options.num_images;
        // Long prompts: as many windows as the longer of the two prompts needs (the other is
        // padded with empty windows, so both batch together under guidance).
        let windows = if options.long_prompt {
            self.prompt_windows(&options.prompt)
                .max(self.prompt_windows(&options.negative_prompt))
        } else {
            1
        };
        let (positive, pooled) = self.encode_prompt(&options.prompt, windows);
        let guided = options.guidance_scale > 1.0;
        let repeat2 = |t: Tensor<2>| Tensor::cat(vec![t; n], 0);
        let repeat3 = |t: Tensor<3>| Tensor::cat(vec![t; n], 0);
        let zeros_negative =
            self.force_zeros_for_empty_prompt && options.negative_prompt.is_empty();
        let (negative, negative_pooled) = if zeros_negative {
            (
                positive.zeros_like(),
                pooled.as_ref().map(Tensor::zeros_like),
            )
        } else {
            self.encode_prompt(&options.negative_prompt, windows)
        };
        let (prompt_embeds, text_embeds) = if guided {
            (
                Tensor::cat(vec![repeat3(negative), repeat3(positive)], 0),
                pooled.map(|p| {
                    Tensor::cat(
                        vec![repeat2(negative_pooled.expect("xl has pooled")), repeat2(p)],
                        0,
                    )
                }),
            )
        } else {
            (repeat3(positive), pooled.map(repeat2))
        };
        let added = text_embeds.map(|text_embeds| {
            let rows = text_embeds.dims()[0];
            let size = (height as u32, width as u32);
            let (oh, ow) = options.original_size.unwrap_or(size);
            let (top, left) = options.crops_coords_top_left;
            let (th, tw) = options.target_size.unwrap_or(size);
            let ids = [oh, ow, top, left, th, tw].map(|v| v as f32);
            let time_ids = Tensor::<1>::from_data(TensorData::new(ids.to_vec(), [6]), &self.device)
                .reshape([1, 6])
                .repeat_dim(0, rows);
            AddedConditioning {
                text_embeds,
                time_ids,
            }
        });
        let (attention, ip_tokens) = self.ip_adapter_injection(&options.ip_adapter, n, guided)?;
        let control =
            self.control_inputs(&options.controlnet, &ip_tokens, (n, height, width), guided)?;
        Ok(Conditioning {
            prompt_embeds,
            added,
            guidance_scale: options.guidance_scale,
            attention,
            control,
        })
    }

    fn latent_shape(&self, n: usize, height: usize, width: usize) -> [usize; 4] {
        let factor = 1usize << (self.vae_config.block_out_channels.len() - 1);
        [
            n,
            self.unet_config.in_channels,
            height / factor,
            width / factor,
        ]
    }

    /// Images in [0, 1] `[N, 3, H, W]` for `options`; `progress` after each step may cancel.
    /// Noise comes from `options.seed` (our documented normal stream).
    pub fn text_to_image_tensor(
        &self,
        options: &TextToImageOptions,
        progress: impl FnMut(Progress) -> bool,
    ) -> Result<Tensor<4>> {
        let seed = options.seed.clone().unwrap_or_else(Seed::random);
        let mut stream = seed.normal_stream();
        self.text_to_image_with_noise(
            options,
            |shape| stream.tensor(shape, &self.device),
            progress,
        )
    }

    /// [`StableDiffusion::text_to_image_tensor`] drawing every noise tensor (initial latents
    /// unless given, per-step noise of ancestral schedulers) from `noise`.
    pub fn text_to_image_with_noise(
        &self,
        options: &TextToImageOptions,
        mut noise: impl FnMut([usize; 4]) -> Tensor<4>,
        progress: impl FnMut(Progress) -> bool,
    ) -> Result<Tensor<4>> {
        let (height, width) = self.size(options)?;
        let conditioning = self.conditioning(options, height, width)?;
        let mut scheduler = self.scheduler(options.scheduler.as_deref())?;
        scheduler.set_timesteps(options.num_inference_steps)?;
        let shape = self.latent_shape(options.num_images, height, width);
        let latents = match &options.latents {
            Some(latents) if latents.dims() == shape => latents.clone(),
            Some(latents) => {
                return Err(AvatarError::invalid(
                    "latents",
                    format!("shape {:?}, expected {shape:?}", latents.dims()),
                ));
            }
            None => noise(shape),
        };
        let latents = denoise(
            &self.unet,
            &self.controlnets,
            &mut scheduler,
            latents,
            true,
            0,
            &conditioning,
            noise,
            progress,
            self.preview_hook(options),
        )?;
        Ok(decode_latents(
            &self.vae,
            &self.vae_config,
            latents,
            options.vae_tiling,
        ))
    }

    /// What [`denoise`] calls after each step: decodes and hands on the previews `options`
    /// asks for.
    fn preview_hook<'a>(
        &'a self,
        options: &'a TextToImageOptions,
    ) -> impl FnMut(usize, usize, Tensor<4>) -> Result<()> + 'a {
        move |step, total, estimate| {
            let Some(preview) = &options.preview else {
                return Ok(());
            };
            if !preview.due(step, total) {
                return Ok(());
            }
            let images = match preview.mode {
                PreviewMode::Approximate => approximate_rgb(estimate, self.is_xl())?,
                PreviewMode::Vae => tensor_to_rgba(decode_latents(
                    &self.vae,
                    &self.vae_config,
                    estimate,
                    options.vae_tiling,
                ))?,
            };
            (preview.callback.0)(Preview {
                step,
                total,
                images,
            });
            Ok(())
        }
    }

    /// Image-to-image: `image` `[1 or N, 3, H, W]` in [0, 1] is encoded, noised to `strength`
    /// (0 keeps it, 1 replaces it) and denoised under the prompt; `options.width/height` are
    /// taken from the image. Noise comes from `options.seed`.
    pub fn image_to_image_tensor(
        &self,
        image: Tensor<4>,
        strength: f64,
        options: &TextToImageOptions,
        progress: impl FnMut(Progress) -> bool,
    ) -> Result<Tensor<4>> {
        let seed = options.seed.clone().unwrap_or_else(Seed::random);
        let mut stream = seed.normal_stream();
        self.image_to_image_with_noise(
            image,
            strength,
            options,
            |shape| stream.tensor(shape, &self.device),
            progress,
        )
    }

    /// [`StableDiffusion::image_to_image_tensor`] drawing noise from `noise`, in diffusers'
    /// order: the VAE posterior sample, the forward-diffusion noise, then per-step noise.
    pub fn image_to_image_with_noise(
        &self,
        image: Tensor<4>,
        strength: f64,
        options: &TextToImageOptions,
        mut noise: impl FnMut([usize; 4]) -> Tensor<4>,
        progress: impl FnMut(Progress) -> bool,
    ) -> Result<Tensor<4>> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(AvatarError::invalid(
                "strength",
                format!("{strength} is out of range 0..=1"),
            ));
        }
        let [images, channels, height, width] = image.dims();
        let n = options.num_images;
        if channels != 3 || !(images == 1 || images == n) {
            return Err(AvatarError::invalid(
                "image",
                format!("shape {:?}: expected [1 or {n}, 3, H, W]", image.dims()),
            ));
        }
        let sized = TextToImageOptions {
            height: Some(height as u32),
            width: Some(width as u32),
            ..options.clone()
        };
        self.size(&sized)?;
        let conditioning = self.conditioning(&sized, height, width)?;
        let mut scheduler = self.scheduler(options.scheduler.as_deref())?;
        scheduler.set_timesteps(options.num_inference_steps)?;
        let steps = scheduler.timesteps().len();
        let start = steps - ((steps as f64 * strength) as usize).min(steps);
        if start == steps {
            return Err(AvatarError::invalid(
                "strength",
                format!("{strength} x {steps} steps leaves no step to run"),
            ));
        }
        scheduler.set_begin_index(start);

        let image = if images == n {
            image
        } else {
            Tensor::cat(vec![image; n], 0)
        };
        let posterior = self.vae.encode(image.mul_scalar(2.0).sub_scalar(1.0));
        let sample = posterior.sample(noise(posterior.mean.dims()));
        let init = sample.mul_scalar(self.vae_config.scaling_factor);
        let t = scheduler.timesteps()[start];
        let noisy = scheduler.add_noise(init.clone(), noise(init.dims()), t)?;
        let latents = denoise(
            &self.unet,
            &self.controlnets,
            &mut scheduler,
            noisy,
            false,
            start,
            &conditioning,
            noise,
            progress,
            self.preview_hook(options),
        )?;
        Ok(decode_latents(
            &self.vae,
            &self.vae_config,
            latents,
            options.vae_tiling,
        ))
    }

    /// RGBA images (opaque) for `options`.
    pub fn text_to_image(
        &self,
        options: &TextToImageOptions,
        progress: impl FnMut(Progress) -> bool,
    ) -> Result<Vec<RgbaImage>> {
        tensor_to_rgba(self.text_to_image_tensor(options, progress)?)
    }

    /// RGBA images (opaque) from `image` (RGB(A), any size: resized to the nearest multiple of
    /// 8 below) at `strength`.
    pub fn image_to_image(
        &self,
        image: &RgbaImage,
        strength: f64,
        options: &TextToImageOptions,
        progress: impl FnMut(Progress) -> bool,
    ) -> Result<Vec<RgbaImage>> {
        let (w, h) = image.dimensions();
        let (w8, h8) = (w / 8 * 8, h / 8 * 8);
        if w8 == 0 || h8 == 0 {
            return Err(AvatarError::invalid(
                "image",
                format!("{w}x{h} is smaller than 8x8"),
            ));
        }
        let image = if (w8, h8) == (w, h) {
            image.clone()
        } else {
            image::imageops::resize(image, w8, h8, image::imageops::FilterType::Lanczos3)
        };
        let tensor = rgb_to_tensor(&image, &self.device);
        tensor_to_rgba(self.image_to_image_tensor(tensor, strength, options, progress)?)
    }
}
