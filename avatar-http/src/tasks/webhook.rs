//! Webhook delivery: a POST of the finished task (with the caller's `track_id`) to the URL given
//! at submission, retried with exponential backoff a bounded number of times.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::queue::{TaskEvent, TaskManager};
use super::record::{DeliveryState, WebhookDelivery};
use super::view::TaskView;
use crate::metrics::Metrics;

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Attempts per delivery.
    pub attempts: u32,
    /// Delay before the first retry (doubled each time, capped at 60 s).
    pub backoff: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Base of the absolute result links in payloads.
    pub base_url: String,
}

/// Checks that a webhook URL is an absolute http(s) URL.
pub fn validate_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!(
            "{url:?} must be an absolute http:// or https:// URL"
        ));
    }
    Ok(())
}

/// The JSON POSTed to a webhook.
pub fn payload(view: &TaskView) -> serde_json::Value {
    let mut value = serde_json::to_value(view).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("event".into(), "task.finished".into());
        object.insert(
            "output".into(),
            view.results
                .iter()
                .map(|r| serde_json::Value::from(r.url.clone()))
                .collect(),
        );
    }
    value
}

/// The running dispatcher.
#[derive(Debug)]
pub struct WebhookDispatcher {
    stop: Arc<Notify>,
    handle: tokio::task::JoinHandle<()>,
}

impl WebhookDispatcher {
    /// Starts delivering the events sent on `events`.
    pub fn spawn(
        mut events: mpsc::Receiver<TaskEvent>,
        manager: TaskManager,
        metrics: Arc<Metrics>,
        config: WebhookConfig,
    ) -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("avatar-http/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.timeout)
            .build()
            .unwrap_or_default();
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let mut deliveries = JoinSet::new();
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => {
                            deliveries.spawn(deliver(client.clone(), manager.clone(), metrics.clone(), config.clone(), event));
                        }
                        None => break,
                    },
                    Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
                    _ = stopped.notified() => break,
                }
            }
            while let Ok(event) = events.try_recv() {
                deliveries.spawn(deliver(
                    client.clone(),
                    manager.clone(),
                    metrics.clone(),
                    config.clone(),
                    event,
                ));
            }
            while deliveries.join_next().await.is_some() {}
        });
        WebhookDispatcher { stop, handle }
    }

    /// Stops taking new events and waits up to `timeout` for deliveries in flight.
    pub async fn drain(self, timeout: Duration) {
        self.stop.notify_one();
        let mut handle = self.handle;
        if tokio::time::timeout(timeout, &mut handle).await.is_err() {
            tracing::warn!(
                "webhook deliveries still pending at shutdown; they will be retried at the next start"
            );
            handle.abort();
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    manager: TaskManager,
    metrics: Arc<Metrics>,
    config: WebhookConfig,
    event: TaskEvent,
) {
    let record = event.record;
    let Some(url) = record.webhook.clone() else {
        return;
    };
    let body = payload(&TaskView::new(&record, None, &config.base_url));
    let mut last_error = None;
    for attempt in 1..=config.attempts {
        let outcome = client
            .post(&url)
            .timeout(config.timeout)
            .header("X-Avatar-Task-Id", &record.id)
            .header("X-Avatar-Delivery-Attempt", attempt.to_string())
            .json(&body)
            .send()
            .await;
        match outcome {
            Ok(response) if response.status().is_success() => {
                metrics.record_webhook("delivered");
                tracing::info!(task_id = %record.id, attempt, "webhook delivered");
                set(
                    &manager,
                    &record.id,
                    DeliveryState::Delivered,
                    attempt,
                    None,
                )
                .await;
                return;
            }
            Ok(response) => last_error = Some(format!("HTTP {}", response.status())),
            Err(error) => last_error = Some(error.to_string()),
        }
        tracing::warn!(task_id = %record.id, attempt, error = ?last_error, "webhook attempt failed");
        if attempt < config.attempts {
            metrics.record_webhook("retried");
            set(
                &manager,
                &record.id,
                DeliveryState::Pending,
                attempt,
                last_error.clone(),
            )
            .await;
            let delay = config
                .backoff
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(Duration::from_secs(60));
            tokio::time::sleep(delay).await;
        }
    }
    metrics.record_webhook("failed");
    set(
        &manager,
        &record.id,
        DeliveryState::Failed,
        config.attempts,
        last_error,
    )
    .await;
}

async fn set(
    manager: &TaskManager,
    id: &str,
    state: DeliveryState,
    attempts: u32,
    last_error: Option<String>,
) {
    let manager = manager.clone();
    let id = id.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        manager.set_delivery(
            &id,
            WebhookDelivery {
                state,
                attempts,
                last_error,
            },
        )
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_accepted() {
        assert!(validate_url("http://127.0.0.1:9/hook").is_ok());
        assert!(validate_url("https://example.com/x?y=1").is_ok());
        for bad in [
            "",
            "/relative",
            "ftp://x/y",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
    }
}
