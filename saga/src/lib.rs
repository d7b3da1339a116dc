//! The order-fulfilment saga orchestrator (DESIGN.md point 7).
//!
//! The policy is pure and lives in `domain::saga` ([`domain::next_action`]);
//! this crate carries it out:
//!
//! - the [`Trigger`] tails the event store itself (woken by `LISTEN`, with a
//!   polling fallback) for `OrderPlaced`, `CancellationRequested` and
//!   `SagaRetried`, and makes their sagas due in the work queue `saga.due`,
//!   recording its checkpoint in the same transaction; no broker is needed
//!   to start, advance or finish a saga (DESIGN.md point 10);
//! - the [`Orchestrator`] claims due sagas with a lease and drives each one
//!   step by step: it starts the saga from the order's own stream (at most
//!   once: its stream is `saga-{order_id}`). A step that is a command on
//!   this database (reserve, mark, charge, commit, refund, release, cancel)
//!   is one transaction: `StepStarted`, the command's events and the
//!   outcome commit together, at the saga's version the step was planned on
//!   (DESIGN.md point 11), so a crash leaves all of it or nothing. A carrier
//!   step, which leaves the database, records `StepStarted` (with a
//!   persisted deadline), calls the carrier under an idempotency key
//!   derived from the saga id, and records the outcome; a crash in between
//!   is repaired by calling again under the same key.
//!
//! [`run`] runs both until shutdown.

#![warn(unreachable_pub)]

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

mod carrier;
mod config;
mod error;
mod metrics;
mod orchestrator;
mod queue;
mod trigger;

pub use carrier::{
    Carrier, CarrierControls, CarrierError, Shipment, SimulatedCarrier, SimulatedCarrierConfig,
};
pub use config::SagaConfig;
pub use error::{Error, Result};
pub use metrics::SagaMetrics;
pub use orchestrator::{
    retry, BeforeStep, Drive, Orchestrator, PAUSE_AFTER_ENV, PAUSE_BEFORE_ENV, STEP_SCOPE,
};
pub use queue::{Claimed, Queue};
pub use trigger::{Trigger, TriggerOutcome, PAUSE_IN_TRIGGER};

/// Runs the trigger and the orchestrator until `shutdown` is cancelled.
pub async fn run(
    store: event_store::EventStore,
    config: SagaConfig,
    carrier: Arc<dyn Carrier>,
    metrics: Arc<SagaMetrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let orchestrator = Orchestrator::new(store, carrier, config, metrics);
    let trigger = Trigger::new(orchestrator.clone());
    let trigger_task = tokio::spawn(trigger.run(shutdown.clone()));
    let driven = orchestrator.run(shutdown.clone()).await;
    shutdown.cancel();
    let triggered = trigger_task.await.map_err(|e| Error::Task(e.to_string()))?;
    driven.and(triggered)
}
