//! Purser's domain: the three aggregates ([`BankAccount`], [`Inventory`],
//! [`Order`]) as pure deciders, and the order-fulfilment saga
//! ([`FulfilmentSaga`]) as a decider over its own stream plus a pure planner
//! ([`next_action`]).
//!
//! Nothing here performs I/O, awaits, or reads a clock: facts a decision needs
//! from outside are carried in the command (an order's lines carry what the
//! catalog said of each SKU, [`LineToPlace`]). That is what makes the
//! property tests in `tests/` cheap and exhaustive, and what lets the same
//! rules run in the Command API, in the saga and in a replay.
//!
//! # How to use it
//!
//! Every aggregate implements [`Aggregate`]: a decision is a function call,
//! and a state is a fold of events. Values ([`Money`], [`Amount`], [`Sku`],
//! [`Currency`], the ids) can only be built valid, through `new` or `parse`;
//! serde goes through the same checks.
//!
//! ```
//! use domain::{
//!     AccountCommand, AccountEvent, AccountId, Aggregate, Amount, BankAccount, Currency,
//!     CustomerId, DomainError, DomainEvent, Money,
//! };
//! use uuid::Uuid;
//!
//! // Open an account: decide on the initial state, then fold the events.
//! let open = AccountCommand::Open {
//!     account_id: AccountId::new(Uuid::now_v7()),
//!     customer_id: CustomerId::new(Uuid::now_v7()),
//!     currency: Currency::parse("EUR")?,
//! };
//! let events = BankAccount::decide(&BankAccount::initial(), &open)?;
//! let account = BankAccount::fold(BankAccount::initial(), &events);
//!
//! // A deposit is one event, carrying the new balance.
//! let deposit = AccountCommand::Deposit { amount: Amount::new(250_000)? };
//! let events = BankAccount::decide(&account, &deposit)?;
//! assert!(matches!(events[..], [AccountEvent::MoneyDeposited { .. }]));
//! let account = BankAccount::fold(account, &events);
//! assert_eq!(account.balance, Money::new(250_000)?);
//!
//! // A refusal is a value with a stable code, and nothing to append.
//! let withdraw = AccountCommand::Withdraw { amount: Amount::new(1_000_000)? };
//! let refusal = BankAccount::decide(&account, &withdraw).unwrap_err();
//! assert_eq!(refusal.code(), "insufficient_funds");
//!
//! // An event is stored as a type name, a schema version and a JSON payload,
//! // and read back (older schema versions upcast) by `from_stored`.
//! let event = &events[0];
//! let stored = (event.event_type(), event.schema_version(), event.to_payload());
//! assert_eq!(&AccountEvent::from_stored(stored.0, stored.1, stored.2)?, event);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The saga's policy is one pure function too: [`next_action`] takes the
//! saga's folded [`SagaState`] and the [`Situation`] (the clock, whether the
//! customer asked to cancel) and answers what to do next ([`Action`]). The
//! `saga` crate carries it out; the `event-store` crate's `Repository` runs
//! any [`Aggregate`] against PostgreSQL.

#![warn(missing_docs)]
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
    ReservationEnd,
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
    /// The folded state of one stream: what `decide` needs to know, and
    /// what a snapshot stores (see [`Aggregate::STATE_SCHEMA`]).
    type State: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What a caller asks of the aggregate. Commands are never stored: only
    /// the events decided from them are.
    type Command: Debug + Send + Sync;
    /// What happened, as appended to the stream: the aggregate's persisted
    /// record.
    type Event: DomainEvent;
    /// Why a command is refused; a refusal appends nothing.
    type Error: DomainError;

    /// The state of a stream without events: the aggregate does not exist
    /// yet, and every command but the one that creates it is refused as
    /// not found.
    fn initial() -> Self::State;
    /// Decides `command` on `state`: the events to append, oldest first, or
    /// why the command is refused. Pure, so deciding again on the same state
    /// gives the same answer. `Ok` with no events means the command is
    /// accepted and changes nothing (a repeated charge, reservation or
    /// cancellation), which is what makes retrying a command harmless.
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;
    /// Applies one event to a state. It never fails and checks no rule:
    /// the event has happened, and was decided under the rules of its time.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// The schema of `State` as snapshots keep it. Bump it whenever the
    /// state's shape or meaning changes: a snapshot of another schema is
    /// ignored (the stream is folded from its first event) and rewritten.
    const STATE_SCHEMA: u32 = 1;

    /// The order whose past in this stream deciding `command` needs beyond
    /// `state`, which keeps only what is open (an item's open reservations,
    /// not every order it ever served). `None`, the default: the state is
    /// enough. The event store reads that order's events of the stream (an
    /// indexed lookup by [`DomainEvent::order_id`]) and hands them to
    /// [`Aggregate::recall`], so the cost stays that of one order, not of
    /// the stream's history.
    fn recall_key(_state: &Self::State, _command: &Self::Command) -> Option<OrderId> {
        None
    }

    /// `state` with what `past` (this stream's events of the order
    /// [`Aggregate::recall_key`] named, oldest first) says of that order:
    /// the state one decision is taken on. Never folded or snapshotted.
    fn recall(state: Self::State, _past: &[Self::Event]) -> Self::State {
        state
    }

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

    /// The order this event concerns, in a stream that is not the order's
    /// (an item's reservation, an account's charge): its payload's
    /// `order_id`, the key [`Aggregate::recall`]'s past is looked up by.
    fn order_id(&self) -> Option<OrderId> {
        None
    }
}

/// Decides `command` on `state` as the event store's repository does:
/// with the past the command needs ([`Aggregate::recall_key`]) recalled
/// from `history`, every event of the stream so far (the repository reads
/// only the recalled order's, by index). For tests and simulations that
/// keep a stream's events in memory.
pub fn decide_recalling<A: Aggregate>(
    state: &A::State,
    history: &[A::Event],
    command: &A::Command,
) -> Result<Vec<A::Event>, A::Error> {
    match A::recall_key(state, command) {
        None => A::decide(state, command),
        Some(order_id) => {
            let past: Vec<A::Event> = history
                .iter()
                .filter(|event| event.order_id() == Some(order_id))
                .cloned()
                .collect();
            A::decide(&A::recall(state.clone(), &past), command)
        }
    }
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

/// A domain refusal with a stable machine-readable code: the `code` of the
/// HTTP problem document that reports it (the book's "Errors and problem
/// codes" lists them all).
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// Stable code, e.g. `"insufficient_funds"`.
    fn code(&self) -> &'static str;
    /// Which family of refusal this is, and so which HTTP status reports
    /// it: not found, already exists, or rejected.
    fn kind(&self) -> ErrorKind;
}

/// A stored event could not be turned back into a domain event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// This event type does not exist in this event enum at that schema
    /// version: an event of another aggregate's stream, or one written by
    /// a newer Purser than this code.
    #[error("unknown event type {event_type} (schema version {schema_version})")]
    UnknownType {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
    },
    /// The type and version are known, but the payload (after upcasting)
    /// does not decode: a missing or mistyped field, or a value that fails
    /// its check (a negative balance, a malformed SKU), since values are
    /// parsed on the way in here too.
    #[error("invalid payload for {event_type}: {source}")]
    Payload {
        /// The stored type name.
        event_type: String,
        /// What `serde_json` found wrong.
        #[source]
        source: serde_json::Error,
    },
}
