//! Seed 004 over HTTP with the tiny VQGAN and CLIP of avatar-core's fixtures: start a run, follow
//! its progress bar and progress image, fetch the final image, cancel, and the errors.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestServer, config, png_data_uri};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../avatar-core/tests/fixtures/vqgan_clip")
}

fn vqgan_config() -> avatar_http::Config {
    let mut config = config();
    config.vqgan_config = Some(fixtures().join("vqgan.yaml"));
    config.vqgan_weights = Some(fixtures().join("vqgan.ckpt"));
    config.clip_weights = Some(fixtures().join("clip.safetensors"));
    config.clip_config = Some(fixtures().join("clip_config.json"));
    config
}

async fn wait(s: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let view: Value = s
            .get(&format!("/text2img/{id}/progress"))
            .await
            .json()
            .await
            .unwrap();
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "run {id} stuck: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn text2img_runs_in_the_background_with_progress_and_a_final_image() {
    let s = TestServer::start(vqgan_config()).await;
    let response = s
        .post_json(
            "/text2img",
            &json!({"prompt": "a cartoon avatar|blurry:-0.5", "size": 32, "iterations": 6,
                    "seed": 3, "cutn": 4, "display_every": 2}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(started["total"], 6);
    assert!(
        started["progress_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/text2img/{id}/progress"))
    );

    let view = wait(&s, &id, |v| v["status"] == "succeeded").await;
    assert_eq!(
        (
            view["iteration"].as_u64(),
            view["total"].as_u64(),
            view["percent"].as_u64()
        ),
        (Some(6), Some(6), Some(100))
    );
    assert!(view["loss"].as_f64().unwrap().is_finite());

    let progress = s.get(&format!("/text2img/{id}/progress-image")).await;
    assert_eq!(progress.status(), 200);
    assert_eq!(progress.headers()["content-type"], "image/png");
    let final_image = s.get(&format!("/text2img/{id}/image")).await;
    assert_eq!(final_image.status(), 200);
    let bytes = final_image.bytes().await.unwrap();
    let image = image::load_from_memory(&bytes).unwrap();
    assert_eq!((image.width(), image.height()), (32, 32));
    assert_eq!(
        progress.bytes().await.unwrap(),
        bytes,
        "the last progress image is the final one"
    );

    // The same seed gives the same image.
    let again: Value = s
        .post_json(
            "/text2img",
            &json!({"prompt": "a cartoon avatar|blurry:-0.5", "size": 32, "iterations": 6,
                    "seed": 3, "cutn": 4, "display_every": 2}),
        )
        .await
        .json()
        .await
        .unwrap();
    let again_id = again["id"].as_str().unwrap();
    wait(&s, again_id, |v| v["status"] == "succeeded").await;
    let again_bytes = s
        .get(&format!("/text2img/{again_id}/image"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(again_bytes, bytes);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn textimg2img_starts_from_an_image_and_runs_can_be_cancelled() {
    let s = TestServer::start(vqgan_config()).await;
    let init = image::RgbaImage::from_fn(48, 40, |x, y| {
        image::Rgba([(x * 5) as u8, (y * 6) as u8, 90, 255])
    });
    let data_uri = png_data_uri(init);
    let started: Value = s
        .post_json(
            "/textimg2img",
            &json!({"prompt": "a painting", "width": 48, "height": 32, "iterations": 3,
                    "cutn": 2, "image": data_uri, "init_weight": 0.5}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    wait(&s, &id, |v| v["status"] == "succeeded").await;
    let image = image::load_from_memory(
        &s.get(&format!("/text2img/{id}/image"))
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!((image.width(), image.height()), (48, 32));

    // A long run, cancelled while it runs: it stops early and has no final image.
    let started: Value = s
        .post_json(
            "/text2img",
            &json!({"prompt": "a fox", "size": 32, "iterations": 5000, "cutn": 2}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    wait(&s, &id, |v| v["iteration"].as_u64().unwrap_or(0) >= 1).await;
    let cancelled = s
        .client
        .delete(format!("{}/text2img/{id}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 200);
    let view = wait(&s, &id, |v| v["status"] == "cancelled").await;
    assert!(view["iteration"].as_u64().unwrap() < 5000);
    assert_eq!(s.get(&format!("/text2img/{id}/image")).await.status(), 409);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_4xx_json_and_an_unconfigured_server_says_which_flags_to_pass() {
    let s = TestServer::start(vqgan_config()).await;
    for (body, field) in [
        (json!({"size": 32}), "prompt"),
        (json!({"prompt": "x", "size": 1}), "width"),
        (json!({"prompt": "x", "iterations": 0}), "iterations"),
        (json!({"prompt": "x", "cutn": "many"}), "cutn"),
        (json!({"prompt": "x:0"}), "prompt"),
        (json!({"prompt": "x", "image": "aGVsbG8="}), "image"),
    ] {
        let response = s.post_json("/text2img", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{body}: {error}");
    }
    for (image, why) in [
        ("aGVsbG8=", "not an image"),
        ("%%%", "base64"),
        ("http://127.0.0.1:9/a.png", "not a public address"),
        (
            "http://localhost:9/a.png",
            "does not resolve to a public address",
        ),
        ("file:///etc/passwd", "only http"),
    ] {
        let response = s
            .post_json("/textimg2img", &json!({"prompt": "x", "image": image}))
            .await;
        assert_eq!(response.status(), 422);
        let error: Value = response.json().await.unwrap();
        assert!(error["message"].as_str().unwrap().contains(why), "{error}");
    }
    let missing = s.post_json("/textimg2img", &json!({"prompt": "x"})).await;
    assert_eq!(missing.status(), 422);
    assert_eq!(s.get("/text2img/nope/progress").await.status(), 404);
    assert_eq!(s.get("/text2img/nope/progress-image").await.status(), 404);
    s.stop().await;

    let plain = TestServer::start(config()).await;
    let response = plain.post_json("/text2img", &json!({"prompt": "x"})).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("--vqgan-config"),
        "{error}"
    );
    plain.stop().await;
}
