//! Seed 003 (the Image Generation API): Stable Diffusion text-to-image where every image is kept
//! under an increasing counter (from 0), so that a later request can name an earlier image as the
//! reference that keeps its character consistent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use avatar_core::AvatarError;
use avatar_core::diffusion::ip_adapter::IpAdapterPrompt;
use avatar_core::diffusion::pipeline::{StableDiffusion, TextToImageOptions};
use avatar_core::diffusion::safety_checker::SafetyFilter;
use avatar_core::imaging::{ImageFormat, encode};
use image::RgbaImage;

/// Generated images numbered 0, 1, 2, ... as `<n>.png` in one folder (kept across restarts).
#[derive(Debug)]
pub struct Gallery {
    dir: PathBuf,
    /// Held while an image is written (one writer at a time).
    writing: Mutex<()>,
    /// Images saved, i.e. the next counter (published after each rename): readers never wait
    /// for a writer.
    published: AtomicU64,
}

impl Gallery {
    /// Opens (creating) `dir`; numbering continues after the largest `<n>.png` found.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut next = 0;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".png"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                next = next.max(n.saturating_add(1));
            }
        }
        Ok(Gallery {
            dir: dir.to_path_buf(),
            writing: Mutex::new(()),
            published: AtomicU64::new(next),
        })
    }

    /// How many images were saved (the next counter).
    pub fn len(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Whether no image was saved yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Saves a PNG under the next counter (written to a temporary file, then renamed, so a
    /// reader never sees half an image) and returns the counter.
    pub fn save(&self, png: &[u8]) -> std::io::Result<u64> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.published.load(Ordering::Acquire);
        let partial = self.dir.join(format!(".{n}.png.partial"));
        std::fs::write(&partial, png)?;
        std::fs::rename(&partial, self.path(n))?;
        self.published.store(n + 1, Ordering::Release);
        Ok(n)
    }

    /// The file of image `n` (which may not exist).
    pub fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n}.png"))
    }

    /// The PNG of image `n`, `None` when there is none.
    pub fn read(&self, n: u64) -> Option<std::io::Result<Vec<u8>>> {
        if n >= self.len() {
            return None;
        }
        match std::fs::read(self.path(n)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            other => Some(other),
        }
    }
}

/// Defaults of seed 003 requests (`--sd-*` flags).
#[derive(Debug, Clone)]
pub struct TextToImageDefaults {
    /// Width in pixels (`None`: the model's native size).
    pub width: Option<u32>,
    /// Height in pixels.
    pub height: Option<u32>,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance.
    pub guidance_scale: f64,
    /// How much of a reference image is redrawn (0: kept, 1: replaced), without an IP-Adapter.
    pub reference_strength: f64,
    /// Weight of a reference image through the model's IP-Adapter, when one is loaded.
    pub ip_adapter_scale: f32,
    /// Requests allowed to wait while one image is drawn.
    pub queue_capacity: usize,
}

/// One seed 003 request.
#[derive(Debug, Clone)]
pub struct SceneRequest {
    /// The pipeline's options (prompt, size, steps, guidance, seed, ...).
    pub options: TextToImageOptions,
    /// An earlier image (its pixels) that the new one starts from, and how much of it is redrawn.
    pub reference: Option<(RgbaImage, f64)>,
}

/// Why a request was not drawn.
#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    /// Too many requests are waiting.
    #[error("{0} requests are already waiting for the image model; retry later")]
    Busy(usize),
    /// The pipeline refused or failed.
    #[error(transparent)]
    Core(#[from] AvatarError),
    /// The gallery could not be written.
    #[error("cannot save the image: {0}")]
    Io(#[from] std::io::Error),
}

/// The Stable Diffusion pipeline and the gallery; draws one image at a time.
#[derive(Debug)]
pub struct TextToImageService {
    pipeline: Arc<StableDiffusion>,
    safety: Option<Arc<SafetyFilter>>,
    gallery: Arc<Gallery>,
    defaults: TextToImageDefaults,
    drawing: Arc<Mutex<()>>,
    waiting: Arc<AtomicUsize>,
}

/// Sets its flag when dropped: a request whose client went away stops its denoising loop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TextToImageService {
    /// Serves `pipeline` and opens the gallery.
    pub fn new(
        pipeline: Arc<StableDiffusion>,
        safety: Option<Arc<SafetyFilter>>,
        gallery: &Path,
        defaults: TextToImageDefaults,
    ) -> Result<Self, String> {
        let gallery =
            Gallery::open(gallery).map_err(|e| format!("gallery {}: {e}", gallery.display()))?;
        Ok(TextToImageService {
            pipeline,
            safety,
            gallery: Arc::new(gallery),
            defaults,
            drawing: Arc::new(Mutex::new(())),
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The request defaults.
    pub fn defaults(&self) -> &TextToImageDefaults {
        &self.defaults
    }

    /// The numbered images.
    pub fn gallery(&self) -> &Arc<Gallery> {
        &self.gallery
    }

    /// Draws `request` on a blocking thread, passes it through the safety checker (when one is
    /// configured), saves it and returns its counter and whether it was flagged. Dropping the
    /// future (the client went away) stops the denoising at the next step.
    pub async fn draw(&self, request: SceneRequest) -> Result<(u64, bool), SceneError> {
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(self.waiting.clone());
        if queued > self.defaults.queue_capacity {
            return Err(SceneError::Busy(queued));
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancelled.clone());
        let ip_scale = self.defaults.ip_adapter_scale;
        let (pipeline, gallery, drawing, safety) = (
            self.pipeline.clone(),
            self.gallery.clone(),
            self.drawing.clone(),
            self.safety.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let _waiting = waiting;
            let _one_at_a_time = drawing.lock().unwrap_or_else(|e| e.into_inner());
            if cancelled.load(Ordering::Relaxed) {
                return Err(SceneError::Core(AvatarError::Cancelled));
            }
            let go_on = |_| !cancelled.load(Ordering::Relaxed);
            // With an image IP-Adapter the reference keeps the character through the adapter
            // (a new composition); without one (or with a face adapter, which needs a face
            // embedding), through image-to-image.
            let adapter = pipeline
                .ip_adapters()
                .first()
                .filter(|a| !a.kind().takes_face_embedding() && pipeline.ip_adapters().len() == 1);
            let images = match (&request.reference, adapter) {
                (Some((image, _)), Some(_)) => {
                    let options = TextToImageOptions {
                        ip_adapter: vec![IpAdapterPrompt::image(image.clone(), ip_scale)],
                        ..request.options.clone()
                    };
                    pipeline.text_to_image(&options, go_on)?
                }
                (Some((image, strength)), None) => {
                    pipeline.image_to_image(image, *strength, &request.options, go_on)?
                }
                (None, _) => pipeline.text_to_image(&request.options, go_on)?,
            };
            let (mut images, flagged) = match &safety {
                Some(filter) => filter.filter(images, None)?,
                None => (images, vec![false]),
            };
            let png = encode(&images.remove(0), ImageFormat::Png)?;
            Ok((gallery.save(&png)?, flagged[0]))
        })
        .await
        .map_err(|e| SceneError::Core(AvatarError::Backend(format!("the drawing failed: {e}"))))?
    }
}
