//! Purser's PostgreSQL event store.
//!
//! - [`EventStore::append`]: atomic, contiguous per-stream versions,
//!   optimistic concurrency ([`ExpectedVersion`], [`Error::Conflict`]) with
//!   `UNIQUE (stream_id, version)` underneath; one SQL statement.
//! - [`Appends`]: appends to several streams that commit together, one
//!   statement each or all of them in one ([`Appends::append_to_streams`]:
//!   every stream's version checked under one snapshot, all or nothing).
//! - [`EventStore::read_stream`], and [`EventStore::read_all`] in the global
//!   `(transaction_id, position)` order that never skips an event committed
//!   late by a concurrent transaction (design decision 3).
//! - [`Repository`]: load (optionally from a snapshot, read with the events
//!   after it in one round trip), decide, append;
//!   re-decide on conflict (the one place that retries); answers with a
//!   domain outcome ([`Executed`]: done, refused, replayed) and keeps the
//!   caller's own idempotency record, any serialisable type, in the same
//!   transaction as the events. It knows nothing of HTTP.
//! - [`AggregateCache`]: a [`Repository`] whose commands to one stream are
//!   serialised within the process ([`StreamLocks`], striped), each deciding
//!   on the state the previous one left (a bounded LRU cache, counted in
//!   [`CacheMetrics`]): writers in one process queue instead of colliding on
//!   the version, and a hot aggregate's stream is not read again; the
//!   append's expected version proves the remembered state current.
//! - Group commit ([`EventStore::with_group_commit`]): appends at an exact
//!   expected version that arrive together are written by one statement and
//!   one commit, each with its own version check and idempotency record; a
//!   command's conflict never fails its neighbours.
//! - [`EventStore::purge_idempotency`]: idempotency records are kept for a
//!   time to live, then deleted in batches.
//! - [`Subscription`]: a tail of `read_all` woken by `LISTEN/NOTIFY` with
//!   polling as fallback, and persisted [`Checkpoint`]s.
//!
//! The tables are in the `event_store` schema (crate `migrations`).
//!
//! # How to use it
//!
//! Give the store a pool on a migrated database, and run commands of any
//! [`domain::Aggregate`] through a [`Repository`]: it loads the stream,
//! asks the decider, appends what it decided with the version it read as
//! the expected one, and decides again on a conflict.
//!
//! ```no_run
//! use domain::{AccountCommand, AccountId, Amount, BankAccount, Currency, CustomerId};
//! use event_store::{EventStore, ExecuteOptions, Executed, IdempotencyKey, Repository};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/purser").await?;
//! let accounts = Repository::<BankAccount>::new(EventStore::new(pool));
//!
//! let id = AccountId::new(uuid::Uuid::now_v7());
//! let open = AccountCommand::Open {
//!     account_id: id,
//!     customer_id: CustomerId::new(uuid::Uuid::now_v7()),
//!     currency: Currency::parse("EUR")?,
//! };
//! // Without an idempotency key there is no record to keep: `|_| ()`.
//! match accounts.execute(&id.to_string(), &open, ExecuteOptions::default(), |_| ()).await? {
//!     Executed::Done(outcome) => println!("account at version {}", outcome.version),
//!     Executed::Refused(refusal) => println!("refused: {refusal}"),
//!     Executed::Replayed(()) => unreachable!("no key, no replay"),
//! }
//!
//! // Under a key, the caller's record of what happened (here the version, or
//! // the refusal's code) is stored in the same transaction as the events,
//! // and a repeat with the same key gets it back instead of executing again.
//! let options = ExecuteOptions {
//!     idempotency: Some(IdempotencyKey::new("customer-1", "deposit-1", "fingerprint")),
//!     ..ExecuteOptions::default()
//! };
//! let deposit = AccountCommand::Deposit { amount: Amount::new(10_000)? };
//! let executed = accounts
//!     .execute(&id.to_string(), &deposit, options, |decided| match decided {
//!         Ok(outcome) => Ok(outcome.version),
//!         Err(refusal) => Err(domain::DomainError::code(refusal).to_owned()),
//!     })
//!     .await?;
//! if let Executed::Replayed(record) = executed {
//!     println!("answered before: {record:?}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Readers that must see every event once, in order, tail the store with
//! [`EventStore::read_all`] or a [`Subscription`] from a saved
//! [`Checkpoint`]; neither ever skips an event that a slower transaction
//! commits late.

#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod cache;
mod error;
mod group;
mod idempotency;
mod locks;
mod notify;
mod repository;
mod retention;
mod rows;
mod several;
mod store;
mod subscription;
pub mod trace;
mod types;

pub use cache::{AggregateCache, CacheMetrics, DEFAULT_CACHE_SIZE};
pub use error::{Error, Result};
pub use group::{GroupCommitConfig, GroupCommitMetrics};
pub use idempotency::IdempotencyKey;
pub use locks::{StreamLocks, StreamTurn};
pub use notify::{LocalAppends, CHANNEL as NOTIFY_CHANNEL};
pub use repository::{ExecuteError, ExecuteOptions, Executed, Loaded, Outcome, Repository};
pub use several::{StreamAppend, StreamsRejected};
pub use store::{Appends, EventStore};
pub use subscription::Subscription;
pub use types::{
    Appended, Checkpoint, ExpectedVersion, Metadata, NewEvent, RawRecordedEvent, RecordedEvent,
    StreamId,
};
