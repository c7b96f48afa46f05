//! Seed 001 over HTTP with the tiny Stable Diffusion of avatar-core's fixtures: waited-for and
//! queued (`celery`) face avatars, the task status API, the seed's response shape, validation
//! in that shape, and `GET /models`. (The tiny model has attention at full latent resolution, so
//! the seed's smallest size, 256 px, costs seconds: one step, no classifier-free guidance.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestServer, config, png_data_uri, webhook_receiver};

/// The tiny pipeline with an 8x VAE: face avatars are drawn at 256 px or more, where
/// `sd15_tiny`'s 2x VAE would make every image cost seconds of attention.
fn sd_config() -> avatar_http::Config {
    let mut config = config();
    config.sd_model = Some(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../avatar-core/tests/fixtures/diffusion/sd15_tiny_f8"),
    );
    config.gallery_dir =
        Some(std::env::temp_dir().join(format!("avatar-face-{}", std::process::id())));
    config
}

fn photo() -> String {
    let image = image::RgbaImage::from_fn(300, 200, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 120, 255])
    });
    png_data_uri(image)
}

async fn post(s: &TestServer, body: &Value) -> (u16, Value) {
    let response = s.post_json("/getImageToImage", body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn image_at(s: &TestServer, url: &str) -> image::RgbaImage {
    let path = url.strip_prefix(&s.url).expect("a URL on this server");
    let response = s.get(path).await;
    assert_eq!(response.status(), 200, "{url}");
    image::load_from_memory(&response.bytes().await.unwrap())
        .unwrap()
        .to_rgba8()
}

#[tokio::test(flavor = "multi_thread")]
async fn face_avatars_are_drawn_waited_for_or_queued_in_the_seed_shape() {
    let s = TestServer::start(sd_config()).await;
    let models: Value = s.get("/models").await.json().await.unwrap();
    assert_eq!(models["diffusion"][0]["app_id"], "default");
    assert_eq!(models["diffusion"][0]["precision"], "fp32");

    let (status, answer) = post(
        &s,
        &json!({"app_id": "default", "image": photo(), "prompt": null, "gender": "female",
                "batch": 2, "width": 256, "height": 264, "num_inference_steps": 1,
                "guidance_scale": 1, "seed": 11, "celery": false}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    for key in [
        "time_required",
        "error",
        "error_data",
        "input",
        "output",
        "app_id",
        "task_id",
        "status",
    ] {
        assert!(answer.get(key).is_some(), "{key} missing: {answer}");
    }
    assert_eq!(
        (answer["status"].as_str(), answer["error"].as_str()),
        (Some("success"), Some(""))
    );
    assert_eq!(answer["app_id"], "default");
    assert!(
        answer["time_required"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    let prompt = answer["input"]["prompt"].as_str().unwrap();
    assert!(prompt.contains("nice woman, looking at camera"), "{prompt}");
    assert!(
        answer["input"]["image"]
            .as_str()
            .unwrap()
            .starts_with("<inline image")
    );
    let outputs = answer["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    let first = image_at(&s, outputs[0].as_str().unwrap()).await;
    assert_eq!(first.dimensions(), (256, 264));
    let second = image_at(&s, outputs[1].as_str().unwrap()).await;
    assert!(first != second, "a batch draws different images");

    // Same seed, same images.
    let (_, again) = post(
        &s,
        &json!({"app_id": "default", "image": photo(), "gender": "female", "batch": 2,
                "width": 256, "height": 264, "num_inference_steps": 1, "guidance_scale": 1,
                "seed": 11}),
    )
    .await;
    assert!(
        image_at(&s, again["output"][0].as_str().unwrap()).await == first,
        "seeded requests repeat"
    );

    // Queued: a task id at once, then the status API and a webhook with the track id.
    let (hook, received) = webhook_receiver(0).await;
    let (status, queued) = post(
        &s,
        &json!({"app_id": "default", "image": photo(), "width": 256, "height": 256,
                "num_inference_steps": 1, "guidance_scale": 1, "celery": true, "remove_background": true,
                "bg_color": "#00ff00", "webhook": hook, "track_id": "face-7"}),
    )
    .await;
    assert_eq!(status, 200, "{queued}");
    assert!(
        ["queued", "processing"].contains(&queued["status"].as_str().unwrap()),
        "{queued}"
    );
    assert_eq!(queued["output"], json!([]));
    let id = queued["task_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let view: Value = s
            .get(&format!("/getImageToImage/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if view["status"] == "success" {
            break view;
        }
        assert!(
            Instant::now() < deadline && view["status"] != "failed",
            "{view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["task_id"], id.as_str());
    assert_eq!(done["input"]["bg_color"], "#00ff00");
    let composited = image_at(&s, done["output"][0].as_str().unwrap()).await;
    assert!(
        composited.pixels().all(|p| p[3] == 255),
        "bg_color composites onto an opaque colour"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no webhook delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivery = received.lock().unwrap()[0].clone();
    assert_eq!(delivery["task_id"], id.as_str());
    assert_eq!(delivery["track_id"], "face-7");
    assert_eq!(delivery["status"], "success");
    assert_eq!(delivery["output"].as_array().unwrap().len(), 1);
    assert_eq!(s.get("/getImageToImage/nope").await.status(), 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_answer_in_the_seed_shape_naming_the_field() {
    let s = TestServer::start(sd_config()).await;
    let base = json!({"app_id": "default", "image": photo(), "num_inference_steps": 1,
                      "width": 256, "height": 256});
    for (change, field) in [
        (json!({"app_id": null}), "app_id"),
        (json!({"app_id": "nope"}), "app_id"),
        (json!({"image": null}), "image"),
        (json!({"batch": 9}), "batch"),
        (json!({"batch": 0}), "batch"),
        (json!({"width": 100}), "width"),
        (json!({"height": 2048}), "height"),
        (json!({"num_inference_steps": 51}), "num_inference_steps"),
        (json!({"guidance_scale": 31}), "guidance_scale"),
        (json!({"bg_color": "green-ish"}), "bg_color"),
        (json!({"celery": "maybe"}), "celery"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"image": "http://127.0.0.1:1/face.png"}), "image"),
        (json!({"image": "data:image/png;base64,aGVsbG8="}), "image"),
        (json!({"webhook": "ftp://x"}), "webhook"),
    ] {
        let mut body = base.clone();
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = post(&s, &body).await;
        assert_eq!(status, 422, "{change}: {answer}");
        assert_eq!(answer["status"], "failed");
        assert_eq!(answer["error_data"]["field"], field, "{change}: {answer}");
        assert!(!answer["error"].as_str().unwrap().is_empty());
    }
    let (_, answer) = post(&s, &json!({"app_id": "nope", "image": photo()})).await;
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("configured: default"),
        "{answer}"
    );
    s.stop().await;

    let plain = TestServer::start(config()).await;
    let (status, answer) = post(&plain, &json!({"app_id": "x", "image": photo()})).await;
    assert_eq!(status, 503);
    assert!(
        answer["error"].as_str().unwrap().contains("--sd-model"),
        "{answer}"
    );
    plain.stop().await;
}

/// A `key` in the body authenticates even when the body carries a large inline image (the auth
/// middleware reads it with the image routes' limit, not the 64 KiB default).
#[tokio::test(flavor = "multi_thread")]
async fn a_body_key_authenticates_requests_with_large_inline_images() {
    let mut config = sd_config();
    config.auth_tokens = vec!["s3cret".into()];
    let s = TestServer::start(config).await;
    let mut state = 7u32;
    let noise = image::RgbaImage::from_fn(300, 300, |_, _| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let [a, b, c, _] = state.to_le_bytes();
        image::Rgba([a, b, c, 255])
    });
    let image = png_data_uri(noise);
    assert!(
        image.len() > 200 * 1024,
        "the body must exceed the default limit"
    );
    let body = json!({"key": "s3cret", "app_id": "default", "image": image, "batch": 9});
    let (status, answer) = post(&s, &body).await;
    assert_eq!(status, 422, "authenticated, then validated: {answer}");
    assert_eq!(answer["error_data"]["field"], "batch");
    let (status, _) = post(
        &s,
        &json!({"key": "wrong", "app_id": "default", "image": "x"}),
    )
    .await;
    assert_eq!(status, 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_background_cuts_out_with_the_configured_u2net() {
    let weights = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../avatar-core/tests/fixtures/segmentation/u2net_tiny.pth");
    let mut config = sd_config();
    config.background_model = Some(weights.clone());
    // The Stable Diffusion models in half precision (`--sd-precision fp16`).
    config.sd_precision = avatar_core::diffusion::precision::Precision::F16;
    let s = TestServer::start(config).await;
    let models: Value = s.get("/models").await.json().await.unwrap();
    assert_eq!(models["background_removal"], "u2net");
    assert_eq!(models["diffusion"][0]["precision"], "fp16");
    let (status, answer) = post(
        &s,
        &json!({"app_id": "default", "image": photo(), "width": 256, "height": 256,
                "num_inference_steps": 1, "guidance_scale": 1, "seed": 3,
                "remove_background": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let cut = image_at(&s, answer["output"][0].as_str().unwrap()).await;
    // The colours are kept (straight alpha) and the alpha is exactly the U²-Net's mask of them.
    let mut opaque = cut.clone();
    opaque.pixels_mut().for_each(|p| p[3] = 255);
    let device = avatar_core::DeviceSpec::Cpu.device().unwrap();
    let remover = avatar_core::segmentation::BackgroundRemover::load(&weights, &device).unwrap();
    let mask = remover.mask(&opaque).unwrap();
    assert!(cut.pixels().zip(mask.pixels()).all(|(c, m)| c[3] == m[0]));
    assert!(cut.pixels().any(|p| p[3] < 128) && cut.pixels().any(|p| p[3] > 128));
    s.stop().await;
}
