//! The orchestrator's Prometheus metrics, hand-rolled like the Command API's:
//! sagas started, completed, compensated and sent to `needs_attention`, and a
//! latency histogram per step name. Rendered in the text format 0.0.4.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the step latency histogram, in seconds.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct SagaMetrics {
    started: AtomicU64,
    completed: AtomicU64,
    compensated: AtomicU64,
    needs_attention: AtomicU64,
    /// By (step name, outcome).
    steps: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
}

impl SagaMetrics {
    pub fn new() -> SagaMetrics {
        SagaMetrics::default()
    }

    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn compensated(&self) {
        self.compensated.fetch_add(1, Ordering::Relaxed);
    }

    pub fn needs_attention(&self) {
        self.needs_attention.fetch_add(1, Ordering::Relaxed);
    }

    /// One attempt of `step` ended with `outcome` (`succeeded`, `refused`,
    /// `failed`).
    pub fn step(&self, step: &'static str, outcome: &'static str, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = steps.entry((step, outcome)).or_default();
        histogram.buckets[bucket] += 1;
        histogram.sum += seconds;
        histogram.count += 1;
    }

    /// `(started, completed, compensated, needs_attention)` so far.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.started.load(Ordering::Relaxed),
            self.completed.load(Ordering::Relaxed),
            self.compensated.load(Ordering::Relaxed),
            self.needs_attention.load(Ordering::Relaxed),
        )
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let (started, completed, compensated, attention) = self.counts();
        for (name, help, value) in [
            (
                "purser_sagas_started_total",
                "Sagas started by this orchestrator.",
                started,
            ),
            (
                "purser_sagas_completed_total",
                "Sagas that shipped their order.",
                completed,
            ),
            (
                "purser_sagas_compensated_total",
                "Sagas that undid their steps and cancelled their order.",
                compensated,
            ),
            (
                "purser_sagas_needs_attention_total",
                "Times a saga stopped for an operator.",
                attention,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let name = "purser_saga_step_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of one attempt of a saga step, by step and outcome.\n# TYPE {name} histogram"
        );
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        for ((step, outcome), histogram) in steps.iter() {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += histogram.buckets[i];
                let _ = writeln!(
                    out,
                    "{name}_bucket{{step=\"{step}\",outcome=\"{outcome}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{step=\"{step}\",outcome=\"{outcome}\",le=\"+Inf\"}} {}\n{name}_sum{{step=\"{step}\",outcome=\"{outcome}\"}} {}\n{name}_count{{step=\"{step}\",outcome=\"{outcome}\"}} {}",
                histogram.count, histogram.sum, histogram.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_step_buckets() {
        let metrics = SagaMetrics::new();
        metrics.started();
        metrics.completed();
        metrics.step("ship", "succeeded", Duration::from_millis(3));
        metrics.step("ship", "succeeded", Duration::from_secs(20));
        let text = metrics.render();
        assert!(text.contains("purser_sagas_started_total 1"), "{text}");
        assert!(text.contains("purser_sagas_compensated_total 0"), "{text}");
        assert!(
            text.contains(
                "purser_saga_step_duration_seconds_bucket{step=\"ship\",outcome=\"succeeded\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "purser_saga_step_duration_seconds_bucket{step=\"ship\",outcome=\"succeeded\",le=\"+Inf\"} 2"
            ),
            "{text}"
        );
    }
}
