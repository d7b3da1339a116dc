//! The order-fulfilment saga orchestrator (DESIGN.md point 7).
//!
//! The policy is pure and lives in `domain::saga` ([`domain::next_action`]);
//! this crate carries it out:
//!
//! - the [`Trigger`] consumes `OrderPlaced`, `CancellationRequested` and
//!   `SagaRetried` from Kafka in its own consumer group, starts the order's
//!   saga (at most once: its stream is `saga-{order_id}`) and wakes it in the
//!   work queue `saga.due`;
//! - the [`Orchestrator`] claims due sagas with a lease and drives each one
//!   step by step: it records `StepStarted` (with a persisted deadline),
//!   sends the step's command with an idempotency key derived from the saga
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
pub use orchestrator::{retry, BeforeStep, Drive, Orchestrator, PAUSE_AFTER_ENV};
pub use queue::{Claimed, Queue};
pub use trigger::{group_id, Trigger, TriggerOutcome};

/// Runs the trigger and the orchestrator until `shutdown` is cancelled.
pub async fn run(
    store: event_store::EventStore,
    kafka: &kafka::KafkaConfig,
    config: SagaConfig,
    carrier: Arc<dyn Carrier>,
    metrics: Arc<SagaMetrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let orchestrator = Orchestrator::new(store, carrier, config, metrics);
    let trigger = Trigger::new(orchestrator.clone(), kafka)?;
    let trigger_task = tokio::spawn(trigger.run(shutdown.clone()));
    let driven = orchestrator.run(shutdown.clone()).await;
    shutdown.cancel();
    let triggered = trigger_task.await.map_err(|e| Error::Task(e.to_string()))?;
    driven.and(triggered)
}
