//! The high-level DCGAN avatar API used by the server and the bindings.

use std::path::PathBuf;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbaImage;

use crate::dcgan::{
    Generator, GeneratorConfig, InferenceGenerator, generator_from_bytes, latents_for_seeds,
    load_generator, load_keras_generator,
};
use crate::device::DeviceSpec;
use crate::embedded;
use crate::error::{AvatarError, Result};
use crate::imaging::{
    Color, ImageFormat, MatteOptions, composite_over, encode, key_background, resize,
};
use crate::seed::Seed;

/// Smallest and largest accepted `output_size`.
pub const OUTPUT_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=1024;
/// Largest accepted batch in one forward pass.
pub const MAX_BATCH: usize = 256;
/// Largest accepted batch in [`AvatarGenerator::generate_batch_with_progress`] (done in chunks).
pub const MAX_BATCH_WITH_PROGRESS: usize = 10_000;

/// The two shipped models: `small` (96x96, latent 100) and `large` (128x128, latent 128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ModelSize {
    /// 96x96, latent 100.
    #[default]
    Small,
    /// 128x128, latent 128.
    Large,
}

impl ModelSize {
    /// Both sizes.
    pub const ALL: [ModelSize; 2] = [ModelSize::Small, ModelSize::Large];

    /// The native output side in pixels.
    pub fn resolution(self) -> u32 {
        match self {
            ModelSize::Small => 96,
            ModelSize::Large => 128,
        }
    }

    /// `"small"` or `"large"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSize::Small => "small",
            ModelSize::Large => "large",
        }
    }
}

impl FromStr for ModelSize {
    type Err = AvatarError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "small" => Ok(ModelSize::Small),
            "large" => Ok(ModelSize::Large),
            other => Err(AvatarError::invalid(
                "size",
                format!("{other:?}: expected small or large"),
            )),
        }
    }
}

/// Where generator weights come from.
#[derive(Debug, Clone)]
pub enum WeightsSource {
    /// The weights compiled into the library (feature `embedded-weights`), or, without that
    /// feature, `$AVATAR_WEIGHTS_DIR/dcgan_{small,large}.safetensors`.
    Embedded(ModelSize),
    /// A `model.safetensors` file (config from `model.json` beside it or from its metadata).
    Path(PathBuf),
    /// Safetensors bytes with the config in their metadata.
    Bytes(Vec<u8>),
    /// A Keras generator of the seed's recipe (`.h5` full model, or `.weights.h5` with a
    /// resolution). A [`WeightsSource::Path`] ending in `.h5` is read this way too.
    Keras {
        /// The `.h5` file.
        path: PathBuf,
        /// Output side, needed only for `.weights.h5` files.
        resolution: Option<usize>,
    },
}

impl From<ModelSize> for WeightsSource {
    fn from(size: ModelSize) -> Self {
        WeightsSource::Embedded(size)
    }
}

impl From<PathBuf> for WeightsSource {
    fn from(path: PathBuf) -> Self {
        WeightsSource::Path(path)
    }
}

/// Options of one generated avatar. All fields are optional; see each one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateOptions {
    /// The seed: the same seed always gives the same avatar. `None` draws a random one.
    pub seed: Option<Seed>,
    /// Keep a transparent background (PNG/WebP only).
    pub transparent: bool,
    /// Background colour when `transparent` is false (default white). Rejected with `transparent`.
    pub bg_color: Option<Color>,
    /// Output side in pixels (resampled); `None` keeps the model's resolution.
    pub output_size: Option<u32>,
    /// Encoding used by [`AvatarGenerator::generate_encoded`].
    pub format: ImageFormat,
}

impl GenerateOptions {
    /// Checks the options, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.transparent && self.bg_color.is_some() {
            return Err(AvatarError::invalid(
                "bg_color",
                "cannot be combined with transparent=true",
            ));
        }
        if self.transparent && !self.format.supports_alpha() {
            return Err(AvatarError::invalid(
                "format",
                "jpeg has no alpha channel; use png or webp with transparent=true",
            ));
        }
        if let Some(size) = self.output_size
            && !OUTPUT_SIZE_RANGE.contains(&size)
        {
            return Err(AvatarError::invalid(
                "output_size",
                format!(
                    "{size} is out of range {}..={}",
                    OUTPUT_SIZE_RANGE.start(),
                    OUTPUT_SIZE_RANGE.end()
                ),
            ));
        }
        Ok(())
    }
}

/// Progress of a long call: `done` of `total` avatars are finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Avatars finished so far.
    pub done: usize,
    /// Avatars asked for.
    pub total: usize,
}

/// Avatars per forward pass in [`AvatarGenerator::generate_batch_with_progress`].
pub const PROGRESS_CHUNK: usize = 16;

/// An encoded avatar and the seed that made it.
#[derive(Debug, Clone)]
pub struct EncodedAvatar {
    /// The encoded bytes.
    pub bytes: Vec<u8>,
    /// Their format.
    pub format: ImageFormat,
    /// The seed used (drawn at random when none was given).
    pub seed: Seed,
}

/// A loaded DCGAN generator on a device, ready to draw avatars.
///
/// ```no_run
/// use avatar_core::{AvatarGenerator, DeviceSpec, GenerateOptions, ModelSize};
/// let generator = AvatarGenerator::load(ModelSize::Small, &DeviceSpec::Cpu)?;
/// let options = GenerateOptions { seed: Some("alice".into()), transparent: true, ..Default::default() };
/// let avatar = generator.generate(&options)?;
/// assert_eq!(avatar.width(), 96);
/// # Ok::<(), avatar_core::AvatarError>(())
/// ```
#[derive(Debug)]
pub struct AvatarGenerator {
    config: GeneratorConfig,
    generator: InferenceGenerator,
    device: Device,
    spec: DeviceSpec,
}

impl AvatarGenerator {
    /// Loads weights onto the device named by `spec`.
    pub fn load(source: impl Into<WeightsSource>, spec: &DeviceSpec) -> Result<Self> {
        let device = spec.device()?;
        let (config, generator) = match source.into() {
            WeightsSource::Embedded(size) => {
                generator_from_bytes(&embedded::weights(size)?, None, &device)?
            }
            WeightsSource::Path(path)
                if path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("h5")) =>
            {
                load_keras_generator(&path, None, &device)?
            }
            WeightsSource::Path(path) => load_generator(&path, &device)?,
            WeightsSource::Keras { path, resolution } => {
                load_keras_generator(&path, resolution, &device)?
            }
            WeightsSource::Bytes(bytes) => generator_from_bytes(&bytes, None, &device)?,
        };
        Ok(Self::from_generator(config, generator, *spec, device))
    }

    /// Wraps an already built generator (its batch norms folded for inference).
    pub fn from_generator(
        config: GeneratorConfig,
        generator: Generator,
        spec: DeviceSpec,
        device: Device,
    ) -> Self {
        AvatarGenerator {
            config,
            generator: generator.valid().for_inference(),
            device,
            spec,
        }
    }

    /// The model config.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// The device spec the model runs on.
    pub fn device_spec(&self) -> DeviceSpec {
        self.spec
    }

    /// The native output side in pixels.
    pub fn resolution(&self) -> u32 {
        self.config.resolution as u32
    }

    /// The raw generator output `[N, C, R, R]` in [-1, 1] for latents `[N, latent_dim]`.
    pub fn forward(&self, latents: Tensor<2>) -> Tensor<4> {
        self.generator.forward(latents)
    }

    /// One avatar.
    pub fn generate(&self, options: &GenerateOptions) -> Result<RgbaImage> {
        let seed = options.seed.clone().unwrap_or_else(Seed::random);
        Ok(self.generate_batch(&[seed], options)?.remove(0))
    }

    /// One avatar per seed, in one forward pass (`options.seed` is ignored).
    pub fn generate_batch(
        &self,
        seeds: &[Seed],
        options: &GenerateOptions,
    ) -> Result<Vec<RgbaImage>> {
        options.validate()?;
        check_batch_size(seeds.len(), MAX_BATCH)?;
        let latents = latents_for_seeds(seeds, self.config.latent_dim, &self.device);
        self.render(latents, options)
    }

    /// Like [`AvatarGenerator::generate_batch`], in forward passes of [`PROGRESS_CHUNK`] avatars,
    /// calling `progress` after each; returning `false` from it stops the work with
    /// [`AvatarError::Cancelled`]. The result equals `generate_batch`'s.
    ///
    /// ```no_run
    /// # use avatar_core::{AvatarGenerator, DeviceSpec, GenerateOptions, ModelSize, Seed};
    /// let generator = AvatarGenerator::load(ModelSize::Small, &DeviceSpec::Cpu)?;
    /// let seeds: Vec<Seed> = (0..64).map(Seed::Number).collect();
    /// let avatars = generator.generate_batch_with_progress(&seeds, &GenerateOptions::default(), |p| {
    ///     eprintln!("{}/{}", p.done, p.total);
    ///     true
    /// })?;
    /// # Ok::<(), avatar_core::AvatarError>(())
    /// ```
    pub fn generate_batch_with_progress(
        &self,
        seeds: &[Seed],
        options: &GenerateOptions,
        mut progress: impl FnMut(Progress) -> bool,
    ) -> Result<Vec<RgbaImage>> {
        options.validate()?;
        check_batch_size(seeds.len(), MAX_BATCH_WITH_PROGRESS)?;
        let mut out = Vec::with_capacity(seeds.len());
        for chunk in seeds.chunks(PROGRESS_CHUNK) {
            out.extend(self.generate_batch(chunk, options)?);
            let report = Progress {
                done: out.len(),
                total: seeds.len(),
            };
            if !progress(report) {
                return Err(AvatarError::Cancelled);
            }
        }
        Ok(out)
    }

    /// One encoded avatar (`options.format`) and the seed used.
    pub fn generate_encoded(&self, options: &GenerateOptions) -> Result<EncodedAvatar> {
        let seed = options.seed.clone().unwrap_or_else(Seed::random);
        let image = self
            .generate_batch(std::slice::from_ref(&seed), options)?
            .remove(0);
        Ok(EncodedAvatar {
            bytes: encode(&image, options.format)?,
            format: options.format,
            seed,
        })
    }

    /// A morph of `steps` frames from `from` to `to` (spherical interpolation of the latents).
    pub fn interpolate(
        &self,
        from: &Seed,
        to: &Seed,
        steps: usize,
        options: &GenerateOptions,
    ) -> Result<Vec<RgbaImage>> {
        if !(2..=MAX_BATCH).contains(&steps) {
            return Err(AvatarError::invalid(
                "steps",
                format!("{steps} is out of range 2..={MAX_BATCH}"),
            ));
        }
        options.validate()?;
        let dim = self.config.latent_dim;
        let a = from.normal_stream().take_vec(dim);
        let b = to.normal_stream().take_vec(dim);
        let mut values = Vec::with_capacity(steps * dim);
        for i in 0..steps {
            values.extend(slerp(&a, &b, i as f32 / (steps - 1) as f32));
        }
        let latents = Tensor::from_data(TensorData::new(values, [steps, dim]), &self.device);
        self.render(latents, options)
    }

    fn render(&self, latents: Tensor<2>, options: &GenerateOptions) -> Result<Vec<RgbaImage>> {
        let images = self.generator.forward(latents);
        let [n, channels, h, w] = images.dims();
        let values = images
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| AvatarError::Backend(format!("{e:?}")))?;
        let plane = h * w;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let image = &values[i * channels * plane..(i + 1) * channels * plane];
            let to_u8 = |v: f32| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
            let mut rgba = RgbaImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                let alpha = if channels == 4 {
                    to_u8(image[3 * plane + p])
                } else {
                    255
                };
                image::Rgba([
                    to_u8(image[p]),
                    to_u8(image[plane + p]),
                    to_u8(image[2 * plane + p]),
                    alpha,
                ])
            });
            if options.transparent && channels == 3 {
                rgba = key_background(&rgba, MatteOptions::default());
            }
            if !options.transparent {
                rgba = composite_over(&rgba, options.bg_color.unwrap_or(Color::WHITE));
            }
            if let Some(size) = options.output_size {
                rgba = resize(&rgba, size);
            }
            out.push(rgba);
        }
        Ok(out)
    }
}

fn check_batch_size(n: usize, max: usize) -> Result<()> {
    if n == 0 || n > max {
        return Err(AvatarError::invalid(
            "n",
            format!("batch size {n} is out of range 1..={max}"),
        ));
    }
    Ok(())
}

/// Spherical interpolation between two latent vectors (linear when they are nearly parallel).
pub fn slerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let dot = a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b)).max(1e-12);
    let omega = dot.clamp(-1.0, 1.0).acos();
    if omega.abs() < 1e-4 {
        return a.iter().zip(b).map(|(x, y)| x + t * (y - x)).collect();
    }
    let (sa, sb) = (
        ((1.0 - t) * omega).sin() / omega.sin(),
        (t * omega).sin() / omega.sin(),
    );
    a.iter().zip(b).map(|(x, y)| sa * x + sb * y).collect()
}
