//! The order-fulfilment saga, as a decider over its own event stream plus a
//! pure planner.
//!
//! The saga of an order lives in the stream `saga-{order_id}`, so there is at
//! most one per order: starting it again appends nothing. Its events record
//! what the orchestrator did, step by step (each attempt with its persisted
//! deadline, each outcome), which makes a saga's history auditable and lets
//! a restarted orchestrator carry on where a crashed one stopped.
//!
//! [`next_action`] is the whole policy: given the folded state, the clock
//! and whether the customer asked to cancel, it says what to do next. The
//! orchestrator (crate `saga`) carries the action out and records its
//! outcome through [`SagaCommand`]s.
//!
//! Forward steps, in order: reserve every line (one inventory aggregate per
//! SKU), mark the order reserved, charge the account (skipped for a zero
//! total), mark the order paid, ship through the carrier, mark the order
//! shipped, commit every reservation. Once the order is marked shipped there
//! is nothing left to compensate: the customer can no longer cancel it, and
//! committing the reservations is retried until it succeeds.
//!
//! A business refusal of a forward step, or a customer cancellation before
//! the order is marked shipped, turns the saga to compensation, which undoes
//! in reverse every step that was attempted (an attempt whose outcome is
//! unknown may have had its effect): cancel the shipment, refund the charge,
//! release the reservations (last line first), then cancel the order with
//! the reason. Every undo is a no-op where there is nothing to undo.

pub mod codes;
mod decider;
mod events;
mod policy;
mod state;
mod steps;

pub use decider::{SagaCommand, SagaError};
pub use events::SagaEvent;
pub use policy::{next_action, Action, Situation};
pub use state::{SagaState, SagaStatus, StepRecord, StepStatus};
pub use steps::{SagaOrder, Step};

/// The order-fulfilment saga. Stream id: `saga-{order_id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FulfilmentSaga;
