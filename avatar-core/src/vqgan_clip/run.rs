//! The VQGAN+CLIP optimisation: Adam on the VQGAN latent `z` so that CLIP sees the prompts in
//! cutouts of the decoded image.
//!
//! Each step (as in Katherine Crowson's notebook): straight-through vector quantisation of `z`,
//! VQGAN decode, `(x + 1) / 2` clamped to [0, 1] with Crowson's gradient rule (gradients that would
//! push a clamped pixel further out of range are dropped), `cutn` cutouts resampled to CLIP's input,
//! augmentations, CLIP normalisation, the prompts' spherical-distance losses, an optional MSE to the
//! initial latent (`init_weight`), an Adam step, and `z` clamped to the codebook's range.
//!
//! The clamp's gradient rule needs the incoming gradient, so the backward pass runs in two stages:
//! CLIP's part first, down to the clamped image; then the decoder's, driven by the masked gradient.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{Adam, AdamConfig, AdamState, Optimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbaImage;

use super::cutouts::{Augmentations, Cutout, draw_cutouts, make_cutouts};
use super::open_clip::{OpenClip, OpenClipConfig};
use super::prompts::{Prompt, PromptSpec};
use super::vqgan::{VqModel, VqganConfig};
use crate::diffusion::tokenizer::ClipTokenizer;
use crate::error::{AvatarError, Result};
use crate::imaging::{rgb_to_tensor, tensor_to_rgba};
use crate::seed::{NormalStream, Seed, SplitMix64};

/// Largest side of a run (the latent grows with the square of it).
pub const MAX_SIDE: usize = 1024;
/// Most iterations of one run.
pub const MAX_ITERATIONS: usize = 10_000;
/// Most cutouts per step.
pub const MAX_CUTN: usize = 256;

/// What to optimise towards, and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Text prompts (`"text:weight:stop"`).
    pub prompts: Vec<PromptSpec>,
    /// Image prompts: images whose CLIP embeddings (of `cutn` cutouts) are targets, with their
    /// weight and stop (the spec's `text` is only a label).
    pub image_prompts: Vec<(RgbaImage, PromptSpec)>,
    /// Start from this image (resized to the run's size) instead of random codebook entries.
    pub init_image: Option<RgbaImage>,
    /// Weight of the MSE between `z` and its initial value (0 disables it).
    pub init_weight: f32,
    /// Output width in pixels (rounded down to a multiple of the VQGAN's factor, 16).
    pub width: usize,
    /// Output height in pixels.
    pub height: usize,
    /// Adam steps.
    pub iterations: usize,
    /// Adam learning rate.
    pub step_size: f64,
    /// Cutouts per step.
    pub cutn: usize,
    /// Cutout size exponent (> 1 favours small cutouts).
    pub cut_pow: f64,
    /// Augmentations of the cutouts.
    pub augmentations: Augmentations,
    /// Seed of every random draw (initial tokens, cutouts, augmentations); `None` draws one.
    pub seed: Option<Seed>,
    /// Publish the decoded image every this many iterations (0: only at the end).
    pub display_every: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            prompts: Vec::new(),
            image_prompts: Vec::new(),
            init_image: None,
            init_weight: 0.0,
            width: 256,
            height: 256,
            iterations: 100,
            step_size: 0.1,
            cutn: 32,
            cut_pow: 1.0,
            augmentations: Augmentations::default(),
            seed: None,
            display_every: 10,
        }
    }
}

impl RunOptions {
    /// Checks every option, naming the offending field.
    pub fn validate(&self, factor: usize) -> Result<()> {
        let invalid =
            |field: &'static str, message: String| Err(AvatarError::invalid(field, message));
        if self.prompts.is_empty() && self.image_prompts.is_empty() {
            return invalid("prompts", "give at least one text or image prompt".into());
        }
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if side < factor || side > MAX_SIDE {
                return invalid(field, format!("{side} is outside {factor}..={MAX_SIDE}"));
            }
        }
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return invalid(
                "iterations",
                format!("{} is outside 1..={MAX_ITERATIONS}", self.iterations),
            );
        }
        if !(self.step_size.is_finite() && self.step_size > 0.0 && self.step_size <= 10.0) {
            return invalid(
                "step_size",
                format!("{} is outside (0, 10]", self.step_size),
            );
        }
        if self.cutn == 0 || self.cutn > MAX_CUTN {
            return invalid("cutn", format!("{} is outside 1..={MAX_CUTN}", self.cutn));
        }
        if !(self.cut_pow.is_finite() && self.cut_pow > 0.0 && self.cut_pow <= 10.0) {
            return invalid("cut_pow", format!("{} is outside (0, 10]", self.cut_pow));
        }
        if !(self.init_weight.is_finite() && self.init_weight >= 0.0) {
            return invalid(
                "init_weight",
                format!("{} is not a finite number >= 0", self.init_weight),
            );
        }
        Ok(())
    }
}

/// One step's report to the progress callback.
#[derive(Debug, Clone)]
pub struct RunProgress {
    /// Iterations done.
    pub iteration: usize,
    /// Iterations in the run.
    pub total: usize,
    /// The step's total loss.
    pub loss: f32,
    /// The decoded image, on display steps.
    pub image: Option<RgbaImage>,
    /// Time since the run started.
    pub elapsed: Duration,
}

#[derive(Debug, Default)]
struct ObserverState {
    iteration: AtomicUsize,
    total: AtomicUsize,
    cancelled: AtomicBool,
    finished: AtomicBool,
    latest: Mutex<Option<RgbaImage>>,
    loss: Mutex<Option<f32>>,
}

/// A run's live state, shared between the thread running it and any reader: the iteration
/// counter, the latest intermediate image, and a cancel switch. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RunObserver {
    state: Arc<ObserverState>,
}

impl RunObserver {
    /// A fresh observer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Iterations done so far.
    pub fn iteration(&self) -> usize {
        self.state.iteration.load(Ordering::Acquire)
    }

    /// Iterations in the run (0 before it starts).
    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::Acquire)
    }

    /// The latest intermediate (or final) image.
    pub fn latest_image(&self) -> Option<RgbaImage> {
        self.state.latest.lock().ok().and_then(|g| g.clone())
    }

    /// The latest step's loss.
    pub fn loss(&self) -> Option<f32> {
        self.state.loss.lock().ok().and_then(|g| *g)
    }

    /// Asks the run to stop after its current step.
    pub fn cancel(&self) {
        self.state.cancelled.store(true, Ordering::Release);
    }

    /// Whether [`RunObserver::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.state.cancelled.load(Ordering::Acquire)
    }

    /// Whether the run has ended (finished, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        self.state.finished.load(Ordering::Acquire)
    }

    fn publish(&self, iteration: usize, loss: f32, image: Option<&RgbaImage>) {
        self.state.iteration.store(iteration, Ordering::Release);
        if let Ok(mut l) = self.state.loss.lock() {
            *l = Some(loss);
        }
        if let (Some(image), Ok(mut latest)) = (image, self.state.latest.lock()) {
            *latest = Some(image.clone());
        }
    }
}

/// The loss of one step, by part.
#[derive(Debug, Clone, PartialEq)]
pub struct LossParts {
    /// `init_weight * mse(z, z_init) / 2` (0 without it).
    pub init: f32,
    /// One value per prompt (text prompts, then image prompts).
    pub prompts: Vec<f32>,
}

impl LossParts {
    /// The total.
    pub fn total(&self) -> f32 {
        self.init + self.prompts.iter().sum::<f32>()
    }
}

/// The targets of an optimisation: prompts and the optional pull towards the initial latent.
#[derive(Debug, Clone)]
pub struct Objective {
    /// Prompts (text and image).
    pub prompts: Vec<Prompt>,
    /// `(z_init, init_weight)`.
    pub init: Option<(Tensor<4>, f32)>,
}

/// VQGAN + CLIP, loaded on an autodiff device, ready to run optimisations.
#[derive(Debug)]
pub struct VqganClip {
    vqgan: VqModel,
    clip: OpenClip,
    tokenizer: ClipTokenizer,
    device: Device,
}

impl VqganClip {
    /// From loaded models (moved to `device`'s autodiff variant; their weights are frozen).
    pub fn new(vqgan: VqModel, clip: OpenClip, device: &Device) -> Result<Self> {
        let device = device.clone().autodiff();
        Ok(VqganClip {
            vqgan: vqgan.fork(&device).no_grad(),
            clip: clip.fork(&device).no_grad(),
            tokenizer: ClipTokenizer::openai("!")?,
            device,
        })
    }

    /// Loads taming's yaml + checkpoint and an open_clip config + state dict.
    pub fn load(
        vqgan_config: &Path,
        vqgan_weights: &Path,
        clip_config: &OpenClipConfig,
        clip_weights: &Path,
        device: &Device,
    ) -> Result<Self> {
        let config = VqganConfig::from_taming_yaml_file(vqgan_config)?;
        let vqgan = VqModel::load(&config, vqgan_weights, device)?;
        let clip = OpenClip::load(clip_config, clip_weights, device)?;
        Self::new(vqgan, clip, device)
    }

    /// The VQGAN.
    pub fn vqgan(&self) -> &VqModel {
        &self.vqgan
    }

    /// The CLIP model.
    pub fn clip(&self) -> &OpenClip {
        &self.clip
    }

    /// The (autodiff) device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pixels per latent cell along a side (16 for f16 VQGANs).
    pub fn factor(&self) -> usize {
        1 << (self.vqgan.decoder.up.len() - 1)
    }

    /// CLIP text embeddings `[n, E]` of `texts` (open_clip's tokenisation: zero padding,
    /// truncated to the context length).
    pub fn embed_texts(&self, texts: &[&str]) -> Tensor<2> {
        let context = self.clip.context_length();
        let vocab = self.clip.token_embedding.weight.val().dims()[0] as u32;
        let ids: Vec<i64> = texts
            .iter()
            .flat_map(|t| self.tokenizer.encode_padded(t, context))
            .map(|id| i64::from(id.min(vocab - 1)))
            .collect();
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [texts.len(), context]), &self.device);
        self.clip.encode_text(tokens).detach()
    }

    /// CLIP-normalises images in [0, 1] and embeds them: `[n, 3, S, S] -> [n, E]`.
    pub fn embed_images(&self, images: Tensor<4>) -> Tensor<2> {
        self.clip.encode_image(clip_normalize(images))
    }

    /// Decodes latents (straight-through quantised) to images in [0, 1].
    pub fn synthesize(&self, z: Tensor<4>) -> Tensor<4> {
        let (quantized, _) = self.vqgan.quantize.quantize(z);
        self.vqgan.decode(quantized).add_scalar(1.0).div_scalar(2.0)
    }

    /// The loss of `z` for fixed `cutouts` (augmented by `augment`), and its gradient w.r.t. `z`.
    pub fn loss_and_grad(
        &self,
        z: Tensor<4>,
        cutouts: &[Cutout],
        objective: &Objective,
        augment: impl FnOnce(Tensor<4>) -> Tensor<4> + Send,
    ) -> (LossParts, Tensor<4>) {
        crate::worker_pool::on_worker(&self.device, || {
            self.loss_and_grad_here(z, cutouts, objective, augment)
        })
    }

    fn loss_and_grad_here(
        &self,
        z: Tensor<4>,
        cutouts: &[Cutout],
        objective: &Objective,
        augment: impl FnOnce(Tensor<4>) -> Tensor<4>,
    ) -> (LossParts, Tensor<4>) {
        let z = z.detach().require_grad();
        let x = self.synthesize(z.clone());

        // Stage 1: CLIP's side, down to the clamped image.
        let image = x.clone().detach().clamp(0.0, 1.0).require_grad();
        let cut = self.clip.image_size();
        let batch = augment(make_cutouts(image.clone(), cutouts, cut));
        let embeds = self.embed_images(batch);
        let parts: Vec<Tensor<1>> = objective
            .prompts
            .iter()
            .map(|p| p.loss(embeds.clone()))
            .collect();
        let prompt_values: Vec<f32> = parts
            .iter()
            .map(|p| p.clone().into_scalar::<f32>())
            .collect();
        let total = parts
            .into_iter()
            .reduce(|a, b| a + b)
            .expect("validated: at least one prompt");
        let grads = total.backward();
        let g_image = image
            .grad(&grads)
            .map(Tensor::from_inner)
            .unwrap_or_else(|| image.zeros_like().detach());

        // Crowson's clamp: drop the gradients that push clamped pixels further out of range.
        let x_values = x.clone().detach();
        let outside = x_values.clone() - x_values.clamp(0.0, 1.0);
        let keep = (g_image.clone() * outside).greater_equal_elem(0.0);
        let g_x = g_image.mask_fill(keep.bool_not(), 0.0);

        // Stage 2: the decoder's side, driven by that gradient, plus the pull towards z_init.
        let mut surrogate = (x * g_x).sum();
        let mut init_value = 0.0;
        if let Some((z_init, weight)) = &objective.init
            && *weight > 0.0
        {
            let mse = (z.clone() - z_init.clone())
                .square()
                .mean()
                .mul_scalar(*weight / 2.0);
            init_value = mse.clone().into_scalar::<f32>();
            surrogate = surrogate + mse;
        }
        let grads = surrogate.backward();
        let grad = z
            .grad(&grads)
            .map(Tensor::from_inner)
            .unwrap_or_else(|| z.zeros_like().detach());
        (
            LossParts {
                init: init_value,
                prompts: prompt_values,
            },
            grad,
        )
    }

    /// The starting latent: random codebook entries from `rng`, or the encoded `image`.
    pub fn initial_latent(
        &self,
        rng: &mut SplitMix64,
        width: usize,
        height: usize,
        image: Option<&RgbaImage>,
    ) -> Tensor<4> {
        let f = self.factor();
        let (tw, th) = (width / f, height / f);
        match image {
            Some(image) => {
                let resized = image::imageops::resize(
                    image,
                    (tw * f) as u32,
                    (th * f) as u32,
                    image::imageops::FilterType::Lanczos3,
                );
                let pixels = rgb_to_tensor(&resized, &self.device)
                    .mul_scalar(2.0)
                    .sub_scalar(1.0);
                let (z, _) = self.vqgan.encode(pixels);
                z.detach()
            }
            None => {
                let n = self.vqgan.quantize.codebook().dims()[0] as u64;
                let ids: Vec<i64> = (0..th * tw).map(|_| rng.below(n) as i64).collect();
                let ids =
                    Tensor::<3, Int>::from_data(TensorData::new(ids, [1, th, tw]), &self.device);
                self.vqgan.quantize.lookup(ids).detach()
            }
        }
    }

    /// Runs a whole optimisation. `progress` sees every step (returning `false` cancels, as does
    /// `observer.cancel()`); `observer` holds the iteration counter and the latest image for other
    /// threads. Returns the final image; a cancelled run returns [`AvatarError::Cancelled`] (the
    /// observer keeps the last published image).
    pub fn run(
        &self,
        options: &RunOptions,
        observer: &RunObserver,
        mut progress: impl FnMut(&RunProgress) -> bool,
    ) -> Result<RgbaImage> {
        let result = self.run_inner(options, observer, &mut progress);
        observer.state.finished.store(true, Ordering::Release);
        result
    }

    fn run_inner(
        &self,
        options: &RunOptions,
        observer: &RunObserver,
        progress: &mut impl FnMut(&RunProgress) -> bool,
    ) -> Result<RgbaImage> {
        let f = self.factor();
        options.validate(f)?;
        let start = Instant::now();
        observer
            .state
            .total
            .store(options.iterations, Ordering::Release);
        let seed = options.seed.clone().unwrap_or_else(Seed::random).value();
        let mut rng = SplitMix64::new(seed);
        let mut normal = NormalStream::new(seed ^ 0x5851_F42D_4C95_7F2D);
        let (width, height) = (options.width / f * f, options.height / f * f);
        let cut = self.clip.image_size();

        let mut prompts = Vec::new();
        if !options.prompts.is_empty() {
            let texts: Vec<&str> = options.prompts.iter().map(|p| p.text.as_str()).collect();
            let embeds = self.embed_texts(&texts);
            let e = embeds.dims()[1];
            for (i, spec) in options.prompts.iter().enumerate() {
                prompts.push(Prompt {
                    embeds: embeds.clone().narrow(0, i, 1).reshape([1, e]),
                    weight: spec.weight,
                    stop: spec.stop,
                });
            }
        }
        for (image, spec) in &options.image_prompts {
            let resized = image::imageops::resize(
                image,
                width as u32,
                height as u32,
                image::imageops::FilterType::Lanczos3,
            );
            let pixels = rgb_to_tensor(&resized, &self.device);
            let boxes = draw_cutouts(&mut rng, width, height, cut, options.cutn, options.cut_pow);
            let batch = options.augmentations.apply(
                make_cutouts(pixels, &boxes, cut),
                &mut rng,
                &mut normal,
            );
            prompts.push(Prompt {
                embeds: self.embed_images(batch).detach(),
                weight: spec.weight,
                stop: spec.stop,
            });
        }

        let mut z = self.initial_latent(&mut rng, width, height, options.init_image.as_ref());
        let objective = Objective {
            prompts,
            init: (options.init_weight > 0.0).then(|| (z.clone(), options.init_weight)),
        };
        let mut optimizer = LatentOptimizer::new(self, options.step_size);

        for i in 1..=options.iterations {
            let boxes = draw_cutouts(&mut rng, width, height, cut, options.cutn, options.cut_pow);
            let (parts, grad) = self.loss_and_grad(z.clone(), &boxes, &objective, |batch| {
                options.augmentations.apply(batch, &mut rng, &mut normal)
            });
            let loss = parts.total();
            if !loss.is_finite() {
                return Err(AvatarError::Backend(format!(
                    "the loss became {loss} at iteration {i}"
                )));
            }
            z = optimizer.step(z, grad);

            let display = i == options.iterations
                || (options.display_every > 0 && i % options.display_every == 0);
            let image = if display {
                Some(self.render(z.clone())?)
            } else {
                None
            };
            observer.publish(i, loss, image.as_ref());
            let report = RunProgress {
                iteration: i,
                total: options.iterations,
                loss,
                image,
                elapsed: start.elapsed(),
            };
            let go_on = progress(&report);
            if !go_on || observer.is_cancelled() {
                observer.cancel();
                return Err(AvatarError::Cancelled);
            }
            if i == options.iterations {
                return Ok(report.image.expect("the last step is displayed"));
            }
        }
        unreachable!("iterations >= 1 was validated")
    }

    /// The image of latent `z` (quantised, decoded, clamped).
    pub fn render(&self, z: Tensor<4>) -> Result<RgbaImage> {
        let image = self.synthesize(z.detach()).clamp(0.0, 1.0);
        let mut images = tensor_to_rgba(image)?;
        Ok(images.remove(0))
    }
}

/// Adam on the latent (PyTorch's defaults: betas 0.9 / 0.999, eps 1e-8), with `z` clamped to the
/// codebook's per-channel range after every step.
pub struct LatentOptimizer {
    adam: Adam,
    state: Option<AdamState<4>>,
    learning_rate: f64,
    z_min: Tensor<4>,
    z_max: Tensor<4>,
}

impl LatentOptimizer {
    /// A fresh optimiser for `engine`'s codebook at `learning_rate`.
    pub fn new(engine: &VqganClip, learning_rate: f64) -> Self {
        let (z_min, z_max) = engine.vqgan.quantize.range();
        LatentOptimizer {
            adam: AdamConfig::new().with_epsilon(1e-8).build(),
            state: None,
            learning_rate,
            z_min: z_min.detach(),
            z_max: z_max.detach(),
        }
    }

    /// One step: `z - lr * adam(grad)`, clamped.
    pub fn step(&mut self, z: Tensor<4>, grad: Tensor<4>) -> Tensor<4> {
        let (next, state) = self
            .adam
            .step(self.learning_rate, z.detach(), grad, self.state.take());
        self.state = state;
        next.max_pair(self.z_min.clone())
            .min_pair(self.z_max.clone())
            .detach()
    }
}

pub use crate::imaging::clip_normalize;
