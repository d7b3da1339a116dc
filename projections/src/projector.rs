//! Applying batches of events to a projection's read model, exactly once per
//! stream version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use event_store::{EventStore, RecordedEvent, StreamId};
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use tracing::Instrument;

use crate::{ApplyError, Error, Projection, Result, APPLY_LOCK, NOTIFY_CHANNEL};

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

    pub fn projection(&self) -> &Arc<dyn Projection> {
        &self.projection
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

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

    async fn try_apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &BTreeMap<&str, Vec<&RecordedEvent>>,
        mode: Mode,
    ) -> Result<Attempt> {
        let name = self.name();
        self.enter(tx).await?;
        let stream_ids: Vec<&str> = streams.keys().copied().collect();

        // Lock every stream's applied row (in stream id order) and read its
        // version: a second worker of this projection handling the same
        // stream waits here instead of applying it twice.
        // A row created here starts at what a rebuild's replayed checkpoint
        // covers of the stream (migration 0007), when there is one (the
        // last column, computed once).
        let rows: Vec<(String, i64, bool, bool)> = sqlx::query_as(
            "INSERT INTO applied (projection, stream_id, version) \
             SELECT $1, s, 0 FROM unnest($2::text[]) AS s ORDER BY s \
             ON CONFLICT (projection, stream_id) DO UPDATE SET version = applied.version \
             RETURNING stream_id, version, xmax = 0, \
                coalesce((SELECT replayed_transaction_id IS NOT NULL FROM projection_status \
                          WHERE projection = $1), false)",
        )
        .bind(name)
        .bind(&stream_ids)
        .fetch_all(&mut **tx)
        .await?;
        let created: Vec<&str> = rows
            .iter()
            .filter(|(_, _, created, replayed)| *created && *replayed)
            .map(|(stream_id, _, _, _)| stream_id.as_str())
            .collect();
        let replayed = if created.is_empty() {
            Vec::new()
        } else {
            start_from_replayed(tx, name, &created).await?
        };
        let applied: BTreeMap<String, i64> = rows
            .into_iter()
            .map(|(stream_id, version, _, _)| (stream_id, version))
            .chain(replayed)
            .collect();
        let parked: Vec<String> = sqlx::query_scalar(
            "SELECT stream_id FROM parked WHERE projection = $1 AND stream_id = ANY($2)",
        )
        .bind(name)
        .bind(&stream_ids)
        .fetch_all(&mut **tx)
        .await?;

        // Plan: per stream, the events to apply, in version order.
        let mut report = BatchReport::default();
        let mut fresh_by_stream: Vec<(&str, i64, Vec<&RecordedEvent>)> = Vec::new();
        let mut fetched: BTreeMap<&str, Vec<RecordedEvent>> = BTreeMap::new();
        for (&stream_id, events) in streams {
            let from = applied.get(stream_id).copied().unwrap_or(0);
            if parked.iter().any(|p| p == stream_id) {
                report.waiting += events.iter().filter(|e| version(e) > from).count() as u64;
                continue;
            }
            // Sorted by version: drop what is applied, and copies within the batch.
            let mut fresh: Vec<&RecordedEvent> = events
                .iter()
                .copied()
                .filter(|e| version(e) > from)
                .collect();
            fresh.dedup_by_key(|e| e.version);
            report.duplicates += (events.len() - fresh.len()) as u64;
            let Some(newest) = fresh.last().map(|e| version(e)) else {
                continue;
            };
            let contiguous = fresh.iter().zip(from + 1..).all(|(e, v)| version(e) == v);
            if !contiguous {
                // The event store is the truth: on a gap, read the stream
                // from the applied version on.
                let stream = parse_stream_id(stream_id, self.projection.stream_types())
                    .ok_or_else(|| Error::InvalidStreamId(stream_id.to_owned()))?;
                let from_version = u64::try_from(from + 1).unwrap_or(1);
                let mut events = self.store.read_stream(&stream, from_version).await?;
                events.retain(|e| version(e) <= newest);
                let complete = events.iter().zip(from + 1..).all(|(e, v)| version(e) == v)
                    && events.last().map(version) == Some(newest);
                if !complete {
                    return Err(Error::Gap {
                        stream_id: stream_id.to_owned(),
                        from: from + 1,
                        to: newest,
                    });
                }
                fetched.insert(stream_id, events);
            }
            fresh_by_stream.push((stream_id, from, fresh));
        }
        let plans: Vec<(&str, i64, Vec<&RecordedEvent>)> = fresh_by_stream
            .into_iter()
            .map(|(stream_id, from, fresh)| match fetched.get(stream_id) {
                Some(events) => {
                    let todo: Vec<&RecordedEvent> = events.iter().collect();
                    report.gap_filled += todo.len() as u64 - count_in(&todo, &fresh);
                    (stream_id, from, todo)
                }
                None => (stream_id, from, fresh),
            })
            .collect();

        let mut last = (0i64, 0i64); // (transaction_id, position) of the latest event applied
        let mut changed: Vec<(String, i64)> = Vec::new();
        if mode == Mode::Fast {
            let todos: Vec<&[&RecordedEvent]> =
                plans.iter().map(|(_, _, todo)| todo.as_slice()).collect();
            for event in todos.iter().flat_map(|todo| todo.iter()) {
                tracing::debug!(
                    stream_id = %event.stream_id,
                    version = event.version,
                    event_id = %event.event_id,
                    position = event.position,
                    correlation_id = event.metadata.correlation_id.as_deref(),
                    "applying"
                );
            }
            match self.projection.apply_many(tx, &todos).await {
                Ok(()) => {
                    for (stream_id, _, todo) in &plans {
                        for event in todo {
                            last = last.max((event.transaction_id as i64, event.position));
                        }
                        if let Some(newest) = todo.last() {
                            report.applied += todo.len() as u64;
                            changed.push(((*stream_id).to_owned(), version(newest)));
                        }
                    }
                }
                Err(error) if error.is_transient() => {
                    let first = todos.iter().find_map(|todo| todo.first());
                    return Err(match first {
                        Some(event) => apply_error(event, error),
                        None => Error::Database(sqlx::Error::Protocol(error.to_string())),
                    });
                }
                // Find the event at fault, one by one.
                Err(error) => {
                    tracing::warn!(error = %error, "batch failed to apply; applying it event by event");
                    return Ok(Attempt::RetryCarefully);
                }
            }
        } else {
            for (stream_id, from, todo) in &plans {
                let mut version_now = *from;
                for (i, event) in todo.iter().enumerate() {
                    let span = event_span(name, event);
                    let outcome = self
                        .apply_with_retries(tx, event)
                        .instrument(span.clone())
                        .await?;
                    match outcome {
                        Ok(()) => {
                            version_now = version(event);
                            report.applied += 1;
                            last = last.max((event.transaction_id as i64, event.position));
                        }
                        Err((error, _)) if error.is_transient() => {
                            return Err(apply_error(event, error));
                        }
                        Err((error, attempts)) => {
                            span.in_scope(|| {
                                tracing::error!(error = %error, attempts, "poison event: parking its stream")
                            });
                            park(tx, name, event, &error, attempts).await?;
                            report.parked.push((*stream_id).to_owned());
                            report.waiting += (todo.len() - i) as u64;
                            break;
                        }
                    }
                }
                if version_now > *from {
                    changed.push(((*stream_id).to_owned(), version_now));
                }
            }
        }

        if !changed.is_empty() {
            let (ids, versions): (Vec<String>, Vec<i64>) = changed.into_iter().unzip();
            sqlx::query(
                "UPDATE applied AS a SET version = c.version \
                 FROM unnest($2::text[], $3::bigint[]) AS c (stream_id, version) \
                 WHERE a.projection = $1 AND a.stream_id = c.stream_id",
            )
            .bind(name)
            .bind(ids)
            .bind(versions)
            .execute(&mut **tx)
            .await?;
        }
        if report.applied > 0 || !report.parked.is_empty() {
            sqlx::query(
                "INSERT INTO projection_status AS s \
                    (projection, last_position, last_transaction_id, events_applied, updated_at) \
                 VALUES ($1, $2, $3, $4, now()) \
                 ON CONFLICT (projection) DO UPDATE SET \
                    last_position = greatest(s.last_position, excluded.last_position), \
                    last_transaction_id = greatest(s.last_transaction_id, excluded.last_transaction_id), \
                    events_applied = s.events_applied + excluded.events_applied, \
                    updated_at = now()",
            )
            .bind(name)
            .bind(last.1)
            .bind(last.0)
            .bind(report.applied as i64)
            .execute(&mut **tx)
            .await?;
            if self.target == Target::Live {
                // Delivered on commit: wakes the Query API's `min_version` waits.
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(NOTIFY_CHANNEL)
                    .bind(name)
                    .execute(&mut **tx)
                    .await?;
            }
        }
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

/// How many of `todo` were already in the delivered batch.
fn count_in(todo: &[&RecordedEvent], delivered: &[&RecordedEvent]) -> u64 {
    todo.iter()
        .filter(|t| delivered.iter().any(|d| d.event_id == t.event_id))
        .count() as u64
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

pub(crate) async fn park(
    tx: &mut Transaction<'_, Postgres>,
    projection: &str,
    event: &RecordedEvent,
    error: &ApplyError,
    attempts: u32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO parked \
            (projection, stream_id, version, event_id, error, attempts, parked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now()) \
         ON CONFLICT (projection, stream_id) DO UPDATE SET \
            version = excluded.version, event_id = excluded.event_id, error = excluded.error, \
            attempts = excluded.attempts, parked_at = excluded.parked_at",
    )
    .bind(projection)
    .bind(&event.stream_id)
    .bind(version(event))
    .bind(event.event_id)
    .bind(error.to_string())
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets the rows just created for `stream_ids` (at version 0) to what the
/// projection's replayed checkpoint covers of each stream, if it has one:
/// the stream's last version at or before it. Returns the rows changed.
async fn start_from_replayed(
    tx: &mut PgConnection,
    projection: &str,
    stream_ids: &[&str],
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "UPDATE applied AS a SET version = r.version, base = r.version \
         FROM (SELECT e.stream_id, max(e.version) AS version \
               FROM projection_status AS s JOIN event_store.events AS e \
                 ON e.stream_id = ANY($2) \
                AND (e.transaction_id, e.position) \
                    <= (s.replayed_transaction_id, s.replayed_position) \
               WHERE s.projection = $1 AND s.replayed_transaction_id IS NOT NULL \
               GROUP BY e.stream_id) AS r \
         WHERE a.projection = $1 AND a.stream_id = r.stream_id \
         RETURNING a.stream_id, a.version",
    )
    .bind(projection)
    .bind(stream_ids)
    .fetch_all(&mut *tx)
    .await?)
}

/// The stream version `projection` has applied for `stream_id`: its row in
/// `read_models.applied`, or else what the projection's replayed checkpoint
/// covers of the stream (0 if neither).
pub async fn applied_version(
    executor: impl sqlx::PgExecutor<'_>,
    projection: &str,
    stream_id: &str,
) -> Result<i64> {
    let version: Option<i64> = sqlx::query_scalar(
        "SELECT coalesce( \
            (SELECT version FROM read_models.applied WHERE projection = $1 AND stream_id = $2), \
            (SELECT max(e.version) FROM read_models.projection_status AS s \
             JOIN event_store.events AS e ON e.stream_id = $2 \
              AND (e.transaction_id, e.position) <= (s.replayed_transaction_id, s.replayed_position) \
             WHERE s.projection = $1))",
    )
    .bind(projection)
    .bind(stream_id)
    .fetch_one(executor)
    .await?;
    Ok(version.unwrap_or(0))
}

/// Every stream `projection` has applied something of, with its version, as
/// [`applied_version`] reads it: the rows of `read_models.applied` and the
/// streams the replayed checkpoint covers (`stream_types`: the projection's).
/// Streams at version 0 (nothing applied) are left out. For operators and
/// tests; it reads the whole log of those types.
pub async fn applied_versions(
    executor: impl sqlx::PgExecutor<'_>,
    projection: &str,
    stream_types: &[&str],
) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_id, version FROM read_models.applied WHERE projection = $1 AND version > 0 \
         UNION ALL \
         SELECT e.stream_id, max(e.version) \
         FROM read_models.projection_status AS s JOIN event_store.events AS e \
           ON e.stream_type = ANY($2) \
          AND (e.transaction_id, e.position) <= (s.replayed_transaction_id, s.replayed_position) \
         WHERE s.projection = $1 \
           AND NOT EXISTS (SELECT 1 FROM read_models.applied AS a \
                           WHERE a.projection = $1 AND a.stream_id = e.stream_id) \
         GROUP BY e.stream_id",
    )
    .bind(projection)
    .bind(stream_types)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().collect())
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
