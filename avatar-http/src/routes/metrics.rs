//! `GET /metrics` and the middleware that counts requests.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::metrics::{Gauge, Metrics};
use crate::state::AppState;

/// Prometheus metrics: requests by route and status, latency histograms, queue depths, tasks
/// by status, images generated, batch sizes, rejections and webhook outcomes.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    security((), ("bearer" = [])),
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain; version=0.0.4", body = String))
)]
pub async fn metrics(State(app): State<AppState>) -> Response {
    let mut gauges = Vec::new();
    for (size, depth) in app.pool.queue_depths() {
        gauges.push(Gauge {
            name: "avatar_queue_depth",
            help: "Requests or tasks waiting, by queue.",
            labels: vec![("queue", format!("sync_{size}"))],
            value: depth as f64,
        });
    }
    for (lane, depth) in app.tasks.queue_depths() {
        gauges.push(Gauge {
            name: "avatar_queue_depth",
            help: "Requests or tasks waiting, by queue.",
            labels: vec![("queue", format!("tasks_{lane}"))],
            value: depth as f64,
        });
    }
    gauges.push(Gauge {
        name: "avatar_queue_capacity",
        help: "Queue capacities.",
        labels: vec![("queue", "sync".into())],
        value: app.config.queue_capacity as f64,
    });
    gauges.push(Gauge {
        name: "avatar_queue_capacity",
        help: "Queue capacities.",
        labels: vec![("queue", "tasks".into())],
        value: app.config.task_queue_capacity as f64,
    });
    for (status, count) in app.tasks.counts() {
        gauges.push(Gauge {
            name: "avatar_tasks",
            help: "Known tasks, by status.",
            labels: vec![("status", status.as_str().into())],
            value: count as f64,
        });
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        app.metrics.render(&gauges),
    )
        .into_response()
}

/// Middleware: counts every request by matched route, method and status, with its latency.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    metrics.record_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
