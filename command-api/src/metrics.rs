//! The Command API's metrics, in the process's registry
//! ([`service::metrics::Registry`]): its RED metrics
//! (`command_api_http_requests_total`,
//! `command_api_http_request_duration_seconds`), appended events,
//! concurrency conflicts, idempotent replays, expired idempotency keys
//! purged, and the aggregate caches' hits, misses, evictions and size
//! (`command_api_aggregate_cache_*`, by stream type), and group commit's
//! group sizes (`command_api_group_commit_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use service::metrics::{HttpMetrics, Registry};

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

impl Conflict {
    const ALL: [Conflict; 3] = [
        Conflict::Retried,
        Conflict::PreconditionFailed,
        Conflict::Exhausted,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Conflict::Retried => "retried",
            Conflict::PreconditionFailed => "precondition_failed",
            Conflict::Exhausted => "exhausted",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamTypeLabel {
    stream_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The Command API's metrics. Cheap to clone: clones count together.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http: HttpMetrics,
    events_appended: Family<StreamTypeLabel, Counter>,
    conflicts: Family<OutcomeLabel, Counter>,
    idempotent_replays: Counter,
    idempotency_purged: Counter,
    caches: event_store::CacheMetrics,
    group_commit: event_store::GroupCommitMetrics,
}

impl Metrics {
    /// Registers the Command API's metrics in `registry`.
    pub fn new(registry: &Registry) -> Metrics {
        let metrics = Metrics {
            registry: registry.clone(),
            http: HttpMetrics::new(registry, "command_api"),
            events_appended: Family::default(),
            conflicts: Family::default(),
            idempotent_replays: Counter::default(),
            idempotency_purged: Counter::default(),
            caches: event_store::CacheMetrics::new(),
            group_commit: event_store::GroupCommitMetrics::new(),
        };
        // Every outcome is shown, at 0 until it happens.
        for conflict in Conflict::ALL {
            let _ = metrics.conflicts.get_or_create(&OutcomeLabel {
                outcome: conflict.as_str(),
            });
        }
        registry.register(|r| {
            r.register(
                "command_api_events_appended",
                "Events appended to the event store by commands, by stream type",
                metrics.events_appended.clone(),
            );
            r.register(
                "command_api_concurrency_conflicts",
                "Optimistic concurrency conflicts met by commands, by outcome",
                metrics.conflicts.clone(),
            );
            r.register(
                "command_api_idempotent_replays",
                "Commands answered from a stored idempotent response",
                metrics.idempotent_replays.clone(),
            );
            r.register(
                "command_api_idempotency_keys_purged",
                "Idempotency keys deleted by the sweep once older than PURSER_IDEMPOTENCY_TTL",
                metrics.idempotency_purged.clone(),
            );
            metrics.caches.register(r, "command_api");
            metrics.group_commit.register(r, "command_api");
        });
        metrics
    }

    /// The registry these metrics are in (the process's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The RED metrics, recorded by [`service::metrics::record_requests`].
    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// The aggregate caches' metrics, which every cache of the Command API
    /// counts in.
    pub fn caches(&self) -> &event_store::CacheMetrics {
        &self.caches
    }

    /// Group commit's metrics.
    pub fn group_commit(&self) -> &event_store::GroupCommitMetrics {
        &self.group_commit
    }

    pub fn record_appended(&self, stream_type: &'static str, events: usize) {
        if events == 0 {
            return;
        }
        self.events_appended
            .get_or_create(&StreamTypeLabel { stream_type })
            .inc_by(events as u64);
    }

    pub fn record_conflict(&self, conflict: Conflict) {
        self.conflicts
            .get_or_create(&OutcomeLabel {
                outcome: conflict.as_str(),
            })
            .inc();
    }

    pub fn record_replay(&self) {
        self.idempotent_replays.inc();
    }

    /// Counts expired idempotency keys the sweep deleted.
    pub fn record_idempotency_purged(&self, rows: u64) {
        self.idempotency_purged.inc_by(rows);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Method;

    use super::*;

    #[tokio::test]
    async fn renders_every_family() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry);
        metrics
            .http()
            .record(&Method::POST, "/accounts", 201, Duration::from_millis(3));
        metrics.record_appended("account", 2);
        metrics.record_appended("account", 0);
        metrics.record_conflict(Conflict::Retried);
        metrics.record_replay();
        metrics.record_idempotency_purged(3);
        metrics.record_idempotency_purged(0);
        let text = registry.render().await;
        for line in [
            "command_api_http_requests_total{method=\"POST\",route=\"/accounts\",status=\"201\"} 1",
            "command_api_http_request_duration_seconds_bucket{le=\"0.005\",method=\"POST\",route=\"/accounts\"} 1",
            "command_api_events_appended_total{stream_type=\"account\"} 2",
            "command_api_concurrency_conflicts_total{outcome=\"retried\"} 1",
            "command_api_concurrency_conflicts_total{outcome=\"exhausted\"} 0",
            "command_api_idempotent_replays_total 1",
            "command_api_idempotency_keys_purged_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
