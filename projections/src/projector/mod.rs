//! Applying batches of events to a projection's read model, exactly once per
//! stream version.
//!
//! A batch goes through three steps, each a module: `plan` (lock the
//! streams' applied rows, drop duplicates, fill gaps from the event store),
//! `apply` (the set-based apply, or event by event to find and park a
//! poison event) and `record` (the applied versions, the projection's
//! status, the notification). `versions` reads the applied versions for
//! operators and tests.

mod apply;
mod plan;
mod record;
mod versions;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use event_store::{EventStore, RecordedEvent, StreamId};
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::{ApplyError, Error, Projection, Result, APPLY_LOCK};

pub(crate) use record::park;
pub use versions::{applied_version, applied_versions};

/// Default number of attempts before an event's stream is parked.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events applied, including those fetched from the event store to fill
    /// a gap.
    pub applied: u64,
    /// Events skipped because their stream version was already applied.
    pub duplicates: u64,
    /// Of `applied`, how many were read from the event store (gap filling).
    pub gap_filled: u64,
    /// Events not applied because their stream is parked.
    pub waiting: u64,
    /// Streams this batch parked (their event failed `max_attempts` times).
    pub parked: Vec<String>,
    /// The set-based apply failed, so the batch was applied again event by
    /// event (each in a savepoint) to find the event at fault.
    pub one_by_one: bool,
}

/// Applies events to one projection: each batch in one database transaction
/// that also records, per stream, the version applied (`read_models.applied`)
/// and the projection's progress (`read_models.projection_status`).
///
/// - an event at or below its stream's applied version is a duplicate and is
///   skipped;
/// - an event beyond applied + 1 is never applied out of order: the missing
///   events are read from the event store (the truth) and applied first;
/// - an event that fails `max_attempts` times parks its stream
///   (`read_models.parked`): the stream's later events wait, other streams
///   flow on.
///
/// Every batch transaction first sets its `search_path` to the schema it
/// builds (`read_models`, or a rebuild's shadow schema) and, for the live
/// read models, takes the projection's apply lock in shared mode: a
/// rebuild's swap takes it exclusively, so no batch straddles the swap.
#[derive(Clone)]
pub struct Projector {
    projection: Arc<dyn Projection>,
    store: EventStore,
    max_attempts: u32,
    target: Target,
}

/// The schema a projector writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// `read_models`, served by the Query API.
    Live,
    /// A rebuild's shadow schema (with its own `applied`, `parked` and
    /// `projection_status`), private to the rebuild that holds its lock.
    Shadow(String),
}

/// How a batch transaction is run: `Fast` applies events straight into the
/// transaction; if one fails, the transaction is rolled back and the batch is
/// re-run `Careful`ly, each event in its own savepoint so that a poison event
/// can be retried and parked without losing the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Fast,
    Careful,
}

enum Attempt {
    Done(BatchReport),
    RetryCarefully,
}

impl Projector {
    /// A projector of `projection` on the live read models, reading gaps from `store`.
    pub fn new(projection: Arc<dyn Projection>, store: EventStore) -> Self {
        Projector {
            projection,
            store,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            target: Target::Live,
        }
    }

    /// A projector that writes the shadow schema `schema` of a rebuild.
    pub(crate) fn shadow(projection: Arc<dyn Projection>, store: EventStore, schema: &str) -> Self {
        Projector {
            target: Target::Shadow(schema.to_owned()),
            ..Projector::new(projection, store)
        }
    }

    /// Attempts before parking a stream (at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// The projection it applies.
    pub fn projection(&self) -> &Arc<dyn Projection> {
        &self.projection
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// The event store it fills gaps from.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Applies a batch of events (any order, any streams, duplicates allowed)
    /// and commits. Events of stream types the projection does not follow are
    /// ignored. On `Err` nothing was committed and the batch can be retried.
    ///
    /// The batch's span (`apply_batch`) carries the number of `events` and
    /// the `correlation_ids` of the requests that caused them (distinct,
    /// sorted, comma-separated): the set-based path applies them all at once,
    /// so that is where a request meets the projection's logs. Events applied
    /// one by one also get an `apply` span each.
    #[tracing::instrument(skip_all, fields(projection = self.name(), events, correlation_ids), err)]
    pub async fn apply_batch<'a>(
        &self,
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> Result<BatchReport> {
        let mut conn = self.store.pool().acquire().await?;
        self.apply_batch_in(&mut conn, events).await
    }

    /// [`Projector::apply_batch`] on `conn`: in a transaction of its own, or
    /// in savepoints when `conn` is already in a transaction (which the
    /// caller then commits, e.g. a rebuild's swap).
    pub(crate) async fn apply_batch_in<'a>(
        &self,
        conn: &mut PgConnection,
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> Result<BatchReport> {
        let streams = self.group_by_stream(events);
        record_batch(&tracing::Span::current(), &streams);
        if streams.is_empty() {
            return Ok(BatchReport::default());
        }
        let mut tx = conn.begin().await?;
        match self.try_apply(&mut tx, &streams, Mode::Fast).await? {
            Attempt::Done(report) => {
                tx.commit().await?;
                Ok(report)
            }
            Attempt::RetryCarefully => {
                tx.rollback().await?;
                let mut tx = conn.begin().await?;
                match self.try_apply(&mut tx, &streams, Mode::Careful).await? {
                    Attempt::Done(report) => {
                        tx.commit().await?;
                        Ok(BatchReport {
                            one_by_one: true,
                            ..report
                        })
                    }
                    Attempt::RetryCarefully => {
                        unreachable!("careful mode parks instead of retrying")
                    }
                }
            }
        }
    }

    /// Sets the transaction's `search_path` to the schema this projector
    /// builds and, for the live read models, takes the apply lock shared.
    pub(crate) async fn enter(&self, tx: &mut PgConnection) -> Result<()> {
        match &self.target {
            Target::Live => {
                sqlx::query(
                    "SELECT set_config('search_path', 'read_models', true), \
                            pg_advisory_xact_lock_shared(hashtext($1), hashtext($2))",
                )
                .bind(APPLY_LOCK)
                .bind(self.name())
                .execute(&mut *tx)
                .await?;
            }
            Target::Shadow(schema) => {
                sqlx::query("SELECT set_config('search_path', $1, true)")
                    .bind(quote_ident(schema))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// Un-parks a stream and applies its waiting events from the event store.
    /// Returns what was applied (the stream is parked again if its event still
    /// fails).
    #[tracing::instrument(skip_all, fields(projection = self.name(), stream_id = stream_id), err)]
    pub async fn unpark(&self, stream_id: &str) -> Result<BatchReport> {
        let stream = parse_stream_id(stream_id, self.projection.stream_types())
            .ok_or_else(|| Error::InvalidStreamId(stream_id.to_owned()))?;
        let deleted =
            sqlx::query("DELETE FROM read_models.parked WHERE projection = $1 AND stream_id = $2")
                .bind(self.name())
                .bind(stream_id)
                .execute(self.store.pool())
                .await?;
        if deleted.rows_affected() == 0 {
            return Ok(BatchReport::default());
        }
        let applied = applied_version(self.store.pool(), self.name(), stream_id).await?;
        let from_version = u64::try_from(applied).unwrap_or(0) + 1;
        let events = self.store.read_stream(&stream, from_version).await?;
        self.apply_batch(&events).await
    }

    /// Streams of the batch in stream id order (a consistent lock order across
    /// workers), each with its events in version order.
    fn group_by_stream<'a>(
        &self,
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> BTreeMap<&'a str, Vec<&'a RecordedEvent>> {
        let types = self.projection.stream_types();
        let mut streams: BTreeMap<&str, Vec<&RecordedEvent>> = BTreeMap::new();
        for event in events {
            if types.contains(&event.stream_type.as_str()) {
                streams
                    .entry(event.stream_id.as_str())
                    .or_default()
                    .push(event);
            }
        }
        for events in streams.values_mut() {
            events.sort_by_key(|e| e.version);
        }
        streams
    }

    /// One attempt at a batch in `tx`: plan, apply, record.
    async fn try_apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &BTreeMap<&str, Vec<&RecordedEvent>>,
        mode: Mode,
    ) -> Result<Attempt> {
        self.enter(tx).await?;
        let (plans, mut report) = self.plan(tx, streams).await?;
        let applied = match mode {
            Mode::Fast => match self.apply_set_based(tx, &plans, &mut report).await? {
                Some(applied) => applied,
                None => return Ok(Attempt::RetryCarefully),
            },
            Mode::Careful => self.apply_one_by_one(tx, &plans, &mut report).await?,
        };
        self.record(tx, applied, &report).await?;
        Ok(Attempt::Done(report))
    }

    /// Applies one event in its own savepoint, up to `max_attempts` times.
    /// `Ok(Err((error, attempts)))` is a failure of the event (transient, or
    /// out of attempts); `Err` a failure of the surrounding transaction.
    pub(crate) async fn apply_with_retries(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
    ) -> Result<Result<(), (ApplyError, u32)>> {
        let mut attempt = 1;
        loop {
            let mut savepoint = tx.begin().await?;
            match self.projection.apply(&mut savepoint, event).await {
                Ok(()) => {
                    savepoint.commit().await?;
                    return Ok(Ok(()));
                }
                Err(error) => {
                    savepoint.rollback().await?;
                    if error.is_transient() || attempt >= self.max_attempts {
                        return Ok(Err((error, attempt)));
                    }
                    tracing::warn!(error = %error, attempt, "event failed to apply; retrying");
                    attempt += 1;
                }
            }
        }
    }
}

fn version(event: &RecordedEvent) -> i64 {
    i64::try_from(event.version).unwrap_or(i64::MAX)
}

fn apply_error(event: &RecordedEvent, source: ApplyError) -> Error {
    Error::Apply {
        stream_id: event.stream_id.clone(),
        event_id: event.event_id,
        source,
    }
}

/// Records the batch's size and correlation ids on its span.
fn record_batch(span: &tracing::Span, streams: &BTreeMap<&str, Vec<&RecordedEvent>>) {
    if span.is_disabled() {
        return;
    }
    let events = streams.values().flatten();
    let ids: BTreeSet<&str> = events
        .clone()
        .filter_map(|e| e.metadata.correlation_id.as_deref())
        .collect();
    span.record("events", events.count());
    span.record(
        "correlation_ids",
        ids.into_iter().collect::<Vec<_>>().join(","),
    );
}

fn event_span(projection: &str, event: &RecordedEvent) -> tracing::Span {
    tracing::info_span!(
        "apply",
        projection,
        stream_id = %event.stream_id,
        version = event.version,
        event_id = %event.event_id,
        event_type = %event.event_type,
        position = event.position,
        correlation_id = event.metadata.correlation_id.as_deref().unwrap_or(""),
        causation_id = event.metadata.causation_id.as_deref().unwrap_or(""),
    )
}

/// `name` as an SQL identifier, double-quoted.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `account-0191...` -> `StreamId::new("account", "0191...")`, for a stream
/// type the projection follows.
pub(crate) fn parse_stream_id(stream_id: &str, types: &[&str]) -> Option<StreamId> {
    types.iter().find_map(|t| {
        stream_id
            .strip_prefix(t)
            .and_then(|rest| rest.strip_prefix('-'))
            .map(|id| StreamId::new(t, id))
    })
}
