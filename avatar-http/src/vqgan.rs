//! The VQGAN+CLIP runs of seed 004 (the AI Art Generator API): each run optimises in the
//! background on one worker thread that owns the models, while handlers read its live state
//! (iteration counter, latest intermediate image) through the core's `RunObserver`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use avatar_core::imaging::{ImageFormat, encode};
use avatar_core::vqgan_clip::{OpenClipConfig, RunObserver, RunOptions, VqganClip};
use avatar_core::{AvatarError, DeviceSpec};
use serde::Serialize;
use utoipa::ToSchema;

/// Where the VQGAN+CLIP models come from (`--vqgan-config`, `--vqgan-weights`, `--clip-weights`,
/// `--clip-config`).
#[derive(Debug, Clone)]
pub struct VqganModelPaths {
    /// taming's yaml.
    pub vqgan_config: PathBuf,
    /// taming's checkpoint.
    pub vqgan_weights: PathBuf,
    /// CLIP state dict.
    pub clip_weights: PathBuf,
    /// open_clip's model json (`None`: ViT-B/32).
    pub clip_config: Option<PathBuf>,
}

/// A run's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for the worker.
    Queued,
    /// Optimising.
    Running,
    /// Done; the final image is available.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

/// A run as the API reports it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    /// The run's id.
    pub id: String,
    /// Its state.
    pub status: RunStatus,
    /// Iterations done.
    pub iteration: usize,
    /// Iterations asked for.
    pub total: usize,
    /// `100 * iteration / total`, rounded down.
    pub percent: u32,
    /// The latest loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f32>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since it was submitted.
    pub age_secs: u64,
}

#[derive(Debug)]
struct Run {
    options: RunOptions,
    observer: RunObserver,
    status: RunStatus,
    result: Option<Arc<Vec<u8>>>,
    error: Option<String>,
    created: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    runs: HashMap<String, Run>,
    queue: VecDeque<String>,
    stopping: bool,
}

/// Why a run was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Too many runs are waiting.
    #[error("{0} runs are already waiting; retry later")]
    Busy(usize),
    /// The options are invalid.
    #[error(transparent)]
    Invalid(AvatarError),
}

/// The runs and the worker that executes them one after another.
#[derive(Debug, Clone)]
pub struct VqganService {
    inner: Arc<(Mutex<Inner>, Condvar)>,
    factor: usize,
    capacity: usize,
}

impl VqganService {
    /// Loads the models (blocking) and starts the worker thread.
    pub fn start(
        paths: &VqganModelPaths,
        device: DeviceSpec,
        capacity: usize,
    ) -> Result<Self, AvatarError> {
        let clip_config = match &paths.clip_config {
            Some(path) => OpenClipConfig::from_json_file(path)?,
            None => OpenClipConfig::vit_b_32(),
        };
        let engine = VqganClip::load(
            &paths.vqgan_config,
            &paths.vqgan_weights,
            &clip_config,
            &paths.clip_weights,
            &device.device()?,
        )?;
        let service = VqganService {
            inner: Arc::new((Mutex::new(Inner::default()), Condvar::new())),
            factor: engine.factor(),
            capacity: capacity.max(1),
        };
        let worker = service.clone();
        std::thread::Builder::new()
            .name("vqgan-clip".into())
            .spawn(move || worker.work(engine))
            .map_err(|e| AvatarError::Backend(format!("cannot start the worker: {e}")))?;
        Ok(service)
    }

    /// Pixels per latent cell (sizes are rounded down to multiples of it).
    pub fn factor(&self) -> usize {
        self.factor
    }

    /// Validates and queues a run; returns its id.
    pub fn submit(&self, options: RunOptions) -> Result<String, SubmitError> {
        options
            .validate(self.factor)
            .map_err(SubmitError::Invalid)?;
        let (lock, wake) = &*self.inner;
        let mut inner = lock.lock().expect("vqgan state poisoned");
        if inner.queue.len() >= self.capacity {
            return Err(SubmitError::Busy(inner.queue.len()));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        inner.runs.insert(
            id.clone(),
            Run {
                options,
                observer: RunObserver::new(),
                status: RunStatus::Queued,
                result: None,
                error: None,
                created: Instant::now(),
            },
        );
        inner.queue.push_back(id.clone());
        wake.notify_all();
        Ok(id)
    }

    /// A run's state.
    pub fn view(&self, id: &str) -> Option<RunView> {
        let inner = self.inner.0.lock().expect("vqgan state poisoned");
        let run = inner.runs.get(id)?;
        let total = run.options.iterations;
        let iteration = run.observer.iteration();
        Some(RunView {
            id: id.to_owned(),
            status: run.status,
            iteration,
            total,
            percent: (100 * iteration / total.max(1)) as u32,
            loss: run.observer.loss(),
            error: run.error.clone(),
            age_secs: run.created.elapsed().as_secs(),
        })
    }

    /// The latest intermediate image as PNG (`None` before the first display step).
    pub fn progress_png(&self, id: &str) -> Option<Option<Vec<u8>>> {
        let observer = {
            let inner = self.inner.0.lock().expect("vqgan state poisoned");
            inner.runs.get(id)?.observer.clone()
        };
        Some(
            observer
                .latest_image()
                .and_then(|image| encode(&image, ImageFormat::Png).ok()),
        )
    }

    /// The final PNG once the run succeeded.
    pub fn result_png(&self, id: &str) -> Option<(RunStatus, Option<Arc<Vec<u8>>>)> {
        let inner = self.inner.0.lock().expect("vqgan state poisoned");
        let run = inner.runs.get(id)?;
        Some((run.status, run.result.clone()))
    }

    /// Cancels a queued or running run; returns its state afterwards.
    pub fn cancel(&self, id: &str) -> Option<RunStatus> {
        let mut inner = self.inner.0.lock().expect("vqgan state poisoned");
        let run = inner.runs.get_mut(id)?;
        run.observer.cancel();
        if run.status == RunStatus::Queued {
            run.status = RunStatus::Cancelled;
            inner.queue.retain(|queued| queued != id);
            return Some(RunStatus::Cancelled);
        }
        Some(run.status)
    }

    /// Forgets finished runs older than `ttl`.
    pub fn expire(&self, ttl: Duration) -> usize {
        let mut inner = self.inner.0.lock().expect("vqgan state poisoned");
        let before = inner.runs.len();
        inner.runs.retain(|_, run| {
            matches!(run.status, RunStatus::Queued | RunStatus::Running)
                || run.created.elapsed() < ttl
        });
        before - inner.runs.len()
    }

    /// Stops the worker after its current run; queued runs are cancelled.
    pub fn stop(&self) {
        let (lock, wake) = &*self.inner;
        let mut inner = lock.lock().expect("vqgan state poisoned");
        inner.stopping = true;
        let queued: Vec<String> = inner.queue.drain(..).collect();
        for id in queued {
            if let Some(run) = inner.runs.get_mut(&id) {
                run.status = RunStatus::Cancelled;
            }
        }
        for run in inner.runs.values() {
            run.observer.cancel();
        }
        wake.notify_all();
    }

    fn work(self, engine: VqganClip) {
        let (lock, wake) = &*self.inner;
        loop {
            let (id, options, observer) = {
                let mut inner = lock.lock().expect("vqgan state poisoned");
                let id = loop {
                    if inner.stopping {
                        return;
                    }
                    if let Some(id) = inner.queue.pop_front() {
                        break id;
                    }
                    inner = wake.wait(inner).expect("vqgan state poisoned");
                };
                let Some(run) = inner.runs.get_mut(&id) else {
                    continue;
                };
                run.status = RunStatus::Running;
                (id, run.options.clone(), run.observer.clone())
            };
            tracing::info!(run = %id, iterations = options.iterations, width = options.width, height = options.height, "vqgan+clip run started");
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.run(&options, &observer, |_| true)
            }));
            let mut inner = lock.lock().expect("vqgan state poisoned");
            let Some(run) = inner.runs.get_mut(&id) else {
                continue;
            };
            match outcome {
                Ok(Ok(image)) => match encode(&image, ImageFormat::Png) {
                    Ok(png) => {
                        run.status = RunStatus::Succeeded;
                        run.result = Some(Arc::new(png));
                    }
                    Err(e) => {
                        run.status = RunStatus::Failed;
                        run.error = Some(e.to_string());
                    }
                },
                Ok(Err(AvatarError::Cancelled)) => run.status = RunStatus::Cancelled,
                Ok(Err(e)) => {
                    run.status = RunStatus::Failed;
                    run.error = Some(e.to_string());
                }
                Err(_) => {
                    run.status = RunStatus::Failed;
                    run.error = Some("the run panicked; see the server log".into());
                }
            }
            tracing::info!(run = %id, status = ?run.status, secs = started.elapsed().as_secs_f64(), "vqgan+clip run ended");
        }
    }
}
