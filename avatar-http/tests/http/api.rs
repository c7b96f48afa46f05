//! The synchronous endpoints: health, generate-image, avatar, docs, metrics, errors.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, decode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_exactly_the_seed_services_answer() {
    let s = TestServer::default().await;
    let response = s.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), r#"{"message":"okay"}"#);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_image_defaults_to_an_opaque_small_png() {
    let s = TestServer::default().await;
    let response = s.get("/generate-image").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let seed = response.headers()["x-avatar-seed"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        seed.parse::<u64>().is_ok(),
        "random seeds are numbers: {seed}"
    );
    let bytes = response.bytes().await.unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let image = decode(&bytes);
    assert_eq!(image.dimensions(), (96, 96));
    assert!(
        image.pixels().all(|p| p[3] == 255),
        "transparent=false is opaque"
    );
    // The seed header reproduces the image.
    let again = s
        .get(&format!("/generate-image?seed={seed}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(again, bytes);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transparent_avatars_have_transparent_corners() {
    let s = TestServer::default().await;
    let response = s.get("/generate-image?transparent=true&size=large").await;
    assert_eq!(response.status(), StatusCode::OK);
    let image = decode(&response.bytes().await.unwrap());
    assert_eq!(image.dimensions(), (128, 128));
    for (x, y) in [(0, 0), (127, 0), (0, 127), (127, 127)] {
        assert!(
            image.get_pixel(x, y)[3] < 16,
            "corner ({x},{y}) alpha {}",
            image.get_pixel(x, y)[3]
        );
    }
    assert!(image.get_pixel(64, 64)[3] > 200, "the centre is opaque");
    let opaque = decode(
        &s.get("/generate-image?transparent=false&size=large")
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert!(opaque.pixels().all(|p| p[3] == 255));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_parameters_change_format_size_and_background() {
    let s = TestServer::default().await;
    let webp = s
        .get("/generate-image?seed=alice&format=webp&output_size=64")
        .await;
    assert_eq!(webp.status(), StatusCode::OK);
    assert_eq!(webp.headers()["content-type"], "image/webp");
    assert_eq!(webp.headers()["x-avatar-seed"], "alice");
    assert_eq!(decode(&webp.bytes().await.unwrap()).dimensions(), (64, 64));

    let jpeg = s
        .get("/generate-image?format=jpeg&size=large&output_size=200")
        .await;
    assert_eq!(jpeg.headers()["content-type"], "image/jpeg");
    assert_eq!(
        decode(&jpeg.bytes().await.unwrap()).dimensions(),
        (200, 200)
    );

    let red = decode(
        &s.get("/generate-image?seed=alice&transparent=false&bg_color=%23ff0000")
            .await
            .bytes()
            .await
            .unwrap(),
    );
    let corner = red.get_pixel(0, 0);
    assert!(
        corner[0] > 200 && corner[1] < 60 && corner[2] < 60 && corner[3] == 255,
        "{corner:?}"
    );

    let unicode = s.get("/generate-image?seed=zo%C3%AB").await;
    assert_eq!(unicode.headers()["x-avatar-seed"], "zo%C3%AB");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatars_are_deterministic_and_cacheable() {
    let s = TestServer::default().await;
    let first = s.get("/avatar/alice.png").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["content-type"], "image/png");
    assert_eq!(
        first.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    let first = first.bytes().await.unwrap();
    let second = s.get("/avatar/alice.png").await;
    assert_eq!(second.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(
        second.bytes().await.unwrap(),
        first,
        "same seed, same bytes"
    );
    assert_ne!(
        s.get("/avatar/bob.png").await.bytes().await.unwrap(),
        first,
        "different seeds differ"
    );
    // /generate-image with the same seed and options draws the same image.
    assert_eq!(
        s.get("/generate-image?seed=alice")
            .await
            .bytes()
            .await
            .unwrap(),
        first
    );
    // Digit seeds are numbers in both places.
    assert_eq!(
        s.get("/avatar/42.png").await.bytes().await.unwrap(),
        s.get("/generate-image?seed=42")
            .await
            .bytes()
            .await
            .unwrap()
    );

    let cached = s
        .client
        .get(format!("{}/avatar/alice.png", s.url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(cached.headers()["etag"].to_str().unwrap(), etag);
    assert!(cached.bytes().await.unwrap().is_empty());

    let other_options = s.get("/avatar/alice.png?size=large").await;
    assert_ne!(other_options.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(
        decode(&other_options.bytes().await.unwrap()).dimensions(),
        (128, 128)
    );

    let webp = s.get("/avatar/alice.webp?transparent=true").await;
    assert_eq!(webp.headers()["content-type"], "image/webp");
    let image = decode(&webp.bytes().await.unwrap());
    assert!(image.get_pixel(0, 0)[3] < 16);

    let dotted = s.get("/avatar/first.last.png").await;
    assert_eq!(dotted.headers()["x-avatar-seed"], "first.last");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_without_changing_bytes() {
    let s = TestServer::default().await;
    let seeds: Vec<String> = (0..24).map(|i| format!("batch-{i}")).collect();
    let concurrent = futures_join(&s, &seeds).await;
    for (seed, bytes) in seeds.iter().zip(&concurrent) {
        let alone = s
            .get(&format!("/avatar/{seed}.png"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            &alone, bytes,
            "seed {seed}: batched and single draws differ"
        );
    }
    let unique: HashSet<&Vec<u8>> = concurrent.iter().collect();
    assert_eq!(unique.len(), seeds.len());
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("avatar_batch_size_count"), "{metrics}");
    s.stop().await;
}

async fn futures_join(s: &TestServer, seeds: &[String]) -> Vec<Vec<u8>> {
    let mut handles = Vec::new();
    for seed in seeds {
        let client = s.client.clone();
        let url = format!("{}/avatar/{seed}.png", s.url);
        handles.push(tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.bytes().await.unwrap().to_vec()
        }));
    }
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn expect_422(s: &TestServer, path: &str, field: &str) -> Value {
    let response = s.get(path).await;
    assert_eq!(
        response.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "{path}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], field, "{path}: {body}");
    assert_eq!(body["error"], "invalid_parameter");
    assert_eq!(
        body["detail"][0]["loc"][1], field,
        "FastAPI-style detail: {body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_422s_that_name_the_field_and_the_allowed_values() {
    let s = TestServer::default().await;
    let body = expect_422(&s, "/generate-image?size=huge", "size").await;
    assert_eq!(body["allowed"], json!(["small", "large"]));
    assert!(body["message"].as_str().unwrap().contains("huge"));
    let body = expect_422(&s, "/generate-image?transparent=maybe", "transparent").await;
    assert_eq!(body["allowed"], json!(["true", "false"]));
    let body = expect_422(&s, "/generate-image?format=gif", "format").await;
    assert_eq!(body["allowed"], json!(["png", "webp", "jpeg"]));
    expect_422(&s, "/generate-image?bg_color=red", "bg_color").await;
    expect_422(
        &s,
        "/generate-image?transparent=true&bg_color=%23ff0000",
        "bg_color",
    )
    .await;
    expect_422(&s, "/generate-image?transparent=true&format=jpeg", "format").await;
    expect_422(&s, "/generate-image?output_size=5000", "output_size").await;
    expect_422(&s, "/generate-image?output_size=8", "output_size").await;
    expect_422(&s, "/generate-image?output_size=big", "output_size").await;
    expect_422(&s, "/generate-image?size=small&size=large", "size").await;
    expect_422(
        &s,
        &format!("/generate-image?seed={}", "x".repeat(300)),
        "seed",
    )
    .await;
    expect_422(&s, "/avatar/alice.gif", "extension").await;
    expect_422(&s, "/avatar/alice", "extension").await;
    expect_422(&s, "/avatar/alice.png?size=medium", "size").await;

    let missing = s.get("/nope").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"], "not_found");
    let method = s
        .client
        .put(format!("{}/generate-image", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(method.status(), StatusCode::METHOD_NOT_ALLOWED);
    // POST is seed 003's text-to-image, unavailable without --sd-model.
    let post = s
        .client
        .post(format!("{}/generate-image", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::SERVICE_UNAVAILABLE);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_and_openapi_are_served_locally() {
    let s = TestServer::default().await;
    let spec: Value = s.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/health",
        "/generate-image",
        "/avatar/{seed}.{ext}",
        "/tasks/avatars",
        "/tasks/{id}",
        "/tasks/{id}/result/{index}",
        "/metrics",
    ] {
        assert!(spec["paths"].get(path).is_some(), "missing {path}");
    }
    let params: Vec<&str> = spec["paths"]["/generate-image"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        params,
        [
            "size",
            "transparent",
            "seed",
            "bg_color",
            "format",
            "output_size"
        ]
    );
    assert!(spec["components"]["schemas"].get("TaskView").is_some());
    assert!(
        spec["components"]["securitySchemes"]
            .get("bearer")
            .is_some()
    );

    for page in ["/docs", "/"] {
        let response = s.get(page).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = response.text().await.unwrap();
        assert!(
            !html.contains("://cdn") && !html.contains("<script src=\"http"),
            "{page} loads external assets"
        );
    }
    assert!(s.get("/").await.text().await.unwrap().contains("Generate"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_queues_tasks_and_images() {
    let s = TestServer::default().await;
    s.get("/health").await;
    s.get("/generate-image").await;
    s.get("/generate-image?size=nope").await;
    let response = s.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        "avatar_http_requests_total{route=\"/health\",method=\"GET\",status=\"200\"} 1",
        "avatar_http_requests_total{route=\"/generate-image\",method=\"GET\",status=\"422\"} 1",
        "avatar_http_request_duration_seconds_bucket{route=\"/generate-image\",le=\"+Inf\"} 2",
        "avatar_images_generated_total{size=\"small\",path=\"sync\"} 1",
        "avatar_queue_depth{queue=\"sync_small\"} 0",
        "avatar_queue_depth{queue=\"tasks_dcgan\"} 0",
        "avatar_tasks{status=\"queued\"} 0",
        "# TYPE avatar_http_request_duration_seconds histogram",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let s = TestServer::default().await;
    let big = json!({ "size": "small", "track_id": "x".repeat(100_000) });
    let response = s.post_json("/tasks/avatars", &big).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    s.stop().await;
}
