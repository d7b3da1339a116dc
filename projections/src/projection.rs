//! The `Projection` trait and helpers shared by its implementations.

use async_trait::async_trait;
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};

use crate::ApplyError;

/// A read model built from the events of some stream types.
///
/// `apply_many` is called inside the worker's database transaction with
/// each stream's next events, in version order: the worker has already
/// checked that they follow the version applied (duplicates are skipped,
/// gaps filled from the event store) and records the applied versions in
/// the same transaction. An implementation only writes its own rows.
///
/// An implementation names its tables *unqualified* (`accounts`, never
/// `read_models.accounts`) and lists them in [`Projection::tables`]: the
/// caller sets the transaction's `search_path` to the schema being built,
/// `read_models` for the live workers, a shadow schema while
/// `purser projections rebuild` replays the event store (design decision 6).
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

    /// Applies the events of several streams: each slice holds consecutive
    /// versions of one stream, in order, and no stream appears twice. The
    /// read model's one implementation, best written set-based (a few
    /// statements for the whole batch, each row written once).
    ///
    /// If it fails, the worker rolls the batch back and applies it again
    /// event by event ([`Projection::apply`]), to find (and park) the event
    /// at fault.
    async fn apply_many(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &[&[&RecordedEvent]],
    ) -> Result<(), ApplyError>;

    /// Applies one event: [`Projection::apply_many`] of a batch of one, so
    /// both leave the same rows.
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.apply_many(tx, &[&[event]]).await
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

/// Fails unless a set-based statement wrote one row per item (`what`: the
/// kind of row). Of a batch of one event, the error names the event (the
/// one-by-one apply parks a stream with it).
pub(crate) fn expect_rows(
    written: u64,
    expected: usize,
    what: &str,
    streams: &[&[&RecordedEvent]],
) -> Result<(), ApplyError> {
    if written == expected as u64 {
        return Ok(());
    }
    let mut events = streams.iter().flat_map(|events| events.iter());
    Err(ApplyError::Invalid(match (events.next(), events.next()) {
        (Some(event), None) => format!(
            "{} {} of {}: expected one {what} row, wrote {written}",
            event.event_type, event.version, event.stream_id
        ),
        _ => format!("expected {expected} {what} rows, wrote {written}"),
    }))
}
