//! Seed 003 over HTTP with the tiny Stable Diffusion of avatar-core's fixtures: `POST
//! /generate-image` `{prompt}` -> `{image_url}`, numbered images kept across restarts, a
//! reference image by counter, FastAPI-style `{detail}` errors.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::common::{TestServer, config, temp_dir};

fn sd_config(gallery: &std::path::Path) -> avatar_http::Config {
    let mut config = config();
    config.sd_model = Some(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../avatar-core/tests/fixtures/diffusion/sd15_tiny"),
    );
    config.gallery_dir = Some(gallery.to_path_buf());
    config.sd_steps = 3;
    config
}

async fn generate(s: &TestServer, body: Value) -> (u16, Value) {
    let response = s.post_json("/generate-image", &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn png(s: &TestServer, url: &str) -> Vec<u8> {
    let path = url
        .strip_prefix(&s.url)
        .expect("an absolute URL on this server");
    let response = s.get(path).await;
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(response.headers()["content-type"], "image/png");
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_become_numbered_images_and_a_reference_keeps_the_character() {
    let gallery = temp_dir();
    let s = TestServer::start(sd_config(gallery.path())).await;
    let (status, first) = generate(&s, json!({"prompt": "a girl with short red hair"})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["image_id"], 0);
    let url = first["image_url"].as_str().unwrap();
    assert!(url.ends_with("/images/0.png"), "{url}");
    let image = image::load_from_memory(&png(&s, url).await).unwrap();
    assert_eq!(
        (image.width(), image.height()),
        (32, 32),
        "the model's native size"
    );

    // The same seed redraws the same image; the next counter is used each time.
    let seed = first["seed"].as_u64().unwrap();
    let (_, again) = generate(
        &s,
        json!({"prompt": "a girl with short red hair", "seed": seed}),
    )
    .await;
    assert_eq!(again["image_id"], 1);
    assert_eq!(
        png(&s, url).await,
        png(&s, again["image_url"].as_str().unwrap()).await
    );

    // A reference image: the new image starts from image 0.
    let (status, scene) = generate(
        &s,
        json!({"prompt": "the same girl holding an umbrella", "reference_image": 0,
               "reference_strength": 0.5, "width": 48, "height": 40, "seed": 9}),
    )
    .await;
    assert_eq!(status, 200, "{scene}");
    assert_eq!(scene["image_id"], 2);
    let drawn =
        image::load_from_memory(&png(&s, scene["image_url"].as_str().unwrap()).await).unwrap();
    assert_eq!(
        (drawn.width(), drawn.height()),
        (48, 40),
        "the reference is fitted to the requested size"
    );

    // The DCGAN's GET /generate-image still answers beside seed 003's POST.
    assert_eq!(s.get("/generate-image?size=small").await.status(), 200);
    s.stop().await;

    // Numbering continues after a restart on the same gallery.
    let s = TestServer::start(sd_config(gallery.path())).await;
    let (_, next) = generate(&s, json!({"prompt": "a cat", "num_inference_steps": 2})).await;
    assert_eq!(next["image_id"], 3);
    assert_eq!(s.get("/images/0.png").await.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_fastapi_detail_bodies() {
    let gallery = temp_dir();
    let s = TestServer::start(sd_config(gallery.path())).await;
    for (body, field) in [
        (json!({}), "prompt"),
        (json!({"prompt": "  "}), "prompt"),
        (json!({"prompt": 3}), "prompt"),
        (json!({"prompt": "x", "width": 20}), "width"),
        (
            json!({"prompt": "x", "num_inference_steps": 0}),
            "num_inference_steps",
        ),
        (
            json!({"prompt": "x", "guidance_scale": "high"}),
            "guidance_scale",
        ),
        (
            json!({"prompt": "x", "reference_image": -1}),
            "reference_image",
        ),
    ] {
        let (status, error) = generate(&s, body.clone()).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(
            error["detail"][0]["loc"],
            json!(["body", field]),
            "{body}: {error}"
        );
        assert!(
            error["detail"][0]["msg"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let response = s
        .client
        .post(format!("{}/generate-image", s.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let (status, error) = generate(&s, json!({"prompt": "x", "reference_image": 5})).await;
    assert_eq!(status, 404);
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .contains("no image was generated yet"),
        "{error}"
    );
    generate(&s, json!({"prompt": "x"})).await;
    let (status, error) = generate(
        &s,
        json!({"prompt": "x", "reference_image": 0, "reference_strength": 0}),
    )
    .await;
    assert_eq!(
        (status, error["detail"][0]["loc"][1].as_str()),
        (422, Some("reference_strength"))
    );
    let (_, error) = generate(&s, json!({"prompt": "x", "reference_image": 7})).await;
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .contains("numbered 0 to 0"),
        "{error}"
    );
    assert_eq!(s.get("/images/7.png").await.status(), 404);
    assert_eq!(s.get("/images/abc").await.status(), 404);
    s.stop().await;

    let plain = TestServer::start(config()).await;
    let (status, error) = generate(&plain, json!({"prompt": "x"})).await;
    assert_eq!(status, 503);
    assert!(
        error["detail"].as_str().unwrap().contains("--sd-model"),
        "{error}"
    );
    plain.stop().await;
}

/// Drawing is exempt from `--request-timeout` (it takes minutes with a real model on a CPU);
/// the other routes keep it.
#[tokio::test(flavor = "multi_thread")]
async fn drawing_outlasts_the_request_timeout() {
    let gallery = temp_dir();
    let mut config = sd_config(gallery.path());
    config.request_timeout_secs = 1;
    let s = TestServer::start(config).await;
    let started = std::time::Instant::now();
    let (status, body) = generate(
        &s,
        json!({"prompt": "x", "num_inference_steps": 60, "width": 64, "height": 64}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    eprintln!("60 steps at 64 px took {took:?}");
    assert!(
        took > std::time::Duration::from_secs(1),
        "the check needs a drawing longer than the timeout ({took:?})"
    );
    s.stop().await;
}

/// A copy of avatar-core's tiny safety checker whose 17 concept thresholds are all `threshold`
/// (-2: every image is flagged; 2: none is).
fn safety_checker(threshold: f32) -> tempfile::TempDir {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../avatar-core/tests/fixtures/safety_checker");
    let bytes = std::fs::read(fixtures.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let weights: Vec<u8> = std::iter::repeat_n(threshold.to_le_bytes(), 17)
        .flatten()
        .collect();
    let replaced =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![17], &weights).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            if name == "concept_embeds_weights" {
                (name, replaced.clone())
            } else {
                (name, view)
            }
        })
        .collect();
    let dir = temp_dir();
    safetensors::serialize_to_file(tensors, None, &dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(fixtures.join("config.json"), dir.path().join("config.json")).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn the_safety_checker_replaces_flagged_images() {
    for (threshold, how, flagged) in [
        (-2.0, "black", true),
        (-2.0, "pixelate", true),
        (2.0, "black", false),
    ] {
        let gallery = temp_dir();
        let checker = safety_checker(threshold);
        let mut config = sd_config(gallery.path());
        config.safety_checker = Some(checker.path().to_path_buf());
        config.safety_checker_type = how.parse().unwrap();
        let s = TestServer::start(config).await;
        let (status, body) = generate(&s, json!({"prompt": "x", "seed": 1})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["nsfw_content_detected"], flagged, "{how}: {body}");
        let image = image::load_from_memory(&png(&s, body["image_url"].as_str().unwrap()).await)
            .unwrap()
            .to_rgba8();
        let black = image.pixels().all(|p| p[0] == 0 && p[1] == 0 && p[2] == 0);
        assert_eq!(black, flagged && how == "black", "{how}");
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_ip_adapter_the_reference_goes_through_it() {
    let gallery = temp_dir();
    let fixtures =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../avatar-core/tests/fixtures/ip_adapter");
    let mut config = sd_config(gallery.path());
    config.sd_ip_adapter = Some(fixtures.join("ip_adapter.safetensors"));
    config.sd_image_encoder = Some(fixtures.join("image_encoder"));
    let s = TestServer::start(config).await;
    let (_, first) = generate(&s, json!({"prompt": "a girl", "seed": 3})).await;
    let (_, second) = generate(&s, json!({"prompt": "a boy", "seed": 4})).await;
    let body =
        |reference: u64| json!({"prompt": "a portrait", "reference_image": reference, "seed": 5});
    let (status, from_first) = generate(&s, body(0)).await;
    assert_eq!(status, 200, "{from_first}");
    let (_, from_second) = generate(&s, body(1)).await;
    let (_, without) = generate(&s, json!({"prompt": "a portrait", "seed": 5})).await;
    let [a, b, c] = [&from_first, &from_second, &without]
        .map(|answer| answer["image_url"].as_str().unwrap().to_string());
    let (a, b, c) = (png(&s, &a).await, png(&s, &b).await, png(&s, &c).await);
    // Same seed and prompt: only the reference (through the adapter) differs.
    assert!(a != b && a != c && b != c);
    assert!(first["image_id"] == 0 && second["image_id"] == 1);
    s.stop().await;

    // An adapter for another base model stops the start with a clear error.
    let mut config = sd_config(gallery.path());
    config.sd_ip_adapter = Some(fixtures.join("ip_adapter_sdxl.safetensors"));
    config.sd_image_encoder = Some(fixtures.join("image_encoder"));
    let error = match avatar_http::Server::start(config).await {
        Ok(_) => panic!("an SDXL adapter on an SD1.5 model must be refused"),
        Err(error) => error,
    };
    assert!(error.to_string().contains("IP-Adapter"), "{error}");

    // A face adapter (FaceID-Plus) takes a face embedding, not just a picture: the reference then
    // keeps the character through image-to-image instead of failing the request.
    let mut config = sd_config(gallery.path());
    config.sd_ip_adapter =
        Some(fixtures.join("../ip_adapter_faceid_plus/ip_adapter_faceid_plus.bin"));
    config.sd_image_encoder = Some(fixtures.join("image_encoder"));
    let s = TestServer::start(config).await;
    let (status, answer) = generate(&s, body(0)).await;
    assert_eq!(status, 200, "{answer}");
    s.stop().await;
}
