//! Prometheus metrics, rendered in the text exposition format (version 0.0.4) by `GET /metrics`.
//!
//! A tiny registry of counters and histograms kept behind mutexes: the server records a few
//! values per request, so contention is negligible next to a forward pass.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch size histogram buckets.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// A gauge value sampled at scrape time (queue depths, tasks by status).
#[derive(Debug, Clone)]
pub struct Gauge {
    /// Metric name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// `(label name, label value)` pairs.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

#[derive(Debug, Default)]
struct Registry {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    images: BTreeMap<(String, &'static str), u64>,
    batches: Option<Histogram>,
    rejected: BTreeMap<&'static str, u64>,
    webhooks: BTreeMap<&'static str, u64>,
    dropped: u64,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut registry)
    }

    /// Records one answered request.
    pub fn record_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.with(|r| {
            *r.requests
                .entry((route.to_string(), method.to_string(), status))
                .or_default() += 1;
            r.latency
                .entry(route.to_string())
                .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
                .observe(elapsed.as_secs_f64());
        });
    }

    /// Records `count` generated images of a model size, by `path` (`sync` or `task`).
    pub fn record_images(&self, size: &str, path: &'static str, count: usize) {
        self.with(|r| *r.images.entry((size.to_string(), path)).or_default() += count as u64);
    }

    /// Records the size of one forward pass.
    pub fn record_batch(&self, size: usize) {
        self.with(|r| {
            r.batches
                .get_or_insert_with(|| Histogram::new(&BATCH_BUCKETS))
                .observe(size as f64)
        });
    }

    /// Records a request refused because a queue was full (`sync` or `task`).
    pub fn record_rejected(&self, queue: &'static str) {
        self.with(|r| *r.rejected.entry(queue).or_default() += 1);
    }

    /// Records a queued synchronous request dropped because its client went away.
    pub fn record_abandoned(&self) {
        self.with(|r| r.dropped += 1);
    }

    /// Records a webhook outcome (`delivered`, `failed`, `retried`).
    pub fn record_webhook(&self, outcome: &'static str) {
        self.with(|r| *r.webhooks.entry(outcome).or_default() += 1);
    }

    /// Renders everything, plus `gauges`, in the Prometheus text format.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::new();
        self.with(|r| {
            out.push_str("# HELP avatar_http_requests_total HTTP requests answered, by route, method and status.\n");
            out.push_str("# TYPE avatar_http_requests_total counter\n");
            for ((route, method, status), count) in &r.requests {
                let _ = writeln!(
                    out,
                    "avatar_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {count}",
                    escape(route),
                    escape(method)
                );
            }
            out.push_str("# HELP avatar_http_request_duration_seconds HTTP request latency, by route.\n");
            out.push_str("# TYPE avatar_http_request_duration_seconds histogram\n");
            for (route, histogram) in &r.latency {
                histogram.render(
                    &mut out,
                    "avatar_http_request_duration_seconds",
                    &format!("route=\"{}\"", escape(route)),
                );
            }
            out.push_str("# HELP avatar_images_generated_total Images generated, by model size and path (sync or task).\n");
            out.push_str("# TYPE avatar_images_generated_total counter\n");
            for ((size, path), count) in &r.images {
                let _ = writeln!(out, "avatar_images_generated_total{{size=\"{size}\",path=\"{path}\"}} {count}");
            }
            out.push_str("# HELP avatar_batch_size Images per forward pass of the synchronous path.\n");
            out.push_str("# TYPE avatar_batch_size histogram\n");
            r.batches
                .clone()
                .unwrap_or_else(|| Histogram::new(&BATCH_BUCKETS))
                .render(&mut out, "avatar_batch_size", "");
            out.push_str("# HELP avatar_rejected_total Requests refused because a queue was full.\n");
            out.push_str("# TYPE avatar_rejected_total counter\n");
            for queue in ["sync", "task"] {
                let count = r.rejected.get(queue).copied().unwrap_or(0);
                let _ = writeln!(out, "avatar_rejected_total{{queue=\"{queue}\"}} {count}");
            }
            out.push_str("# HELP avatar_abandoned_total Queued requests dropped because the client went away.\n");
            out.push_str("# TYPE avatar_abandoned_total counter\n");
            let _ = writeln!(out, "avatar_abandoned_total {}", r.dropped);
            out.push_str("# HELP avatar_webhook_deliveries_total Webhook attempts by outcome.\n");
            out.push_str("# TYPE avatar_webhook_deliveries_total counter\n");
            for (outcome, count) in &r.webhooks {
                let _ = writeln!(out, "avatar_webhook_deliveries_total{{outcome=\"{outcome}\"}} {count}");
            }
        });
        let mut seen = std::collections::BTreeSet::new();
        for gauge in gauges {
            if seen.insert(gauge.name) {
                let _ = writeln!(out, "# HELP {} {}", gauge.name, gauge.help);
                let _ = writeln!(out, "# TYPE {} gauge", gauge.name);
            }
            let labels: Vec<String> = gauge
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(
                out,
                "{}{{{}}} {}",
                gauge.name,
                labels.join(","),
                gauge.value
            );
        }
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let metrics = Metrics::new();
        metrics.record_request("/health", "GET", 200, Duration::from_millis(3));
        metrics.record_images("small", "sync", 4);
        metrics.record_batch(4);
        let text = metrics.render(&[Gauge {
            name: "avatar_queue_depth",
            help: "Queued requests.",
            labels: vec![("queue", "sync_small".into())],
            value: 2.0,
        }]);
        assert!(text.contains(
            "avatar_http_requests_total{route=\"/health\",method=\"GET\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "avatar_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "avatar_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.001\"} 0"
        ));
        assert!(text.contains("avatar_images_generated_total{size=\"small\",path=\"sync\"} 4"));
        assert!(text.contains("avatar_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("avatar_queue_depth{queue=\"sync_small\"} 2"));
    }
}
