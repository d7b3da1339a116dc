//! The order-fulfilment saga orchestrator (design decision 7).
//!
//! The policy is pure and lives in `domain::saga` ([`domain::next_action`]);
//! this crate carries it out:
//!
//! - the [`Trigger`] tails the event store itself (woken by `LISTEN`, with a
//!   polling fallback) for `OrderPlaced`, `CancellationRequested` and
//!   `SagaRetried`, and makes their sagas due in the work queue `saga.due`,
//!   recording its checkpoint in the same transaction; no broker is needed
//!   to start, advance or finish a saga (design decision 10). It wakes at
//!   once for an append in its own process, and the new sagas it leases in
//!   that transaction go straight to its own orchestrator;
//! - the [`Orchestrator`] claims due sagas with a lease (or takes those the
//!   trigger leased for it) and drives each one step by step: it starts the
//!   saga from the order's own stream (at most once: its stream is
//!   `saga-{order_id}`), and the start commits with the saga's first steps
//!   on this database. A step that is a command on
//!   this database (reserve, mark, charge, commit, refund, release, cancel)
//!   is one transaction: `StepStarted`, the command's events and the
//!   outcome commit together, at the saga's version the step was planned on
//!   (design decision 11), so a crash leaves all of it or nothing. A carrier
//!   step, which leaves the database, records `StepStarted` (with a
//!   persisted deadline), calls the carrier under an idempotency key
//!   derived from the saga id, and records the outcome; a crash in between
//!   is repaired by calling again under the same key.
//!
//! [`run`] runs both until shutdown.
//!
//! # How to use it
//!
//! `purser saga` (and `purser serve`) runs [`run`] with the carrier its
//! [`CarrierConfig`] names, behind a [`CircuitBreaker`]: an [`HttpCarrier`]
//! (such as `purser carrier`, a [`CarrierServer`]) when a URL is given,
//! otherwise the simulated carrier in the process. An embedding service
//! runs it with its own [`Carrier`], the port through which the saga ships:
//! a shipment carries a key that is the same for every attempt of one
//! saga's shipment, and a carrier that honours it ships once however often
//! the saga retries. Every failure of a carrier but a refusal is transient:
//! the step is retried with backoff, never compensated because of it.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use saga::{SagaConfig, SagaMetrics, SimulatedCarrier, SimulatedCarrierConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/purser").await?;
//! let store = event_store::EventStore::new(pool);
//! let carrier = Arc::new(SimulatedCarrier::new(&SimulatedCarrierConfig::default()));
//! let shutdown = CancellationToken::new();
//! // Until `shutdown` is cancelled: every placed order is driven to
//! // `shipped`, or compensated and cancelled.
//! saga::run(store, SagaConfig::default(), carrier, Arc::new(SagaMetrics::default()), shutdown)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! The simulated carrier answers a tracking number derived from the
//! shipment's key, and refuses every shipment to the country `XX`, which is
//! how a demo or a test reaches the `shipping_failed` compensation:
//!
//! ```
//! use domain::{CountryCode, OrderId, ShippingAddress};
//! use saga::{Carrier, CarrierError, Shipment, SimulatedCarrier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let carrier = SimulatedCarrier::default();
//! let to = |country| {
//!     ShippingAddress::new(
//!         "Ana".into(), "Calle Mayor 1".into(), None, "Madrid".into(), "28013".into(),
//!         CountryCode::parse(country)?,
//!     )
//! };
//! let shipment = |key: &str, country| -> Result<Shipment, domain::ValueError> {
//!     Ok(Shipment {
//!         key: key.to_owned(),
//!         order_id: OrderId::new(uuid::Uuid::now_v7()),
//!         address: to(country)?,
//!         lines: Vec::new(),
//!     })
//! };
//!
//! let tracking = carrier.ship(&shipment("saga-1 0 ship", "ES")?).await?;
//! assert_eq!(tracking, SimulatedCarrier::tracking_number("saga-1 0 ship"));
//! assert!(matches!(
//!     carrier.ship(&shipment("saga-2 0 ship", "XX")?).await,
//!     Err(CarrierError::Refused(_))
//! ));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![warn(unreachable_pub)]

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

mod backlog;
mod carrier;
mod config;
mod error;
mod metrics;
mod orchestrator;
mod queue;
mod trigger;

pub use backlog::Backlog;
pub use carrier::{
    BreakerConfig, BreakerState, Carrier, CarrierConfig, CarrierControls, CarrierError,
    CarrierServer, CarrierStats, Circuit, CircuitBreaker, HttpCarrier, HttpCarrierConfig, Shipment,
    SimulatedCarrier, SimulatedCarrierConfig, SimulatorState, Ticket,
};
pub use config::SagaConfig;
pub use error::{Error, Result};
pub use metrics::SagaMetrics;
pub use orchestrator::{
    retry, BeforeStep, Drive, Orchestrator, PAUSE_AFTER_ENV, PAUSE_AFTER_HAND_OVER,
    PAUSE_BEFORE_ENV, STEP_SCOPE,
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
