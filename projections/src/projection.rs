//! The `Projection` trait and helpers shared by its implementations.

use async_trait::async_trait;
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};

use crate::ApplyError;

/// A read model built from the events of some stream types.
///
/// `apply` is called inside the worker's database transaction, in stream
/// version order, once per event: the worker has already checked that the
/// event is the next one of its stream (duplicates are skipped, gaps filled
/// from the event store) and records the applied version in the same
/// transaction. An implementation only writes its own rows.
///
/// An implementation names its tables *unqualified* (`accounts`, never
/// `read_models.accounts`) and lists them in [`Projection::tables`]: the
/// caller sets the transaction's `search_path` to the schema being built,
/// `read_models` for the live workers, a shadow schema while
/// `purser projections rebuild` replays the event store (DESIGN.md point 6).
/// A rebuild refuses a projection that writes to `read_models` by name.
///
/// A new projection plugs in by implementing this trait, adding its tables
/// to a migration, and being listed in [`crate::all`].
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the consumer group is `{prefix}.projection.{name}`, and
    /// `read_models.applied` / `projection_status` rows are keyed by it.
    fn name(&self) -> &'static str;

    /// The stream types (Kafka topics) it follows.
    fn stream_types(&self) -> &'static [&'static str];

    /// The tables it writes, all in schema `read_models`, a table before any
    /// whose foreign keys point to it. A rebuild copies their definitions
    /// into a shadow schema and swaps them in; `rebuild --stream` deletes a
    /// stream's rows by their [`Table::stream_key`].
    fn tables(&self) -> &'static [Table];

    /// Applies one event to the read model.
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError>;

    /// Applies the events of several streams: each slice holds consecutive
    /// versions of one stream, in order, and no stream appears twice.
    ///
    /// The default calls [`Projection::apply`] on each event in turn. An
    /// implementation may override it to write a whole batch in a few
    /// set-based statements; it must leave the same rows as `apply` would.
    /// If it fails, the worker rolls the batch back and applies it again
    /// event by event, to find (and park) the event at fault.
    async fn apply_many(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &[&[&RecordedEvent]],
    ) -> Result<(), ApplyError> {
        for event in streams.iter().flat_map(|events| events.iter()) {
            self.apply(tx, event).await?;
        }
        Ok(())
    }
}

/// A read-model table of a projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    /// Its name in schema `read_models`, unqualified.
    pub name: &'static str,
    /// The column holding the id of the stream each row derives from (the
    /// stream id without its type prefix: `account_id` for `account-...`).
    pub stream_key: &'static str,
}

/// The aggregate id part of a stream id (`account-0191...` -> `0191...`).
pub(crate) fn stream_key(event: &RecordedEvent) -> Result<&str, ApplyError> {
    event
        .stream_id
        .strip_prefix(event.stream_type.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .ok_or_else(|| {
            ApplyError::Invalid(format!(
                "stream id {} does not start with its type {}",
                event.stream_id, event.stream_type
            ))
        })
}

/// The stream key parsed as a UUID.
pub(crate) fn stream_uuid(event: &RecordedEvent) -> Result<uuid::Uuid, ApplyError> {
    let key = stream_key(event)?;
    uuid::Uuid::parse_str(key)
        .map_err(|e| ApplyError::Invalid(format!("stream id {} has no uuid: {e}", event.stream_id)))
}

/// Stream versions are `u64` in the event store and `bigint` in Postgres.
pub(crate) fn version_i64(event: &RecordedEvent) -> Result<i64, ApplyError> {
    i64::try_from(event.version)
        .map_err(|_| ApplyError::Invalid(format!("version {} out of range", event.version)))
}

/// Fails unless exactly one row was written: the event refers to a row this
/// read model should already hold.
pub(crate) fn expect_one_row(
    result: sqlx::postgres::PgQueryResult,
    event: &RecordedEvent,
    what: &str,
) -> Result<(), ApplyError> {
    match result.rows_affected() {
        1 => Ok(()),
        n => Err(ApplyError::Invalid(format!(
            "{} {} of {}: expected one {what} row, wrote {n}",
            event.event_type, event.version, event.stream_id
        ))),
    }
}

/// Fails unless a set-based statement wrote one row per item.
pub(crate) fn expect_rows(written: u64, expected: usize, what: &str) -> Result<(), ApplyError> {
    if written == expected as u64 {
        Ok(())
    } else {
        Err(ApplyError::Invalid(format!(
            "expected {expected} {what} rows, wrote {written}"
        )))
    }
}
