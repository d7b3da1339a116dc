//! Purser's PostgreSQL event store.
//!
//! - [`EventStore::append`]: atomic, contiguous per-stream versions,
//!   optimistic concurrency ([`ExpectedVersion`], [`Error::Conflict`]) with
//!   `UNIQUE (stream_id, version)` underneath; one SQL statement.
//! - [`EventStore::read_stream`], and [`EventStore::read_all`] in the global
//!   `(transaction_id, position)` order that never skips an event committed
//!   late by a concurrent transaction (DESIGN.md point 3).
//! - [`Repository`]: load (optionally from a snapshot), decide, append;
//!   re-decide on conflict (the one place that retries); answers with a
//!   domain outcome ([`Executed`]: done, refused, replayed) and keeps the
//!   caller's own idempotency record, any serialisable type, in the same
//!   transaction as the events. It knows nothing of HTTP.
//! - [`EventStore::purge_idempotency`]: idempotency records are kept for a
//!   time to live, then deleted in batches.
//! - [`Subscription`]: a tail of `read_all` woken by `LISTEN/NOTIFY` with
//!   polling as fallback, and persisted [`Checkpoint`]s.
//!
//! The tables are in the `event_store` schema (crate `migrations`).

#![warn(unreachable_pub)]

mod error;
mod idempotency;
mod notify;
mod repository;
mod retention;
mod store;
mod subscription;
mod types;

pub use error::{Error, Result};
pub use idempotency::IdempotencyKey;
pub use notify::CHANNEL as NOTIFY_CHANNEL;
pub use repository::{ExecuteError, ExecuteOptions, Executed, Loaded, Outcome, Repository};
pub use store::{Appends, EventStore};
pub use subscription::Subscription;
pub use types::{
    Appended, Checkpoint, ExpectedVersion, Metadata, NewEvent, RawRecordedEvent, RecordedEvent,
    StreamId,
};
