//! Python bindings of avatar-core: a thin pyo3 layer (`avatar._native`). Options are parsed and
//! validated by the core; its errors are raised as the exception classes of `avatar._errors`
//! (`InvalidOptionError` is also a `ValueError`), with `code` and `field` attributes.

use std::sync::Mutex;

use avatar_core::diffusion::precision::Precision;
use avatar_core::imaging::{Color, ImageFormat, encode};
use avatar_core::{
    AvatarError, AvatarGenerator as CoreGenerator, DeviceSpec, GenerateOptions, ModelSize, Seed,
    WeightsSource,
};
use image::RgbaImage;
use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

/// A seed as Python callers give it: a non-negative int or any string.
#[derive(FromPyObject)]
enum PySeed<'py> {
    Number(u64),
    Text(String),
    Other(Bound<'py, PyAny>),
}

/// Raises a core error as the matching `avatar` exception class.
fn to_py_err(error: AvatarError) -> PyErr {
    Python::attach(|py| {
        let class = match &error {
            AvatarError::InvalidOption { .. } => "InvalidOptionError",
            AvatarError::BackendNotCompiled { .. } => "BackendNotCompiledError",
            AvatarError::MissingTensor { .. }
            | AvatarError::WeightKeys { .. }
            | AvatarError::TensorShape { .. }
            | AvatarError::TensorDtype { .. }
            | AvatarError::Weights(_)
            | AvatarError::Config(_) => "WeightsError",
            AvatarError::Io { .. } | AvatarError::Download { .. } => "AvatarIOError",
            AvatarError::Cancelled => "CancelledError",
            AvatarError::Image(_) | AvatarError::Backend(_) => "AvatarError",
        };
        let raise = || -> PyResult<PyErr> {
            let class = py.import("avatar._errors")?.getattr(class)?;
            let instance =
                class.call1((error.to_string(), error.code(), error.field().unwrap_or("")))?;
            Ok(PyErr::from_value(instance))
        };
        raise().unwrap_or_else(|e| e)
    })
}

fn seed_of(seed: PySeed<'_>) -> PyResult<Seed> {
    match seed {
        PySeed::Number(n) => Ok(Seed::Number(n)),
        PySeed::Text(text) => Ok(Seed::from(text)),
        PySeed::Other(value) => Err(to_py_err(AvatarError::invalid(
            "seed",
            format!(
                "{} is not a seed: use an int in 0..2**64 or a str",
                value.repr().map(|r| r.to_string()).unwrap_or_default()
            ),
        ))),
    }
}

fn options(
    seed: Option<PySeed<'_>>,
    transparent: bool,
    bg_color: Option<&str>,
    output_size: Option<u32>,
    format: Option<&str>,
) -> PyResult<GenerateOptions> {
    let parsed = (|| -> Result<GenerateOptions, AvatarError> {
        let options = GenerateOptions {
            seed: None,
            transparent,
            bg_color: bg_color.map(str::parse::<Color>).transpose()?,
            output_size,
            format: format
                .map(str::parse::<ImageFormat>)
                .transpose()?
                .unwrap_or_default(),
        };
        options.validate()?;
        Ok(options)
    })()
    .map_err(to_py_err)?;
    Ok(GenerateOptions {
        seed: seed.map(seed_of).transpose()?,
        ..parsed
    })
}

fn to_pil<'py>(py: Python<'py>, image: RgbaImage) -> PyResult<Bound<'py, PyAny>> {
    let (width, height) = image.dimensions();
    let array = to_array(py, image)?;
    // `frombuffer` in raw RGBA mode shares the array's memory: no copy.
    py.import("PIL.Image")?.call_method1(
        "frombuffer",
        ("RGBA", (width, height), array, "raw", "RGBA", 0, 1),
    )
}

/// An RGBA copy of a `PIL.Image.Image` (any mode); `field` names it in errors.
fn from_pil(field: &'static str, image: &Bound<'_, PyAny>) -> PyResult<RgbaImage> {
    let rgba = image
        .call_method1("convert", ("RGBA",))
        .map_err(|_| to_py_err(AvatarError::invalid(field, "must be a PIL.Image.Image")))?;
    let (width, height): (u32, u32) = rgba.getattr("size")?.extract()?;
    let bytes: Vec<u8> = rgba.call_method0("tobytes")?.extract()?;
    RgbaImage::from_raw(width, height, bytes).ok_or_else(|| {
        to_py_err(AvatarError::invalid(
            field,
            "pixel buffer does not match its size",
        ))
    })
}

fn to_array<'py>(py: Python<'py>, image: RgbaImage) -> PyResult<Bound<'py, PyAny>> {
    let (width, height) = image.dimensions();
    // The pixel buffer moves into NumPy as is; the reshape is a view.
    let flat = image.into_raw().into_pyarray(py);
    Ok(flat
        .reshape([height as usize, width as usize, 4])?
        .into_any())
}

/// A DCGAN avatar generator: `AvatarGenerator(size="small", device="cpu", weights=None)`.
#[pyclass(frozen, module = "avatar")]
struct AvatarGenerator {
    inner: CoreGenerator,
    size: Option<ModelSize>,
}

#[pymethods]
impl AvatarGenerator {
    #[new]
    #[pyo3(signature = (size = "small", device = "cpu", weights = None))]
    fn new(
        py: Python<'_>,
        size: &str,
        device: &str,
        weights: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let size: ModelSize = size.parse().map_err(to_py_err)?;
        let spec: DeviceSpec = device.parse().map_err(to_py_err)?;
        let source = match &weights {
            Some(path) => WeightsSource::Path(path.clone()),
            None => WeightsSource::Embedded(size),
        };
        let inner = py
            .detach(|| CoreGenerator::load(source, &spec))
            .map_err(to_py_err)?;
        Ok(AvatarGenerator {
            inner,
            size: weights.is_none().then_some(size),
        })
    }

    /// The native output side in pixels.
    #[getter]
    fn resolution(&self) -> u32 {
        self.inner.resolution()
    }

    /// `"small"` or `"large"` for the embedded models, `None` for weights from a file.
    #[getter]
    fn size(&self) -> Option<&'static str> {
        self.size.map(ModelSize::as_str)
    }

    /// The device the model runs on.
    #[getter]
    fn device(&self) -> String {
        self.inner.device_spec().to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "AvatarGenerator(resolution={}, device={:?})",
            self.inner.resolution(),
            self.inner.device_spec().to_string()
        )
    }

    /// One avatar as a `PIL.Image.Image` (RGBA).
    #[pyo3(signature = (seed = None, transparent = false, bg_color = None, output_size = None))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        seed: Option<PySeed<'py>>,
        transparent: bool,
        bg_color: Option<&str>,
        output_size: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        to_pil(
            py,
            self.render(py, seed, transparent, bg_color, output_size)?,
        )
    }

    /// One avatar as encoded bytes (`format`: png, webp or jpeg).
    #[pyo3(signature = (seed = None, transparent = false, bg_color = None, output_size = None, format = "png"))]
    fn generate_png<'py>(
        &self,
        py: Python<'py>,
        seed: Option<PySeed<'py>>,
        transparent: bool,
        bg_color: Option<&str>,
        output_size: Option<u32>,
        format: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let options = options(seed, transparent, bg_color, output_size, Some(format))?;
        let encoded = py
            .detach(|| self.inner.generate_encoded(&options))
            .map_err(to_py_err)?;
        Ok(PyBytes::new(py, &encoded.bytes))
    }

    /// One avatar as a `numpy.ndarray` of shape (H, W, 4), dtype uint8, owning the pixels
    /// (no copy).
    #[pyo3(signature = (seed = None, transparent = false, bg_color = None, output_size = None))]
    fn generate_array<'py>(
        &self,
        py: Python<'py>,
        seed: Option<PySeed<'py>>,
        transparent: bool,
        bg_color: Option<&str>,
        output_size: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        to_array(
            py,
            self.render(py, seed, transparent, bg_color, output_size)?,
        )
    }

    /// Many avatars: `n` random ones, or one per seed in `seeds`, as PIL images (or encoded
    /// bytes with `format`). `progress(done, total)` is called after each chunk; if it raises,
    /// the work stops and the exception propagates.
    #[pyo3(signature = (n = None, seeds = None, transparent = false, bg_color = None, output_size = None, format = None, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate_batch<'py>(
        &self,
        py: Python<'py>,
        n: Option<usize>,
        seeds: Option<Vec<PySeed<'py>>>,
        transparent: bool,
        bg_color: Option<&str>,
        output_size: Option<u32>,
        format: Option<&str>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let options = options(None, transparent, bg_color, output_size, format)?;
        let seeds: Vec<Seed> = match (seeds, n) {
            (Some(seeds), _) => seeds.into_iter().map(seed_of).collect::<PyResult<_>>()?,
            (None, Some(n)) => (0..n).map(|_| Seed::random()).collect(),
            (None, None) => {
                return Err(to_py_err(AvatarError::invalid("n", "give n or seeds")));
            }
        };
        let images = with_progress(py, progress, |report| {
            self.inner
                .generate_batch_with_progress(&seeds, &options, report)
        })?;
        let list = PyList::empty(py);
        for image in images {
            match format {
                Some(_) => {
                    let bytes = py
                        .detach(|| encode(&image, options.format))
                        .map_err(to_py_err)?;
                    list.append(PyBytes::new(py, &bytes))?;
                }
                None => list.append(to_pil(py, image)?)?,
            }
        }
        Ok(list)
    }
}

/// A Stable Diffusion 1.5 / SDXL pipeline from a local diffusers folder:
/// `StableDiffusion(model, device="cpu")`.
impl AvatarGenerator {
    /// One avatar's pixels, computed without the GIL.
    fn render(
        &self,
        py: Python<'_>,
        seed: Option<PySeed<'_>>,
        transparent: bool,
        bg_color: Option<&str>,
        output_size: Option<u32>,
    ) -> PyResult<RgbaImage> {
        let options = options(seed, transparent, bg_color, output_size, None)?;
        py.detach(|| self.inner.generate(&options))
            .map_err(to_py_err)
    }
}

#[pyclass(frozen, module = "avatar")]
struct StableDiffusion {
    inner: avatar_core::diffusion::pipeline::StableDiffusion,
    safety: Option<avatar_core::diffusion::safety_checker::SafetyFilter>,
    tools: avatar_core::diffusion::face_avatar::FaceAvatarTools,
}

impl StableDiffusion {
    /// Runs the safety checker on `images` when `enabled` (seed 002's `safety_checker` and
    /// `safety_checker_type`): flagged images are replaced; each PIL image carries its verdict in
    /// `info["nsfw_content_detected"]`.
    fn finish<'py>(
        &self,
        py: Python<'py>,
        images: Vec<RgbaImage>,
        enabled: bool,
        how: Option<&str>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (images, flags) = match (enabled, &self.safety) {
            (false, _) => {
                let n = images.len();
                (images, vec![false; n])
            }
            (true, None) => {
                return Err(to_py_err(AvatarError::invalid(
                    "safety_checker",
                    "needs StableDiffusion(..., safety_checker=<folder>)",
                )));
            }
            (true, Some(filter)) => {
                let how = how
                    .map(str::parse::<avatar_core::diffusion::safety_checker::Obfuscation>)
                    .transpose()
                    .map_err(to_py_err)?;
                py.detach(|| filter.filter(images, how))
                    .map_err(to_py_err)?
            }
        };
        let list = images_to_pil(py, images)?;
        for (image, flagged) in list.iter().zip(flags) {
            image
                .getattr("info")?
                .set_item("nsfw_content_detected", flagged)?;
        }
        Ok(list)
    }
}

/// Text-to-image options with the core's names and defaults.
#[allow(clippy::too_many_arguments)]
fn diffusion_options(
    prompt: String,
    negative_prompt: String,
    num_inference_steps: usize,
    guidance_scale: f64,
    width: Option<u32>,
    height: Option<u32>,
    num_images: usize,
    seed: Option<PySeed<'_>>,
    scheduler: Option<String>,
) -> PyResult<avatar_core::diffusion::pipeline::TextToImageOptions> {
    Ok(avatar_core::diffusion::pipeline::TextToImageOptions {
        prompt,
        negative_prompt,
        num_inference_steps,
        guidance_scale,
        width,
        height,
        num_images,
        seed: seed.map(seed_of).transpose()?,
        scheduler,
        ..Default::default()
    })
}

/// Runs `work` without the GIL, calling `progress(done, total)` with it after each step; an
/// exception raised by the callback cancels the work and propagates.
fn with_progress<T: Send>(
    py: Python<'_>,
    progress: Option<Py<PyAny>>,
    work: impl FnOnce(&mut dyn FnMut(avatar_core::Progress) -> bool) -> Result<T, AvatarError> + Send,
) -> PyResult<T> {
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = py.detach(|| {
        let mut report = |p: avatar_core::Progress| match &progress {
            None => true,
            Some(callback) => Python::attach(|py| match callback.call1(py, (p.done, p.total)) {
                Ok(_) => true,
                Err(error) => {
                    *raised.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                    false
                }
            }),
        };
        work(&mut report)
    });
    if let Some(error) = raised.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(error);
    }
    result.map_err(to_py_err)
}

fn images_to_pil<'py>(py: Python<'py>, images: Vec<RgbaImage>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for image in images {
        list.append(to_pil(py, image)?)?;
    }
    Ok(list)
}

/// `value` as one item per adapter: a list is taken as is, anything else is the one item.
fn per_adapter<'py>(
    value: Option<&Bound<'py, PyAny>>,
    n: usize,
) -> PyResult<Vec<Option<Bound<'py, PyAny>>>> {
    match value {
        None => Ok(vec![None; n]),
        Some(v) if v.is_instance_of::<PyList>() => {
            let items: Vec<Bound<'py, PyAny>> = v.extract()?;
            Ok(items
                .into_iter()
                .map(|item| (!item.is_none()).then_some(item))
                .collect())
        }
        Some(v) => Ok(vec![Some(v.clone())]),
    }
}

/// A float, or one float per item.
fn scales(value: Option<&Bound<'_, PyAny>>, n: usize, field: &'static str) -> PyResult<Vec<f32>> {
    match value {
        None => Ok(vec![1.0; n]),
        Some(v) => match v.extract::<f32>() {
            Ok(one) => Ok(vec![one; n]),
            Err(_) => v.extract::<Vec<f32>>().map_err(|_| {
                to_py_err(AvatarError::invalid(
                    field,
                    "must be a float or a list of floats",
                ))
            }),
        },
    }
}

/// The core's IP-Adapter prompts from Python arguments (empty when no image or embedding is
/// given: the adapters are off).
fn ip_adapter_prompts(
    loaded: usize,
    images: Option<&Bound<'_, PyAny>>,
    embeddings: Option<&Bound<'_, PyAny>>,
    scale: Option<&Bound<'_, PyAny>>,
    s_scale: Option<f32>,
) -> PyResult<Vec<avatar_core::diffusion::ip_adapter::IpAdapterPrompt>> {
    if images.is_none() && embeddings.is_none() {
        return Ok(Vec::new());
    }
    // A flat list of numbers is one embedding, not one per adapter.
    let embeddings: Vec<Option<Vec<f32>>> = match embeddings {
        None => vec![None; loaded],
        Some(v) => match v.extract::<Vec<f32>>() {
            Ok(one) => vec![Some(one)],
            Err(_) => v.extract::<Vec<Option<Vec<f32>>>>().map_err(|_| {
                to_py_err(AvatarError::invalid(
                    "face_embedding",
                    "must be a list of floats (or one such list per adapter)",
                ))
            })?,
        },
    };
    let images = per_adapter(images, loaded)?;
    let n = images.len().max(embeddings.len());
    let scales = adapter_scales(scale, n)?;
    (0..n)
        .map(|i| {
            let (scale, block_scales) = scales.get(i).cloned().unwrap_or((1.0, None));
            Ok(avatar_core::diffusion::ip_adapter::IpAdapterPrompt {
                image: match images.get(i).cloned().flatten() {
                    Some(image) => Some(from_pil("ip_adapter_image", &image)?),
                    None => None,
                },
                face_embedding: embeddings.get(i).cloned().flatten(),
                scale,
                s_scale,
                block_scales,
            })
        })
        .collect()
}

/// `ip_adapter_scale` as diffusers' `set_ip_adapter_scale` takes it: a float, a per-block dict
/// (`{"up": {"block_0": [0.0, 1.0, 0.0]}}`), or a list of those, one per adapter.
fn adapter_scales(
    value: Option<&Bound<'_, PyAny>>,
    n: usize,
) -> PyResult<
    Vec<(
        f32,
        Option<avatar_core::diffusion::ip_adapter_scale::BlockScales>,
    )>,
> {
    let one = |v: &Bound<'_, PyAny>| -> PyResult<(f32, Option<_>)> {
        if let Ok(x) = v.extract::<f32>() {
            return Ok((x, None));
        }
        if v.is_instance_of::<PyDict>() {
            let json: String = v
                .py()
                .import("json")?
                .call_method1("dumps", (v,))?
                .extract()?;
            let blocks = avatar_core::diffusion::ip_adapter_scale::BlockScales::from_json(&json)
                .map_err(to_py_err)?;
            return Ok((1.0, Some(blocks)));
        }
        Err(to_py_err(AvatarError::invalid(
            "ip_adapter_scale",
            "must be a float, a per-block dict, or a list of those (one per adapter)",
        )))
    };
    match value {
        None => Ok(vec![(1.0, None); n]),
        Some(v) if v.is_instance_of::<PyList>() => {
            let items: Vec<Bound<'_, PyAny>> = v.extract()?;
            items.iter().map(one).collect()
        }
        Some(v) => Ok(vec![one(v)?; n]),
    }
}

/// The core's ControlNet prompts: one control image per loaded ControlNet, in order.
fn controlnet_prompts(
    loaded: usize,
    images: Option<&Bound<'_, PyAny>>,
    scale: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<avatar_core::diffusion::pipeline::ControlNetPrompt>> {
    let images = per_adapter(images, 0)?;
    let scales = scales(
        scale,
        images.len().max(loaded),
        "controlnet_conditioning_scale",
    )?;
    images
        .into_iter()
        .enumerate()
        .filter_map(|(i, image)| image.map(|image| (i, image)))
        .map(|(i, image)| {
            Ok(avatar_core::diffusion::pipeline::ControlNetPrompt::new(
                i,
                from_pil("control_image", &image)?,
                scales.get(i).copied().unwrap_or(1.0),
            ))
        })
        .collect()
}

#[pymethods]
impl StableDiffusion {
    #[new]
    #[pyo3(signature = (model, device = "cpu", ip_adapters = None, image_encoder = None, controlnets = None, safety_checker = None, background_model = None, face_analysis = None, precision = "fp32"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: std::path::PathBuf,
        device: &str,
        ip_adapters: Option<Vec<std::path::PathBuf>>,
        image_encoder: Option<std::path::PathBuf>,
        controlnets: Option<Vec<std::path::PathBuf>>,
        safety_checker: Option<std::path::PathBuf>,
        background_model: Option<std::path::PathBuf>,
        face_analysis: Option<PyRef<'_, FaceAnalysis>>,
        precision: &str,
    ) -> PyResult<Self> {
        let faces = face_analysis.map(|f| (f.inner.clone(), f.options));
        let spec: DeviceSpec = device.parse().map_err(to_py_err)?;
        let precision: Precision = precision.parse().map_err(to_py_err)?;
        let (inner, safety, background) = py
            .detach(|| {
                let device = spec.device()?;
                let mut pipeline =
                    avatar_core::diffusion::pipeline::StableDiffusion::load(&model, &device)?;
                pipeline.set_precision(precision)?;
                for (i, adapter) in ip_adapters.iter().flatten().enumerate() {
                    let encoder = if i == 0 {
                        image_encoder.as_deref()
                    } else {
                        None
                    };
                    pipeline.load_ip_adapter(adapter, encoder)?;
                }
                for net in controlnets.iter().flatten() {
                    pipeline.load_controlnet(net)?;
                }
                let safety = safety_checker
                    .map(|dir| {
                        avatar_core::diffusion::safety_checker::SafetyFilter::load(
                            &dir,
                            avatar_core::diffusion::safety_checker::Obfuscation::Black,
                            &device,
                        )
                    })
                    .transpose()?;
                let background = avatar_core::segmentation::BackgroundRemoval::from_model(
                    background_model.as_deref(),
                    &device,
                )?;
                Ok::<_, AvatarError>((pipeline, safety, background))
            })
            .map_err(to_py_err)?;
        Ok(StableDiffusion {
            inner,
            safety,
            tools: avatar_core::diffusion::face_avatar::FaceAvatarTools { background, faces },
        })
    }

    /// Whether the pipeline is SDXL.
    #[getter]
    fn is_xl(&self) -> bool {
        self.inner.is_xl()
    }

    /// The compute precision: `"fp32"`, `"fp16"` or `"bf16"`.
    #[getter]
    fn precision(&self) -> String {
        self.inner.precision().to_string()
    }

    /// Images (`PIL.Image.Image`, RGBA) for a prompt; with loaded IP-Adapters, one
    /// `ip_adapter_image` (or `face_embedding` for FaceID / InstantID) per adapter and
    /// `ip_adapter_scale` (FaceID-Plus takes both the face crop and its embedding, and v2's
    /// `s_scale`); with loaded ControlNets, one `control_image` per ControlNet and
    /// `controlnet_conditioning_scale` (a value or one per ControlNet).
    #[pyo3(signature = (prompt, negative_prompt = String::new(), num_inference_steps = 30, guidance_scale = 7.5, width = None, height = None, num_images = 1, seed = None, scheduler = None, progress = None, ip_adapter_image = None, face_embedding = None, ip_adapter_scale = None, s_scale = None, control_image = None, controlnet_conditioning_scale = None, safety_checker = false, safety_checker_type = None, preview = None, preview_every = 1, preview_mode = "approximate", long_prompt = false))]
    #[allow(clippy::too_many_arguments)]
    fn text_to_image<'py>(
        &self,
        py: Python<'py>,
        prompt: String,
        negative_prompt: String,
        num_inference_steps: usize,
        guidance_scale: f64,
        width: Option<u32>,
        height: Option<u32>,
        num_images: usize,
        seed: Option<PySeed<'py>>,
        scheduler: Option<String>,
        progress: Option<Py<PyAny>>,
        ip_adapter_image: Option<Bound<'py, PyAny>>,
        face_embedding: Option<Bound<'py, PyAny>>,
        ip_adapter_scale: Option<Bound<'py, PyAny>>,
        s_scale: Option<f32>,
        control_image: Option<Bound<'py, PyAny>>,
        controlnet_conditioning_scale: Option<Bound<'py, PyAny>>,
        safety_checker: bool,
        safety_checker_type: Option<String>,
        preview: Option<Py<PyAny>>,
        preview_every: usize,
        preview_mode: &str,
        long_prompt: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut options = diffusion_options(
            prompt,
            negative_prompt,
            num_inference_steps,
            guidance_scale,
            width,
            height,
            num_images,
            seed,
            scheduler,
        )?;
        options.ip_adapter = ip_adapter_prompts(
            self.inner.ip_adapters().len(),
            ip_adapter_image.as_ref(),
            face_embedding.as_ref(),
            ip_adapter_scale.as_ref(),
            s_scale,
        )?;
        options.controlnet = controlnet_prompts(
            self.inner.controlnet_count(),
            control_image.as_ref(),
            controlnet_conditioning_scale.as_ref(),
        )?;
        options.long_prompt = long_prompt;
        // A raising preview callback cancels at the next step and its exception propagates.
        let preview_error: std::sync::Arc<Mutex<Option<PyErr>>> = Default::default();
        if let Some(callback) = preview {
            let mode = preview_mode.parse().map_err(to_py_err)?;
            let failed = preview_error.clone();
            options.preview = Some(avatar_core::diffusion::preview::PreviewOptions::new(
                preview_every.max(1),
                mode,
                move |p| {
                    Python::attach(|py| {
                        let called = images_to_pil(py, p.images)
                            .and_then(|images| callback.call1(py, (p.step, p.total, images)));
                        if let Err(error) = called {
                            *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                        }
                    })
                },
            ));
        }
        let result = with_progress(py, progress, |report| {
            self.inner.text_to_image(&options, |p| {
                preview_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_none()
                    && report(p)
            })
        });
        if let Some(error) = preview_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(error);
        }
        self.finish(py, result?, safety_checker, safety_checker_type.as_deref())
    }

    /// Images from `image` (a `PIL.Image.Image`) and a prompt; `strength` in (0, 1] is how much
    /// of the image is replaced.
    #[pyo3(signature = (image, prompt, strength = 0.75, negative_prompt = String::new(), num_inference_steps = 30, guidance_scale = 7.5, num_images = 1, seed = None, scheduler = None, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn image_to_image<'py>(
        &self,
        py: Python<'py>,
        image: Bound<'py, PyAny>,
        prompt: String,
        strength: f64,
        negative_prompt: String,
        num_inference_steps: usize,
        guidance_scale: f64,
        num_images: usize,
        seed: Option<PySeed<'py>>,
        scheduler: Option<String>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let input = from_pil("image", &image)?;
        let options = diffusion_options(
            prompt,
            negative_prompt,
            num_inference_steps,
            guidance_scale,
            None,
            None,
            num_images,
            seed,
            scheduler,
        )?;
        let images = with_progress(py, progress, |report| {
            self.inner
                .image_to_image(&input, strength, &options, report)
        })?;
        images_to_pil(py, images)
    }

    /// Seed 001's face avatars (PIL images): `batch` images drawn from the reference photo
    /// `image`; `prompt=None` uses the default avatar prompt with `gender`; ranges as the seed
    /// (batch 1-8, sides 256-1536, steps 1-50, guidance 1-30).
    #[pyo3(signature = (image, prompt = None, gender = None, batch = 1, width = 512, height = 512, num_inference_steps = 30, guidance_scale = 7.5, negative_prompt = String::new(), strength = 0.6, remove_background = false, bg_color = None, seed = None, progress = None, ip_adapter_scale = 0.6, safety_checker = false, safety_checker_type = None))]
    #[allow(clippy::too_many_arguments)]
    fn face_avatar<'py>(
        &self,
        py: Python<'py>,
        image: Bound<'py, PyAny>,
        prompt: Option<String>,
        gender: Option<String>,
        batch: usize,
        width: u32,
        height: u32,
        num_inference_steps: usize,
        guidance_scale: f64,
        negative_prompt: String,
        strength: f64,
        remove_background: bool,
        bg_color: Option<String>,
        seed: Option<PySeed<'py>>,
        progress: Option<Py<PyAny>>,
        ip_adapter_scale: f32,
        safety_checker: bool,
        safety_checker_type: Option<String>,
    ) -> PyResult<Bound<'py, PyList>> {
        let reference = from_pil("image", &image)?;
        let options = avatar_core::diffusion::face_avatar::FaceAvatarOptions {
            prompt,
            negative_prompt,
            gender,
            batch,
            width,
            height,
            num_inference_steps,
            guidance_scale,
            strength,
            remove_background,
            bg_color,
            seed: match seed {
                Some(seed) => seed_of(seed)?.value(),
                None => Seed::random().value(),
            },
            ip_adapter_scale,
        };
        options.validate().map_err(to_py_err)?;
        let images = with_progress(py, progress, |report| {
            avatar_core::diffusion::face_avatar::face_avatars(
                &self.inner,
                &reference,
                &options,
                &self.tools,
                report,
            )
        })?;
        self.finish(py, images, safety_checker, safety_checker_type.as_deref())
    }
}

/// InstantID avatars (seed 002): an SDXL pipeline with InstantID's face adapter and
/// IdentityNet, and optional pose / canny ControlNets.
#[pyclass(frozen, module = "avatar")]
struct InstantID {
    inner: avatar_core::diffusion::avatar_gen::InstantId,
}

#[pymethods]
impl InstantID {
    #[new]
    #[pyo3(signature = (model, ip_adapter, identitynet, pose_controlnet = None, canny_controlnet = None, device = "cpu", precision = "fp32"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: std::path::PathBuf,
        ip_adapter: std::path::PathBuf,
        identitynet: std::path::PathBuf,
        pose_controlnet: Option<std::path::PathBuf>,
        canny_controlnet: Option<std::path::PathBuf>,
        device: &str,
        precision: &str,
    ) -> PyResult<Self> {
        let spec: DeviceSpec = device.parse().map_err(to_py_err)?;
        let precision: Precision = precision.parse().map_err(to_py_err)?;
        let inner = py
            .detach(|| {
                let device = spec.device()?;
                let mut base =
                    avatar_core::diffusion::pipeline::StableDiffusion::load(&model, &device)?;
                base.set_precision(precision)?;
                avatar_core::diffusion::avatar_gen::InstantId::new(
                    base,
                    &ip_adapter,
                    &identitynet,
                    pose_controlnet.as_deref(),
                    canny_controlnet.as_deref(),
                )
            })
            .map_err(to_py_err)?;
        Ok(InstantID { inner })
    }

    /// Avatars (PIL images) of the face in `face_image`, given its insightface `embedding`
    /// (raw, 512 values) and five `kps` in the photo's pixels; seed 002's names and ranges.
    #[pyo3(signature = (face_image, face_embedding, face_keypoints, prompt, negative_prompt = String::new(), width = 512, height = 512, num_inference_steps = 21, guidance_scale = 7.5, s_scale = 1.0, samples = 1, seed = None, identitynet_strength_ratio = 0.8, adapter_strength_ratio = 1.0, pose_strength = 0.4, canny_strength = 0.3, controlnet_selection = vec!["pose".to_string()], pose_image = None, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        face_image: Bound<'py, PyAny>,
        face_embedding: Vec<f32>,
        face_keypoints: Vec<(f32, f32)>,
        prompt: String,
        negative_prompt: String,
        width: u32,
        height: u32,
        num_inference_steps: usize,
        guidance_scale: f64,
        s_scale: f32,
        samples: usize,
        seed: Option<PySeed<'py>>,
        identitynet_strength_ratio: f32,
        adapter_strength_ratio: f32,
        pose_strength: f32,
        canny_strength: f32,
        controlnet_selection: Vec<String>,
        pose_image: Option<Bound<'py, PyAny>>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        use avatar_core::diffusion::avatar_gen::{
            AvatarGenOptions, ControlSelection, FaceReference,
        };
        let face = FaceReference {
            image: from_pil("face_image", &face_image)?,
            embedding: face_embedding,
            keypoints: face_keypoints,
        };
        let pose = pose_image
            .map(|image| from_pil("pose_image", &image))
            .transpose()?;
        let options = AvatarGenOptions {
            prompt,
            negative_prompt,
            width,
            height,
            num_inference_steps,
            guidance_scale,
            s_scale,
            samples,
            seed: match seed {
                Some(seed) => seed_of(seed)?.value(),
                None => Seed::random().value(),
            },
            identitynet_strength_ratio,
            adapter_strength_ratio,
            pose_strength,
            canny_strength,
            controlnet_selection: controlnet_selection
                .iter()
                .map(|s| s.parse::<ControlSelection>())
                .collect::<Result<_, _>>()
                .map_err(to_py_err)?,
        };
        options.validate().map_err(to_py_err)?;
        let output = with_progress(py, progress, |report| {
            self.inner.generate(&face, pose.as_ref(), &options, report)
        })?;
        images_to_pil(py, output.images)
    }
}

/// A VQGAN+CLIP engine (taming VQGAN + open_clip CLIP) that optimises images towards prompts.
#[pyclass(frozen, module = "avatar")]
struct VqganClip {
    inner: avatar_core::vqgan_clip::VqganClip,
}

/// An image prompt as Python callers give it: an image, or `(image, weight)`, or
/// `(image, weight, stop)`.
#[derive(FromPyObject)]
enum PyImagePrompt<'py> {
    Weighted(Bound<'py, PyAny>, f32),
    WeightedStop(Bound<'py, PyAny>, f32, f32),
    Plain(Bound<'py, PyAny>),
}

#[pymethods]
impl VqganClip {
    #[new]
    #[pyo3(signature = (vqgan_config, vqgan_weights, clip_weights, clip_config = None, device = "cpu"))]
    fn new(
        py: Python<'_>,
        vqgan_config: std::path::PathBuf,
        vqgan_weights: std::path::PathBuf,
        clip_weights: std::path::PathBuf,
        clip_config: Option<std::path::PathBuf>,
        device: &str,
    ) -> PyResult<Self> {
        let spec: DeviceSpec = device.parse().map_err(to_py_err)?;
        let inner = py
            .detach(|| {
                let clip = match &clip_config {
                    Some(path) => avatar_core::vqgan_clip::OpenClipConfig::from_json_file(path)?,
                    None => avatar_core::vqgan_clip::OpenClipConfig::vit_b_32(),
                };
                avatar_core::vqgan_clip::VqganClip::load(
                    &vqgan_config,
                    &vqgan_weights,
                    &clip,
                    &clip_weights,
                    &spec.device()?,
                )
            })
            .map_err(to_py_err)?;
        Ok(VqganClip { inner })
    }

    /// Pixels per latent cell: sizes are rounded down to multiples of it.
    #[getter]
    fn factor(&self) -> usize {
        self.inner.factor()
    }

    /// Optimises an image (`PIL.Image.Image`, RGBA) towards `prompt` (`"text:weight:stop"`
    /// separated by `|`). `progress(iteration, total, loss, image)` is called after every step,
    /// `image` being the decoded intermediate (a PIL image every `display_every` steps, else
    /// `None`); returning `False` or raising cancels the run.
    #[pyo3(signature = (prompt = None, image_prompts = None, init_image = None, init_weight = 0.0, width = 256, height = 256, iterations = 100, step_size = 0.1, cutn = 32, cut_pow = 1.0, augment = true, seed = None, display_every = 10, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: Option<&str>,
        image_prompts: Option<Vec<PyImagePrompt<'py>>>,
        init_image: Option<Bound<'py, PyAny>>,
        init_weight: f32,
        width: usize,
        height: usize,
        iterations: usize,
        step_size: f64,
        cutn: usize,
        cut_pow: f64,
        augment: bool,
        seed: Option<PySeed<'py>>,
        display_every: usize,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        use avatar_core::vqgan_clip::{Augmentations, PromptSpec, RunObserver, RunOptions};
        let prompts = match prompt {
            Some(text) => PromptSpec::parse_list(text).map_err(to_py_err)?,
            None => Vec::new(),
        };
        let mut images = Vec::new();
        for (index, entry) in image_prompts.unwrap_or_default().into_iter().enumerate() {
            let (image, weight, stop) = match entry {
                PyImagePrompt::Plain(image) => (image, 1.0, f32::NEG_INFINITY),
                PyImagePrompt::Weighted(image, weight) => (image, weight, f32::NEG_INFINITY),
                PyImagePrompt::WeightedStop(image, weight, stop) => (image, weight, stop),
            };
            let spec = PromptSpec {
                text: format!("image prompt {index}"),
                weight,
                stop,
            };
            images.push((from_pil("image_prompts", &image)?, spec));
        }
        let options = RunOptions {
            prompts,
            image_prompts: images,
            init_image: init_image
                .map(|image| from_pil("init_image", &image))
                .transpose()?,
            init_weight,
            width,
            height,
            iterations,
            step_size,
            cutn,
            cut_pow,
            augmentations: if augment {
                Augmentations::default()
            } else {
                Augmentations::none()
            },
            seed: seed.map(seed_of).transpose()?,
            display_every,
        };
        options.validate(self.inner.factor()).map_err(to_py_err)?;
        let raised: Mutex<Option<PyErr>> = Mutex::new(None);
        let observer = RunObserver::new();
        let result = py.detach(|| {
            self.inner.run(&options, &observer, |step| match &progress {
                None => true,
                Some(callback) => Python::attach(|py| {
                    let image = match &step.image {
                        Some(image) => match to_pil(py, image.clone()) {
                            Ok(pil) => pil.unbind(),
                            Err(error) => {
                                *raised.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                                return false;
                            }
                        },
                        None => py.None(),
                    };
                    match callback.call1(py, (step.iteration, step.total, step.loss, image)) {
                        Ok(answer) => !matches!(answer.extract::<bool>(py), Ok(false)),
                        Err(error) => {
                            *raised.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                            false
                        }
                    }
                }),
            })
        });
        if let Some(error) = raised.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(error);
        }
        to_pil(py, result.map_err(to_py_err)?)
    }
}

/// diffusers' Stable Diffusion safety checker (a `safety_checker/` folder).
#[pyclass(frozen, module = "avatar")]
struct SafetyChecker {
    inner: avatar_core::diffusion::safety_checker::SafetyChecker,
    device: avatar_core::burn::tensor::Device,
}

#[pymethods]
impl SafetyChecker {
    #[new]
    #[pyo3(signature = (model, device = "cpu"))]
    fn new(py: Python<'_>, model: std::path::PathBuf, device: &str) -> PyResult<Self> {
        let spec: DeviceSpec = device.parse().map_err(to_py_err)?;
        py.detach(|| {
            let device = spec.device()?;
            let inner =
                avatar_core::diffusion::safety_checker::SafetyChecker::load(&model, &device)?;
            Ok(SafetyChecker { inner, device })
        })
        .map_err(to_py_err)
    }

    /// Whether each image (`PIL.Image.Image`) shows a flagged concept.
    fn check(&self, py: Python<'_>, images: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<bool>> {
        let images = images
            .iter()
            .map(|image| from_pil("images", image))
            .collect::<PyResult<Vec<_>>>()?;
        let verdicts = py
            .detach(|| self.inner.check_images(&images, &self.device))
            .map_err(to_py_err)?;
        Ok(verdicts.iter().map(|v| v.has_nsfw_concept).collect())
    }

    /// `image` replaced as seed 002's `safety_checker_type` says: `black`, `blur`, `pixelate`
    /// or `sensitive_content_text`.
    #[staticmethod]
    #[pyo3(signature = (image, how = "black"))]
    fn obfuscate<'py>(
        py: Python<'py>,
        image: Bound<'py, PyAny>,
        how: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let how = how
            .parse::<avatar_core::diffusion::safety_checker::Obfuscation>()
            .map_err(to_py_err)?;
        let image = from_pil("image", &image)?;
        to_pil(
            py,
            avatar_core::diffusion::safety_checker::obfuscate(&image, how),
        )
    }
}

/// Background removal with a U²-Net (`u2net.pth`, `u2netp.pth`, `u2net_human_seg.pth` or a
/// safetensors conversion), run as rembg runs it.
#[pyclass(frozen, module = "avatar")]
struct BackgroundRemover {
    inner: avatar_core::segmentation::BackgroundRemover,
}

#[pymethods]
impl BackgroundRemover {
    #[new]
    #[pyo3(signature = (model, device = "cpu", input_size = 320))]
    fn new(
        py: Python<'_>,
        model: std::path::PathBuf,
        device: &str,
        input_size: u32,
    ) -> PyResult<Self> {
        let spec: DeviceSpec = device.parse().map_err(to_py_err)?;
        py.detach(|| {
            let inner =
                avatar_core::segmentation::BackgroundRemover::load(&model, &spec.device()?)?
                    .with_input_size(input_size)?;
            Ok(BackgroundRemover { inner })
        })
        .map_err(to_py_err)
    }

    /// The subject's mask (`PIL.Image.Image`, mode `L`, the image's size; 255 = subject).
    fn mask<'py>(&self, py: Python<'py>, image: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let image = from_pil("image", &image)?;
        let mask = py.detach(|| self.inner.mask(&image)).map_err(to_py_err)?;
        let (width, height) = mask.dimensions();
        py.import("PIL.Image")?.call_method1(
            "frombytes",
            ("L", (width, height), PyBytes::new(py, mask.as_raw())),
        )
    }

    /// `image` (RGBA) with the background transparent; colours kept, alpha = mask x alpha.
    fn remove<'py>(
        &self,
        py: Python<'py>,
        image: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let image = from_pil("image", &image)?;
        to_pil(
            py,
            py.detach(|| self.inner.remove(&image)).map_err(to_py_err)?,
        )
    }
}

/// insightface-style face analysis: SCRFD detection (boxes, five keypoints) and ArcFace
/// embeddings, from your own copies of insightface's ONNX files (antelopev2's
/// `scrfd_10g_bnkps.onnx` + `glintr100.onnx` for InstantID, buffalo_l's `det_10g.onnx` +
/// `w600k_r50.onnx` for IP-Adapter-FaceID).
#[pyclass(frozen, module = "avatar")]
struct FaceAnalysis {
    inner: std::sync::Arc<avatar_core::face_analysis::FaceAnalysis>,
    options: avatar_core::face_analysis::DetectionOptions,
}

#[pymethods]
impl FaceAnalysis {
    #[new]
    #[pyo3(signature = (detector, recognizer, device = "cpu", det_size = (640, 640), det_thresh = 0.5, nms_thresh = 0.4))]
    fn new(
        py: Python<'_>,
        detector: std::path::PathBuf,
        recognizer: std::path::PathBuf,
        device: &str,
        det_size: (u32, u32),
        det_thresh: f32,
        nms_thresh: f32,
    ) -> PyResult<Self> {
        let spec: DeviceSpec = device.parse().map_err(to_py_err)?;
        let options = avatar_core::face_analysis::DetectionOptions {
            input_size: det_size,
            threshold: det_thresh,
            nms_threshold: nms_thresh,
            max_faces: 0,
        };
        options.validate().map_err(to_py_err)?;
        py.detach(|| {
            let inner = std::sync::Arc::new(avatar_core::face_analysis::FaceAnalysis::load(
                &detector,
                &recognizer,
                &spec.device()?,
            )?);
            Ok(FaceAnalysis { inner, options })
        })
        .map_err(to_py_err)
    }

    /// The faces in `image` as insightface's keys: `bbox` `[x1, y1, x2, y2]`, `det_score`,
    /// `kps` (five `[x, y]`), `embedding` (raw; InstantID's input) and `normed_embedding`
    /// (IP-Adapter-FaceID's); `max_num` keeps the largest, most central ones.
    #[pyo3(signature = (image, max_num = 0))]
    fn analyze<'py>(
        &self,
        py: Python<'py>,
        image: Bound<'py, PyAny>,
        max_num: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let image = image::DynamicImage::ImageRgba8(from_pil("image", &image)?).to_rgb8();
        let options = avatar_core::face_analysis::DetectionOptions {
            max_faces: max_num,
            ..self.options
        };
        let faces = py
            .detach(|| self.inner.analyze(&image, &options))
            .map_err(to_py_err)?;
        let list = PyList::empty(py);
        for face in faces {
            let dict = PyDict::new(py);
            dict.set_item("bbox", face.bbox.to_vec())?;
            dict.set_item("det_score", face.score)?;
            dict.set_item(
                "kps",
                face.keypoints
                    .iter()
                    .map(|p| p.to_vec())
                    .collect::<Vec<_>>(),
            )?;
            dict.set_item("normed_embedding", face.normed_embedding())?;
            dict.set_item("embedding", face.embedding)?;
            list.append(dict)?;
        }
        Ok(list)
    }
}

/// The `avatar._native` extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<AvatarGenerator>()?;
    m.add_class::<StableDiffusion>()?;
    m.add_class::<InstantID>()?;
    m.add_class::<VqganClip>()?;
    m.add_class::<SafetyChecker>()?;
    m.add_class::<BackgroundRemover>()?;
    m.add_class::<FaceAnalysis>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_BATCH", avatar_core::avatar::MAX_BATCH_WITH_PROGRESS)?;
    Ok(())
}
