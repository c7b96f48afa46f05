//! Node.js bindings of avatar-core: a thin napi-rs layer. Options are parsed and validated by the
//! core; errors become JS `Error`s with `code` (`ERR_INVALID_OPTION`, `ERR_CANCELLED`, ...) and,
//! for bad options, `field` (the option's camelCase name).

#![deny(clippy::all)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use avatar_core::imaging::{Color, ImageFormat};
use avatar_core::{
    AvatarError, AvatarGenerator as CoreGenerator, DeviceSpec, GenerateOptions as CoreOptions,
    ModelSize, Seed, WeightsSource,
};
use napi::bindgen_prelude::{
    AbortSignal, AsyncTask, Buffer, Either, FromNapiValue, JsObjectValue, JsValue, Object, Unknown,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsError, Status, Task};
use napi_derive::napi;

/// How the generator is loaded.
#[napi(object)]
#[derive(Default)]
pub struct GeneratorOptions {
    /// `"small"` (96 px, the default) or `"large"` (128 px): the embedded weights.
    pub size: Option<String>,
    /// `"cpu"` (default), `"wgpu"`, `"cuda"`, `"cuda:1"` or `"auto"`.
    pub device: Option<String>,
    /// A `model.safetensors` (or Keras `.h5`) file instead of the embedded weights.
    pub weights: Option<String>,
}

/// Options of one avatar (all optional).
#[napi(object)]
#[derive(Default, Clone)]
pub struct GenerateOptions {
    /// The same seed always gives the same avatar: an integer (0..2^53-1) or any string.
    pub seed: Option<Either<f64, String>>,
    /// Keep the background transparent (png/webp).
    pub transparent: Option<bool>,
    /// Background colour `#RRGGBB` or `#RRGGBBAA` (default white); not with `transparent`.
    pub bg_color: Option<String>,
    /// Output side in pixels (16..1024); default the model's resolution.
    pub output_size: Option<u32>,
    /// `"png"` (default), `"webp"` or `"jpeg"`.
    pub format: Option<String>,
    /// Which embedded model the module-level `generate` uses: `"small"` or `"large"`.
    pub size: Option<String>,
}

/// Options of a batch: `n` random avatars or one per seed in `seeds`.
#[napi(object)]
#[derive(Default, Clone)]
pub struct BatchOptions {
    /// How many avatars (random seeds); ignored when `seeds` is given.
    pub n: Option<u32>,
    /// One avatar per seed.
    pub seeds: Option<Vec<Either<f64, String>>>,
    /// See `GenerateOptions.transparent`.
    pub transparent: Option<bool>,
    /// See `GenerateOptions.bgColor`.
    pub bg_color: Option<String>,
    /// See `GenerateOptions.outputSize`.
    pub output_size: Option<u32>,
    /// See `GenerateOptions.format`.
    pub format: Option<String>,
}

/// Progress of a batch, passed to the `onProgress` callback.
#[napi(object)]
#[derive(Clone, Copy)]
pub struct Progress {
    /// Avatars finished.
    pub done: u32,
    /// Avatars asked for.
    pub total: u32,
}

/// Progress of a diffusion call, passed to `onProgress` after every denoising step.
#[napi(object)]
pub struct DiffusionProgress {
    /// Steps done.
    pub done: u32,
    /// Steps in all.
    pub total: u32,
    /// With `previewEvery`: the images being drawn, as PNGs, every `previewEvery` steps.
    pub preview: Option<Vec<Buffer>>,
}

/// A DCGAN avatar generator (loads its weights once; share one per process).
#[napi]
pub struct AvatarGenerator {
    inner: Arc<CoreGenerator>,
}

/// The name of a core option as JS callers wrote it (camelCase, or the nested option).
fn js_field(field: &str) -> String {
    match field {
        "prompts" => "prompt".into(),
        "ip_adapter_scale" => "ipAdapter.scale".into(),
        "ip_adapter_image" => "ipAdapter.image".into(),
        "controlnet_conditioning_scale" => "controlnet.scale".into(),
        "control_guidance" => "controlnet.guidanceStart".into(),
        other => {
            let mut out = String::with_capacity(other.len());
            let mut upper = false;
            for c in other.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// A JS `Error` with `code` (and `field` for bad options) for a core error.
fn throwable(env: &Env, error: &AvatarError) -> napi::Error {
    let message = match error.field() {
        Some(field) => error.to_string().replacen(field, &js_field(field), 1),
        None => error.to_string(),
    };
    let js = JsError::from(napi::Error::new(error.code(), message));
    // SAFETY: `env` is the live environment of this call.
    let value = unsafe { js.into_value(env.raw()) };
    if let Some(field) = error.field() {
        // SAFETY: `value` was just created in `env` and is an object.
        let mut object = Object::from_raw(env.raw(), value);
        let _ = object.set_named_property("field", js_field(field).as_str());
    }
    // SAFETY: `value` is a live JS value of `env`.
    napi::Error::from(unsafe { Unknown::from_raw_unchecked(env.raw(), value) })
}

/// A core error for synchronous functions (`code` set, message names the JS field).
fn sync_error(env: &Env, error: AvatarError) -> napi::Error {
    throwable(env, &error)
}

fn parse_seed(seed: &Either<f64, String>) -> Result<Seed, AvatarError> {
    match seed {
        Either::A(number) => Seed::from_f64(*number),
        Either::B(text) => Ok(Seed::from(text.as_str())),
    }
}

fn core_options(
    seed: Option<&Either<f64, String>>,
    transparent: Option<bool>,
    bg_color: Option<&str>,
    output_size: Option<u32>,
    format: Option<&str>,
) -> Result<CoreOptions, AvatarError> {
    let options = CoreOptions {
        seed: seed.map(parse_seed).transpose()?,
        transparent: transparent.unwrap_or(false),
        bg_color: bg_color.map(str::parse::<Color>).transpose()?,
        output_size,
        format: format
            .map(str::parse::<ImageFormat>)
            .transpose()?
            .unwrap_or_default(),
    };
    options.validate()?;
    Ok(options)
}

impl GenerateOptions {
    fn to_core(&self) -> Result<CoreOptions, AvatarError> {
        core_options(
            self.seed.as_ref(),
            self.transparent,
            self.bg_color.as_deref(),
            self.output_size,
            self.format.as_deref(),
        )
    }
}

impl BatchOptions {
    fn to_core(&self) -> Result<(Vec<Seed>, CoreOptions), AvatarError> {
        let options = core_options(
            None,
            self.transparent,
            self.bg_color.as_deref(),
            self.output_size,
            self.format.as_deref(),
        )?;
        let seeds = match (&self.seeds, self.n) {
            (Some(seeds), _) => seeds.iter().map(parse_seed).collect::<Result<_, _>>()?,
            (None, Some(n)) => (0..n).map(|_| Seed::random()).collect(),
            (None, None) => {
                return Err(AvatarError::invalid("n", "give n or seeds"));
            }
        };
        Ok((seeds, options))
    }
}

fn load(options: &GeneratorOptions) -> Result<CoreGenerator, AvatarError> {
    let device: DeviceSpec = options.device.as_deref().unwrap_or("cpu").parse()?;
    let size: ModelSize = options.size.as_deref().unwrap_or("small").parse()?;
    let source = match &options.weights {
        Some(path) => WeightsSource::Path(path.into()),
        None => WeightsSource::Embedded(size),
    };
    CoreGenerator::load(source, &device)
}

/// Work on the libuv pool: one avatar or a batch, encoded.
pub struct GenerateTask {
    generator: Arc<CoreGenerator>,
    seeds: Option<Vec<Seed>>,
    options: CoreOptions,
    cancelled: Arc<AtomicBool>,
    progress: Option<ThreadsafeFunction<Progress, (), Progress, Status, false>>,
}

impl GenerateTask {
    fn run(&self) -> Result<Vec<Vec<u8>>, AvatarError> {
        let Some(seeds) = &self.seeds else {
            return Ok(vec![self.generator.generate_encoded(&self.options)?.bytes]);
        };
        let images = self
            .generator
            .generate_batch_with_progress(seeds, &self.options, |p| {
                if let Some(callback) = &self.progress {
                    let progress = Progress {
                        done: p.done as u32,
                        total: p.total as u32,
                    };
                    callback.call(progress, ThreadsafeFunctionCallMode::NonBlocking);
                }
                !self.cancelled.load(Ordering::Relaxed)
            })?;
        images
            .iter()
            .map(|image| avatar_core::imaging::encode(image, self.options.format))
            .collect()
    }
}

impl Task for GenerateTask {
    type Output = Result<Vec<Vec<u8>>, AvatarError>;
    type JsValue = Either<Buffer, Vec<Buffer>>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Ok(Err(AvatarError::Cancelled));
        }
        Ok(self.run())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        let mut buffers = output.map_err(|e| throwable(&env, &e))?;
        Ok(if self.seeds.is_some() {
            Either::B(buffers.into_iter().map(Buffer::from).collect())
        } else {
            Either::A(Buffer::from(buffers.remove(0)))
        })
    }

    fn finally(mut self, _env: Env) -> napi::Result<()> {
        // Release the progress callback so it no longer keeps the event loop alive.
        self.progress.take();
        Ok(())
    }
}

/// Queues `task` on the libuv pool, cancelled by `signal`: before it starts (napi drops the
/// work), while it runs (checked between chunks), or at once when the signal is already aborted.
fn spawn<T: Task + Cancellable>(
    env: &Env,
    task: T,
    signal: Option<Object>,
) -> napi::Result<AsyncTask<T>> {
    let Some(object) = signal else {
        return Ok(AsyncTask::new(task));
    };
    if object
        .get_named_property::<bool>("aborted")
        .unwrap_or(false)
    {
        task.cancelled().store(true, Ordering::Relaxed);
    }
    // SAFETY: `object` is a live JS value of `env`.
    let signal = unsafe { AbortSignal::from_napi_value(env.raw(), object.raw())? };
    let cancelled = task.cancelled().clone();
    signal.on_abort(move || cancelled.store(true, Ordering::Relaxed));
    Ok(AsyncTask::with_signal(task, signal))
}

/// Work that checks a shared flag between chunks or steps.
pub trait Cancellable {
    /// The flag an AbortSignal sets.
    fn cancelled(&self) -> &Arc<AtomicBool>;
}

impl Cancellable for GenerateTask {
    fn cancelled(&self) -> &Arc<AtomicBool> {
        &self.cancelled
    }
}

impl Cancellable for VqganClipTask {
    fn cancelled(&self) -> &Arc<AtomicBool> {
        &self.cancelled
    }
}

impl Cancellable for DiffusionTask {
    fn cancelled(&self) -> &Arc<AtomicBool> {
        &self.cancelled
    }
}

#[napi]
impl AvatarGenerator {
    /// Loads the embedded weights of `size` (or `weights`) on `device`. Throws on bad options.
    #[napi(constructor)]
    pub fn new(env: Env, options: Option<GeneratorOptions>) -> napi::Result<Self> {
        let generator = load(&options.unwrap_or_default()).map_err(|e| sync_error(&env, e))?;
        Ok(AvatarGenerator {
            inner: Arc::new(generator),
        })
    }

    /// The native output side in pixels (96 or 128 for the embedded models).
    #[napi(getter)]
    pub fn resolution(&self) -> u32 {
        self.inner.resolution()
    }

    /// The device the model runs on (`"cpu"`, `"wgpu"`, ...).
    #[napi(getter)]
    pub fn device(&self) -> String {
        self.inner.device_spec().to_string()
    }

    /// One encoded avatar, computed on the libuv thread pool. `signal` cancels it.
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn generate(
        &self,
        env: Env,
        options: Option<GenerateOptions>,
        #[napi(ts_arg_type = "AbortSignal | undefined | null")] signal: Option<Object>,
    ) -> napi::Result<AsyncTask<GenerateTask>> {
        let options = options
            .unwrap_or_default()
            .to_core()
            .map_err(|e| sync_error(&env, e))?;
        spawn(
            &env,
            GenerateTask {
                generator: self.inner.clone(),
                seeds: None,
                options,
                cancelled: Arc::default(),
                progress: None,
            },
            signal,
        )
    }

    /// One encoded avatar, computed on the calling thread (for scripts).
    #[napi]
    pub fn generate_sync(
        &self,
        env: Env,
        options: Option<GenerateOptions>,
    ) -> napi::Result<Buffer> {
        let options = options
            .unwrap_or_default()
            .to_core()
            .map_err(|e| sync_error(&env, e))?;
        let encoded = self
            .inner
            .generate_encoded(&options)
            .map_err(|e| sync_error(&env, e))?;
        Ok(encoded.bytes.into())
    }

    /// Many encoded avatars on the libuv pool, in chunks; `onProgress({done, total})` after each
    /// chunk; `signal` cancels between chunks (the promise rejects with `code: 'ERR_CANCELLED'`).
    #[napi(ts_return_type = "Promise<Buffer[]>")]
    pub fn generate_batch(
        &self,
        env: Env,
        options: BatchOptions,
        #[napi(ts_arg_type = "((progress: Progress) => void) | undefined | null")]
        on_progress: Option<ThreadsafeFunction<Progress, (), Progress, Status, false>>,
        #[napi(ts_arg_type = "AbortSignal | undefined | null")] signal: Option<Object>,
    ) -> napi::Result<AsyncTask<GenerateTask>> {
        let (seeds, options) = options.to_core().map_err(|e| sync_error(&env, e))?;
        spawn(
            &env,
            GenerateTask {
                generator: self.inner.clone(),
                seeds: Some(seeds),
                options,
                cancelled: Arc::default(),
                progress: on_progress,
            },
            signal,
        )
    }
}

/// Options of a Stable Diffusion call (the core's names, camelCase).
#[napi(object)]
#[derive(Default)]
pub struct TextToImageOptions {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from.
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 30).
    pub num_inference_steps: Option<u32>,
    /// Classifier-free guidance (default 7.5).
    pub guidance_scale: Option<f64>,
    /// Width in pixels (multiple of 8).
    pub width: Option<u32>,
    /// Height in pixels (multiple of 8).
    pub height: Option<u32>,
    /// Images per prompt (default 1).
    pub num_images: Option<u32>,
    /// Seed: an integer or any string.
    pub seed: Option<Either<f64, String>>,
    /// `ddim`, `euler`, `euler_a`, `dpmpp_2m`, `dpmpp_2m_karras` or `lcm`.
    pub scheduler: Option<String>,
    /// Image-to-image: an encoded PNG/JPEG/WebP to start from.
    pub image: Option<Buffer>,
    /// Image-to-image: how much of `image` to replace (default 0.75).
    pub strength: Option<f64>,
    /// One input per loaded IP-Adapter, in loading order (omit: adapters off).
    pub ip_adapter: Option<Vec<IpAdapterInput>>,
    /// Conditioning images for the loaded ControlNets.
    pub controlnet: Option<Vec<ControlNetInput>>,
    /// Check the images (needs the constructor's `safetyChecker` folder); flagged ones are
    /// replaced.
    pub safety_checker: Option<bool>,
    /// `black` (default), `blur`, `pixelate` or `sensitive_content_text`.
    pub safety_checker_type: Option<String>,
    /// Report the images being drawn (`preview` in `onProgress`) every this many steps.
    pub preview_every: Option<u32>,
    /// `approximate` (default: latent-resolution colours, nearly free) or `vae` (decoded).
    pub preview_mode: Option<String>,
    /// Encode prompts past 75 tokens in 75-token windows instead of truncating them.
    pub long_prompt: Option<bool>,
}

/// An IP-Adapter's input: an image (IP-Adapter, Plus, Full-Face) or a face embedding (FaceID,
/// InstantID), and its weight.
#[napi(object)]
pub struct IpAdapterInput {
    /// An encoded PNG/JPEG/WebP.
    pub image: Option<Buffer>,
    /// insightface's raw `embedding` (FaceID normalises it).
    pub face_embedding: Option<Vec<f64>>,
    /// Weight (0-2, default 1).
    pub scale: Option<f64>,
    /// FaceID-Plus-v2's shortcut weight (0-2; omit for v1).
    pub s_scale: Option<f64>,
    /// Weights per UNet block instead of `scale`, as diffusers' dict form of
    /// `set_ip_adapter_scale` (e.g. `{ up: { block_0: [0, 1, 0] } }`).
    pub block_scales: Option<serde_json::Value>,
}

/// A ControlNet's input.
#[napi(object)]
pub struct ControlNetInput {
    /// Index of the ControlNet in the constructor's `controlnets` (default: this entry's index).
    pub net: Option<u32>,
    /// The conditioning image (pose skeleton, edges, ...), encoded.
    pub image: Buffer,
    /// Conditioning scale (0-2, default 1).
    pub scale: Option<f64>,
    /// Fraction of the steps after which it starts (default 0).
    pub guidance_start: Option<f64>,
    /// Fraction of the steps after which it stops (default 1).
    pub guidance_end: Option<f64>,
}

/// Adapters loaded with a Stable Diffusion pipeline.
#[napi(object)]
#[derive(Default)]
pub struct AdapterFiles {
    /// IP-Adapter files (`.bin` / `.safetensors`).
    pub ip_adapters: Option<Vec<String>>,
    /// The CLIP image encoder folder the image adapters need.
    pub image_encoder: Option<String>,
    /// ControlNet folders.
    pub controlnets: Option<Vec<String>>,
    /// diffusers' `safety_checker/` folder (used by `safetyChecker: true`).
    pub safety_checker: Option<String>,
    /// U²-Net weights (`u2net.pth`, `u2netp.pth`, ... or safetensors) for `faceAvatar`'s
    /// `removeBackground` (without them, plain backgrounds are keyed).
    pub background_model: Option<String>,
    /// insightface's SCRFD `.onnx`: with `faceRecognizer`, `faceAvatar` gives a loaded
    /// IP-Adapter-FaceID(-Plus) the reference's face embedding.
    pub face_detector: Option<String>,
    /// insightface's ArcFace `.onnx`.
    pub face_recognizer: Option<String>,
    /// Compute precision of the models: `"fp32"` (default), `"fp16"` or `"bf16"`.
    pub precision: Option<String>,
}

/// `"fp32"` when absent.
fn parse_precision(
    text: Option<&str>,
) -> Result<avatar_core::diffusion::precision::Precision, AvatarError> {
    text.map_or(Ok(Default::default()), str::parse)
}

fn adapter_prompts(
    inputs: &[IpAdapterInput],
) -> Result<Vec<avatar_core::diffusion::ip_adapter::IpAdapterPrompt>, AvatarError> {
    inputs
        .iter()
        .map(|input| {
            Ok(avatar_core::diffusion::ip_adapter::IpAdapterPrompt {
                image: input
                    .image
                    .as_ref()
                    .map(|bytes| decode_image("ipAdapter.image", bytes))
                    .transpose()?,
                face_embedding: input
                    .face_embedding
                    .as_ref()
                    .map(|v| v.iter().map(|&x| x as f32).collect()),
                scale: input.scale.unwrap_or(1.0) as f32,
                s_scale: input.s_scale.map(|v| v as f32),
                block_scales: input
                    .block_scales
                    .as_ref()
                    .map(|v| {
                        avatar_core::diffusion::ip_adapter_scale::BlockScales::from_json(
                            &v.to_string(),
                        )
                        .map_err(|e| match e {
                            AvatarError::InvalidOption { message, .. } => {
                                AvatarError::invalid("ipAdapter.blockScales", message)
                            }
                            other => other,
                        })
                    })
                    .transpose()?,
            })
        })
        .collect()
}

fn control_prompts(
    inputs: &[ControlNetInput],
) -> Result<Vec<avatar_core::diffusion::pipeline::ControlNetPrompt>, AvatarError> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            Ok(avatar_core::diffusion::pipeline::ControlNetPrompt {
                guidance_start: input.guidance_start.unwrap_or(0.0),
                guidance_end: input.guidance_end.unwrap_or(1.0),
                ..avatar_core::diffusion::pipeline::ControlNetPrompt::new(
                    input.net.map_or(i, |n| n as usize),
                    decode_image("controlnet.image", &input.image)?,
                    input.scale.unwrap_or(1.0) as f32,
                )
            })
        })
        .collect()
}

/// A Stable Diffusion 1.5 / SDXL pipeline from a local diffusers folder or an
/// `hf://owner/name[@revision][?variant=fp16]` reference (every model path takes one).
#[napi]
pub struct StableDiffusion {
    inner: Arc<avatar_core::diffusion::pipeline::StableDiffusion>,
    safety: Option<Arc<avatar_core::diffusion::safety_checker::SafetyFilter>>,
    tools: avatar_core::diffusion::face_avatar::FaceAvatarTools,
}

/// The safety filter a task applies (`safetyChecker: true`) with its `safetyCheckerType`.
type TaskSafety = (
    Arc<avatar_core::diffusion::safety_checker::SafetyFilter>,
    Option<avatar_core::diffusion::safety_checker::Obfuscation>,
);

impl StableDiffusion {
    /// The filter for a call's `safetyChecker` / `safetyCheckerType`.
    fn task_safety(
        &self,
        enabled: Option<bool>,
        how: Option<&str>,
    ) -> Result<Option<TaskSafety>, AvatarError> {
        if !enabled.unwrap_or(false) {
            return Ok(None);
        }
        let filter = self.safety.clone().ok_or_else(|| {
            AvatarError::invalid(
                "safety_checker",
                "needs new StableDiffusion(model, device, { safetyChecker: <folder> })",
            )
        })?;
        let how = how.map(str::parse).transpose()?;
        Ok(Some((filter, how)))
    }
}

/// What a [`DiffusionTask`] draws.
enum DiffusionWork {
    /// Seed 002's InstantID avatars.
    Avatar(
        Arc<avatar_core::diffusion::avatar_gen::InstantId>,
        Box<(
            avatar_core::diffusion::avatar_gen::FaceReference,
            Option<image::RgbaImage>,
            avatar_core::diffusion::avatar_gen::AvatarGenOptions,
        )>,
    ),
    /// From the prompt alone.
    Text(Arc<avatar_core::diffusion::pipeline::StableDiffusion>),
    /// From an image, at a strength.
    Image(
        Arc<avatar_core::diffusion::pipeline::StableDiffusion>,
        image::RgbaImage,
        f64,
    ),
    /// Seed 001's face avatars from a reference photo.
    Face(
        Arc<avatar_core::diffusion::pipeline::StableDiffusion>,
        image::RgbaImage,
        Box<avatar_core::diffusion::face_avatar::FaceAvatarOptions>,
        avatar_core::diffusion::face_avatar::FaceAvatarTools,
    ),
}

/// Stable Diffusion work on the libuv pool.
pub struct DiffusionTask {
    safety: Option<TaskSafety>,
    options: avatar_core::diffusion::pipeline::TextToImageOptions,
    work: DiffusionWork,
    cancelled: Arc<AtomicBool>,
    progress: Option<ThreadsafeFunction<DiffusionProgress, (), DiffusionProgress, Status, false>>,
    /// PNGs of the latest preview, handed to the next progress report.
    previews: Arc<std::sync::Mutex<Option<Vec<Vec<u8>>>>>,
}

impl Task for DiffusionTask {
    type Output = Result<Vec<Vec<u8>>, AvatarError>;
    type JsValue = Vec<Buffer>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let report = |p: avatar_core::Progress| {
            if let Some(callback) = &self.progress {
                let preview = self
                    .previews
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                let progress = DiffusionProgress {
                    done: p.done as u32,
                    total: p.total as u32,
                    preview: preview.map(|pngs| pngs.into_iter().map(Buffer::from).collect()),
                };
                callback.call(progress, ThreadsafeFunctionCallMode::NonBlocking);
            }
            !self.cancelled.load(Ordering::Relaxed)
        };
        let images = match &self.work {
            DiffusionWork::Image(pipeline, image, strength) => {
                pipeline.image_to_image(image, *strength, &self.options, report)
            }
            DiffusionWork::Face(pipeline, image, options, tools) => {
                avatar_core::diffusion::face_avatar::face_avatars(
                    pipeline, image, options, tools, report,
                )
            }
            DiffusionWork::Text(pipeline) => pipeline.text_to_image(&self.options, report),
            DiffusionWork::Avatar(model, work) => {
                let (face, pose, options) = &**work;
                model
                    .generate(face, pose.as_ref(), options, report)
                    .map(|out| out.images)
            }
        };
        let images = match (&self.safety, images) {
            (Some((filter, how)), Ok(images)) => filter.filter(images, *how).map(|(i, _)| i),
            (_, images) => images,
        };
        Ok(images.and_then(|images| {
            images
                .iter()
                .map(|image| avatar_core::imaging::encode(image, ImageFormat::Png))
                .collect()
        }))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        let buffers = output.map_err(|e| throwable(&env, &e))?;
        Ok(buffers.into_iter().map(Buffer::from).collect())
    }

    fn finally(mut self, _env: Env) -> napi::Result<()> {
        self.progress.take();
        Ok(())
    }
}

#[napi]
impl StableDiffusion {
    /// Loads a diffusers folder (`model_index.json`, `unet/`, `vae/`, ...) on `device`, with
    /// optional IP-Adapters and ControlNets.
    #[napi(constructor)]
    pub fn new(
        env: Env,
        model: String,
        device: Option<String>,
        adapters: Option<AdapterFiles>,
    ) -> napi::Result<Self> {
        let load = || -> Result<_, AvatarError> {
            let spec: DeviceSpec = device.as_deref().unwrap_or("cpu").parse()?;
            let mut pipeline = avatar_core::diffusion::pipeline::StableDiffusion::load(
                std::path::Path::new(&model),
                &spec.device()?,
            )?;
            let adapters = adapters.unwrap_or_default();
            pipeline.set_precision(parse_precision(adapters.precision.as_deref())?)?;
            for (i, file) in adapters.ip_adapters.iter().flatten().enumerate() {
                let encoder = adapters.image_encoder.as_deref().filter(|_| i == 0);
                pipeline.load_ip_adapter(
                    std::path::Path::new(file),
                    encoder.map(std::path::Path::new),
                )?;
            }
            for dir in adapters.controlnets.iter().flatten() {
                pipeline.load_controlnet(std::path::Path::new(dir))?;
            }
            let safety = adapters
                .safety_checker
                .as_deref()
                .map(|dir| {
                    avatar_core::diffusion::safety_checker::SafetyFilter::load(
                        std::path::Path::new(dir),
                        avatar_core::diffusion::safety_checker::Obfuscation::Black,
                        &spec.device()?,
                    )
                })
                .transpose()?;
            let background = avatar_core::segmentation::BackgroundRemoval::from_model(
                adapters
                    .background_model
                    .as_deref()
                    .map(std::path::Path::new),
                &spec.device()?,
            )?;
            let faces = match (
                adapters.face_detector.as_deref(),
                adapters.face_recognizer.as_deref(),
            ) {
                (Some(detector), Some(recognizer)) => Some((
                    Arc::new(avatar_core::face_analysis::FaceAnalysis::load(
                        std::path::Path::new(detector),
                        std::path::Path::new(recognizer),
                        &spec.device()?,
                    )?),
                    avatar_core::face_analysis::DetectionOptions::default(),
                )),
                (None, None) => None,
                _ => {
                    return Err(AvatarError::invalid(
                        "faceDetector",
                        "faceDetector and faceRecognizer go together",
                    ));
                }
            };
            let tools = avatar_core::diffusion::face_avatar::FaceAvatarTools { background, faces };
            Ok((pipeline, safety, tools))
        };
        let (inner, safety, tools) = load().map_err(|e| sync_error(&env, e))?;
        Ok(StableDiffusion {
            inner: Arc::new(inner),
            safety: safety.map(Arc::new),
            tools,
        })
    }

    /// Whether the pipeline is SDXL.
    #[napi(getter)]
    pub fn is_xl(&self) -> bool {
        self.inner.is_xl()
    }

    /// The compute precision: `"fp32"`, `"fp16"` or `"bf16"`.
    #[napi(getter)]
    pub fn precision(&self) -> String {
        self.inner.precision().to_string()
    }

    /// PNG images for a prompt (or from `options.image`), computed on the libuv pool;
    /// `onProgress` after each step; `signal` cancels between steps.
    #[napi(ts_return_type = "Promise<Buffer[]>")]
    pub fn text_to_image(
        &self,
        env: Env,
        options: TextToImageOptions,
        #[napi(ts_arg_type = "((progress: DiffusionProgress) => void) | undefined | null")]
        on_progress: Option<
            ThreadsafeFunction<DiffusionProgress, (), DiffusionProgress, Status, false>,
        >,
        #[napi(ts_arg_type = "AbortSignal | undefined | null")] signal: Option<Object>,
    ) -> napi::Result<AsyncTask<DiffusionTask>> {
        let previews: Arc<std::sync::Mutex<Option<Vec<Vec<u8>>>>> = Arc::default();
        let core = (|| -> Result<_, AvatarError> {
            let image = match &options.image {
                Some(bytes) => Some((
                    image::load_from_memory(bytes)
                        .map_err(|e| AvatarError::invalid("image", e.to_string()))?
                        .to_rgba8(),
                    options.strength.unwrap_or(0.75),
                )),
                None => None,
            };
            let core = avatar_core::diffusion::pipeline::TextToImageOptions {
                prompt: options.prompt.clone(),
                negative_prompt: options.negative_prompt.clone().unwrap_or_default(),
                num_inference_steps: options.num_inference_steps.unwrap_or(30) as usize,
                guidance_scale: options.guidance_scale.unwrap_or(7.5),
                width: options.width,
                height: options.height,
                num_images: options.num_images.unwrap_or(1) as usize,
                seed: options.seed.as_ref().map(parse_seed).transpose()?,
                scheduler: options.scheduler.clone(),
                ip_adapter: adapter_prompts(options.ip_adapter.as_deref().unwrap_or_default())?,
                controlnet: control_prompts(options.controlnet.as_deref().unwrap_or_default())?,
                preview: match options.preview_every {
                    Some(every) => {
                        let mode = options
                            .preview_mode
                            .as_deref()
                            .unwrap_or("approximate")
                            .parse()
                            .map_err(|e| match e {
                                AvatarError::InvalidOption { message, .. } => {
                                    AvatarError::invalid("previewMode", message)
                                }
                                other => other,
                            })?;
                        let slot = previews.clone();
                        Some(avatar_core::diffusion::preview::PreviewOptions::new(
                            every.max(1) as usize,
                            mode,
                            move |p| {
                                let pngs: Vec<Vec<u8>> = p
                                    .images
                                    .iter()
                                    .filter_map(|image| {
                                        avatar_core::imaging::encode(image, ImageFormat::Png).ok()
                                    })
                                    .collect();
                                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(pngs);
                            },
                        ))
                    }
                    None => None,
                },
                long_prompt: options.long_prompt.unwrap_or(false),
                ..Default::default()
            };
            let safety = self.task_safety(
                options.safety_checker,
                options.safety_checker_type.as_deref(),
            )?;
            Ok((core, image, safety))
        })()
        .map_err(|e| sync_error(&env, e))?;
        let task = DiffusionTask {
            safety: core.2,
            options: core.0,
            work: match core.1 {
                Some((image, strength)) => {
                    DiffusionWork::Image(self.inner.clone(), image, strength)
                }
                None => DiffusionWork::Text(self.inner.clone()),
            },
            cancelled: Arc::default(),
            progress: on_progress,
            previews,
        };
        spawn(&env, task, signal)
    }

    /// Seed 001's face avatars (PNG buffers) from a reference photo (`options.image`, encoded);
    /// `prompt` omitted uses the default avatar prompt with `gender`; ranges as the seed (batch
    /// 1-8, sides 256-1536, steps 1-50, guidance 1-30).
    #[napi(ts_return_type = "Promise<Buffer[]>")]
    pub fn face_avatar(
        &self,
        env: Env,
        options: FaceAvatarOptions,
        #[napi(ts_arg_type = "((progress: DiffusionProgress) => void) | undefined | null")]
        on_progress: Option<
            ThreadsafeFunction<DiffusionProgress, (), DiffusionProgress, Status, false>,
        >,
        #[napi(ts_arg_type = "AbortSignal | undefined | null")] signal: Option<Object>,
    ) -> napi::Result<AsyncTask<DiffusionTask>> {
        let core = (|| -> Result<_, AvatarError> {
            let reference = decode_image("image", &options.image)?;
            let defaults = avatar_core::diffusion::face_avatar::FaceAvatarOptions::default();
            let face = avatar_core::diffusion::face_avatar::FaceAvatarOptions {
                prompt: options.prompt.clone(),
                negative_prompt: options.negative_prompt.clone().unwrap_or_default(),
                gender: options.gender.clone(),
                batch: options.batch.map_or(defaults.batch, |n| n as usize),
                width: options.width.unwrap_or(defaults.width),
                height: options.height.unwrap_or(defaults.height),
                num_inference_steps: options
                    .num_inference_steps
                    .map_or(defaults.num_inference_steps, |n| n as usize),
                guidance_scale: options.guidance_scale.unwrap_or(defaults.guidance_scale),
                strength: options.strength.unwrap_or(defaults.strength),
                remove_background: options.remove_background.unwrap_or(false),
                bg_color: options.bg_color.clone(),
                seed: match &options.seed {
                    Some(seed) => parse_seed(seed)?.value(),
                    None => Seed::random().value(),
                },
                ip_adapter_scale: options
                    .ip_adapter_scale
                    .map_or(defaults.ip_adapter_scale, |v| v as f32),
            };
            face.validate()?;
            let safety = self.task_safety(
                options.safety_checker,
                options.safety_checker_type.as_deref(),
            )?;
            Ok((reference, face, safety))
        })()
        .map_err(|e| sync_error(&env, e))?;
        let task = DiffusionTask {
            safety: core.2,
            options: Default::default(),
            work: DiffusionWork::Face(
                self.inner.clone(),
                core.0,
                Box::new(core.1),
                self.tools.clone(),
            ),
            cancelled: Arc::default(),
            progress: on_progress,
            previews: Arc::default(),
        };
        spawn(&env, task, signal)
    }
}

/// Options of an InstantID request (seed 002's names, camelCase).
#[napi(object)]
pub struct AvatarGenInput {
    /// The face photo, encoded.
    pub face_image: Buffer,
    /// insightface's raw 512-value `embedding` of the face.
    pub face_embedding: Vec<f64>,
    /// insightface's five `kps` (`[x, y]` in the photo's pixels).
    pub face_keypoints: Vec<Vec<f64>>,
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    pub negative_prompt: Option<String>,
    /// Width (default 512; at most 512x768 pixels).
    pub width: Option<u32>,
    /// Height (default 512).
    pub height: Option<u32>,
    /// 21, 31 or 41 (default 21).
    pub num_inference_steps: Option<u32>,
    /// Guidance (1-20, default 7.5).
    pub guidance_scale: Option<f64>,
    /// Face structure weight (0-2, default 1).
    pub s_scale: Option<f64>,
    /// Images (1-2, default 1).
    pub samples: Option<u32>,
    /// Seed: an integer or any string.
    pub seed: Option<Either<f64, String>>,
    /// IdentityNet weight (0-1, default 0.8).
    pub identitynet_strength_ratio: Option<f64>,
    /// Face adapter weight (0-1, default 1).
    pub adapter_strength_ratio: Option<f64>,
    /// Pose ControlNet weight (0-1, default 0.4).
    pub pose_strength: Option<f64>,
    /// Canny ControlNet weight (0-1, default 0.3).
    pub canny_strength: Option<f64>,
    /// `pose`, `canny` (default `["pose"]`).
    pub controlnet_selection: Option<Vec<String>>,
    /// A ready OpenPose skeleton image, encoded.
    pub pose_image: Option<Buffer>,
}

/// InstantID avatars (seed 002): SDXL with InstantID's face adapter and IdentityNet, and
/// optional pose / canny ControlNets.
#[napi]
pub struct InstantId {
    inner: Arc<avatar_core::diffusion::avatar_gen::InstantId>,
}

/// InstantID's files.
#[napi(object)]
pub struct InstantIdFiles {
    /// The SDXL diffusers folder.
    pub model: String,
    /// InstantID's `ip-adapter.bin`.
    pub ip_adapter: String,
    /// The IdentityNet ControlNet folder.
    pub identitynet: String,
    /// An SDXL OpenPose ControlNet folder.
    pub pose_controlnet: Option<String>,
    /// An SDXL canny ControlNet folder.
    pub canny_controlnet: Option<String>,
    /// Compute precision: `"fp32"` (default), `"fp16"` or `"bf16"`.
    pub precision: Option<String>,
}

#[napi]
impl InstantId {
    /// Loads the models on `device`.
    #[napi(constructor)]
    pub fn new(env: Env, files: InstantIdFiles, device: Option<String>) -> napi::Result<Self> {
        let load = || -> Result<_, AvatarError> {
            let spec: DeviceSpec = device.as_deref().unwrap_or("cpu").parse()?;
            let mut base = avatar_core::diffusion::pipeline::StableDiffusion::load(
                std::path::Path::new(&files.model),
                &spec.device()?,
            )?;
            base.set_precision(parse_precision(files.precision.as_deref())?)?;
            avatar_core::diffusion::avatar_gen::InstantId::new(
                base,
                std::path::Path::new(&files.ip_adapter),
                std::path::Path::new(&files.identitynet),
                files.pose_controlnet.as_deref().map(std::path::Path::new),
                files.canny_controlnet.as_deref().map(std::path::Path::new),
            )
        };
        let inner = load().map_err(|e| sync_error(&env, e))?;
        Ok(InstantId {
            inner: Arc::new(inner),
        })
    }

    /// Avatars (PNG buffers) of the face, on the libuv pool; `onProgress` after each step;
    /// `signal` cancels between steps.
    #[napi(ts_return_type = "Promise<Buffer[]>")]
    pub fn generate(
        &self,
        env: Env,
        options: AvatarGenInput,
        #[napi(ts_arg_type = "((progress: DiffusionProgress) => void) | undefined | null")]
        on_progress: Option<
            ThreadsafeFunction<DiffusionProgress, (), DiffusionProgress, Status, false>,
        >,
        #[napi(ts_arg_type = "AbortSignal | undefined | null")] signal: Option<Object>,
    ) -> napi::Result<AsyncTask<DiffusionTask>> {
        use avatar_core::diffusion::avatar_gen::{AvatarGenOptions, FaceReference};
        let work = (|| -> Result<_, AvatarError> {
            let keypoints = options
                .face_keypoints
                .iter()
                .map(|p| match p.as_slice() {
                    [x, y] => Ok((*x as f32, *y as f32)),
                    _ => Err(AvatarError::invalid(
                        "face_keypoints",
                        "each keypoint must be [x, y]",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let face = FaceReference {
                image: decode_image("faceImage", &options.face_image)?,
                embedding: options.face_embedding.iter().map(|&x| x as f32).collect(),
                keypoints,
            };
            let pose = options
                .pose_image
                .as_ref()
                .map(|bytes| decode_image("poseImage", bytes))
                .transpose()?;
            let d = AvatarGenOptions::default();
            let ratio = |v: Option<f64>, default: f32| v.map_or(default, |v| v as f32);
            let core = AvatarGenOptions {
                prompt: options.prompt.clone(),
                negative_prompt: options.negative_prompt.clone().unwrap_or_default(),
                width: options.width.unwrap_or(d.width),
                height: options.height.unwrap_or(d.height),
                num_inference_steps: options
                    .num_inference_steps
                    .map_or(d.num_inference_steps, |n| n as usize),
                guidance_scale: options.guidance_scale.unwrap_or(d.guidance_scale),
                s_scale: ratio(options.s_scale, d.s_scale),
                samples: options.samples.map_or(d.samples, |n| n as usize),
                seed: match &options.seed {
                    Some(seed) => parse_seed(seed)?.value(),
                    None => Seed::random().value(),
                },
                identitynet_strength_ratio: ratio(
                    options.identitynet_strength_ratio,
                    d.identitynet_strength_ratio,
                ),
                adapter_strength_ratio: ratio(
                    options.adapter_strength_ratio,
                    d.adapter_strength_ratio,
                ),
                pose_strength: ratio(options.pose_strength, d.pose_strength),
                canny_strength: ratio(options.canny_strength, d.canny_strength),
                controlnet_selection: match &options.controlnet_selection {
                    Some(names) => names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?,
                    None => d.controlnet_selection,
                },
            };
            core.validate()?;
            Ok(DiffusionWork::Avatar(
                self.inner.clone(),
                Box::new((face, pose, core)),
            ))
        })()
        .map_err(|e| sync_error(&env, e))?;
        let task = DiffusionTask {
            safety: None,
            options: Default::default(),
            work,
            cancelled: Arc::default(),
            progress: on_progress,
            previews: Arc::default(),
        };
        spawn(&env, task, signal)
    }
}

/// An image prompt of a VQGAN+CLIP run.
#[napi(object)]
pub struct ImagePrompt {
    /// An encoded PNG/JPEG/WebP.
    pub image: Buffer,
    /// Weight (default 1; negative pushes away).
    pub weight: Option<f64>,
    /// Distance below which the prompt stops pulling (default: never).
    pub stop: Option<f64>,
}

/// Options of a VQGAN+CLIP run (the core's names, camelCase).
#[napi(object)]
#[derive(Default)]
pub struct VqganClipOptions {
    /// Text prompts, `"text:weight:stop"` separated by `|`.
    pub prompt: Option<String>,
    /// Image prompts.
    pub image_prompts: Option<Vec<ImagePrompt>>,
    /// Start from this encoded image instead of random codebook entries.
    pub init_image: Option<Buffer>,
    /// Weight of the pull towards the initial latent (default 0).
    pub init_weight: Option<f64>,
    /// Width in pixels (default 256; rounded down to a multiple of `factor`).
    pub width: Option<u32>,
    /// Height in pixels (default 256).
    pub height: Option<u32>,
    /// Adam steps (default 100).
    pub iterations: Option<u32>,
    /// Adam learning rate (default 0.1).
    pub step_size: Option<f64>,
    /// Cutouts per step (default 32).
    pub cutn: Option<u32>,
    /// Cutout size exponent (default 1).
    pub cut_pow: Option<f64>,
    /// Augment the cutouts (default true).
    pub augment: Option<bool>,
    /// Seed: an integer or any string.
    pub seed: Option<Either<f64, String>>,
    /// Pass the intermediate image to `onProgress` every this many steps (default 10).
    pub display_every: Option<u32>,
}

/// Progress of a VQGAN+CLIP run, passed to the `onProgress` callback after every step.
#[napi(object)]
pub struct VqganClipProgress {
    /// Steps done.
    pub iteration: u32,
    /// Steps asked for.
    pub total: u32,
    /// The step's loss.
    pub loss: f64,
    /// The intermediate image as PNG, every `displayEvery` steps.
    pub image: Option<Buffer>,
}

fn decode_image(field: &'static str, bytes: &[u8]) -> Result<image::RgbaImage, AvatarError> {
    Ok(image::load_from_memory(bytes)
        .map_err(|e| AvatarError::invalid(field, e.to_string()))?
        .to_rgba8())
}

impl VqganClipOptions {
    fn to_core(&self) -> Result<avatar_core::vqgan_clip::RunOptions, AvatarError> {
        use avatar_core::vqgan_clip::{Augmentations, PromptSpec, RunOptions};
        let defaults = RunOptions::default();
        let mut image_prompts = Vec::new();
        for (index, prompt) in self.image_prompts.iter().flatten().enumerate() {
            let spec = PromptSpec {
                text: format!("image prompt {index}"),
                weight: prompt.weight.unwrap_or(1.0) as f32,
                stop: prompt.stop.map_or(f32::NEG_INFINITY, |s| s as f32),
            };
            image_prompts.push((decode_image("image_prompts", &prompt.image)?, spec));
        }
        Ok(RunOptions {
            prompts: match &self.prompt {
                Some(text) => PromptSpec::parse_list(text)?,
                None => Vec::new(),
            },
            image_prompts,
            init_image: self
                .init_image
                .as_ref()
                .map(|bytes| decode_image("init_image", bytes))
                .transpose()?,
            init_weight: self.init_weight.map_or(defaults.init_weight, |w| w as f32),
            width: self.width.map_or(defaults.width, |w| w as usize),
            height: self.height.map_or(defaults.height, |h| h as usize),
            iterations: self.iterations.map_or(defaults.iterations, |n| n as usize),
            step_size: self.step_size.unwrap_or(defaults.step_size),
            cutn: self.cutn.map_or(defaults.cutn, |n| n as usize),
            cut_pow: self.cut_pow.unwrap_or(defaults.cut_pow),
            augmentations: if self.augment.unwrap_or(true) {
                Augmentations::default()
            } else {
                Augmentations::none()
            },
            seed: self.seed.as_ref().map(parse_seed).transpose()?,
            display_every: self
                .display_every
                .map_or(defaults.display_every, |n| n as usize),
        })
    }
}

/// A VQGAN+CLIP engine (taming VQGAN + open_clip CLIP) that optimises images towards prompts.
#[napi]
pub struct VqganClip {
    inner: Arc<avatar_core::vqgan_clip::VqganClip>,
}

/// A VQGAN+CLIP run on the libuv pool.
pub struct VqganClipTask {
    engine: Arc<avatar_core::vqgan_clip::VqganClip>,
    options: avatar_core::vqgan_clip::RunOptions,
    cancelled: Arc<AtomicBool>,
    progress: Option<ThreadsafeFunction<VqganClipProgress, (), VqganClipProgress, Status, false>>,
}

impl Task for VqganClipTask {
    type Output = Result<Vec<u8>, AvatarError>;
    type JsValue = Buffer;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let observer = avatar_core::vqgan_clip::RunObserver::new();
        let image = self.engine.run(&self.options, &observer, |step| {
            if let Some(callback) = &self.progress {
                let progress = VqganClipProgress {
                    iteration: step.iteration as u32,
                    total: step.total as u32,
                    loss: f64::from(step.loss),
                    image: step
                        .image
                        .as_ref()
                        .and_then(|image| {
                            avatar_core::imaging::encode(image, ImageFormat::Png).ok()
                        })
                        .map(Buffer::from),
                };
                callback.call(progress, ThreadsafeFunctionCallMode::NonBlocking);
            }
            !self.cancelled.load(Ordering::Relaxed)
        });
        Ok(image.and_then(|image| avatar_core::imaging::encode(&image, ImageFormat::Png)))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        output.map(Buffer::from).map_err(|e| throwable(&env, &e))
    }

    fn finally(mut self, _env: Env) -> napi::Result<()> {
        self.progress.take();
        Ok(())
    }
}

#[napi]
impl VqganClip {
    /// Loads taming's yaml + checkpoint and an open_clip state dict (`clipConfig`: open_clip's
    /// model json; default ViT-B/32) on `device`.
    #[napi(constructor)]
    pub fn new(
        env: Env,
        vqgan_config: String,
        vqgan_weights: String,
        clip_weights: String,
        clip_config: Option<String>,
        device: Option<String>,
    ) -> napi::Result<Self> {
        let load = || -> Result<_, AvatarError> {
            let spec: DeviceSpec = device.as_deref().unwrap_or("cpu").parse()?;
            let clip = match &clip_config {
                Some(path) => avatar_core::vqgan_clip::OpenClipConfig::from_json_file(
                    std::path::Path::new(path),
                )?,
                None => avatar_core::vqgan_clip::OpenClipConfig::vit_b_32(),
            };
            avatar_core::vqgan_clip::VqganClip::load(
                std::path::Path::new(&vqgan_config),
                std::path::Path::new(&vqgan_weights),
                &clip,
                std::path::Path::new(&clip_weights),
                &spec.device()?,
            )
        };
        let inner = load().map_err(|e| sync_error(&env, e))?;
        Ok(VqganClip {
            inner: Arc::new(inner),
        })
    }

    /// Pixels per latent cell: sizes are rounded down to multiples of it.
    #[napi(getter)]
    pub fn factor(&self) -> u32 {
        self.inner.factor() as u32
    }

    /// Optimises an image towards the prompts on the libuv pool and resolves to its PNG;
    /// `onProgress` after every step (with the intermediate PNG every `displayEvery` steps);
    /// `signal` cancels between steps (the promise rejects with `code: "ERR_CANCELLED"`).
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn generate(
        &self,
        env: Env,
        options: VqganClipOptions,
        #[napi(ts_arg_type = "((progress: VqganClipProgress) => void) | undefined | null")]
        on_progress: Option<
            ThreadsafeFunction<VqganClipProgress, (), VqganClipProgress, Status, false>,
        >,
        #[napi(ts_arg_type = "AbortSignal | undefined | null")] signal: Option<Object>,
    ) -> napi::Result<AsyncTask<VqganClipTask>> {
        let core = options
            .to_core()
            .and_then(|core| core.validate(self.inner.factor()).map(|()| core))
            .map_err(|e| sync_error(&env, e))?;
        let task = VqganClipTask {
            engine: self.inner.clone(),
            options: core,
            cancelled: Arc::default(),
            progress: on_progress,
        };
        spawn(&env, task, signal)
    }
}

/// Options of `StableDiffusion.faceAvatar` (seed 001's names, camelCase).
#[napi(object)]
pub struct FaceAvatarOptions {
    /// The reference photo, encoded (PNG/JPEG/WebP).
    pub image: Buffer,
    /// The prompt (omitted: the default avatar prompt with `gender`).
    pub prompt: Option<String>,
    /// `male`, `female` or any word for the default prompt.
    pub gender: Option<String>,
    /// Images (1-8, default 1).
    pub batch: Option<u32>,
    /// Width (256-1536, default 512).
    pub width: Option<u32>,
    /// Height (256-1536, default 512).
    pub height: Option<u32>,
    /// Denoising steps actually run (1-50, default 30).
    pub num_inference_steps: Option<u32>,
    /// Guidance (1-30, default 7.5).
    pub guidance_scale: Option<f64>,
    /// What to avoid.
    pub negative_prompt: Option<String>,
    /// How much of the reference is redrawn (0-1, default 0.6).
    pub strength: Option<f64>,
    /// Make the background transparent (the constructor's `backgroundModel`, else keying).
    pub remove_background: Option<bool>,
    /// Composite onto this colour (`#rrggbb`).
    pub bg_color: Option<String>,
    /// Seed: an integer or any string.
    pub seed: Option<Either<f64, String>>,
    /// Weight of the reference through a loaded image IP-Adapter (0-2, default 0.6).
    pub ip_adapter_scale: Option<f64>,
    /// Check the images (needs the constructor's `safetyChecker` folder).
    pub safety_checker: Option<bool>,
    /// `black` (default), `blur`, `pixelate` or `sensitive_content_text`.
    pub safety_checker_type: Option<String>,
}

/// diffusers' Stable Diffusion safety checker (a `safety_checker/` folder).
#[napi]
pub struct SafetyChecker {
    inner: Arc<avatar_core::diffusion::safety_checker::SafetyChecker>,
    device: avatar_core::burn::tensor::Device,
}

/// A safety check on the libuv pool.
pub struct SafetyTask {
    checker: Arc<avatar_core::diffusion::safety_checker::SafetyChecker>,
    device: avatar_core::burn::tensor::Device,
    images: Vec<image::RgbaImage>,
}

impl Task for SafetyTask {
    type Output = Result<Vec<bool>, AvatarError>;
    type JsValue = Vec<bool>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self
            .checker
            .check_images(&self.images, &self.device)
            .map(|verdicts| verdicts.iter().map(|v| v.has_nsfw_concept).collect()))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        output.map_err(|e| throwable(&env, &e))
    }
}

#[napi]
impl SafetyChecker {
    /// Loads a diffusers `safety_checker/` folder on `device`.
    #[napi(constructor)]
    pub fn new(env: Env, model: String, device: Option<String>) -> napi::Result<Self> {
        let load = || -> Result<_, AvatarError> {
            let spec: DeviceSpec = device.as_deref().unwrap_or("cpu").parse()?;
            let device = spec.device()?;
            let inner = avatar_core::diffusion::safety_checker::SafetyChecker::load(
                std::path::Path::new(&model),
                &device,
            )?;
            Ok((inner, device))
        };
        let (inner, device) = load().map_err(|e| sync_error(&env, e))?;
        Ok(SafetyChecker {
            inner: Arc::new(inner),
            device,
        })
    }

    /// Whether each encoded image shows a flagged concept (computed on the libuv pool).
    #[napi(ts_return_type = "Promise<boolean[]>")]
    pub fn check(&self, env: Env, images: Vec<Buffer>) -> napi::Result<AsyncTask<SafetyTask>> {
        let images = images
            .iter()
            .map(|bytes| decode_image("images", bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sync_error(&env, e))?;
        Ok(AsyncTask::new(SafetyTask {
            checker: self.inner.clone(),
            device: self.device.clone(),
            images,
        }))
    }

    /// An encoded image replaced as `how` says (`black`, `blur`, `pixelate`,
    /// `sensitive_content_text`), as PNG.
    #[napi]
    pub fn obfuscate(env: Env, image: Buffer, how: Option<String>) -> napi::Result<Buffer> {
        let run = || -> Result<Vec<u8>, AvatarError> {
            let how = how
                .as_deref()
                .unwrap_or("black")
                .parse::<avatar_core::diffusion::safety_checker::Obfuscation>()
                .map_err(|e| match e {
                    AvatarError::InvalidOption { message, .. } => {
                        AvatarError::invalid("how", message)
                    }
                    other => other,
                })?;
            let image = decode_image("image", &image)?;
            avatar_core::imaging::encode(
                &avatar_core::diffusion::safety_checker::obfuscate(&image, how),
                ImageFormat::Png,
            )
        };
        run().map(Buffer::from).map_err(|e| sync_error(&env, e))
    }
}

/// Generators of the module-level functions, loaded on first use (CPU, embedded weights).
static SHARED: Mutex<Vec<(ModelSize, Arc<CoreGenerator>)>> = Mutex::new(Vec::new());

fn shared(size: Option<&str>) -> Result<Arc<CoreGenerator>, AvatarError> {
    let size: ModelSize = size.unwrap_or("small").parse()?;
    let mut cache = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, generator)) = cache.iter().find(|(s, _)| *s == size) {
        return Ok(generator.clone());
    }
    let generator = Arc::new(CoreGenerator::load(size, &DeviceSpec::Cpu)?);
    cache.push((size, generator.clone()));
    Ok(generator)
}

/// One encoded avatar from the embedded `options.size` model on the CPU (loaded once per
/// process), computed on the libuv pool. `signal` cancels it.
#[napi(ts_return_type = "Promise<Buffer>")]
pub fn generate(
    env: Env,
    options: Option<GenerateOptions>,
    #[napi(ts_arg_type = "AbortSignal | undefined | null")] signal: Option<Object>,
) -> napi::Result<AsyncTask<GenerateTask>> {
    let options = options.unwrap_or_default();
    let generator = shared(options.size.as_deref()).map_err(|e| sync_error(&env, e))?;
    let core = options.to_core().map_err(|e| sync_error(&env, e))?;
    spawn(
        &env,
        GenerateTask {
            generator,
            seeds: None,
            options: core,
            cancelled: Arc::default(),
            progress: None,
        },
        signal,
    )
}

/// The synchronous variant of `generate`, for scripts.
#[napi]
pub fn generate_sync(env: Env, options: Option<GenerateOptions>) -> napi::Result<Buffer> {
    let options = options.unwrap_or_default();
    let generator = shared(options.size.as_deref()).map_err(|e| sync_error(&env, e))?;
    let core = options.to_core().map_err(|e| sync_error(&env, e))?;
    let encoded = generator
        .generate_encoded(&core)
        .map_err(|e| sync_error(&env, e))?;
    Ok(encoded.bytes.into())
}

/// The MIME type of a format name (`"png"` -> `"image/png"`), for HTTP responses.
#[napi]
pub fn mime_type(env: Env, format: Option<String>) -> napi::Result<String> {
    let format: ImageFormat = format
        .as_deref()
        .unwrap_or("png")
        .parse()
        .map_err(|e| sync_error(&env, e))?;
    Ok(format.mime().to_string())
}

/// Background removal with a U²-Net (`u2net.pth`, `u2netp.pth`, `u2net_human_seg.pth` or a
/// safetensors conversion), run as rembg runs it.
#[napi]
pub struct BackgroundRemover {
    inner: Arc<avatar_core::segmentation::BackgroundRemover>,
}

/// What a [`BackgroundTask`] returns.
#[derive(Clone, Copy)]
enum BackgroundOutput {
    /// The mask as an 8-bit grey PNG.
    Mask,
    /// The RGBA cut-out as PNG.
    Cutout,
}

/// A background removal on the libuv pool.
pub struct BackgroundTask {
    remover: Arc<avatar_core::segmentation::BackgroundRemover>,
    image: image::RgbaImage,
    output: BackgroundOutput,
}

impl Task for BackgroundTask {
    type Output = Result<Vec<u8>, AvatarError>;
    type JsValue = Buffer;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(match self.output {
            BackgroundOutput::Mask => self.remover.mask(&self.image).and_then(|mask| {
                let mut png = Vec::new();
                image::DynamicImage::ImageLuma8(mask)
                    .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                    .map_err(|e| AvatarError::Image(e.to_string()))?;
                Ok(png)
            }),
            BackgroundOutput::Cutout => self
                .remover
                .remove(&self.image)
                .and_then(|cut| avatar_core::imaging::encode(&cut, ImageFormat::Png)),
        })
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        output.map(Buffer::from).map_err(|e| throwable(&env, &e))
    }
}

#[napi]
impl BackgroundRemover {
    /// Loads U²-Net weights on `device`; the network runs at `inputSize` squared (default 320).
    #[napi(constructor)]
    pub fn new(
        env: Env,
        model: String,
        device: Option<String>,
        input_size: Option<u32>,
    ) -> napi::Result<Self> {
        let load = || -> Result<_, AvatarError> {
            let spec: DeviceSpec = device.as_deref().unwrap_or("cpu").parse()?;
            let remover = avatar_core::segmentation::BackgroundRemover::load(
                std::path::Path::new(&model),
                &spec.device()?,
            )?;
            match input_size {
                Some(size) => remover.with_input_size(size).map_err(|e| match e {
                    AvatarError::InvalidOption { message, .. } => {
                        AvatarError::invalid("inputSize", message)
                    }
                    other => other,
                }),
                None => Ok(remover),
            }
        };
        let inner = load().map_err(|e| sync_error(&env, e))?;
        Ok(BackgroundRemover {
            inner: Arc::new(inner),
        })
    }

    /// The subject's mask of an encoded image, as a grey PNG of its size (255 = subject).
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn mask(&self, env: Env, image: Buffer) -> napi::Result<AsyncTask<BackgroundTask>> {
        self.task(env, image, BackgroundOutput::Mask)
    }

    /// The encoded image with its background transparent, as RGBA PNG (colours kept).
    #[napi(ts_return_type = "Promise<Buffer>")]
    pub fn remove(&self, env: Env, image: Buffer) -> napi::Result<AsyncTask<BackgroundTask>> {
        self.task(env, image, BackgroundOutput::Cutout)
    }
}

impl BackgroundRemover {
    fn task(
        &self,
        env: Env,
        image: Buffer,
        output: BackgroundOutput,
    ) -> napi::Result<AsyncTask<BackgroundTask>> {
        let image = decode_image("image", &image).map_err(|e| sync_error(&env, e))?;
        Ok(AsyncTask::new(BackgroundTask {
            remover: self.inner.clone(),
            image,
            output,
        }))
    }
}

/// Detection settings of [`FaceAnalysis`].
#[napi(object)]
#[derive(Default)]
pub struct FaceAnalysisOptions {
    /// The detector input `[width, height]` (multiples of 32, default `[640, 640]`).
    pub det_size: Option<Vec<u32>>,
    /// Minimum detection score (default 0.5).
    pub det_thresh: Option<f64>,
    /// NMS IoU threshold (default 0.4).
    pub nms_thresh: Option<f64>,
}

/// One analysed face (insightface's fields).
#[napi(object)]
pub struct AnalysedFace {
    /// `[x1, y1, x2, y2]` in the image's pixels.
    pub bbox: Vec<f64>,
    /// Detection score.
    pub det_score: f64,
    /// Five `[x, y]`: eyes, nose, mouth corners.
    pub kps: Vec<Vec<f64>>,
    /// The raw ArcFace embedding (InstantID's `faceEmbedding`).
    pub embedding: Vec<f64>,
    /// The embedding scaled to unit length (IP-Adapter-FaceID's).
    pub normed_embedding: Vec<f64>,
}

/// insightface-style face analysis (SCRFD + ArcFace) from your own ONNX files.
#[napi]
pub struct FaceAnalysis {
    inner: Arc<avatar_core::face_analysis::FaceAnalysis>,
    options: avatar_core::face_analysis::DetectionOptions,
}

/// A face analysis on the libuv pool.
pub struct FaceAnalysisTask {
    analysis: Arc<avatar_core::face_analysis::FaceAnalysis>,
    options: avatar_core::face_analysis::DetectionOptions,
    image: image::RgbImage,
}

impl Task for FaceAnalysisTask {
    type Output = Result<Vec<avatar_core::face_analysis::Face>, AvatarError>;
    type JsValue = Vec<AnalysedFace>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        Ok(self.analysis.analyze(&self.image, &self.options))
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        let faces = output.map_err(|e| throwable(&env, &e))?;
        let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        Ok(faces
            .into_iter()
            .map(|face| AnalysedFace {
                bbox: wide(&face.bbox),
                det_score: f64::from(face.score),
                kps: face.keypoints.iter().map(|p| wide(p)).collect(),
                normed_embedding: wide(&face.normed_embedding()),
                embedding: wide(&face.embedding),
            })
            .collect())
    }
}

#[napi]
impl FaceAnalysis {
    /// Loads an SCRFD detector and an ArcFace recogniser (`.onnx`) on `device`.
    #[napi(constructor)]
    pub fn new(
        env: Env,
        detector: String,
        recognizer: String,
        device: Option<String>,
        options: Option<FaceAnalysisOptions>,
    ) -> napi::Result<Self> {
        let load = || -> Result<_, AvatarError> {
            let options = options.unwrap_or_default();
            let defaults = avatar_core::face_analysis::DetectionOptions::default();
            let input_size = match options.det_size.as_deref() {
                None => defaults.input_size,
                Some([w, h]) => (*w, *h),
                Some(_) => return Err(AvatarError::invalid("detSize", "must be [width, height]")),
            };
            let detection = avatar_core::face_analysis::DetectionOptions {
                input_size,
                threshold: options.det_thresh.map_or(defaults.threshold, |v| v as f32),
                nms_threshold: options
                    .nms_thresh
                    .map_or(defaults.nms_threshold, |v| v as f32),
                max_faces: 0,
            };
            detection.validate().map_err(|e| match e {
                AvatarError::InvalidOption { field, message } => {
                    let field = match field {
                        "det_size" => "detSize",
                        "det_thresh" => "detThresh",
                        "nms_thresh" => "nmsThresh",
                        other => other,
                    };
                    AvatarError::invalid(field, message)
                }
                other => other,
            })?;
            let spec: DeviceSpec = device.as_deref().unwrap_or("cpu").parse()?;
            let inner = avatar_core::face_analysis::FaceAnalysis::load(
                std::path::Path::new(&detector),
                std::path::Path::new(&recognizer),
                &spec.device()?,
            )?;
            Ok((inner, detection))
        };
        let (inner, options) = load().map_err(|e| sync_error(&env, e))?;
        Ok(FaceAnalysis {
            inner: Arc::new(inner),
            options,
        })
    }

    /// The faces in an encoded image (computed on the libuv pool); `maxNum` keeps the
    /// largest, most central ones.
    #[napi(ts_return_type = "Promise<AnalysedFace[]>")]
    pub fn analyze(
        &self,
        env: Env,
        image: Buffer,
        max_num: Option<u32>,
    ) -> napi::Result<AsyncTask<FaceAnalysisTask>> {
        let image = decode_image("image", &image).map_err(|e| sync_error(&env, e))?;
        Ok(AsyncTask::new(FaceAnalysisTask {
            analysis: self.inner.clone(),
            options: avatar_core::face_analysis::DetectionOptions {
                max_faces: max_num.unwrap_or(0) as usize,
                ..self.options
            },
            image: image::DynamicImage::ImageRgba8(image).to_rgb8(),
        }))
    }
}
