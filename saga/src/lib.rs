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
//!   once: its stream is `saga-{order_id}`), records `StepStarted` (with a
//!   persisted deadline), sends the step's command with an idempotency key derived from the saga
//!   id, the operator-retry generation and the step, and records the
//!   outcome. A crash anywhere in between is repaired by running the step
//!   again under the same key, which has exactly one effect.
//!
//! [`run`] runs both until shutdown.

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
pub use orchestrator::{retry, BeforeStep, Drive, Orchestrator, PAUSE_AFTER_ENV, STEP_SCOPE};
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
