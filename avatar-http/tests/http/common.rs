//! Shared helpers: deterministic tiny model weights and a real server on a free loopback port.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use avatar_core::dcgan::{GeneratorConfig, StoredDtype, generator_to_bytes};
use avatar_core::seed::NormalStream;
use avatar_core::{DeviceSpec, ModelSize};
use avatar_http::{Config, Server};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Writes `dcgan_small.safetensors` and `dcgan_large.safetensors` into `dir`: tiny RGBA
/// transposed generators with deterministic, hand-shaped weights.
///
/// The colour channels are random (so seeds give different avatars). The alpha channel sums
/// positive, nearly constant features with equal weights and a negative bias, so it is opaque
/// inside and transparent along the border (the last transposed convolution gives border pixels
/// a quarter of the taps that inner pixels get): transparency tests do not depend on the
/// quality of trained weights.
pub fn write_test_weights(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (size, latent) in [(ModelSize::Small, 100), (ModelSize::Large, 128)] {
        let resolution = size.resolution() as usize;
        let config = GeneratorConfig::transposed(latent, resolution, 4, vec![16, 8, 8, 8]).unwrap();
        let device = DeviceSpec::Cpu.device().unwrap();
        let generator = config.init(&device).unwrap();
        let template = generator_to_bytes(&generator, &config, StoredDtype::F32).unwrap();
        let bytes = reshape_weights(&template, config.widths.len() - 1);
        std::fs::write(dir.join(avatar_core::embedded::file_name(size)), bytes).unwrap();
    }
}

fn reshape_weights(template: &[u8], last_block: usize) -> Vec<u8> {
    let (_, metadata) = SafeTensors::read_metadata(template).unwrap();
    let metadata: Option<HashMap<String, String>> = metadata.metadata().clone();
    let tensors = SafeTensors::deserialize(template).unwrap();
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in tensors.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let shape = view.shape().to_vec();
        let count: usize = shape.iter().product();
        let mut stream = NormalStream::new(
            name.bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
        );
        let last = format!("blocks.{last_block}.");
        let values: Vec<f32> = if name == "output.weight" {
            // [in, out = RGBA, k, k]
            let per_out = shape[2] * shape[3];
            (0..count)
                .map(|i| {
                    let out_channel = (i / per_out) % shape[1];
                    let noise = stream.next_f32();
                    if out_channel == 3 { 0.375 } else { 0.5 * noise }
                })
                .collect()
        } else if name == "output.bias" {
            vec![0.0, 0.0, 0.0, -8.0]
        } else if name.ends_with("conv.weight") {
            // He-style scale: unit-variance activations. The 1x1 -> s0 projection sums `in`
            // taps per output; the stride-2 layers sum about 4 * in.
            let fan_in = if name.starts_with("blocks.0.") {
                shape[0]
            } else {
                shape[0] * 2
            };
            let std = (1.0 / fan_in as f32).sqrt();
            (0..count).map(|_| std * stream.next_f32()).collect()
        } else if name.ends_with("norm.weight") {
            vec![if name.starts_with(&last) { 0.3 } else { 1.0 }; count]
        } else if name.ends_with("norm.bias") {
            vec![if name.starts_with(&last) { 1.0 } else { 0.0 }; count]
        } else if name.ends_with("running_mean") {
            vec![0.0; count]
        } else if name.ends_with("running_var") {
            vec![1.0; count]
        } else {
            panic!("unexpected tensor {name} {shape:?}");
        };
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.push((name.to_string(), shape, data));
    }
    let views: Vec<(String, TensorView<'_>)> = out
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, metadata).unwrap()
}

/// The shared test weights directory.
pub fn weights_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("avatar-http-test-weights-{}", std::process::id()));
        write_test_weights(&dir);
        dir
    })
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A test configuration: loopback port 0, memory store, the test weights, fast webhooks.
pub fn config() -> Config {
    let mut config = Config::for_tests();
    config.weights_dir = Some(weights_dir().to_path_buf());
    config.webhook_backoff_ms = 50;
    config.webhook_timeout_secs = 5;
    config.shutdown_grace_secs = 5;
    config
}

/// A running server and a client for it.
pub struct TestServer {
    /// The server.
    pub server: Server,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// A client that never uses a proxy.
    pub client: reqwest::Client,
}

impl TestServer {
    /// Starts a server with `config`.
    pub async fn start(config: Config) -> TestServer {
        let server = Server::start(config).await.expect("server starts");
        let url = server.url();
        TestServer {
            server,
            url,
            client: client(),
        }
    }

    /// Starts a server with the default test configuration.
    pub async fn default() -> TestServer {
        Self::start(config()).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Polls a task until `done(status)` or the timeout, returning its last JSON view.
    pub async fn wait_task(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view: serde_json::Value = self
                .get(&format!("/tasks/{id}"))
                .await
                .json()
                .await
                .unwrap();
            let status = view["status"].as_str().unwrap_or_default().to_string();
            if done(&status) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} still {status} after {timeout:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shuts the server down gracefully.
    pub async fn stop(self) {
        self.server.shutdown().await.expect("clean shutdown");
    }
}

/// A reqwest client without proxies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Decodes an image response body.
pub fn decode(bytes: &[u8]) -> image::RgbaImage {
    image::load_from_memory(bytes)
        .expect("a decodable image")
        .to_rgba8()
}

/// Whether a task status is final.
pub fn is_final(status: &str) -> bool {
    matches!(status, "success" | "failed" | "cancelled")
}

/// The JSON bodies a webhook receiver got.
pub type Deliveries = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A loopback webhook receiver at the returned `/hook` URL; it answers 500 to the first
/// `fail_first` deliveries, then 200, and keeps every body it got.
pub async fn webhook_receiver(fail_first: usize) -> (String, Deliveries) {
    let received = Deliveries::default();
    let app = {
        let received = received.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let received = received.clone();
                async move {
                    let mut all = received.lock().unwrap();
                    all.push(body);
                    if all.len() <= fail_first {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (hook, received)
}

/// `image` as a `data:image/png;base64,...` URI (the inline image form the endpoints take).
pub fn png_data_uri(image: image::RgbaImage) -> String {
    use base64::Engine;
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}
