//! The projections' metrics (`prometheus-client`), registered by the
//! process that runs them in its one registry:
//!
//! - [`StatusMetrics`]: where each projection stands, read from the
//!   database when scraped ([`StatusMetrics::refresh`], the same figures as
//!   `GET /projections`: lag, checkpoint, head, events applied, parked
//!   streams, rebuild), and the sagas per state from the sagas read model.
//!   Any process may show them: the Query API and the workers do.
//! - [`WorkerMetrics`]: what this process's workers do, per projection:
//!   batches by size and latency, events applied, duplicates skipped,
//!   streams parked, failed batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::{BatchReport, Result};

/// The `projection` label of the projections' metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectionLabel {
    /// The projection's name.
    pub projection: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

fn label(projection: &str) -> ProjectionLabel {
    ProjectionLabel {
        projection: projection.to_owned(),
    }
}

/// The projections' progress and the sagas per state, from the database.
/// Cheap to clone: clones share their values.
#[derive(Debug, Clone, Default)]
pub struct StatusMetrics {
    lag: Family<ProjectionLabel, Gauge>,
    checkpoint: Family<ProjectionLabel, Gauge>,
    head: Family<ProjectionLabel, Gauge>,
    applied: Family<ProjectionLabel, Counter>,
    /// The `events_applied` each `applied` counter mirrors: a counter only
    /// moves forward, by what the database's figure grew.
    applied_seen: Arc<Mutex<HashMap<String, i64>>>,
    parked: Family<ProjectionLabel, Gauge>,
    rebuild_running: Family<ProjectionLabel, Gauge>,
    rebuild_events_done: Family<ProjectionLabel, Gauge>,
    sagas: Family<StateLabel, Gauge>,
}

/// The saga states, in the order the sagas read model names them.
const SAGA_STATES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "needs_attention",
];

impl StatusMetrics {
    /// Metrics at zero.
    pub fn new() -> StatusMetrics {
        StatusMetrics::default()
    }

    /// Registers every metric in the process's registry `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "purser_projection_lag_events",
            "Events of the projection's stream types in the event store not yet applied",
            self.lag.clone(),
        );
        r.register(
            "purser_projection_checkpoint_position",
            "Highest global event-store position the projection has applied",
            self.checkpoint.clone(),
        );
        r.register(
            "purser_projection_head_position",
            "Highest global event-store position among the projection's stream types",
            self.head.clone(),
        );
        r.register(
            "purser_projection_events_applied",
            "Events applied to the read model since it was created",
            self.applied.clone(),
        );
        r.register(
            "purser_projection_parked_streams",
            "Streams parked by a poison event (their later events wait)",
            self.parked.clone(),
        );
        r.register(
            "purser_projection_rebuild_running",
            "1 while a rebuild of the projection runs",
            self.rebuild_running.clone(),
        );
        r.register(
            "purser_projection_rebuild_events_done",
            "Events replayed by the projection's rebuild not swapped in yet (0 without one)",
            self.rebuild_events_done.clone(),
        );
        r.register(
            "purser_sagas",
            "Order-fulfilment sagas per state, from the sagas read model",
            self.sagas.clone(),
        );
    }

    /// Reads every figure from the database.
    pub async fn refresh(&self, pool: &PgPool) -> Result<()> {
        for status in crate::status::all(pool).await? {
            let l = label(&status.name);
            self.lag.get_or_create(&l).set(status.lag_events);
            self.checkpoint.get_or_create(&l).set(status.checkpoint);
            self.head.get_or_create(&l).set(status.head);
            self.parked.get_or_create(&l).set(status.parked_streams);
            let rebuild = status.rebuild.as_ref();
            self.rebuild_running
                .get_or_create(&l)
                .set(i64::from(rebuild.is_some_and(|r| r.running)));
            self.rebuild_events_done
                .get_or_create(&l)
                .set(rebuild.map_or(0, |r| r.events_done));
            let grown = {
                let mut seen = self
                    .applied_seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let before = seen.insert(status.name.clone(), status.events_applied);
                (status.events_applied - before.unwrap_or(0)).max(0)
            };
            self.applied.get_or_create(&l).inc_by(grown as u64);
        }
        let counted: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM read_models.sagas GROUP BY state")
                // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
                .persistent(false)
                .fetch_all(pool)
                .await?;
        for state in SAGA_STATES {
            let n = counted
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.sagas
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(n);
        }
        Ok(())
    }
}

/// Upper bounds of the batch size histogram, in events.
const BATCH_SIZE_BUCKETS: [f64; 10] =
    [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Upper bounds of the batch latency histogram, in seconds.
const BATCH_LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What this process's projection workers do. Cheap to clone: clones count
/// together.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    batch_events: Family<ProjectionLabel, Histogram, fn() -> Histogram>,
    batch_seconds: Family<ProjectionLabel, Histogram, fn() -> Histogram>,
    applied: Family<ProjectionLabel, Counter>,
    duplicates: Family<ProjectionLabel, Counter>,
    parked: Family<ProjectionLabel, Counter>,
    failed: Family<ProjectionLabel, Counter>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            batch_events: Family::new_with_constructor(|| Histogram::new(BATCH_SIZE_BUCKETS)),
            batch_seconds: Family::new_with_constructor(|| Histogram::new(BATCH_LATENCY_BUCKETS)),
            applied: Family::default(),
            duplicates: Family::default(),
            parked: Family::default(),
            failed: Family::default(),
        }
    }
}

impl WorkerMetrics {
    /// Metrics at zero.
    pub fn new() -> WorkerMetrics {
        WorkerMetrics::default()
    }

    /// Registers every metric in the process's registry `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "purser_projection_batch_events",
            "Events delivered per batch a worker applied",
            self.batch_events.clone(),
        );
        r.register(
            "purser_projection_batch_duration_seconds",
            "Time to apply one batch (one database transaction), fetch excluded",
            self.batch_seconds.clone(),
        );
        r.register(
            "purser_projection_worker_events_applied",
            "Events this process's workers applied (gap filling included)",
            self.applied.clone(),
        );
        r.register(
            "purser_projection_worker_duplicates",
            "Events skipped as already applied (at-least-once redeliveries)",
            self.duplicates.clone(),
        );
        r.register(
            "purser_projection_streams_parked",
            "Streams this process's workers parked after an event kept failing",
            self.parked.clone(),
        );
        r.register(
            "purser_projection_batch_failures",
            "Batches that failed to apply and were retried",
            self.failed.clone(),
        );
    }

    /// A batch of `delivered` events applied in `latency`.
    pub fn applied(
        &self,
        projection: &str,
        delivered: usize,
        report: &BatchReport,
        latency: Duration,
    ) {
        let l = label(projection);
        self.batch_events
            .get_or_create(&l)
            .observe(delivered as f64);
        self.batch_seconds
            .get_or_create(&l)
            .observe(latency.as_secs_f64());
        self.applied.get_or_create(&l).inc_by(report.applied);
        self.duplicates.get_or_create(&l).inc_by(report.duplicates);
        self.parked
            .get_or_create(&l)
            .inc_by(report.parked.len() as u64);
        // Shown at 0 from the first batch on, so a rate() over it exists.
        let _ = self.failed.get_or_create(&l);
    }

    /// A batch failed (it is retried).
    pub fn failed(&self, projection: &str) {
        self.failed.get_or_create(&label(projection)).inc();
    }
}
