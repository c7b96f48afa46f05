//! Seed 002 over HTTP with the tiny SDXL InstantID of avatar-core's fixtures: answers in
//! ModelsLab's shapes (success with URLs or base64, processing with a fetch URL), the fetch
//! endpoint, the webhook with `track_id`, and validation errors naming the field.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::common::{TestServer, config, png_data_uri, webhook_receiver};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../avatar-core/tests/fixtures")
}

fn instantid_config(wait_secs: u64) -> avatar_http::Config {
    let mut config = config();
    let nets = fixtures().join("controlnet");
    config.instantid_model = Some(fixtures().join("diffusion/sdxl_tiny"));
    config.instantid_adapter = Some(nets.join("instantid_ip_adapter.bin"));
    config.instantid_identitynet = Some(nets.join("sdxl_identitynet"));
    config.instantid_canny = Some(nets.join("sdxl_controlnet"));
    config.avatar_gen_wait_secs = wait_secs;
    config
}

fn photo() -> String {
    let image = image::RgbaImage::from_fn(80, 96, |x, y| {
        image::Rgba([(x * 3 % 256) as u8, (y * 2 % 256) as u8, 120, 255])
    });
    png_data_uri(image)
}

fn request() -> Value {
    json!({
        "key": "",
        "prompt": "pretty woman",
        "negative_prompt": "blurry",
        "init_image": photo(),
        "width": "64",
        "height": "64",
        "samples": "2",
        "num_inference_steps": "21",
        "safety_checker": false,
        "base64": false,
        "seed": 5,
        "guidance_scale": 7.5,
        "identitynet_strength_ratio": 1.0,
        "adapter_strength_ratio": 1.0,
        "pose_strength": 0.4,
        "canny_strength": 0.3,
        "controlnet_selection": "pose,canny",
        "webhook": null,
        "track_id": null,
        "face_embedding": (0..16).map(|i| (i as f64 * 0.7).sin() * 3.0).collect::<Vec<_>>(),
        "face_keypoints": [[28, 38], [52, 38], [40, 52], [31, 66], [49, 66]],
    })
}

fn with(mut body: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn post(s: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let response = s.post_json(path, body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

const ENDPOINT: &str = "/api/v6/image_editing/avatar_gen";

#[tokio::test(flavor = "multi_thread")]
async fn avatars_answer_in_the_seed_shape() {
    let s = TestServer::start(instantid_config(120)).await;
    let (status, answer) = post(&s, ENDPOINT, &request()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "success", "{answer}");
    assert!(answer["generationTime"].as_f64().unwrap() > 0.0);
    let outputs = answer["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(answer["proxy_links"], answer["output"]);
    let meta = &answer["meta"];
    assert_eq!(meta["seed"], 5);
    assert_eq!(meta["samples"], 2);
    assert_eq!(meta["width"], 64);
    assert_eq!(meta["num_inference_steps"], 21);
    assert_eq!(meta["base64"], "no");
    assert_eq!(meta["safety_checker"], "no");
    assert!(
        meta["face_image"]
            .as_str()
            .unwrap()
            .starts_with("<inline image")
    );
    // Without a pose image only the canny ControlNet joins the IdentityNet.
    assert_eq!(meta["controlnets_used"], json!(["canny"]));
    let path = outputs[0].as_str().unwrap().strip_prefix(&s.url).unwrap();
    let first = s.get(path).await.bytes().await.unwrap();
    let first = image::load_from_memory(&first).unwrap().to_rgba8();
    assert_eq!(first.dimensions(), (64, 64));

    // base64: the outputs inline, the same images for the same seed.
    let (status, inline) = post(&s, ENDPOINT, &with(request(), json!({"base64": true}))).await;
    assert_eq!(status, 200, "{inline}");
    assert_eq!(inline["meta"]["base64"], "yes");
    let png = base64::engine::general_purpose::STANDARD
        .decode(inline["output"][0].as_str().unwrap())
        .unwrap();
    assert!(image::load_from_memory(&png).unwrap().to_rgba8() == first);
    // The fetch endpoint answers the same.
    let id = answer["id"].as_str().unwrap();
    let (status, fetched) = post(
        &s,
        &format!("/api/v6/images/fetch/{id}"),
        &json!({"key": ""}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fetched["status"], "success");
    assert_eq!(fetched["output"], answer["output"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_requests_answer_processing_then_fetch_and_webhook() {
    let s = TestServer::start(instantid_config(0)).await;
    let (hook, received) = webhook_receiver(0).await;
    let body = with(
        request(),
        json!({"samples": 1, "webhook": hook, "track_id": "gen-9", "controlnet_selection": "none"}),
    );
    let (status, answer) = post(&s, ENDPOINT, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "processing", "{answer}");
    assert!(answer["eta"].as_f64().is_some());
    assert_eq!(answer["output"], json!([]));
    let fetch = answer["fetch_result"].as_str().unwrap();
    let path = fetch.strip_prefix(&s.url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let (_, view) = post(
            &s,
            &format!(
                "/api/v6/image_editing/fetch/{}",
                path.rsplit('/').next().unwrap()
            ),
            &json!({}),
        )
        .await;
        if view["status"] == "success" {
            break view;
        }
        assert!(
            Instant::now() < deadline && view["status"] == "processing",
            "{view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done["output"].as_array().unwrap().len(), 1);
    assert_eq!(done["meta"]["controlnets_used"], json!([]));
    assert_eq!(done["track_id"], "gen-9");
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no webhook delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivery = received.lock().unwrap()[0].clone();
    assert_eq!(delivery["track_id"], "gen-9");
    assert_eq!(delivery["status"], "success");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_name_the_field() {
    let s = TestServer::start(instantid_config(120)).await;
    for (change, field) in [
        (json!({"face_embedding": null}), "face_embedding"),
        (json!({"face_keypoints": [[1, 2]]}), "face_keypoints"),
        (json!({"face_embedding": [1, 2, 3]}), "face_embedding"),
        (json!({"num_inference_steps": 20}), "num_inference_steps"),
        (json!({"width": 768, "height": 768}), "width"),
        (json!({"samples": 3}), "samples"),
        (json!({"s_scale": 2.5}), "s_scale"),
        (json!({"canny_strength": 1.5}), "canny_strength"),
        (
            json!({"controlnet_selection": "depth"}),
            "controlnet_selection",
        ),
        (
            json!({"safety_checker_type": "sepia"}),
            "safety_checker_type",
        ),
        (json!({"init_image": null}), "init_image"),
        (json!({"init_image": "not an image"}), "init_image"),
        (json!({"prompt": null}), "prompt"),
        (json!({"seed": -1}), "seed"),
    ] {
        let (status, answer) = post(&s, ENDPOINT, &with(request(), change.clone())).await;
        assert_eq!(status, 422, "{change}: {answer}");
        assert_eq!(answer["status"], "error", "{answer}");
        assert_eq!(answer["field"], field, "{change}: {answer}");
    }
    // The safety checker is not configured here.
    let (status, answer) = post(
        &s,
        ENDPOINT,
        &with(request(), json!({"safety_checker": "yes"})),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    let (status, _) = post(&s, "/api/v6/images/fetch/nope", &json!({})).await;
    assert_eq!(status, 404);
    s.stop().await;

    // A server without InstantID names the flags.
    let s = TestServer::default().await;
    let (status, answer) = post(&s, ENDPOINT, &request()).await;
    assert_eq!(status, 503);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("--instantid-model")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_face_analysis_finds_the_face_in_init_image() {
    let faces = fixtures().join("face_analysis");
    let mut config = instantid_config(120);
    config.face_detector = Some(faces.join("det_tiny.onnx"));
    config.face_recognizer = Some(faces.join("rec_tiny.onnx"));
    let s = TestServer::start(config).await;
    let models: Value = s.get("/models").await.json().await.unwrap();
    assert_eq!(models["face_analysis"], true);
    let picture = image::open(faces.join("faces.png")).unwrap().to_rgba8();
    let mut body = with(
        request(),
        json!({"init_image": png_data_uri(picture), "samples": "1"}),
    );
    let fields = body.as_object_mut().unwrap();
    fields.remove("face_embedding");
    fields.remove("face_keypoints");
    let (status, answer) = post(&s, ENDPOINT, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(answer["output"].as_array().unwrap().len(), 1);

    s.stop().await;

    // Nothing scores 1.0 with this detector: no face, 422 naming init_image.
    let mut config = instantid_config(120);
    config.face_detector = Some(faces.join("det_tiny.onnx"));
    config.face_recognizer = Some(faces.join("rec_tiny.onnx"));
    config.face_det_thresh = 1.0;
    let s = TestServer::start(config).await;
    let (status, answer) = post(&s, ENDPOINT, &body).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.to_string().contains("init_image"), "{answer}");
    assert!(answer.to_string().contains("no face"), "{answer}");
    s.stop().await;
}
