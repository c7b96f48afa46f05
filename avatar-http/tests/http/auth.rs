//! Optional authentication.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_api_but_not_health_or_the_pages() {
    let mut cfg = config();
    cfg.auth_tokens = vec!["s3cret".into(), "second-token".into()];
    let s = TestServer::start(cfg).await;

    assert_eq!(s.get("/health").await.status(), StatusCode::OK);
    assert_eq!(s.get("/").await.status(), StatusCode::OK);
    assert_eq!(s.get("/docs").await.status(), StatusCode::OK);
    assert_eq!(s.get("/openapi.json").await.status(), StatusCode::OK);

    let anonymous = s.get("/generate-image").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        anonymous.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthorized"
    );
    assert_eq!(s.get("/metrics").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.get("/avatar/a.png").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let get = |token: &'static str| {
        s.client
            .get(format!("{}/generate-image", s.url))
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    assert_eq!(
        get("wrong").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("s3cre").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get("s3cret").await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("second-token").await.unwrap().status(), StatusCode::OK);

    // Seed-002 style: the key in the JSON body.
    let with_key = s
        .post_json("/tasks/avatars", &json!({ "key": "s3cret", "n": 1 }))
        .await;
    assert_eq!(with_key.status(), StatusCode::ACCEPTED);
    let wrong_key = s
        .post_json("/tasks/avatars", &json!({ "key": "nope", "n": 1 }))
        .await;
    assert_eq!(wrong_key.status(), StatusCode::UNAUTHORIZED);
    let no_key = s.post_json("/tasks/avatars", &json!({ "n": 1 })).await;
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_needs_a_token_or_an_explicit_opt_out() {
    let mut cfg = config();
    cfg.host = "0.0.0.0".parse().unwrap();
    let error = avatar_http::Server::start(cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--auth-token") && error.contains("--no-auth"),
        "{error}"
    );
}
