use std::sync::Arc;

use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgExecutor, PgPool, Row};
use uuid::Uuid;

use crate::group::{GroupCommit, Grouped, Pending};
use crate::notify::{LocalAppends, Notifier};
use crate::{
    idempotency, Appended, Checkpoint, Error, ExpectedVersion, GroupCommitConfig,
    GroupCommitMetrics, IdempotencyKey, Metadata, NewEvent, RawRecordedEvent, RecordedEvent,
    Result, StreamId, Subscription,
};

/// Columns of `event_store.events` in the order `decode_event!` reads them.
/// `xid8` has no direct binary mapping in sqlx; it travels as text.
pub(crate) const EVENT_COLUMNS: &str = "position, transaction_id::text::bigint AS transaction_id, \
     stream_type, stream_id, version, event_id, event_type, schema_version, payload, \
     metadata, recorded_at";

// Appends are one statement each, so an append without idempotency record
// needs no explicit transaction: all events with contiguous versions, or
// none. With an expected version n, the statement inserts versions n+1.. if
// version n exists (or n = 0); `UNIQUE (stream_id, version)` refuses them if
// the stream is already past n, waiting for an in-flight writer of the same
// version to finish first. There is no max() to compute, and an append to a
// new stream is a plain insert.
//
// Ordering: the existence check reads under the statement's snapshot, and
// the transaction id is assigned at the first insert, after that snapshot.
// So the writer of version n committed before the writer of n+1 got its
// id: version n+1 always has the larger transaction id, which keeps
// per-stream order inside the global `(transaction_id, position)` order of
// `read_all`. In a transaction, the append must therefore be the first
// write.

/// One event at an expected version ($4).
const APPEND_ONE: &str = "\
INSERT INTO event_store.events
    (event_id, stream_type, stream_id, version, event_type, schema_version, payload, metadata)
SELECT $1, $2, $3, $4::bigint + 1, $5, $6, $7, $8
WHERE $4::bigint = 0
   OR EXISTS (SELECT FROM event_store.events WHERE stream_id = $3 AND version = $4::bigint)
RETURNING position";

/// Several events at an expected version ($8); one row: the last position,
/// NULL when the expectation failed.
const APPEND_MANY: &str = "\
WITH inserted AS (
    INSERT INTO event_store.events
        (event_id, stream_type, stream_id, version, event_type, schema_version, payload, metadata)
    SELECT e.event_id, $2, $1, $8::bigint + e.n, e.event_type, e.schema_version, e.payload, $3
    FROM unnest($4::uuid[], $5::text[], $6::int4[], $7::jsonb[])
             WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, n)
    WHERE $8::bigint = 0
       OR EXISTS (SELECT FROM event_store.events WHERE stream_id = $1 AND version = $8::bigint)
    RETURNING position
)
SELECT max(position) FROM inserted";

/// Events after the stream's current last one (`ExpectedVersion::Any`); one
/// row: the last position and version.
const APPEND_ANY: &str = "\
WITH current AS (
    SELECT coalesce(max(version), 0) AS version
    FROM event_store.events WHERE stream_id = $1
), inserted AS (
    INSERT INTO event_store.events
        (event_id, stream_type, stream_id, version, event_type, schema_version, payload, metadata)
    SELECT e.event_id, $2, $1, current.version + e.n, e.event_type, e.schema_version, e.payload, $3
    FROM current,
         unnest($4::uuid[], $5::text[], $6::int4[], $7::jsonb[])
             WITH ORDINALITY AS e(event_id, event_type, schema_version, payload, n)
    RETURNING position, version
)
SELECT max(position), max(version) FROM inserted";

/// How often an append with [`ExpectedVersion::Any`] tries before giving up
/// with a conflict. Each lost race means another append to the same stream
/// succeeded, so this only bounds starvation under extreme contention.
const ANY_ATTEMPTS: u32 = 100;

const EVENTS_STREAM_VERSION_KEY: &str = "events_stream_version_key";
const EVENTS_EVENT_ID_KEY: &str = "events_event_id_key";

/// The PostgreSQL event store. Cheap to clone (a pool and a notifier).
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    notifier: Arc<Notifier>,
    /// Group commit, when enabled.
    group: Option<Arc<GroupCommit>>,
}

impl EventStore {
    /// The store on `pool`, a pool on a database with the migrations applied.
    pub fn new(pool: PgPool) -> Self {
        EventStore {
            notifier: Arc::new(Notifier::new(&pool)),
            pool,
            group: None,
        }
    }

    /// The store with group commit (the `group` module): appends at an
    /// exact expected version that arrive together, from any clone, are
    /// written by one statement and one commit, each with its own version
    /// check (and idempotency record, from [`crate::Repository`]); a
    /// conflict answers only its own command. `config.max_size` of 1 or
    /// less disables it. Counted in `metrics`.
    pub fn with_group_commit(
        mut self,
        config: GroupCommitConfig,
        metrics: &GroupCommitMetrics,
    ) -> EventStore {
        self.group =
            (config.max_size > 1).then(|| Arc::new(GroupCommit::new(config, metrics.clone())));
        self
    }

    /// Whether appends are grouped.
    pub(crate) fn groups(&self) -> bool {
        self.group.is_some()
    }

    /// Appends `events` at exactly version `expected` in the next group,
    /// with `record` (and the events at the `positions` reserved for them)
    /// when given. `None` without group commit.
    pub(crate) async fn append_in_group(
        &self,
        stream: &StreamId,
        expected: u64,
        events: &[NewEvent],
        metadata: &Metadata,
        positions: Option<Vec<i64>>,
        record: Option<(IdempotencyKey, serde_json::Value)>,
    ) -> Result<Option<Grouped>> {
        let Some(group) = &self.group else {
            return Ok(None);
        };
        if events.is_empty() {
            return Err(Error::NoEvents);
        }
        let metadata = serde_json::to_value(metadata).map_err(|source| Error::Json {
            what: "metadata",
            source,
        })?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        group.submit(
            &self.pool,
            &self.notifier,
            Pending {
                stream: stream.clone(),
                expected,
                events: events.to_vec(),
                metadata,
                positions,
                record,
                reply,
            },
        );
        // A writer gone without answering: nothing was written for it.
        Ok(Some(answer.await.unwrap_or(Grouped::Alone)))
    }

    /// Its pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends `events` to `stream` atomically, with contiguous versions,
    /// if the stream is at the `expected` version; otherwise writes nothing
    /// and returns [`Error::Conflict`] with the actual version.
    ///
    /// Its span is DEBUG: a detail of its caller's (the decide-and-append
    /// of a command, a saga step), which is what traces export.
    #[tracing::instrument(level = "debug", skip_all, fields(stream = %stream, expected = %expected, events = events.len()), err)]
    pub async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        metadata: &Metadata,
    ) -> Result<Appended> {
        // Nothing else being written: alone at once, without the queue.
        let alone = self.group.as_ref().and_then(|group| group.try_alone());
        if let (ExpectedVersion::Exact(n), None) = (expected, &alone) {
            match self
                .append_in_group(stream, n, events, metadata, None, None)
                .await?
            {
                Some(Grouped::Appended(appended)) => return Ok(appended),
                Some(Grouped::Conflict) => {
                    return Err(Rejection::Conflict
                        .into_error(&self.pool, stream, expected, events)
                        .await)
                }
                // Not grouped, or its group failed as a whole: alone.
                Some(Grouped::Alone) | None => {}
            }
        }
        let mut attempt = 1;
        let appended = loop {
            match append_on(&self.pool, stream, expected, events, metadata).await? {
                Ok(appended) => break appended,
                // `Any` lost a race for the next version: there is no
                // expectation to fail, so try again after the new last event.
                Err(Rejection::Conflict)
                    if expected == ExpectedVersion::Any && attempt < ANY_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(rejection) => {
                    return Err(rejection
                        .into_error(&self.pool, stream, expected, events)
                        .await)
                }
            }
        };
        self.notify_appended();
        Ok(appended)
    }

    /// Starts appends to several streams that commit together
    /// ([`Appends`]).
    pub async fn begin(&self) -> Result<Appends> {
        Ok(Appends {
            tx: Some(self.pool.begin().await?),
            store: self.clone(),
            wrote: false,
        })
    }

    /// Events of `stream` with version >= `from_version`, in version order
    /// (versions start at 1).
    #[tracing::instrument(skip_all, fields(stream = %stream, from_version), err)]
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
    ) -> Result<Vec<RecordedEvent>> {
        let from = i64::try_from(from_version).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM event_store.events \
             WHERE stream_id = $1 AND version >= $2 ORDER BY events.version"
        ))
        .bind(stream.as_str())
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_row).collect()
    }

    /// The events of `stream` about order `order_id` (their payload's
    /// `order_id`), in stream order: an index lookup (`events_by_order_idx`,
    /// migration 14), as cheap on a stream of a million events as on a new
    /// one. Only inventory and account streams are indexed so; any other
    /// stream answers with no event.
    #[tracing::instrument(skip_all, fields(stream = %stream, order_id = order_id), err)]
    pub async fn read_stream_of_order(
        &self,
        stream: &StreamId,
        order_id: &str,
    ) -> Result<Vec<RecordedEvent>> {
        // The index's predicate and expression, word for word.
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM event_store.events \
             WHERE stream_id = $1 AND (payload ->> 'order_id') = $2 \
               AND stream_type IN ('inventory', 'account') \
             ORDER BY events.version"
        ))
        .bind(stream.as_str())
        .bind(order_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Up to `limit` events after `after`, in `(transaction_id, position)`
    /// order, taking only events whose writing transaction is older than
    /// every transaction still in flight.
    ///
    /// Why this never skips an event (design decision 3): every transaction
    /// with an id below the snapshot's xmin has finished, so no event can
    /// appear later with a `(transaction_id, position)` below one returned
    /// here; a transaction still open, or one that commits later, has an id
    /// at or above xmin and sorts after everything returned. Ordering by
    /// position alone would not do: an older transaction can hold a higher
    /// position and commit first. Per-stream order is preserved because an
    /// append's transaction id is assigned after it read the stream's
    /// version, so version n+1 always has a larger transaction id than n.
    ///
    /// The ORDER BY names the table's columns: a bare `transaction_id` would
    /// mean the `::text::bigint` output column, which no index serves (a
    /// sort of the whole log on every read).
    #[tracing::instrument(skip_all, fields(transaction_id = after.transaction_id, position = after.position, limit), err)]
    pub async fn read_all(&self, after: Checkpoint, limit: i64) -> Result<Vec<RecordedEvent>> {
        self.read_all_as(after, limit, decode_row).await
    }

    /// [`EventStore::read_all`] with each payload left as its stored JSON
    /// text: the same events in the same order, without parsing the
    /// payloads (the relay forwards them as they are).
    #[tracing::instrument(skip_all, fields(transaction_id = after.transaction_id, position = after.position, limit), err)]
    pub async fn read_all_raw(
        &self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<RawRecordedEvent>> {
        self.read_all_as(after, limit, decode_raw_row).await
    }

    /// The events of [`EventStore::read_all`], each row decoded by `decode`
    /// as it arrives (no page of rows is held).
    async fn read_all_as<E>(
        &self,
        after: Checkpoint,
        limit: i64,
        decode: fn(&PgRow) -> Result<E>,
    ) -> Result<Vec<E>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM event_store.events \
             WHERE (transaction_id, position) > ($1::text::xid8, $2) \
               AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY events.transaction_id, events.position \
             LIMIT $3"
        );
        let mut rows = sqlx::query(&sql)
            .bind(after.transaction_id.to_string())
            .bind(after.position)
            .bind(limit.max(0))
            .fetch(&self.pool);
        let mut events = Vec::new();
        while let Some(row) = rows.try_next().await? {
            events.push(decode(&row)?);
        }
        Ok(events)
    }

    /// [`EventStore::read_all`] restricted to events of `stream_types`: up to
    /// `limit` of them after `after`, in the same gap-safe global order. For
    /// one stream type the index on `(stream_type, transaction_id,
    /// position)` serves it, skipping the other types' events; for several,
    /// the filter runs on the scan of the global order. A projection rebuild
    /// reads with it.
    #[tracing::instrument(skip_all, fields(transaction_id = after.transaction_id, position = after.position, limit), err)]
    pub async fn read_all_of_types(
        &self,
        after: Checkpoint,
        stream_types: &[&str],
        limit: i64,
    ) -> Result<Vec<RecordedEvent>> {
        let (after_filter, order) = match stream_types {
            // Equality, then the row comparison on the next index columns:
            // the index scan starts at the checkpoint (a row comparison
            // over all three columns would start at the type's first entry,
            // a whole-type scan per batch).
            [_] => (
                "stream_type = $3[1] AND (transaction_id, position) > ($1::text::xid8, $2)",
                "events.stream_type, events.transaction_id, events.position",
            ),
            _ => (
                "stream_type = ANY($3) AND (transaction_id, position) > ($1::text::xid8, $2)",
                "events.transaction_id, events.position",
            ),
        };
        // The horizon as an InitPlan: computed once, whatever the plan.
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM event_store.events \
             WHERE {after_filter} \
               AND transaction_id < (SELECT pg_snapshot_xmin(pg_current_snapshot())) \
             ORDER BY {order} \
             LIMIT $4"
        ))
        .bind(after.transaction_id.to_string())
        .bind(after.position)
        .bind(stream_types)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Whether any committed event sorts after `after`, visible to
    /// [`EventStore::read_all`] or not yet (behind an older transaction
    /// still in flight).
    pub(crate) async fn has_events_after(&self, after: Checkpoint) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM event_store.events \
             WHERE (transaction_id, position) > ($1::text::xid8, $2))",
        )
        // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
        .persistent(false)
        .bind(after.transaction_id.to_string())
        .bind(after.position)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Largest position written so far (0 if empty). Events below it may
    /// still be invisible to [`EventStore::read_all`] (in-flight).
    #[tracing::instrument(skip_all, err)]
    pub async fn head_position(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM event_store.events")
                // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
                .persistent(false)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The idempotency record stored under `key` (see
    /// [`crate::Repository::execute`]): `Ok(None)` for an unknown key,
    /// [`Error::IdempotencyKeyReused`] when the fingerprint differs,
    /// [`Error::Json`] when the record is not an `R`.
    #[tracing::instrument(skip_all, err)]
    pub async fn find_record<R: DeserializeOwned>(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<R>> {
        idempotency::find(&self.pool, key).await
    }

    /// Stores `record` under `key` on its own, for a command that appends
    /// no events (a refusal, a no-op, an operator's command on a read
    /// model). `Ok(None)` when stored; `Ok(Some(first))` when the key was
    /// taken meanwhile by a request with the same fingerprint (its record,
    /// the one to answer with); [`Error::IdempotencyKeyReused`] when by
    /// another request.
    #[tracing::instrument(skip_all, err)]
    pub async fn store_record<R>(&self, key: &IdempotencyKey, record: &R) -> Result<Option<R>>
    where
        R: Serialize + DeserializeOwned,
    {
        if idempotency::insert(&self.pool, key, &idempotency::encode(record)?).await? {
            return Ok(None);
        }
        // `None` here: inserted and purged meanwhile, nothing to replay.
        self.find_record(key).await
    }

    /// Wake-ups on the appends this process commits to the store's
    /// database, through this `EventStore` or any other on it: for a
    /// subscriber in the process that must not wait for the `pg_notify`
    /// (see [`LocalAppends`]).
    pub fn local_appends(&self) -> LocalAppends {
        self.notifier.local_appends()
    }

    /// A subscription to [`EventStore::read_all`] starting after `from`.
    pub fn subscribe(&self, from: Checkpoint) -> Subscription {
        Subscription::new(self.clone(), from)
    }

    /// The checkpoint saved under `name`, or [`Checkpoint::START`].
    #[tracing::instrument(skip(self), err)]
    pub async fn load_checkpoint(&self, name: &str) -> Result<Checkpoint> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT transaction_id::text::bigint, position \
             FROM event_store.checkpoints WHERE name = $1",
        )
        // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
        .persistent(false)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map_or(Checkpoint::START, |(transaction_id, position)| Checkpoint {
                transaction_id: u64::try_from(transaction_id).unwrap_or_default(),
                position,
            }),
        )
    }

    /// Saves `checkpoint` under `name` (overwriting).
    #[tracing::instrument(skip(self), err)]
    pub async fn save_checkpoint(&self, name: &str, checkpoint: Checkpoint) -> Result<()> {
        sqlx::query(
            "INSERT INTO event_store.checkpoints (name, transaction_id, position) \
             VALUES ($1, $2::text::xid8, $3) \
             ON CONFLICT (name) DO UPDATE \
             SET transaction_id = excluded.transaction_id, position = excluded.position, \
                 updated_at = now()",
        )
        .bind(name)
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Wakes subscribers (see the `notify` module); after every commit
    /// that wrote events.
    pub(crate) fn notify_appended(&self) {
        self.notifier.poke(&self.pool);
    }
}

/// Appends to several streams that commit together or not at all
/// ([`EventStore::begin`]): a saga step that is a command on this database
/// records itself and the command's events in one transaction.
///
/// Every expected version must have been read before [`EventStore::begin`]
/// (as a load does): the transaction id is assigned at the first append, and
/// a stream's next version must get a larger one than the version it
/// follows (see the ordering note above `APPEND_ONE`). Dropped without
/// [`Appends::commit`], nothing is written.
pub struct Appends {
    /// `None` once an append was rejected (rolled back).
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    store: EventStore,
    wrote: bool,
}

impl std::fmt::Debug for Appends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appends")
            .field("open", &self.tx.is_some())
            .field("wrote", &self.wrote)
            .finish_non_exhaustive()
    }
}

impl Appends {
    /// Appends `events` to `stream` at the `expected` version, in the
    /// transaction. [`Error::Conflict`] (with the actual version) when the
    /// stream is not there: the transaction is then rolled back (its
    /// connection released before the actual version is read), and every
    /// later call fails.
    pub async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        metadata: &Metadata,
    ) -> Result<Appended> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(Error::RolledBack);
        };
        let rejection = match append_on(&mut **tx, stream, expected, events, metadata).await {
            Ok(Ok(appended)) => {
                self.wrote = true;
                return Ok(appended);
            }
            Ok(Err(rejection)) => Ok(rejection),
            Err(error) => Err(error),
        };
        if let Some(tx) = self.tx.take() {
            // Best effort: a failed rollback closes the connection.
            let _ = tx.rollback().await;
        }
        Err(match rejection {
            Ok(rejection) => {
                rejection
                    .into_error(&self.store.pool, stream, expected, events)
                    .await
            }
            Err(error) => error,
        })
    }

    /// The open transaction, unless it was rolled back.
    pub(crate) fn transaction(
        &mut self,
    ) -> Option<&mut sqlx::Transaction<'static, sqlx::Postgres>> {
        self.tx.as_mut()
    }

    /// Rolls the transaction back (best effort: a failed rollback closes
    /// the connection); every later call fails.
    pub(crate) async fn roll_back(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.rollback().await;
        }
    }

    /// Something was appended: the commit wakes the subscribers.
    pub(crate) fn wrote(&mut self) {
        self.wrote = true;
    }

    /// Commits every append, and wakes the subscribers.
    pub async fn commit(self) -> Result<()> {
        let Appends { tx, store, wrote } = self;
        let Some(tx) = tx else {
            return Err(Error::RolledBack);
        };
        tx.commit().await?;
        if wrote {
            store.notify_appended();
        }
        Ok(())
    }
}

/// Why [`append_on`] wrote nothing, before [`Rejection::into_error`]
/// re-reads what the error reports.
#[derive(Debug)]
pub(crate) enum Rejection {
    /// The stream was not at the expected version, or a concurrent append
    /// took one of the versions (unique violation).
    Conflict,
    /// One of the event ids is already stored.
    DuplicateEventId,
}

impl Rejection {
    /// The error to report. Reads through `pool`, so call it after the
    /// failed append's transaction is gone (it is aborted anyway). After a
    /// unique violation the conflicting transaction has committed (Postgres
    /// raises it only then), so the re-read sees the winner.
    pub(crate) async fn into_error(
        self,
        pool: &PgPool,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Error {
        match self {
            Rejection::Conflict => match current_version(pool, stream).await {
                Ok(actual) => Error::Conflict {
                    stream: stream.to_string(),
                    expected,
                    actual,
                },
                Err(e) => e,
            },
            Rejection::DuplicateEventId => {
                let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                match existing_event_id(pool, &ids).await {
                    Ok(existing) => Error::DuplicateEventId(existing.unwrap_or(ids[0])),
                    Err(e) => e,
                }
            }
        }
    }
}

/// One append statement on any executor: the pool (autocommit) or an open
/// transaction, where it must be the transaction's first write.
pub(crate) async fn append_on<'e>(
    executor: impl PgExecutor<'e>,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[NewEvent],
    metadata: &Metadata,
) -> Result<Result<Appended, Rejection>> {
    if events.is_empty() {
        return Err(Error::NoEvents);
    }
    let metadata = serde_json::to_value(metadata).map_err(|source| Error::Json {
        what: "metadata",
        source,
    })?;
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let required = match expected.required().map(i64::try_from) {
        None => None,
        // No stream gets that long: the expectation cannot hold.
        Some(Ok(n)) if n <= i64::MAX - count => Some(n),
        Some(_) => return Ok(Err(Rejection::Conflict)),
    };

    let result = match (required, events) {
        (Some(n), [event]) => sqlx::query_scalar::<_, i64>(APPEND_ONE)
            .bind(event.event_id)
            .bind(stream.stream_type())
            .bind(stream.as_str())
            .bind(n)
            .bind(&event.event_type)
            .bind(schema_version(event))
            .bind(&event.payload)
            .bind(&metadata)
            .fetch_optional(executor)
            .await
            .map(|position| position.map(|position| (position, n + 1))),
        (Some(n), _) => {
            let columns = Columns::of(events);
            sqlx::query_scalar::<_, Option<i64>>(APPEND_MANY)
                .bind(stream.as_str())
                .bind(stream.stream_type())
                .bind(&metadata)
                .bind(&columns.ids)
                .bind(&columns.types)
                .bind(&columns.schema_versions)
                .bind(&columns.payloads)
                .bind(n)
                .fetch_one(executor)
                .await
                .map(|position| position.map(|position| (position, n + count)))
        }
        (None, _) => {
            let columns = Columns::of(events);
            sqlx::query_as::<_, (Option<i64>, Option<i64>)>(APPEND_ANY)
                .bind(stream.as_str())
                .bind(stream.stream_type())
                .bind(&metadata)
                .bind(&columns.ids)
                .bind(&columns.types)
                .bind(&columns.schema_versions)
                .bind(&columns.payloads)
                .fetch_one(executor)
                .await
                .map(|row| row.0.zip(row.1))
        }
    };
    match result {
        Ok(Some((position, version))) => Ok(Ok(Appended {
            version: to_u64(version),
            position,
        })),
        // The expectation failed: nothing was inserted.
        Ok(None) => Ok(Err(Rejection::Conflict)),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some(EVENTS_STREAM_VERSION_KEY) => {
            Ok(Err(Rejection::Conflict))
        }
        Err(sqlx::Error::Database(e)) if e.constraint() == Some(EVENTS_EVENT_ID_KEY) => {
            Ok(Err(Rejection::DuplicateEventId))
        }
        Err(e) => Err(e.into()),
    }
}

/// The events of one append as column arrays, for `unnest`.
struct Columns<'a> {
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    payloads: Vec<&'a serde_json::Value>,
}

impl<'a> Columns<'a> {
    fn of(events: &'a [NewEvent]) -> Self {
        Columns {
            ids: events.iter().map(|e| e.event_id).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            schema_versions: events.iter().map(schema_version).collect(),
            payloads: events.iter().map(|e| &e.payload).collect(),
        }
    }
}

/// The schema's `integer`; versions beyond it do not occur.
fn schema_version(event: &NewEvent) -> i32 {
    i32::try_from(event.schema_version).unwrap_or(i32::MAX)
}

pub(crate) async fn current_version<'e>(
    executor: impl PgExecutor<'e>,
    stream: &StreamId,
) -> Result<u64> {
    let version: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(version), 0) FROM event_store.events WHERE stream_id = $1",
    )
    .bind(stream.as_str())
    .fetch_one(executor)
    .await?;
    Ok(to_u64(version))
}

async fn existing_event_id<'e>(
    executor: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT event_id FROM event_store.events WHERE event_id = ANY($1) LIMIT 1",
    )
    .bind(ids)
    .fetch_optional(executor)
    .await?)
}

/// Builds a `$event` (a [`RecordedEvent`] or [`RawRecordedEvent`]) from a row
/// of [`EVENT_COLUMNS`], by column index (a name is a hash lookup per column
/// and row), with `$payload` (the caller decodes column 8 its own way).
macro_rules! decode_event {
    ($event:ident, $row:expr, $payload:expr) => {{
        let row = $row;
        // Straight into the struct, without a `serde_json::Value` between.
        let metadata: Json<Metadata> = row.try_get(9)?;
        let schema_version: i32 = row.try_get(7)?;
        Ok($event {
            position: row.try_get(0)?,
            transaction_id: to_u64(row.try_get(1)?),
            stream_type: row.try_get(2)?,
            stream_id: row.try_get(3)?,
            version: to_u64(row.try_get(4)?),
            event_id: row.try_get(5)?,
            event_type: row.try_get(6)?,
            schema_version: u32::try_from(schema_version).unwrap_or_default(),
            payload: $payload,
            metadata: metadata.0,
            recorded_at: row.try_get(10)?,
        })
    }};
}

pub(crate) fn decode_row(row: &PgRow) -> Result<RecordedEvent> {
    let payload: serde_json::Value = row.try_get(8)?;
    decode_event!(RecordedEvent, row, payload)
}

fn decode_raw_row(row: &PgRow) -> Result<RawRecordedEvent> {
    let payload: Json<Box<RawValue>> = row.try_get(8)?;
    decode_event!(RawRecordedEvent, row, payload.0)
}

/// Versions, positions and transaction ids are non-negative by the schema's
/// checks; a negative value cannot come back.
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}
