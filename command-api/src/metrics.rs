//! Prometheus metrics, hand-rolled (a mutex-guarded map per family and
//! atomics): requests by route, method and status, a latency histogram per
//! route, appended events, concurrency conflicts, idempotent replays and
//! expired idempotency keys purged.
//! Rendered in the Prometheus text exposition format 0.0.4.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label set of a request: method and matched route.
type RouteKey = (String, String);

#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Http {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<RouteKey, Histogram>,
}

/// Why a command met a concurrency conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// Another writer got there first; re-read and re-decided.
    Retried,
    /// `If-Match` did not match (412).
    PreconditionFailed,
    /// Retries ran out (409).
    Exhausted,
}

#[derive(Debug, Default)]
pub struct Metrics {
    http: Mutex<Http>,
    events_appended: Mutex<BTreeMap<&'static str, u64>>,
    conflicts_retried: AtomicU64,
    conflicts_precondition_failed: AtomicU64,
    conflicts_exhausted: AtomicU64,
    idempotent_replays: AtomicU64,
    idempotency_purged: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Records one finished request.
    pub fn record_request(&self, method: &str, route: &str, status: u16, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        *http
            .requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        let histogram = http
            .durations
            .entry((method.to_owned(), route.to_owned()))
            .or_default();
        histogram.buckets[bucket] += 1;
        histogram.sum += seconds;
        histogram.count += 1;
    }

    pub fn record_appended(&self, stream_type: &'static str, events: usize) {
        if events == 0 {
            return;
        }
        let mut appended = self
            .events_appended
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *appended.entry(stream_type).or_default() += events as u64;
    }

    pub fn record_conflict(&self, conflict: Conflict) {
        let counter = match conflict {
            Conflict::Retried => &self.conflicts_retried,
            Conflict::PreconditionFailed => &self.conflicts_precondition_failed,
            Conflict::Exhausted => &self.conflicts_exhausted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_replay(&self) {
        self.idempotent_replays.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts expired idempotency keys the sweep deleted.
    pub fn record_idempotency_purged(&self, rows: u64) {
        self.idempotency_purged.fetch_add(rows, Ordering::Relaxed);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        {
            let http = self.http.lock().unwrap_or_else(|e| e.into_inner());
            header(
                &mut out,
                "command_api_http_requests_total",
                "counter",
                "HTTP requests by method, matched route and status.",
            );
            for ((method, route, status), count) in &http.requests {
                let _ = writeln!(
                    out,
                    "command_api_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
                    escape(method),
                    escape(route)
                );
            }
            header(
                &mut out,
                "command_api_http_request_duration_seconds",
                "histogram",
                "HTTP request latency by method and matched route.",
            );
            for ((method, route), histogram) in &http.durations {
                let labels = format!("method=\"{}\",route=\"{}\"", escape(method), escape(route));
                let mut cumulative = 0;
                for (bound, count) in BUCKETS.iter().zip(histogram.buckets.iter()) {
                    cumulative += count;
                    let _ = writeln!(
                        out,
                        "command_api_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "command_api_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                    histogram.count
                );
                let _ = writeln!(
                    out,
                    "command_api_http_request_duration_seconds_sum{{{labels}}} {}",
                    histogram.sum
                );
                let _ = writeln!(
                    out,
                    "command_api_http_request_duration_seconds_count{{{labels}}} {}",
                    histogram.count
                );
            }
        }
        header(
            &mut out,
            "command_api_events_appended_total",
            "counter",
            "Events appended to the event store by commands, by stream type.",
        );
        {
            let appended = self
                .events_appended
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (stream_type, count) in appended.iter() {
                let _ = writeln!(
                    out,
                    "command_api_events_appended_total{{stream_type=\"{}\"}} {count}",
                    escape(stream_type)
                );
            }
        }
        header(
            &mut out,
            "command_api_concurrency_conflicts_total",
            "counter",
            "Optimistic concurrency conflicts met by commands, by outcome.",
        );
        for (outcome, counter) in [
            ("retried", &self.conflicts_retried),
            ("precondition_failed", &self.conflicts_precondition_failed),
            ("exhausted", &self.conflicts_exhausted),
        ] {
            let _ = writeln!(
                out,
                "command_api_concurrency_conflicts_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "command_api_idempotent_replays_total",
            "counter",
            "Commands answered from a stored idempotent response.",
        );
        let _ = writeln!(
            out,
            "command_api_idempotent_replays_total {}",
            self.idempotent_replays.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "command_api_idempotency_keys_purged_total",
            "counter",
            "Idempotency keys deleted by the sweep once older than PURSER_IDEMPOTENCY_TTL.",
        );
        let _ = writeln!(
            out,
            "command_api_idempotency_keys_purged_total {}",
            self.idempotency_purged.load(Ordering::Relaxed)
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label value escaping of the text format.
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
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = Metrics::new();
        metrics.record_request("POST", "/accounts", 201, Duration::from_millis(3));
        metrics.record_request("POST", "/accounts", 201, Duration::from_millis(30));
        metrics.record_request("POST", "/accounts", 422, Duration::from_secs(100));
        metrics.record_appended("account", 2);
        metrics.record_appended("account", 0);
        metrics.record_conflict(Conflict::Retried);
        metrics.record_replay();
        metrics.record_idempotency_purged(3);
        metrics.record_idempotency_purged(0);
        let text = metrics.render();
        for line in [
            "command_api_http_requests_total{method=\"POST\",route=\"/accounts\",status=\"201\"} 2",
            "command_api_http_requests_total{method=\"POST\",route=\"/accounts\",status=\"422\"} 1",
            "command_api_http_request_duration_seconds_bucket{method=\"POST\",route=\"/accounts\",le=\"0.0025\"} 0",
            "command_api_http_request_duration_seconds_bucket{method=\"POST\",route=\"/accounts\",le=\"0.005\"} 1",
            "command_api_http_request_duration_seconds_bucket{method=\"POST\",route=\"/accounts\",le=\"0.05\"} 2",
            "command_api_http_request_duration_seconds_bucket{method=\"POST\",route=\"/accounts\",le=\"30\"} 2",
            "command_api_http_request_duration_seconds_bucket{method=\"POST\",route=\"/accounts\",le=\"+Inf\"} 3",
            "command_api_http_request_duration_seconds_count{method=\"POST\",route=\"/accounts\"} 3",
            "command_api_events_appended_total{stream_type=\"account\"} 2",
            "command_api_concurrency_conflicts_total{outcome=\"retried\"} 1",
            "command_api_concurrency_conflicts_total{outcome=\"exhausted\"} 0",
            "command_api_idempotent_replays_total 1",
            "command_api_idempotency_keys_purged_total 3",
            "# TYPE command_api_http_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
