//! # avatar-http
//!
//! The avatar APIs over HTTP (axum): the DCGAN seed service's `/health` and `GET
//! /generate-image`, permanent per-seed avatars, a generic task queue with progress,
//! cancellation, storage and webhooks, OpenAPI docs, metrics and a web page; and, when their
//! models are configured, seed 001's face avatars (`POST /getImageToImage`), seed 003's numbered
//! text-to-image (`POST /generate-image`) and seed 004's VQGAN+CLIP runs (`/text2img`). Image
//! inputs by URL are fetched SSRF-safely ([`fetch`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), avatar_http::BoxError> {
//! let server = avatar_http::Server::start(avatar_http::Config::for_tests()).await?;
//! println!("listening on {}", server.url());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
pub mod error;
pub mod fetch;
pub mod gallery;
pub mod inference;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod params;
pub mod routes;
pub mod state;
pub mod tasks;
pub mod telemetry;
pub mod vqgan;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use tokio::sync::{mpsc, watch};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

pub use config::Config;

use crate::auth::Auth;
use crate::inference::{GenerationPool, PoolConfig};
use crate::metrics::Metrics;
use crate::models::ModelCatalog;
use crate::state::{App, AppState};
use crate::tasks::dcgan::{self, DcganBatchJob, DcganModels};
use crate::tasks::face_avatar::{self, DiffusionApps, FaceAvatarJob};
use crate::tasks::webhook::{WebhookConfig, WebhookDispatcher};
use crate::tasks::{DiskStore, Job, MemoryStore, TaskManager, TaskStore};

/// Errors of start-up and shutdown.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the router over `app`.
pub fn router(app: AppState) -> Router {
    let tokens = if app.config.auth_required() {
        app.config.auth_tokens.as_slice()
    } else {
        &[]
    };
    let auth = Arc::new(Auth::new(tokens, app.config.body_limit));
    // Bodies that carry an image inline (base64 is 4/3 of the image's bytes): the limit applies
    // to the auth middleware's read of a body `key` too.
    let image_body_limit = app.config.fetch_max_bytes / 3 * 4 + 64 * 1024;
    let image_auth = Arc::new(Auth::new(tokens, image_body_limit));
    let timeout = Duration::from_secs(app.config.request_timeout_secs.max(1));
    let protected = Router::new()
        .route("/generate-image", get(routes::generate::generate_image))
        .route("/avatar/{file}", get(routes::avatar::avatar))
        .route("/tasks/avatars", post(routes::tasks::create_avatar_task))
        .route(
            "/tasks/{id}",
            get(routes::tasks::get_task).delete(routes::tasks::cancel_task),
        )
        .route("/tasks/{id}/result/{index}", get(routes::tasks::get_result))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/text2img", post(routes::vqgan::text2img))
        .route(
            "/text2img/{id}",
            axum::routing::delete(routes::vqgan::cancel),
        )
        .route("/text2img/{id}/progress", get(routes::vqgan::progress))
        .route(
            "/text2img/{id}/progress-image",
            get(routes::vqgan::progress_image),
        )
        .route("/text2img/{id}/image", get(routes::vqgan::image))
        .route("/images/{file}", get(routes::scenes::scene_image))
        .route(
            "/getImageToImage/{task_id}",
            get(routes::face_avatar::task_status),
        )
        .route("/models", get(routes::face_avatar::models))
        .route("/api/v6/images/fetch/{id}", post(routes::avatar_gen::fetch))
        .route(
            "/api/v6/image_editing/fetch/{id}",
            post(routes::avatar_gen::fetch),
        )
        .route_layer(axum::middleware::from_fn_with_state(auth, auth::require));
    let image_bodies = Router::new()
        .route("/textimg2img", post(routes::vqgan::textimg2img))
        .route_layer(axum::middleware::from_fn_with_state(
            image_auth.clone(),
            auth::require,
        ))
        .layer(DefaultBodyLimit::max(image_body_limit));
    // Drawing with Stable Diffusion takes minutes on a CPU: outside the request timeout (a
    // client that disconnects stops the drawing instead), but the body must still arrive in time.
    let long_running = Router::new()
        .route("/generate-image", post(routes::scenes::generate_scene))
        .route(
            "/getImageToImage",
            post(routes::face_avatar::get_image_to_image),
        )
        .route(
            "/api/v6/image_editing/avatar_gen",
            post(routes::avatar_gen::avatar_gen),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            image_auth,
            auth::require,
        ))
        .layer(DefaultBodyLimit::max(image_body_limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(timeout));
    let public = Router::new()
        .route("/", get(routes::web::index))
        .route("/health", get(routes::health::health))
        .route("/openapi.json", get(routes::docs::openapi))
        .route("/docs", get(routes::docs::docs));
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", id, method = %request.method(), uri = %request.uri())
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn_with_state(app.metrics.clone(), routes::metrics::track))
        .layer(DefaultBodyLimit::max(app.config.body_limit));
    public
        .merge(protected)
        .merge(image_bodies)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .merge(long_running)
        .fallback(routes::not_found)
        .with_state(app)
        .layer(layers)
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    app: AppState,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Result<(), BoxError>>,
}

impl Server {
    /// Loads the models, opens the store, re-queues unfinished tasks, binds and starts serving.
    pub async fn start(config: Config) -> Result<Server, BoxError> {
        config.check()?;
        let listener = tokio::net::TcpListener::bind(config.bind_addr())
            .await
            .map_err(|e| format!("cannot bind {}: {e}", config.bind_addr()))?;
        let addr = listener.local_addr()?;
        let link_host = if addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        } else {
            addr
        };
        let bound_url = format!("http://{link_host}");
        let metrics = Arc::new(Metrics::new());

        let weights_dir = config.weights_dir.clone();
        let device = config.device;
        let catalog =
            tokio::task::spawn_blocking(move || ModelCatalog::load(weights_dir.as_deref(), device))
                .await??;
        for size in avatar_core::ModelSize::ALL {
            let weights = catalog.weights(size);
            tracing::info!(size = size.as_str(), origin = %weights.origin, fingerprint = %weights.fingerprint, bytes = weights.bytes.len(), "model weights");
        }
        let pool_config = PoolConfig {
            workers: config.workers as usize,
            capacity: config.queue_capacity,
            max_batch: config.max_batch as usize,
            batch_window: config.batch_window(),
        };
        let pool = {
            let catalog = catalog.clone();
            let metrics = metrics.clone();
            tokio::task::spawn_blocking(move || {
                GenerationPool::start(&catalog, pool_config, metrics)
            })
            .await??
        };

        let store: Arc<dyn TaskStore> = match config.store {
            config::StoreKind::Memory => Arc::new(MemoryStore::new()),
            config::StoreKind::Disk => {
                let dir = config.resolved_data_dir();
                Arc::new(
                    DiskStore::open(&dir)
                        .map_err(|e| format!("data dir {}: {e}", dir.display()))?,
                )
            }
        };
        tracing::info!(store = %store.describe(), "task store");
        let (events_tx, events_rx) = mpsc::channel(1024);
        let tasks = TaskManager::new(store, events_tx, metrics.clone());
        let dcgan_lane = {
            let tasks = tasks.clone();
            let catalog = catalog.clone();
            let (workers, capacity) = (config.task_workers as usize, config.task_queue_capacity);
            tokio::task::spawn_blocking(move || {
                tasks.add_lane(dcgan::LANE, workers, capacity, move || {
                    DcganModels::load(&catalog).map_err(|e| e.to_string())
                })
            })
            .await??
        };
        {
            let metrics = metrics.clone();
            tasks.register_restorer(dcgan::KIND, &dcgan_lane, move |spec| {
                DcganBatchJob::from_spec(spec, metrics.clone())
                    .map(|job| Box::new(job) as Box<dyn Job<DcganModels>>)
            });
        }
        let webhook_base = config
            .public_url
            .clone()
            .unwrap_or_else(|| bound_url.clone());
        let dispatcher = WebhookDispatcher::spawn(
            events_rx,
            tasks.clone(),
            metrics.clone(),
            WebhookConfig {
                attempts: config.webhook_attempts,
                backoff: Duration::from_millis(config.webhook_backoff_ms),
                timeout: Duration::from_secs(config.webhook_timeout_secs.max(1)),
                base_url: webhook_base.trim_end_matches('/').to_string(),
            },
        );
        let diffusion = {
            let setup = face_avatar::DiffusionSetup {
                apps: config.diffusion_apps()?,
                safety: config
                    .safety_checker
                    .clone()
                    .map(|dir| (dir, config.safety_checker_type)),
                ip_adapter: config.ip_adapter_paths(),
                instant_id: config.instantid_paths()?,
                background_model: config.background_model.clone(),
                face_analysis: config.face_analysis_setup()?,
                precision: config.sd_precision,
            };
            let device = config.device;
            tokio::task::spawn_blocking(move || DiffusionApps::load(&setup, device)).await??
        };
        let scenes = match diffusion.get("default") {
            Some(pipeline) => {
                let gallery = config
                    .gallery_dir
                    .clone()
                    .unwrap_or_else(|| config.resolved_data_dir().join("gallery"));
                let service = crate::gallery::TextToImageService::new(
                    pipeline.clone(),
                    diffusion.safety().cloned(),
                    &gallery,
                    config.text_to_image_defaults(),
                )?;
                tracing::info!(images = service.gallery().len(), "text-to-image ready");
                Some(Arc::new(service))
            }
            None => None,
        };
        let face_lane = if diffusion.is_empty() {
            None
        } else {
            let lane_tasks = tasks.clone();
            let apps = diffusion.clone();
            let capacity = config.task_queue_capacity;
            let lane = tokio::task::spawn_blocking(move || {
                lane_tasks.add_lane(face_avatar::LANE, 1, capacity, move || Ok(apps.clone()))
            })
            .await??;
            tasks.register_restorer(face_avatar::KIND, &lane, |spec| {
                FaceAvatarJob::from_spec(spec)
                    .map(|job| Box::new(job) as Box<dyn Job<DiffusionApps>>)
            });
            tasks.register_restorer(crate::tasks::avatar_gen::KIND, &lane, |spec| {
                crate::tasks::avatar_gen::AvatarGenJob::from_spec(spec)
                    .map(|job| Box::new(job) as Box<dyn Job<DiffusionApps>>)
            });
            tracing::info!(apps = ?diffusion.ids(), "face avatars ready");
            Some(lane)
        };
        let (loaded, requeued, failed) = {
            let tasks = tasks.clone();
            tokio::task::spawn_blocking(move || tasks.recover()).await??
        };
        if loaded > 0 {
            tracing::info!(loaded, requeued, failed, "tasks restored from the store");
        }

        let vqgan = match config.vqgan_paths() {
            Some(paths) => {
                let (device, capacity) = (config.device, config.vqgan_queue_capacity);
                let service = tokio::task::spawn_blocking(move || {
                    crate::vqgan::VqganService::start(&paths, device, capacity)
                })
                .await?
                .map_err(|e| format!("VQGAN+CLIP models: {e}"))?;
                tracing::info!("VQGAN+CLIP ready");
                Some(service)
            }
            None => None,
        };
        let fetcher = crate::fetch::ImageFetcher::new(config.fetch_limits())?;
        let app: AppState = Arc::new(App {
            config,
            catalog,
            pool,
            tasks,
            dcgan: dcgan_lane,
            metrics,
            vqgan,
            scenes,
            diffusion,
            face_lane,
            fetcher,
            openapi_json: openapi::render(),
            bound_url,
        });
        let (stop, mut stopped) = watch::channel(false);
        let janitor = {
            let app = app.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let ttl = Duration::from_secs(app.config.task_ttl_secs);
                let mut interval = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = interval.tick() => {}
                        _ = stopped.wait_for(|s| *s) => break,
                    }
                    let tasks = app.tasks.clone();
                    if let Ok(expired) =
                        tokio::task::spawn_blocking(move || tasks.expire(ttl)).await
                        && expired > 0
                    {
                        tracing::info!(expired, "expired old tasks");
                    }
                    if let Some(vqgan) = &app.vqgan {
                        vqgan.expire(ttl);
                    }
                }
            })
        };
        let router = router(app.clone());
        let serve_app = app.clone();
        let handle = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await?;
            tracing::info!("HTTP server stopped; finishing tasks");
            janitor.abort();
            let grace = Duration::from_secs(serve_app.config.shutdown_grace_secs);
            let app = serve_app.clone();
            tokio::task::spawn_blocking(move || {
                app.tasks.shutdown(grace);
                app.pool.shutdown();
                if let Some(vqgan) = &app.vqgan {
                    vqgan.stop();
                }
            })
            .await?;
            dispatcher.drain(Duration::from_secs(10)).await;
            Ok::<(), BoxError>(())
        });
        tracing::info!(address = %addr, "serving the avatar API");
        Ok(Server {
            addr,
            app,
            stop,
            handle,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The shared state (for tests and embedding).
    pub fn app(&self) -> &AppState {
        &self.app
    }

    /// Stops accepting connections, finishes requests in flight, lets running tasks finish
    /// (up to `--shutdown-grace`), joins the workers and flushes webhooks.
    pub async fn shutdown(self) -> Result<(), BoxError> {
        let _ = self.stop.send(true);
        self.handle.await?
    }

    /// Waits until the server stops by itself (it only does on an error).
    pub async fn wait(&mut self) -> Result<(), BoxError> {
        (&mut self.handle).await?
    }
}

/// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
pub fn run(config: Config) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut server = Server::start(config).await?;
        println!(
            "avatar-http listening on {} (docs: {}/docs)",
            server.url(),
            server.url()
        );
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutdown requested");
                server.shutdown().await
            }
            result = server.wait() => result,
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
