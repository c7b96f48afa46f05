//! Command-line flags and environment variables (every flag has an `AVATAR_*` twin).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use avatar_core::DeviceSpec;
use clap::{Parser, ValueEnum};

/// Where finished tasks and their images are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Files under `--data-dir`: results survive a restart (the default).
    Disk,
    /// The process's memory only: everything is lost on exit.
    Memory,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The server's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "avatar-http",
    version,
    about = "DCGAN Avatar Generation API: cartoon avatars over HTTP"
)]
pub struct Config {
    /// Address to bind. A non-loopback address requires `--auth-token` (or `--no-auth`).
    #[arg(long, env = "AVATAR_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to bind (0 picks a free one).
    #[arg(long, env = "AVATAR_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Compute device: cpu, wgpu, cuda, cuda:N or auto.
    #[arg(long, env = "AVATAR_DEVICE", default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Directory holding `dcgan_small.safetensors` and `dcgan_large.safetensors` to use instead
    /// of the weights compiled into the binary.
    #[arg(long, env = "AVATAR_WEIGHTS_DIR")]
    pub weights_dir: Option<PathBuf>,

    /// API tokens accepted as `Authorization: Bearer <token>` or as a `key` field in JSON bodies
    /// (comma-separated). Setting one turns authentication on.
    #[arg(
        long = "auth-token",
        env = "AVATAR_API_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<String>,
    /// Serve without authentication even on a non-loopback address.
    #[arg(long, env = "AVATAR_NO_AUTH")]
    pub no_auth: bool,

    /// Task storage backend.
    #[arg(long, env = "AVATAR_STORE", value_enum, default_value = "disk")]
    pub store: StoreKind,
    /// Directory of the on-disk store (default: `$XDG_DATA_HOME/avatar-http` or
    /// `~/.local/share/avatar-http`).
    #[arg(long, env = "AVATAR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long finished tasks and their images are kept, in seconds.
    #[arg(long, env = "AVATAR_TASK_TTL", default_value_t = 86_400)]
    pub task_ttl_secs: u64,

    /// Model worker threads per model size for `/generate-image` and `/avatar`.
    #[arg(long, env = "AVATAR_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Requests that may wait per model size before new ones get 503 + Retry-After.
    #[arg(long, env = "AVATAR_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    /// Most images generated in one forward pass (micro-batching).
    #[arg(long, env = "AVATAR_MAX_BATCH", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_batch: u16,
    /// How long a worker waits for more requests to batch with the first one, in milliseconds.
    #[arg(long, env = "AVATAR_BATCH_WINDOW_MS", default_value_t = 2)]
    pub batch_window_ms: u64,

    /// Model worker threads running tasks (`POST /tasks/...`).
    #[arg(long, env = "AVATAR_TASK_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub task_workers: u16,
    /// Tasks that may wait before new ones get 429 + Retry-After.
    #[arg(long, env = "AVATAR_TASK_QUEUE_CAPACITY", default_value_t = 64)]
    pub task_queue_capacity: usize,

    /// Largest accepted `output_size` in pixels.
    #[arg(long, env = "AVATAR_MAX_OUTPUT_SIZE", default_value_t = 512)]
    pub max_output_size: u32,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "AVATAR_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// Per-request timeout in seconds (answered with 503).
    #[arg(long, env = "AVATAR_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// How long a shutdown waits for running tasks before interrupting them, in seconds.
    #[arg(long, env = "AVATAR_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Delivery attempts per webhook before giving up.
    #[arg(long, env = "AVATAR_WEBHOOK_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub webhook_attempts: u32,
    /// Delay before the first webhook retry in milliseconds (doubles each time, capped at 60 s).
    #[arg(long, env = "AVATAR_WEBHOOK_BACKOFF_MS", default_value_t = 500)]
    pub webhook_backoff_ms: u64,
    /// Timeout of one webhook delivery attempt in seconds.
    #[arg(long, env = "AVATAR_WEBHOOK_TIMEOUT", default_value_t = 10)]
    pub webhook_timeout_secs: u64,
    /// Public base URL used for absolute links in webhook payloads (default: the bound address).
    #[arg(long, env = "AVATAR_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// VQGAN+CLIP (seed 004): taming's model yaml.
    #[arg(long, env = "AVATAR_VQGAN_CONFIG")]
    pub vqgan_config: Option<PathBuf>,
    /// VQGAN+CLIP: taming's checkpoint (.ckpt) or safetensors.
    #[arg(long, env = "AVATAR_VQGAN_WEIGHTS")]
    pub vqgan_weights: Option<PathBuf>,
    /// VQGAN+CLIP: the CLIP state dict (.bin, .pt, .safetensors).
    #[arg(long, env = "AVATAR_CLIP_WEIGHTS")]
    pub clip_weights: Option<PathBuf>,
    /// VQGAN+CLIP: open_clip's model json (default: OpenAI ViT-B/32).
    #[arg(long, env = "AVATAR_CLIP_CONFIG")]
    pub clip_config: Option<PathBuf>,
    /// VQGAN+CLIP runs waiting at most.
    #[arg(long, env = "AVATAR_VQGAN_QUEUE_CAPACITY", default_value_t = 8)]
    pub vqgan_queue_capacity: usize,

    /// Text-to-image (seed 003's `POST /generate-image`): a diffusers folder (SD 1.5 or SDXL).
    /// Every model path option also takes `hf://owner/name[@revision][/path][?variant=fp16]`,
    /// downloaded into the Hugging Face cache (`HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`) on first use.
    #[arg(long, env = "AVATAR_SD_MODEL")]
    pub sd_model: Option<PathBuf>,
    /// More Stable Diffusion models for seed 001's `app_id`, as `ID=DIR` (repeatable; the
    /// `--sd-model` one is `default`).
    #[arg(long = "sd-app", env = "AVATAR_SD_APPS", value_delimiter = ',')]
    pub sd_apps: Vec<String>,
    /// diffusers' `safety_checker/` folder: every Stable Diffusion image is checked and flagged
    /// ones are replaced (`--safety-checker-type`).
    #[arg(long, env = "AVATAR_SAFETY_CHECKER")]
    pub safety_checker: Option<PathBuf>,
    /// What replaces a flagged image: black, blur, pixelate or sensitive_content_text.
    #[arg(long, env = "AVATAR_SAFETY_CHECKER_TYPE", default_value = "black", value_parser = parse_obfuscation)]
    pub safety_checker_type: avatar_core::diffusion::safety_checker::Obfuscation,
    /// Compute precision of every Stable Diffusion model: fp32, fp16 or bf16 (half precision
    /// needs a device with the dtype: wgpu with shader-f16, CUDA; on the CPU it saves memory,
    /// not time).
    #[arg(long, env = "AVATAR_SD_PRECISION", default_value = "fp32", value_parser = parse_precision)]
    pub sd_precision: avatar_core::diffusion::precision::Precision,
    /// U²-Net weights (`u2net.pth`, `u2netp.pth`, `u2net_human_seg.pth` or a safetensors
    /// conversion) for seed 001's `remove_background`: the subject is cut out of any background.
    /// Without it, plain backgrounds are keyed.
    #[arg(long, env = "AVATAR_BACKGROUND_MODEL")]
    pub background_model: Option<PathBuf>,
    /// An IP-Adapter file (`.bin` / `.safetensors`) for the `default` model: seed 003's
    /// `reference_image` then keeps the character through the adapter instead of image-to-image.
    #[arg(long, env = "AVATAR_SD_IP_ADAPTER")]
    pub sd_ip_adapter: Option<PathBuf>,
    /// The CLIP image encoder folder (`CLIPVisionModelWithProjection`) the IP-Adapter needs.
    #[arg(long, env = "AVATAR_SD_IMAGE_ENCODER")]
    pub sd_image_encoder: Option<PathBuf>,
    /// Weight of the reference image through the IP-Adapter (0-2).
    #[arg(long, env = "AVATAR_SD_IP_ADAPTER_SCALE", default_value_t = 0.6)]
    pub sd_ip_adapter_scale: f32,
    /// Seed 002 (`/api/v6/image_editing/avatar_gen`, InstantID): an SDXL diffusers folder.
    #[arg(long, env = "AVATAR_INSTANTID_MODEL")]
    pub instantid_model: Option<PathBuf>,
    /// InstantID's face adapter (`ip-adapter.bin`).
    #[arg(long, env = "AVATAR_INSTANTID_ADAPTER")]
    pub instantid_adapter: Option<PathBuf>,
    /// InstantID's IdentityNet ControlNet folder.
    #[arg(long, env = "AVATAR_INSTANTID_IDENTITYNET")]
    pub instantid_identitynet: Option<PathBuf>,
    /// An SDXL OpenPose ControlNet folder (`controlnet_selection: pose`).
    #[arg(long, env = "AVATAR_INSTANTID_POSE")]
    pub instantid_pose: Option<PathBuf>,
    /// An SDXL canny ControlNet folder (`controlnet_selection: canny`).
    #[arg(long, env = "AVATAR_INSTANTID_CANNY")]
    pub instantid_canny: Option<PathBuf>,
    /// insightface's SCRFD detector (`scrfd_10g_bnkps.onnx` of antelopev2, or `det_10g.onnx`):
    /// with `--face-recognizer`, seed 002 finds the face in `init_image` itself, so
    /// `face_embedding` / `face_keypoints` become optional. (insightface's models are for
    /// non-commercial research; supply your own copy.)
    #[arg(long, env = "AVATAR_FACE_DETECTOR")]
    pub face_detector: Option<PathBuf>,
    /// insightface's ArcFace recogniser (`glintr100.onnx` of antelopev2, or `w600k_r50.onnx`).
    #[arg(long, env = "AVATAR_FACE_RECOGNIZER")]
    pub face_recognizer: Option<PathBuf>,
    /// The detector's input size in pixels (square, a multiple of 32; insightface's `det_size`).
    #[arg(long, env = "AVATAR_FACE_DET_SIZE", default_value_t = 640)]
    pub face_det_size: u32,
    /// The detector's minimum score (insightface's `det_thresh`).
    #[arg(long, env = "AVATAR_FACE_DET_THRESH", default_value_t = 0.5)]
    pub face_det_thresh: f32,
    /// Seconds an `avatar_gen` request waits for its images before answering `processing`
    /// with a fetch URL (0: answer at once).
    #[arg(long, env = "AVATAR_AVATAR_GEN_WAIT_SECS", default_value_t = 30)]
    pub avatar_gen_wait_secs: u64,
    /// Where seed 003's numbered images are kept (default: `<data dir>/gallery`).
    #[arg(long, env = "AVATAR_GALLERY_DIR")]
    pub gallery_dir: Option<PathBuf>,
    /// Seed 003's default width in pixels (default: the model's native size).
    #[arg(long, env = "AVATAR_SD_WIDTH")]
    pub sd_width: Option<u32>,
    /// Seed 003's default height in pixels (default: the model's native size).
    #[arg(long, env = "AVATAR_SD_HEIGHT")]
    pub sd_height: Option<u32>,
    /// Seed 003's default denoising steps.
    #[arg(long, env = "AVATAR_SD_STEPS", default_value_t = 30)]
    pub sd_steps: usize,
    /// Seed 003's default classifier-free guidance.
    #[arg(long, env = "AVATAR_SD_GUIDANCE_SCALE", default_value_t = 7.5)]
    pub sd_guidance_scale: f64,
    /// How much of a `reference_image` is redrawn by default (0: kept, 1: replaced).
    #[arg(long, env = "AVATAR_SD_REFERENCE_STRENGTH", default_value_t = 0.6)]
    pub sd_reference_strength: f64,
    /// Seed 003 requests allowed to wait while one image is drawn.
    #[arg(long, env = "AVATAR_SD_QUEUE_CAPACITY", default_value_t = 4)]
    pub sd_queue_capacity: usize,

    /// Let image URLs reach private, loopback and link-local addresses (off: SSRF protection).
    #[arg(long, env = "AVATAR_FETCH_ALLOW_PRIVATE")]
    pub fetch_allow_private: bool,
    /// Largest image input (download or base64), bytes.
    #[arg(long, env = "AVATAR_FETCH_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub fetch_max_bytes: usize,
    /// Largest image input, pixels (checked before decoding).
    #[arg(long, env = "AVATAR_FETCH_MAX_PIXELS", default_value_t = 4096 * 4096)]
    pub fetch_max_pixels: u64,
    /// Time allowed to download one image input, seconds.
    #[arg(long, env = "AVATAR_FETCH_TIMEOUT", default_value_t = 15)]
    pub fetch_timeout_secs: u64,

    /// Log format.
    #[arg(long, env = "AVATAR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_precision(text: &str) -> Result<avatar_core::diffusion::precision::Precision, String> {
    text.parse()
        .map_err(|e: avatar_core::AvatarError| e.to_string())
}

fn parse_obfuscation(
    text: &str,
) -> Result<avatar_core::diffusion::safety_checker::Obfuscation, String> {
    text.parse()
        .map_err(|e: avatar_core::AvatarError| e.to_string())
}

fn parse_device(text: &str) -> Result<DeviceSpec, String> {
    text.parse::<DeviceSpec>().map_err(|e| e.to_string())
}

impl Config {
    /// A configuration with every default, for tests and embedding (binds 127.0.0.1:0).
    pub fn for_tests() -> Self {
        let mut config = Config::parse_from(["avatar-http", "--port", "0", "--store", "memory"]);
        config.batch_window_ms = 1;
        config
    }

    /// The socket address to bind.
    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The micro-batching window.
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_window_ms)
    }

    /// The on-disk store's directory (flag, env, XDG data dir, then `./avatar-data`).
    pub fn resolved_data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("avatar-http");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".local/share/avatar-http");
        }
        PathBuf::from("avatar-data")
    }

    /// The VQGAN+CLIP model files, when all are given.
    pub fn vqgan_paths(&self) -> Option<crate::vqgan::VqganModelPaths> {
        Some(crate::vqgan::VqganModelPaths {
            vqgan_config: self.vqgan_config.clone()?,
            vqgan_weights: self.vqgan_weights.clone()?,
            clip_weights: self.clip_weights.clone()?,
            clip_config: self.clip_config.clone(),
        })
    }

    /// The limits of image inputs given by URL or data URI.
    pub fn fetch_limits(&self) -> crate::fetch::FetchLimits {
        crate::fetch::FetchLimits {
            max_bytes: self.fetch_max_bytes,
            max_pixels: self.fetch_max_pixels,
            timeout: Duration::from_secs(self.fetch_timeout_secs.max(1)),
            max_redirects: 5,
            allow_private: self.fetch_allow_private,
        }
    }

    /// InstantID's files, when `--instantid-model` is given (its adapter and IdentityNet are then
    /// required).
    pub fn instantid_paths(&self) -> Result<Option<InstantIdPaths>, String> {
        let Some(model) = self.instantid_model.clone() else {
            if self.instantid_adapter.is_some() || self.instantid_identitynet.is_some() {
                return Err(
                    "--instantid-adapter/--instantid-identitynet need --instantid-model".into(),
                );
            }
            return Ok(None);
        };
        let missing = |flag: &str| format!("--instantid-model needs {flag}");
        Ok(Some(InstantIdPaths {
            model,
            adapter: self
                .instantid_adapter
                .clone()
                .ok_or_else(|| missing("--instantid-adapter"))?,
            identitynet: self
                .instantid_identitynet
                .clone()
                .ok_or_else(|| missing("--instantid-identitynet"))?,
            pose: self.instantid_pose.clone(),
            canny: self.instantid_canny.clone(),
        }))
    }

    /// The face detector, recogniser and detection settings, when both models are given (one
    /// alone is an error).
    pub fn face_analysis_setup(&self) -> Result<Option<FaceAnalysisSetup>, String> {
        let options = avatar_core::face_analysis::DetectionOptions {
            input_size: (self.face_det_size, self.face_det_size),
            threshold: self.face_det_thresh,
            ..Default::default()
        };
        match (&self.face_detector, &self.face_recognizer) {
            (Some(detector), Some(recognizer)) => {
                options
                    .validate()
                    .map_err(|e| format!("--face-det-size / --face-det-thresh: {e}"))?;
                Ok(Some(FaceAnalysisSetup {
                    detector: detector.clone(),
                    recognizer: recognizer.clone(),
                    options,
                }))
            }
            (None, None) => Ok(None),
            _ => Err("--face-detector and --face-recognizer go together".into()),
        }
    }

    /// The `default` model's IP-Adapter, when `--sd-ip-adapter` is given.
    pub fn ip_adapter_paths(&self) -> Option<IpAdapterPaths> {
        Some(IpAdapterPaths {
            adapter: self.sd_ip_adapter.clone()?,
            image_encoder: self.sd_image_encoder.clone(),
            scale: self.sd_ip_adapter_scale,
        })
    }

    /// Every configured Stable Diffusion model as `(app_id, folder)`.
    pub fn diffusion_apps(&self) -> Result<Vec<(String, PathBuf)>, String> {
        let mut apps = Vec::new();
        if let Some(model) = &self.sd_model {
            apps.push(("default".to_string(), model.clone()));
        }
        for entry in &self.sd_apps {
            let (id, dir) = entry
                .split_once('=')
                .filter(|(id, dir)| !id.trim().is_empty() && !dir.trim().is_empty())
                .ok_or_else(|| format!("--sd-app {entry:?}: expected ID=DIR"))?;
            if apps.iter().any(|(known, _)| known == id.trim()) {
                return Err(format!("--sd-app: {:?} is configured twice", id.trim()));
            }
            apps.push((id.trim().to_string(), PathBuf::from(dir.trim())));
        }
        Ok(apps)
    }

    /// Seed 003's request defaults from the `--sd-*` flags.
    pub fn text_to_image_defaults(&self) -> crate::gallery::TextToImageDefaults {
        crate::gallery::TextToImageDefaults {
            width: self.sd_width,
            height: self.sd_height,
            steps: self.sd_steps,
            guidance_scale: self.sd_guidance_scale,
            reference_strength: self.sd_reference_strength,
            ip_adapter_scale: self.sd_ip_adapter_scale,
            queue_capacity: self.sd_queue_capacity,
        }
    }

    /// Whether requests must carry a token.
    pub fn auth_required(&self) -> bool {
        !self.no_auth && !self.auth_tokens.is_empty()
    }

    /// Refuses configurations that would expose an open server or are self-contradictory.
    pub fn check(&self) -> Result<(), String> {
        if self.auth_tokens.iter().any(|t| t.trim().is_empty()) {
            return Err("--auth-token: empty tokens are not allowed".into());
        }
        if !self.host.is_loopback() && self.auth_tokens.is_empty() && !self.no_auth {
            return Err(format!(
                "refusing to serve on non-loopback address {} without authentication: \
                 pass --auth-token <TOKEN> (AVATAR_API_TOKENS) or --no-auth",
                self.host
            ));
        }
        if self.queue_capacity == 0 || self.task_queue_capacity == 0 {
            return Err("queue capacities must be at least 1".into());
        }
        let vqgan = [
            self.vqgan_config.is_some(),
            self.vqgan_weights.is_some(),
            self.clip_weights.is_some(),
        ];
        if vqgan.contains(&true) && vqgan.contains(&false) {
            return Err(
                "VQGAN+CLIP needs all of --vqgan-config, --vqgan-weights and --clip-weights".into(),
            );
        }
        self.diffusion_apps()?;
        if !(self.sd_reference_strength > 0.0 && self.sd_reference_strength <= 1.0) {
            return Err(format!(
                "--sd-reference-strength {} is outside (0, 1]",
                self.sd_reference_strength
            ));
        }
        if let Some(url) = &self.public_url {
            reqwest::Url::parse(url).map_err(|e| format!("--public-url {url:?}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed_service() {
        let config = Config::parse_from(["avatar-http"]);
        assert_eq!(config.bind_addr().to_string(), "127.0.0.1:8000");
        assert_eq!(config.device, DeviceSpec::Cpu);
        assert!(!config.auth_required());
        assert!(config.check().is_ok());
    }

    #[test]
    fn public_bind_needs_a_token_or_an_explicit_opt_out() {
        let open = Config::parse_from(["avatar-http", "--host", "0.0.0.0"]);
        assert!(open.check().unwrap_err().contains("--auth-token"));
        let token = Config::parse_from(["avatar-http", "--host", "0.0.0.0", "--auth-token", "a,b"]);
        assert!(token.check().is_ok());
        assert_eq!(token.auth_tokens, ["a", "b"]);
        let opted_out = Config::parse_from(["avatar-http", "--host", "0.0.0.0", "--no-auth"]);
        assert!(opted_out.check().is_ok() && !opted_out.auth_required());
    }

    #[test]
    fn face_analysis_needs_both_models_and_valid_settings() {
        let none = Config::parse_from(["avatar-http"]);
        assert!(none.face_analysis_setup().unwrap().is_none());
        let one = Config::parse_from(["avatar-http", "--face-detector", "d.onnx"]);
        assert!(
            one.face_analysis_setup()
                .unwrap_err()
                .contains("go together")
        );
        let both = [
            "avatar-http",
            "--face-detector",
            "d.onnx",
            "--face-recognizer",
            "r.onnx",
        ];
        let setup = Config::parse_from(both)
            .face_analysis_setup()
            .unwrap()
            .unwrap();
        assert_eq!(setup.options.input_size, (640, 640));
        let odd = Config::parse_from([&both[..], &["--face-det-size", "100"]].concat());
        assert!(odd.face_analysis_setup().unwrap_err().contains("det_size"));
    }
}

/// Face analysis files and settings (`--face-detector`, `--face-recognizer`, ...).
#[derive(Debug, Clone)]
pub struct FaceAnalysisSetup {
    /// The SCRFD `.onnx`.
    pub detector: PathBuf,
    /// The ArcFace `.onnx`.
    pub recognizer: PathBuf,
    /// Detection settings.
    pub options: avatar_core::face_analysis::DetectionOptions,
}

/// InstantID's files (seed 002).
#[derive(Debug, Clone)]
pub struct InstantIdPaths {
    /// The SDXL diffusers folder.
    pub model: PathBuf,
    /// `ip-adapter.bin`.
    pub adapter: PathBuf,
    /// The IdentityNet ControlNet folder.
    pub identitynet: PathBuf,
    /// The pose ControlNet folder.
    pub pose: Option<PathBuf>,
    /// The canny ControlNet folder.
    pub canny: Option<PathBuf>,
}

/// The `default` model's IP-Adapter (seed 003's reference images).
#[derive(Debug, Clone)]
pub struct IpAdapterPaths {
    /// The adapter file.
    pub adapter: PathBuf,
    /// Its CLIP image encoder folder.
    pub image_encoder: Option<PathBuf>,
    /// The reference's weight.
    pub scale: f32,
}
