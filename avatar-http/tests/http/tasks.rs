//! Tasks: batches, progress, results, cancellation, backpressure, persistence, webhooks.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{TestServer, config, decode, is_final, temp_dir, webhook_receiver};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_task_produces_every_image_with_progress_and_links() {
    let s = TestServer::default().await;
    let response = s
        .post_json(
            "/tasks/avatars",
            &json!({ "size": "small", "n": 5, "seed": 7, "track_id": "order-1" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let created: Value = response.json().await.unwrap();
    let id = created["task_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("{}/tasks/{id}", s.url));
    assert_eq!(created["kind"], "dcgan.batch");
    assert_eq!(created["track_id"], "order-1");
    assert_eq!(created["progress"]["total"], 5);

    let done = s.wait_task(&id, WAIT, is_final).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["progress"]["step"], 5);
    assert_eq!(done["progress"]["fraction"], 1.0);
    assert!(done["timings"]["run_ms"].is_u64() && done["timings"]["queued_ms"].is_u64());
    let results = done["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["meta"]["seed"], (7 + i).to_string());
        let response = s
            .client
            .get(result["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "image/png");
        let bytes = response.bytes().await.unwrap();
        assert_eq!(decode(&bytes).dimensions(), (96, 96));
        // The task draws exactly what /avatar/{seed} draws.
        let direct = s
            .get(&format!("/avatar/{}.png", 7 + i))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes, direct, "image {i}");
    }
    assert_eq!(
        s.get(&format!("/tasks/{id}/result/5")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get(&format!("/tasks/{id}/result/x")).await.status(),
        StatusCode::NOT_FOUND
    );
    let gone = s
        .client
        .delete(format!("{}/tasks/{id}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::CONFLICT);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_requests_name_the_field() {
    let s = TestServer::default().await;
    for (body, field) in [
        (json!({ "n": 0 }), "n"),
        (json!({ "n": 65 }), "n"),
        (json!({ "n": "many" }), "n"),
        (json!({ "size": "xl" }), "size"),
        (json!({ "format": "bmp" }), "format"),
        (json!({ "transparent": true, "format": "jpeg" }), "format"),
        (json!({ "webhook": "not a url" }), "webhook"),
        (json!({ "output_size": 100000 }), "output_size"),
    ] {
        let response = s.post_json("/tasks/avatars", &body).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["field"], field, "{body}: {error}");
        assert_eq!(error["detail"][0]["loc"][0], "body");
    }
    let broken = s
        .client
        .post(format!("{}/tasks/avatars", s.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        s.get("/tasks/0123456789abcdef0123456789abcdef")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("/tasks/..%2F..%2Fetc").await.status(),
        StatusCode::NOT_FOUND
    );
    s.stop().await;
}

/// A slow task: 64 images upsampled to 1024 px.
fn slow_task() -> Value {
    json!({ "n": 64, "output_size": 1024, "size": "large" })
}

fn slow_config() -> avatar_http::Config {
    let mut cfg = config();
    cfg.max_output_size = 1024;
    cfg.task_workers = 1;
    cfg
}

async fn submit(s: &TestServer, body: &Value) -> reqwest::Response {
    s.post_json("/tasks/avatars", body).await
}

async fn id_of(response: reqwest::Response) -> String {
    let view: Value = response.json().await.unwrap();
    view["task_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_running_tasks_can_be_cancelled() {
    let s = TestServer::start(slow_config()).await;
    let running = id_of(submit(&s, &slow_task()).await).await;
    s.wait_task(&running, WAIT, |status| status != "queued")
        .await;
    let queued = submit(&s, &slow_task()).await;
    assert_eq!(queued.status(), StatusCode::ACCEPTED);
    let queued: Value = queued.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["queue_position"], 1);
    let queued = queued["task_id"].as_str().unwrap().to_string();

    let cancelled = s
        .client
        .delete(format!("{}/tasks/{queued}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        s.wait_task(&queued, WAIT, is_final).await["status"],
        "cancelled"
    );
    let again = s
        .client
        .delete(format!("{}/tasks/{queued}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);

    let stopping = s
        .client
        .delete(format!("{}/tasks/{running}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(stopping.status(), StatusCode::OK);
    let stopped = s.wait_task(&running, WAIT, is_final).await;
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    assert!(stopped["progress"]["step"].as_u64().unwrap() < 64);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("avatar_tasks{status=\"cancelled\"} 2"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_task_queue_answers_429_with_retry_after() {
    let mut cfg = slow_config();
    cfg.task_queue_capacity = 1;
    let s = TestServer::start(cfg).await;
    let mut ids = Vec::new();
    let mut refused = None;
    for _ in 0..4 {
        let response = submit(&s, &slow_task()).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        ids.push(id_of(response).await);
    }
    let refused = refused.expect("a queue of one must refuse by the third task");
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "busy");
    for id in ids {
        s.client
            .delete(format!("{}/tasks/{id}", s.url))
            .send()
            .await
            .unwrap();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_generation_queue_answers_503_with_retry_after() {
    let mut cfg = config();
    cfg.queue_capacity = 1;
    cfg.workers = 1;
    cfg.max_batch = 1;
    cfg.max_output_size = 1024;
    let s = TestServer::start(cfg).await;
    let mut handles = Vec::new();
    for i in 0..24 {
        let client = s.client.clone();
        let url = format!(
            "{}/generate-image?size=large&output_size=1024&seed={i}",
            s.url
        );
        handles.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap()
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for handle in handles {
        let response = handle.await.unwrap();
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                let retry: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    let metrics = s.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!("avatar_rejected_total{{queue=\"sync\"}} {busy}")),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_results_survive_a_restart_with_the_disk_store() {
    let data = temp_dir();
    let mut cfg = config();
    cfg.store = avatar_http::config::StoreKind::Disk;
    cfg.data_dir = Some(data.path().to_path_buf());
    let s = TestServer::start(cfg.clone()).await;
    let id = id_of(submit(&s, &json!({ "n": 2, "seed": "persist", "format": "webp" })).await).await;
    let done = s.wait_task(&id, WAIT, is_final).await;
    assert_eq!(done["status"], "success");
    let before = s
        .get(&format!("/tasks/{id}/result/1"))
        .await
        .bytes()
        .await
        .unwrap();
    s.stop().await;

    let s = TestServer::start(cfg).await;
    let after: Value = s.get(&format!("/tasks/{id}")).await.json().await.unwrap();
    assert_eq!(after["status"], "success");
    assert_eq!(after["results"].as_array().unwrap().len(), 2);
    let response = s.get(&format!("/tasks/{id}/result/1")).await;
    assert_eq!(response.headers()["content-type"], "image/webp");
    assert_eq!(response.bytes().await.unwrap(), before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_tasks_are_requeued_after_a_restart() {
    let data = temp_dir();
    let mut cfg = slow_config();
    cfg.store = avatar_http::config::StoreKind::Disk;
    cfg.data_dir = Some(data.path().to_path_buf());
    cfg.shutdown_grace_secs = 0;
    let s = TestServer::start(cfg.clone()).await;
    let running = id_of(
        submit(
            &s,
            &json!({ "n": 64, "output_size": 1024, "size": "large", "seed": 1 }),
        )
        .await,
    )
    .await;
    s.wait_task(&running, WAIT, |status| status == "processing")
        .await;
    let queued = id_of(submit(&s, &json!({ "n": 2, "seed": 2 })).await).await;
    s.stop().await;

    cfg.shutdown_grace_secs = 30;
    let s = TestServer::start(cfg).await;
    for id in [&running, &queued] {
        let view = s.wait_task(id, Duration::from_secs(180), is_final).await;
        assert_eq!(view["status"], "success", "{view}");
    }
    let running_view: Value = s
        .get(&format!("/tasks/{running}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(running_view["results"].as_array().unwrap().len(), 64);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_until_delivered_with_the_track_id() {
    // A local listener that fails the first delivery and accepts the second.
    let (hook, received) = webhook_receiver(1).await;

    let s = TestServer::default().await;
    let id = id_of(
        submit(
            &s,
            &json!({ "n": 2, "webhook": hook, "track_id": "order-42" }),
        )
        .await,
    )
    .await;
    assert_eq!(s.wait_task(&id, WAIT, is_final).await["status"], "success");
    let view = s.wait_task(&id, WAIT, |_| true).await;
    let mut delivered = view.clone();
    for _ in 0..200 {
        if delivered["webhook"]["state"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        delivered = s.get(&format!("/tasks/{id}")).await.json().await.unwrap();
    }
    assert_eq!(delivered["webhook"]["state"], "delivered", "{delivered}");
    assert_eq!(delivered["webhook"]["attempts"], 2);
    let bodies = received.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    let body = &bodies[1];
    assert_eq!(body["event"], "task.finished");
    assert_eq!(body["task_id"], id.as_str());
    assert_eq!(body["track_id"], "order-42");
    assert_eq!(body["status"], "success");
    assert_eq!(body["output"].as_array().unwrap().len(), 2);
    assert!(body["output"][0].as_str().unwrap().starts_with(&s.url));
    s.stop().await;
}
