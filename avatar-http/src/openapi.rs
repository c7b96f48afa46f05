//! The OpenAPI document, generated from the handlers' annotations with utoipa.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The API description served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Avatar Generation API",
        description = "Cartoon avatars from a DCGAN, served by a Rust (burn) port of the FastAPI service.\n\n\
            `GET /generate-image` and `GET /health` answer exactly as the original service; extra \
            parameters (seed, colours, formats, sizes), permanent per-seed avatars, batch tasks with \
            progress, cancellation and webhooks are additions.\n\n\
            With `--sd-model` the server also answers seed 001 (`POST /getImageToImage`) and \
            seed 003 (`POST /generate-image`); with `--vqgan-config`, `--vqgan-weights` and \
            `--clip-weights`, seed 004 (`/text2img`, `/textimg2img`).\n\n\
            Authentication is off on loopback by default. When the server has tokens, send \
            `Authorization: Bearer <token>` (or a `key` field in JSON bodies).",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        routes::health::health,
        routes::generate::generate_image,
        routes::avatar::avatar,
        routes::tasks::create_avatar_task,
        routes::tasks::get_task,
        routes::tasks::cancel_task,
        routes::tasks::get_result,
        routes::metrics::metrics,
        routes::vqgan::text2img,
        routes::vqgan::textimg2img,
        routes::vqgan::progress,
        routes::vqgan::progress_image,
        routes::vqgan::image,
        routes::vqgan::cancel,
        routes::scenes::generate_scene,
        routes::scenes::scene_image,
        routes::face_avatar::get_image_to_image,
        routes::face_avatar::task_status,
        routes::face_avatar::models,
        routes::avatar_gen::avatar_gen,
        routes::avatar_gen::fetch,
    ),
    components(schemas(
        crate::error::ErrorBody,
        crate::tasks::TaskView,
        crate::tasks::TaskStatus,
        crate::tasks::record::WebhookDelivery,
        crate::tasks::record::DeliveryState,
        crate::params::SizeParam,
        crate::params::FormatParam,
        crate::routes::vqgan::RunStarted,
        crate::vqgan::RunView,
        crate::vqgan::RunStatus,
        crate::routes::scenes::SceneImage,
        crate::routes::face_avatar::FaceAvatarResponse,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "avatars", description = "Draw avatars synchronously"),
        (name = "tasks", description = "Long-running work: queue, poll, cancel, download, webhooks"),
        (name = "service", description = "Health and metrics"),
        (name = "face-avatar", description = "Seed 001: face avatars from a reference photo, waited for or queued (`celery`)"),
        (name = "avatar-gen", description = "Seed 002: InstantID avatars of a face (ModelsLab's avatar_gen), answered at once or fetched later"),
        (name = "images", description = "Seed 003: Stable Diffusion images by prompt, numbered so that a later request can keep a character (`reference_image`)"),
        (name = "vqgan-clip", description = "Seed 004: VQGAN+CLIP runs with a progress bar and progress images"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as pretty JSON, with the server's version.
pub fn render() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
