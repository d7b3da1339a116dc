//! Projection workers: they consume the event topics in one Kafka consumer
//! group per projection and build the read models (schema `read_models`) that
//! the Query API serves.
//!
//! Each event is applied in the database transaction that also records the
//! stream version applied (`read_models.applied`), so a redelivered or
//! replayed event changes nothing; a gap is filled from the event store, never
//! applied out of order; an event that keeps failing parks its stream
//! (`read_models.parked`) while the other streams flow on (design decision 5).
//!
//! - [`Projection`]: one read model ([`Accounts`], [`Inventory`], [`Orders`],
//!   [`Sagas`]).
//! - [`Projector`]: applies batches of events to a projection (no Kafka).
//! - [`Worker`]: a consumer group member feeding a projector, step by step
//!   ([`Worker::process_batch`]) or in a loop ([`Worker::run`]).
//! - [`rebuild`]: replays the event store into shadow tables and swaps them
//!   in while the live workers and the Query API go on (design decision 6);
//!   [`operations`]: reset, unpark, rebuild of one stream; [`requests`]:
//!   the rebuilds operators request over HTTP, run by the workers' process.
//! - [`readiness`]: which projections have a worker consuming that has
//!   applied what the store held when it joined (the Query API's
//!   `/health/ready`).
//! - [`status`]: where each projection stands (checkpoint, head, lag,
//!   parked streams, rebuild in progress), for the Query API and the CLI.
//!
//! # How to use it
//!
//! The projections are known by name; each says which stream types it
//! follows and which tables of `read_models` it writes:
//!
//! ```
//! let names: Vec<_> = projections::all().iter().map(|p| p.name()).collect();
//! assert_eq!(names, ["accounts", "inventory", "orders", "sagas"]);
//!
//! let orders = projections::by_name("orders")?;
//! assert_eq!(orders.stream_types(), ["order"]);
//! assert!(projections::by_name("nope").is_err());
//! # Ok::<(), projections::Error>(())
//! ```
//!
//! A [`Projector`] applies events to one projection, idempotently: feed it
//! what the event store holds (as the workers feed it what Kafka delivers),
//! and ask [`status`] where the read models stand.
//!
//! ```no_run
//! use event_store::{Checkpoint, EventStore};
//! use projections::Projector;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/purser").await?;
//! let store = EventStore::new(pool.clone());
//! let accounts = Projector::new(projections::by_name("accounts")?, store.clone());
//!
//! let events = store.read_all(Checkpoint::default(), 500).await?;
//! // Applied in one transaction with the stream versions it applied: a
//! // second call with the same events changes nothing.
//! accounts.apply_batch(&events).await?;
//! accounts.apply_batch(&events).await?;
//!
//! for projection in projections::status::all(&pool).await? {
//!     println!("{}: {} events behind", projection.name, projection.lag_events);
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod accounts;
mod error;
mod inventory;
pub mod metrics;
pub mod notification;
pub mod operations;
mod orders;
mod projection;
mod projector;
pub mod readiness;
pub mod rebuild;
pub mod requests;
mod sagas;
pub mod status;
mod worker;

use std::sync::Arc;

pub use accounts::Accounts;
pub use error::{ApplyError, Error, Result};
pub use inventory::Inventory;
pub use orders::Orders;
pub use projection::{Projection, Table};
pub use projector::{
    applied_version, applied_versions, BatchReport, Projector, DEFAULT_MAX_ATTEMPTS,
};
pub use sagas::{SagaStep, Sagas};
pub use worker::{group_id, AppliedBatch, Outcome, Worker, WorkerConfig, DEFAULT_BATCH_SIZE};

use event_store::EventStore;
use kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

/// The channel of `pg_notify` sent after every committed batch, with the
/// projection's name and the streams it moved as payload
/// ([`notification`]).
pub const NOTIFY_CHANNEL: &str = "purser_projection";

/// Advisory lock class of a projection's apply lock (second key: the
/// projection's name, both through `hashtext`): every live batch holds it
/// shared for its transaction, a rebuild's swap (and `reset`, and the
/// rebuild of one stream) exclusively.
pub(crate) const APPLY_LOCK: &str = "purser.projection.apply";

/// Advisory lock class of a projection's rebuild lock: held, at session
/// level, by the one process rebuilding or resetting that projection.
pub(crate) const REBUILD_LOCK: &str = "purser.projection.rebuild";

/// Every projection, in a stable order.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(Accounts),
        Arc::new(Inventory),
        Arc::new(Orders),
        Arc::new(Sagas),
    ]
}

/// The names of every projection, in the order of [`all`].
pub fn names() -> Vec<&'static str> {
    all().iter().map(|p| p.name()).collect()
}

/// The projection called `name`.
pub fn by_name(name: &str) -> Result<Arc<dyn Projection>> {
    all()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| Error::UnknownProjection(name.to_owned()))
}

/// Runs one worker per projection (every projection when `names` is empty)
/// until `shutdown` is cancelled.
pub async fn run_workers(
    names: &[String],
    store: EventStore,
    kafka: &KafkaConfig,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics = metrics::WorkerMetrics::default();
    run_workers_with(names, store, kafka, config, metrics, shutdown).await
}

/// As [`run_workers`], the workers counting in `metrics`.
pub async fn run_workers_with(
    names: &[String],
    store: EventStore,
    kafka: &KafkaConfig,
    config: WorkerConfig,
    metrics: metrics::WorkerMetrics,
    shutdown: CancellationToken,
) -> Result<()> {
    let projections = if names.is_empty() {
        all()
    } else {
        names
            .iter()
            .map(|n| by_name(n))
            .collect::<Result<Vec<_>>>()?
    };
    let mut tasks = tokio::task::JoinSet::new();
    for projection in projections {
        let worker = Worker::new(projection, store.clone(), kafka, config.clone())?
            .with_metrics(metrics.clone());
        tasks.spawn(worker.run(shutdown.clone()));
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                shutdown.cancel();
                result = Err(error);
            }
            Err(join_error) => {
                shutdown.cancel();
                tracing::error!(error = %join_error, "projection worker panicked");
            }
        }
    }
    result
}
