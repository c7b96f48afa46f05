//! Image inputs by URL: SSRF refusals (literal and resolved private addresses, schemes,
//! redirects), byte and pixel caps, time limits, and seed 004's `textimg2img` taking a URL.

use std::net::SocketAddr;
use std::time::Duration;

use avatar_http::fetch::{FetchLimits, ImageFetcher};
use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Redirect;
use axum::routing::get;
use serde_json::{Value, json};

use crate::common::{TestServer, config};

fn png_of(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbaImage::from_pixel(width, height, image::Rgba([200, 40, 90, 255]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

/// A loopback server with well-behaved and hostile image URLs.
async fn image_server() -> SocketAddr {
    let small = png_of(40, 30);
    let huge = png_of(3000, 3000);
    let app = Router::new()
        .route(
            "/a.png",
            get(move || async move { ([(header::CONTENT_TYPE, "image/png")], small) }),
        )
        .route("/bomb.png", get(move || async move { huge }))
        .route("/big", get(|| async { vec![0u8; 3 << 20] }))
        .route(
            "/chunked",
            get(|| async {
                let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![7u8; 64 * 1024]));
                Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/text", get(|| async { "hello" }))
        .route("/redirect", get(|| async { Redirect::temporary("/a.png") }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route(
            "/to-file",
            get(|| async { Redirect::temporary("file:///etc/passwd") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn fetcher(allow_private: bool) -> ImageFetcher {
    ImageFetcher::new(FetchLimits {
        max_bytes: 2 << 20,
        max_pixels: 1_000_000,
        timeout: Duration::from_secs(1),
        max_redirects: 3,
        allow_private,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_are_fetched_within_limits_and_private_addresses_are_refused() {
    let addr = image_server().await;
    let url = |path: &str| format!("http://{addr}{path}");
    let open = fetcher(true);
    let image = open.load(&url("/a.png"), false).await.unwrap();
    assert_eq!(image.dimensions(), (40, 30));
    let image = open.load(&url("/redirect"), false).await.unwrap();
    assert_eq!(image.dimensions(), (40, 30), "redirects are followed");

    let refused = |result: Result<image::RgbaImage, avatar_http::fetch::FetchError>| {
        result.expect_err("refused").0
    };
    for (path, why) in [
        ("/bomb.png", "more than 1000000 pixels"),
        ("/big", "larger than"),
        ("/chunked", "larger than"),
        ("/slow", "timed out"),
        ("/missing", "404"),
        ("/text", "not an image"),
        ("/loop", "redirects"),
        ("/to-file", "not followed"),
    ] {
        let message = refused(open.load(&url(path), false).await);
        assert!(message.contains(why), "{path}: {message}");
    }

    // The default: nothing private, whether literal or resolved (redirect targets go through the
    // same URL check and resolver: see the unit tests in `fetch.rs`).
    let safe = fetcher(false);
    for (input, why) in [
        (url("/a.png"), "not a public address"),
        (
            format!("http://localhost:{}/a.png", addr.port()),
            "does not resolve to a public address",
        ),
        ("http://[::1]/a.png".to_string(), "not a public address"),
        (
            "http://169.254.169.254/latest/meta-data".to_string(),
            "not a public address",
        ),
        ("http://10.0.0.1/a.png".to_string(), "not a public address"),
        ("file:///etc/passwd".to_string(), "only http"),
        ("gopher://example.com/".to_string(), "only http"),
    ] {
        let message = refused(safe.load(&input, false).await);
        assert!(message.contains(why), "{input}: {message}");
    }
    // Data URIs and base64.
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(png_of(8, 6));
    let image = safe
        .load(&format!("data:image/png;base64,{encoded}"), false)
        .await
        .unwrap();
    assert_eq!(image.dimensions(), (8, 6));
    assert_eq!(
        safe.load(&encoded, true).await.unwrap().dimensions(),
        (8, 6)
    );
    assert!(refused(safe.load(&encoded, false).await).contains("expected an http(s) URL"));
    assert!(refused(safe.load("data:text/plain;base64,aGk=", false).await).contains("data URI"));
    assert!(refused(safe.load("data:image/png;base64,%%%", false).await).contains("base64"));
}

#[tokio::test(flavor = "multi_thread")]
async fn textimg2img_takes_an_image_url_only_where_private_fetches_are_allowed() {
    let addr = image_server().await;
    let fixtures = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../avatar-core/tests/fixtures/vqgan_clip");
    let mut vqgan = config();
    vqgan.vqgan_config = Some(fixtures.join("vqgan.yaml"));
    vqgan.vqgan_weights = Some(fixtures.join("vqgan.ckpt"));
    vqgan.clip_weights = Some(fixtures.join("clip.safetensors"));
    vqgan.clip_config = Some(fixtures.join("clip_config.json"));
    let body = json!({"prompt": "x", "image": format!("http://{addr}/a.png"), "size": 16,
                      "iterations": 1, "cutn": 2});

    let s = TestServer::start(vqgan.clone()).await;
    let response = s.post_json("/textimg2img", &body).await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["field"], "image");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{error}"
    );
    s.stop().await;

    vqgan.fetch_allow_private = true;
    let s = TestServer::start(vqgan).await;
    let response = s.post_json("/textimg2img", &body).await;
    assert_eq!(response.status(), 202);
    s.stop().await;
}
