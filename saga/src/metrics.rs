//! The orchestrator's metrics (`prometheus-client`), registered by the
//! process in its one registry ([`SagaMetrics::register`]): sagas started,
//! completed, compensated and sent to `needs_attention`, and a latency
//! histogram of step attempts by step and outcome (its `_count` is the
//! attempts), and the aggregate caches of its commands. Sagas per state come from the sagas read model
//! (`projections::metrics::StatusMetrics`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the step latency histogram, in seconds.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
    outcome: &'static str,
}

/// The orchestrator's Prometheus metrics (served by `purser saga` on
/// `--saga-metrics-addr`). Cheap to clone: clones count together.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    started: Counter,
    completed: Counter,
    compensated: Counter,
    needs_attention: Counter,
    conflicts_retried: Counter,
    steps: Family<StepLabels, Histogram, fn() -> Histogram>,
    caches: event_store::CacheMetrics,
}

impl Default for SagaMetrics {
    fn default() -> Self {
        SagaMetrics {
            started: Counter::default(),
            completed: Counter::default(),
            compensated: Counter::default(),
            needs_attention: Counter::default(),
            conflicts_retried: Counter::default(),
            steps: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            caches: event_store::CacheMetrics::new(),
        }
    }
}

impl SagaMetrics {
    /// Metrics at zero.
    pub fn new() -> SagaMetrics {
        SagaMetrics::default()
    }

    /// Registers every metric in the process's registry `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "purser_sagas_started",
            "Sagas started by this orchestrator",
            self.started.clone(),
        );
        r.register(
            "purser_sagas_completed",
            "Sagas that shipped their order",
            self.completed.clone(),
        );
        r.register(
            "purser_sagas_compensated",
            "Sagas that undid their steps and cancelled their order",
            self.compensated.clone(),
        );
        r.register(
            "purser_sagas_needs_attention",
            "Times a saga stopped for an operator",
            self.needs_attention.clone(),
        );
        r.register(
            "purser_saga_command_conflicts_retried",
            "Commands to items and accounts decided again after losing a version race",
            self.conflicts_retried.clone(),
        );
        r.register(
            "purser_saga_step_duration_seconds",
            "Duration of one attempt of a saga step, by step and outcome (succeeded, refused, failed)",
            self.steps.clone(),
        );
        self.caches.register(r, "purser_saga_commands");
    }

    /// The metrics of the caches of the items and accounts the sagas'
    /// commands act on (`purser_saga_commands_aggregate_cache_*`).
    pub fn caches(&self) -> &event_store::CacheMetrics {
        &self.caches
    }

    /// A saga was started.
    pub fn started(&self) {
        self.started.inc();
    }

    /// A saga shipped its order.
    pub fn completed(&self) {
        self.completed.inc();
    }

    /// A saga undid its steps and cancelled its order.
    pub fn compensated(&self) {
        self.compensated.inc();
    }

    /// A saga stopped for an operator.
    pub fn needs_attention(&self) {
        self.needs_attention.inc();
    }

    /// A command to an item or an account lost the race for the stream's
    /// next version (another process wrote it) and was decided again.
    pub fn conflict_retried(&self) {
        self.conflicts_retried.inc();
    }

    /// Conflicts retried so far.
    pub fn conflicts_retried(&self) -> u64 {
        self.conflicts_retried.get()
    }

    /// One attempt of `step` ended with `outcome` (`succeeded`, `refused`,
    /// `failed`).
    pub fn step(&self, step: &'static str, outcome: &'static str, latency: Duration) {
        self.steps
            .get_or_create(&StepLabels { step, outcome })
            .observe(latency.as_secs_f64());
    }

    /// `(started, completed, compensated, needs_attention)` so far.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.started.get(),
            self.completed.get(),
            self.compensated.get(),
            self.needs_attention.get(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_step_buckets() {
        let metrics = SagaMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.started();
        metrics.completed();
        metrics.step("ship", "succeeded", Duration::from_millis(3));
        metrics.step("ship", "succeeded", Duration::from_secs(20));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "purser_sagas_started_total 1",
            "purser_sagas_compensated_total 0",
            "purser_saga_step_duration_seconds_bucket{le=\"0.005\",step=\"ship\",outcome=\"succeeded\"} 1",
            "purser_saga_step_duration_seconds_bucket{le=\"+Inf\",step=\"ship\",outcome=\"succeeded\"} 2",
            "purser_saga_step_duration_seconds_count{step=\"ship\",outcome=\"succeeded\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
