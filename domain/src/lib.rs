//! Purser's domain: the three aggregates (`BankAccount`, `Inventory`, `Order`)
//! as pure deciders, and the order-fulfilment saga (`FulfilmentSaga`) as a
//! decider over its own stream plus a pure planner (`next_action`).
//!
//! Nothing here performs I/O, awaits, or reads a clock: facts a decision needs
//! from outside are carried in the command. That is what makes the property
//! tests in `tests/` cheap and exhaustive.

#![warn(unreachable_pub)]

use std::fmt::Debug;

mod account;
mod codec;
mod inventory;
mod order;
mod saga;
mod values;

pub use account::{
    AccountCommand, AccountError, AccountEvent, AccountState, AccountStatus, BankAccount, Charge,
};
pub use inventory::{
    CatalogPrice, Inventory, InventoryCommand, InventoryError, InventoryEvent, InventoryState,
};
pub use order::{
    check_skus, order_total, CancellationReason, InvalidOrder, LineToPlace, Order, OrderCommand,
    OrderError, OrderEvent, OrderState, OrderStatus, MAX_ORDER_LINES,
};
pub use saga::codes as step_errors;
pub use saga::{
    next_action, Action, FulfilmentSaga, SagaCommand, SagaError, SagaEvent, SagaOrder, SagaState,
    SagaStatus, Situation, Step, StepRecord, StepStatus,
};
pub use values::{
    validate_text, AccountId, Amount, CountryCode, Currency, CustomerId, Money, OrderId, OrderLine,
    Price, Quantity, ShippingAddress, Sku, UnitPrice, ValueError, TEXT_MAX_CHARS,
};

use serde::{de::DeserializeOwned, Serialize};

/// An aggregate as a decider: `initial`, `decide`, `evolve`.
///
/// The event store's repository is generic over this trait: it folds a
/// stream's events with `evolve` starting from `initial`, asks `decide`, and
/// appends what it returns.
pub trait Aggregate {
    /// The stream type, e.g. `"account"`. Stream ids are
    /// `"{STREAM_TYPE}-{id}"` and Kafka topics are named after it.
    const STREAM_TYPE: &'static str;
    type State: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Command: Debug + Send + Sync;
    type Event: DomainEvent;
    type Error: DomainError;

    fn initial() -> Self::State;
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// Folds events onto a state.
    fn fold<'a>(
        state: Self::State,
        events: impl IntoIterator<Item = &'a Self::Event>,
    ) -> Self::State
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(state, Self::evolve)
    }
}

/// An event as it is persisted: a type name, a schema version and a JSON
/// payload. Payloads are the only persisted contract.
pub trait DomainEvent: Clone + Debug + PartialEq + Send + Sync + 'static {
    /// Stable type name, e.g. `"MoneyDeposited"`.
    fn event_type(&self) -> &'static str;
    /// Schema version of the payload that `to_payload` writes.
    fn schema_version(&self) -> u32;
    /// The payload, without the type name.
    fn to_payload(&self) -> serde_json::Value;
    /// Rebuilds an event from what was stored, upcasting older schema
    /// versions to the current shape first.
    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, DecodeError>;
}

/// How a domain refusal maps onto the HTTP contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The aggregate does not exist (404).
    NotFound,
    /// The aggregate already exists (409).
    AlreadyExists,
    /// A well-formed command the domain refuses (422).
    Rejected,
}

/// A domain refusal with a stable machine-readable code (API.md).
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// Stable code, e.g. `"insufficient_funds"`.
    fn code(&self) -> &'static str;
    fn kind(&self) -> ErrorKind;
}

/// A stored event could not be turned back into a domain event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {event_type} (schema version {schema_version})")]
    UnknownType {
        event_type: String,
        schema_version: u32,
    },
    #[error("invalid payload for {event_type}: {source}")]
    Payload {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}
