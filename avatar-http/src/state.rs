//! The state shared by every handler.

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::config::Config;
use crate::inference::GenerationPool;
use crate::metrics::Metrics;
use crate::models::ModelCatalog;
use crate::tasks::dcgan::DcganModels;
use crate::tasks::{Lane, TaskManager};

/// Everything the handlers need.
#[derive(Debug)]
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The model weights.
    pub catalog: ModelCatalog,
    /// The synchronous generation workers.
    pub pool: GenerationPool,
    /// Tasks.
    pub tasks: TaskManager,
    /// The DCGAN task lane.
    pub dcgan: Lane<DcganModels>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The OpenAPI document, rendered once.
    pub openapi_json: String,
    /// VQGAN+CLIP runs (seed 004), when its models are configured.
    pub vqgan: Option<crate::vqgan::VqganService>,
    /// The configured Stable Diffusion models by `app_id`.
    pub diffusion: crate::tasks::face_avatar::DiffusionApps,
    /// Seed 001's task lane (when a Stable Diffusion model is configured).
    pub face_lane: Option<Lane<crate::tasks::face_avatar::DiffusionApps>>,
    /// Reads image inputs given by URL or data URI (SSRF-safe, capped).
    pub fetcher: crate::fetch::ImageFetcher,
    /// Seed 003's text-to-image and its numbered gallery, when `--sd-model` is given.
    pub scenes: Option<Arc<crate::gallery::TextToImageService>>,
    /// `http://<bound address>`, the fallback base of absolute links.
    pub bound_url: String,
}

/// The handlers' state.
pub type AppState = Arc<App>;

impl App {
    /// The base of absolute links for a request: `--public-url`, else the request's `Host`,
    /// else the bound address.
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.config.public_url {
            return url.trim_end_matches('/').to_string();
        }
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .map(|host| format!("http://{host}"))
            .unwrap_or_else(|| self.bound_url.clone())
    }
}
