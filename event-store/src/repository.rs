use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use domain::Aggregate;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Row;

use crate::group::{reserve_positions, Grouped};
use crate::store::{append_on, decode_row, Rejection, EVENT_COLUMNS};
use crate::{
    idempotency, Error, EventStore, ExpectedVersion, IdempotencyKey, Metadata, NewEvent,
    RecordedEvent, Result, StreamId,
};

/// A stream's snapshot of state schema `$2` (if any) and its events after
/// it, in one statement: the snapshot's row first (the event's columns
/// NULL; its version, position and state in the last three), then the
/// events in version order (the last three NULL), each as `read_stream`
/// returns it. A snapshot of another schema is not read: the events from
/// the start are.
fn snapshot_and_tail() -> String {
    format!(
        "WITH s AS (\
             SELECT version, position, state FROM event_store.snapshots \
             WHERE stream_id = $1 AND state_schema = $2) \
         SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::bigint, NULL::uuid, \
                NULL::text, NULL::int4, NULL::jsonb, NULL::jsonb, NULL::timestamptz, \
                s.version, s.position, s.state \
         FROM s \
         UNION ALL \
         (SELECT {EVENT_COLUMNS}, NULL::bigint, NULL::bigint, NULL::jsonb \
          FROM event_store.events \
          WHERE stream_id = $1 AND version > coalesce((SELECT version FROM s), 0) \
          ORDER BY events.version)"
    )
}

/// Called each time a lost race makes [`Repository::execute`] decide again.
type RetryHook = Arc<dyn Fn() + Send + Sync>;

/// Loads an aggregate, asks it to decide, and appends what it decided;
/// re-reads and re-decides on a version conflict (bounded) unless the caller
/// pinned a version. The one place where conflicts are retried.
pub struct Repository<A: Aggregate> {
    store: EventStore,
    max_retries: u32,
    snapshot_every: Option<u64>,
    on_retry: Option<RetryHook>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            max_retries: self.max_retries,
            snapshot_every: self.snapshot_every,
            on_retry: self.on_retry.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("stream_type", &A::STREAM_TYPE)
            .field("max_retries", &self.max_retries)
            .field("snapshot_every", &self.snapshot_every)
            .finish_non_exhaustive()
    }
}

/// An aggregate's state as folded from its stream.
pub struct Loaded<A: Aggregate> {
    /// The state folded from the stream (or a snapshot and the events after it).
    pub state: A::State,
    /// The stream's version (0: no event yet).
    pub version: u64,
    /// Global position of the stream's last event (None: no event yet).
    pub position: Option<i64>,
}

/// How [`Repository::execute`] runs a command.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOptions {
    /// The version the client expects (`If-Match`): checked, never retried.
    pub expected_version: Option<u64>,
    /// Stored with every appended event.
    pub metadata: Metadata,
    /// When present, the command's record (see [`Repository::execute`]) is
    /// stored under this key in the same transaction as its events, and a
    /// repeat is answered with it.
    pub idempotency: Option<IdempotencyKey>,
}

/// A command that was carried out (possibly appending nothing).
pub struct Outcome<A: Aggregate> {
    /// The state after the command.
    pub state: A::State,
    /// The stream's version after the command.
    pub version: u64,
    /// The last appended event's position, or the stream's last event's when
    /// nothing was appended (None: empty stream).
    pub position: Option<i64>,
    /// What this call appended (empty for an idempotent no-op).
    pub events: Vec<A::Event>,
}

/// How [`Repository::execute`] ended, short of an error: what the domain
/// decided, or the record `R` of an earlier execution under the same
/// idempotency key.
pub enum Executed<A: Aggregate, R = ()> {
    /// Carried out: the events are appended (or there were none to append).
    Done(Outcome<A>),
    /// A domain refusal: nothing appended. (Its record is stored under the
    /// idempotency key too.)
    Refused(A::Error),
    /// The key was seen before with the same fingerprint: the record stored
    /// then; nothing executed.
    Replayed(R),
}

/// Why [`Repository::execute`] could not carry out a command. `E` is the
/// aggregate's domain error type, which this enum never holds (refusals are
/// [`Executed::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The pinned version (`If-Match`) is not the stream's.
    #[error("expected version {expected}, stream is at {actual}")]
    PreconditionFailed {
        /// The version the caller pinned.
        expected: u64,
        /// The stream's version.
        actual: u64,
    },
    /// Every attempt lost a race for the stream's next version.
    #[error("conflict persisted after {attempts} attempts")]
    ConflictRetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
    },
    /// `IdempotencyKeyReused`, `Database`, `Decode`...
    #[error(transparent)]
    Store(#[from] Error),
    /// Uninhabited: only ties `E` to the type.
    #[doc(hidden)]
    #[error("unreachable")]
    _Phantom(std::convert::Infallible, PhantomData<E>),
}

impl<A: Aggregate> Repository<A> {
    /// Default number of re-decisions after a conflict.
    pub const DEFAULT_MAX_RETRIES: u32 = 5;

    /// A repository of `A` on `store`, retrying conflicts [`Repository::DEFAULT_MAX_RETRIES`] times.
    pub fn new(store: EventStore) -> Self {
        Repository {
            store,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            snapshot_every: None,
            on_retry: None,
            aggregate: PhantomData,
        }
    }

    /// Saves the state every `every` events and loads from the latest
    /// snapshot plus the events after it. `every == 0` disables it.
    pub fn with_snapshots(mut self, every: u64) -> Self {
        self.snapshot_every = (every > 0).then_some(every);
        self
    }

    /// Re-decisions after a version conflict before giving up (default 5).
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Calls `hook` each time a lost race (a version conflict) makes
    /// [`Repository::execute`] decide again: for a metric.
    pub fn on_retry(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// The store it reads and appends to.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Folds the stream of aggregate `id` (without the stream-type prefix),
    /// starting from its snapshot when snapshots are enabled.
    #[tracing::instrument(skip_all, fields(stream_type = A::STREAM_TYPE, id), err)]
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = StreamId::of::<A>(id);
        let (snapshot, tail) = match self.snapshot_every {
            Some(_) => self.load_snapshot_and_tail(&stream).await?,
            None => (None, self.store.read_stream(&stream, 1).await?),
        };
        let mut loaded = snapshot.unwrap_or_else(|| Loaded {
            state: A::initial(),
            version: 0,
            position: None,
        });
        for recorded in &tail {
            let event = recorded.decode::<A::Event>()?;
            loaded.state = A::evolve(loaded.state, &event);
            loaded.version = recorded.version;
            loaded.position = Some(recorded.position);
        }
        // A long tail (no snapshot yet, or one of another state schema, or
        // snapshots just enabled): the next load starts from here.
        if let (Some(every), Some(position)) = (self.snapshot_every, loaded.position) {
            if tail.len() as u64 >= every {
                self.save_snapshot(&stream, loaded.version, position, &loaded.state)
                    .await;
            }
        }
        Ok(loaded)
    }

    /// Decides `command` on `state` (aggregate `id`'s, as loaded), with
    /// the past of the order it needs recalled from the stream
    /// ([`Aggregate::recall_key`], read by index): the decision
    /// [`Repository::execute`] takes, for a caller that appends itself.
    pub async fn decide(
        &self,
        id: &str,
        state: &A::State,
        command: &A::Command,
    ) -> Result<Result<Vec<A::Event>, A::Error>> {
        let stream = StreamId::of::<A>(id);
        let decided_on = self.recall(&stream, state, command).await?;
        Ok(A::decide(&decided_on, command))
    }

    /// The state `command` is decided on: `state`, with the past of the
    /// order it needs recalled from the stream ([`Aggregate::recall_key`]),
    /// read by index.
    async fn recall<'s>(
        &self,
        stream: &StreamId,
        state: &'s A::State,
        command: &A::Command,
    ) -> Result<Cow<'s, A::State>> {
        let Some(order_id) = A::recall_key(state, command) else {
            return Ok(Cow::Borrowed(state));
        };
        let past = self
            .store
            .read_stream_of_order(stream, &order_id.to_string())
            .await?
            .iter()
            .map(|recorded| recorded.decode::<A::Event>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Cow::Owned(A::recall(state.clone(), &past)))
    }

    /// Runs `command` against aggregate `id`: load, decide, append; on a
    /// version conflict, again from the load (at most `max_retries` more
    /// times) unless `options.expected_version` pins the version, which
    /// fails with [`ExecuteError::PreconditionFailed`] instead.
    ///
    /// With an idempotency key, `record` turns what the domain decided (the
    /// outcome, or the refusal) into the caller's record of it, any
    /// serialisable `R`, stored under the key in the same transaction as the
    /// events (for a refusal or a no-op, alone). A key seen before is
    /// answered with [`Executed::Replayed`] and its stored record, without
    /// executing anything; of concurrent calls with one key, exactly one
    /// executes and the others wait for it and replay its record. Without a
    /// key, `record` is not called: pass `|_| ()`.
    pub async fn execute<R>(
        &self,
        id: &str,
        command: &A::Command,
        options: ExecuteOptions,
        record: impl Fn(Result<&Outcome<A>, &A::Error>) -> R + Send + Sync,
    ) -> Result<Executed<A, R>, ExecuteError<A::Error>>
    where
        R: Serialize + DeserializeOwned + Send,
    {
        self.execute_from(None, id, command, options, record).await
    }

    /// [`Repository::execute`], deciding first on `known`: a state of the
    /// aggregate the caller saw before (the one a command of its own left
    /// behind), which saves reading the stream. The append at `known`'s
    /// version proves the state was current; when the stream moved on
    /// meanwhile, the append conflicts and the command is decided again on
    /// a fresh load (that attempt is not counted against the retries). A
    /// refusal or a no-op proves nothing about freshness, so it is always
    /// decided again on a fresh load, and so is a command whose pinned
    /// version is not `known`'s.
    ///
    /// Its span is DEBUG: a detail of its caller's (the Command API's
    /// `command`, a saga step), which is what traces export.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_type = A::STREAM_TYPE, id), err(Debug))]
    pub async fn execute_from<R>(
        &self,
        known: Option<Loaded<A>>,
        id: &str,
        command: &A::Command,
        options: ExecuteOptions,
        record: impl Fn(Result<&Outcome<A>, &A::Error>) -> R + Send + Sync,
    ) -> Result<Executed<A, R>, ExecuteError<A::Error>>
    where
        R: Serialize + DeserializeOwned + Send,
    {
        let stream = StreamId::of::<A>(id);
        let key = options.idempotency.as_ref();
        let mut known = known.filter(|known| {
            options
                .expected_version
                .is_none_or(|expected| expected == known.version)
        });
        let attempts = self.max_retries.saturating_add(1);
        let mut attempt = 0;
        while attempt < attempts {
            if let Some(key) = key {
                if let Some(stored) = self.store.find_record(key).await? {
                    return Ok(Executed::Replayed(stored));
                }
            }
            let (loaded, fresh) = match known.take() {
                Some(known) => (known, false),
                None => {
                    attempt += 1;
                    (self.load(id).await?, true)
                }
            };
            if let Some(expected) = options.expected_version {
                if loaded.version != expected {
                    return Err(ExecuteError::PreconditionFailed {
                        expected,
                        actual: loaded.version,
                    });
                }
            }
            let events = match self.decide(id, &loaded.state, command).await? {
                Ok(events) if !events.is_empty() => events,
                // Decided on a remembered state: settle it on a fresh load.
                _ if !fresh => continue,
                Ok(events) => {
                    let outcome = Outcome {
                        state: loaded.state,
                        version: loaded.version,
                        position: loaded.position,
                        events,
                    };
                    if let Some(key) = key {
                        if let Some(stored) =
                            self.store.store_record(key, &record(Ok(&outcome))).await?
                        {
                            return Ok(Executed::Replayed(stored));
                        }
                    }
                    return Ok(Executed::Done(outcome));
                }
                Err(refusal) => {
                    if let Some(key) = key {
                        if let Some(stored) =
                            self.store.store_record(key, &record(Err(&refusal))).await?
                        {
                            return Ok(Executed::Replayed(stored));
                        }
                    }
                    return Ok(Executed::Refused(refusal));
                }
            };

            let previous_version = loaded.version;
            let state = A::fold(loaded.state, &events);
            match self
                .commit(&stream, previous_version, state, events, &options, &record)
                .await
            {
                Ok(Committed::Done(outcome)) => {
                    self.maybe_snapshot(&stream, previous_version, &outcome)
                        .await;
                    return Ok(Executed::Done(outcome));
                }
                Ok(Committed::Replayed(stored)) => return Ok(Executed::Replayed(stored)),
                Ok(Committed::Retry) => {}
                Err(Error::Conflict { actual, .. }) => {
                    if let Some(key) = key {
                        // The winner may have been this very request.
                        if let Some(stored) = self.store.find_record(key).await? {
                            return Ok(Executed::Replayed(stored));
                        }
                    }
                    if fresh {
                        if let Some(expected) = options.expected_version {
                            return Err(ExecuteError::PreconditionFailed { expected, actual });
                        }
                    }
                    if !fresh || attempt < attempts {
                        tracing::debug!(actual, "version conflict, deciding again");
                        if let Some(hook) = &self.on_retry {
                            hook();
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(key) = key {
            if let Some(stored) = self.store.find_record(key).await? {
                return Ok(Executed::Replayed(stored));
            }
        }
        Err(ExecuteError::ConflictRetriesExhausted { attempts })
    }

    /// Appends the decided events at `previous_version`; with an
    /// idempotency key, the events and then the record, in one
    /// transaction. The events go first: the transaction id is assigned at
    /// the first write, which must come after the stream's version was read
    /// (see `EventStore::read_all`).
    async fn commit<R>(
        &self,
        stream: &StreamId,
        previous_version: u64,
        state: A::State,
        events: Vec<A::Event>,
        options: &ExecuteOptions,
        record: &(impl Fn(Result<&Outcome<A>, &A::Error>) -> R + Send + Sync),
    ) -> Result<Committed<A, R>>
    where
        R: Serialize + DeserializeOwned + Send,
    {
        let new_events: Vec<NewEvent> = events.iter().map(NewEvent::from_domain).collect();
        let expected = ExpectedVersion::Exact(previous_version);
        let Some(key) = &options.idempotency else {
            let appended = self
                .store
                .append(stream, expected, &new_events, &options.metadata)
                .await?;
            return Ok(Committed::Done(Outcome {
                state,
                version: appended.version,
                position: Some(appended.position),
                events,
            }));
        };

        let pool = self.store.pool();
        let (state, events) = if self.store.groups() {
            // In a group, the record goes in the same statement as the
            // events: it states their position, so reserve it first.
            let positions = reserve_positions(pool, new_events.len()).await?;
            let outcome = Outcome {
                state,
                version: previous_version + new_events.len() as u64,
                position: positions.last().copied(),
                events,
            };
            let stored = idempotency::encode(&record(Ok(&outcome)))?;
            match self
                .store
                .append_in_group(
                    stream,
                    previous_version,
                    &new_events,
                    &options.metadata,
                    Some(positions),
                    Some((key.clone(), stored)),
                )
                .await?
            {
                Some(Grouped::Appended(_)) => return Ok(Committed::Done(outcome)),
                Some(Grouped::Conflict) => {
                    return Err(Rejection::Conflict
                        .into_error(pool, stream, expected, &new_events)
                        .await)
                }
                // The group failed as a whole (a key taken meanwhile, a
                // writer elsewhere in flight): alone, as without groups.
                Some(Grouped::Alone) | None => (outcome.state, outcome.events),
            }
        } else {
            (state, events)
        };
        let mut tx = pool.begin().await?;
        let appended =
            match append_on(&mut *tx, stream, expected, &new_events, &options.metadata).await? {
                Ok(appended) => appended,
                Err(rejection) => {
                    // Release the connection before re-reading.
                    tx.rollback().await?;
                    return Err(rejection
                        .into_error(pool, stream, expected, &new_events)
                        .await);
                }
            };
        let outcome = Outcome {
            state,
            version: appended.version,
            position: Some(appended.position),
            events,
        };
        let stored = idempotency::encode(&record(Ok(&outcome)))?;
        if idempotency::insert(&mut *tx, key, &stored).await? {
            tx.commit().await?;
            self.store.notify_appended();
            return Ok(Committed::Done(outcome));
        }
        // A concurrent request with the same key committed first: undo the
        // events and answer with its record.
        tx.rollback().await?;
        Ok(match idempotency::find(pool, key).await? {
            Some(stored) => Committed::Replayed(stored),
            None => Committed::Retry,
        })
    }

    /// The stream's snapshot of this state schema, if any, and the events
    /// after it, in one round trip ([`snapshot_and_tail`]). A snapshot that
    /// no longer decodes is left aside: the whole stream is read.
    async fn load_snapshot_and_tail(
        &self,
        stream: &StreamId,
    ) -> Result<(Option<Loaded<A>>, Vec<RecordedEvent>)> {
        let rows = sqlx::query(&snapshot_and_tail())
            .bind(stream.as_str())
            .bind(i32::try_from(A::STATE_SCHEMA).unwrap_or(i32::MAX))
            .fetch_all(self.store.pool())
            .await?;
        let mut snapshot = None;
        let mut tail = Vec::with_capacity(rows.len());
        for row in &rows {
            let version: Option<i64> = row.try_get(11)?;
            match version {
                Some(version) => {
                    let position: i64 = row.try_get(12)?;
                    let state: serde_json::Value = row.try_get(13)?;
                    match serde_json::from_value::<A::State>(state) {
                        Ok(state) => {
                            snapshot = Some(Loaded {
                                state,
                                version: crate::store::to_u64(version),
                                position: Some(position),
                            })
                        }
                        Err(error) => {
                            // The state's shape changed since: the events
                            // are the truth.
                            tracing::warn!(%stream, %error, "ignoring undecodable snapshot");
                            return Ok((None, self.store.read_stream(stream, 1).await?));
                        }
                    }
                }
                None => tail.push(decode_row(row)?),
            }
        }
        tail.sort_unstable_by_key(|event| event.version);
        Ok((snapshot, tail))
    }

    /// Saves a snapshot when this append crossed a multiple of
    /// `snapshot_every`. Best effort: a snapshot is only an optimisation.
    async fn maybe_snapshot(&self, stream: &StreamId, previous_version: u64, outcome: &Outcome<A>) {
        let (Some(every), Some(position)) = (self.snapshot_every, outcome.position) else {
            return;
        };
        if previous_version / every == outcome.version / every {
            return;
        }
        self.save_snapshot(stream, outcome.version, position, &outcome.state)
            .await;
    }

    /// Saves `state` as the snapshot of `stream` at `version`, unless a
    /// later one of the same state schema is there. Best effort: a snapshot
    /// is only an optimisation.
    async fn save_snapshot(
        &self,
        stream: &StreamId,
        version: u64,
        position: i64,
        state: &A::State,
    ) {
        if let Err(error) = save_snapshot(
            &self.store,
            stream,
            A::STATE_SCHEMA,
            version,
            position,
            state,
        )
        .await
        {
            tracing::warn!(%stream, %error, "cannot save snapshot");
        }
    }
}

/// How one attempt's commit ended.
enum Committed<A: Aggregate, R> {
    Done(Outcome<A>),
    /// A concurrent call with the same key committed first: its record.
    Replayed(R),
    /// The key was taken and freed again meanwhile: decide again.
    Retry,
}

async fn save_snapshot<S: serde::Serialize>(
    store: &EventStore,
    stream: &StreamId,
    schema: u32,
    version: u64,
    position: i64,
    state: &S,
) -> Result<()> {
    let state = serde_json::to_value(state).map_err(|source| Error::Json {
        what: "snapshot",
        source,
    })?;
    sqlx::query(
        "INSERT INTO event_store.snapshots \
             (stream_id, stream_type, version, position, state_schema, state) \
         VALUES ($1, $2, $3, $4, $6, $5) \
         ON CONFLICT (stream_id) DO UPDATE \
         SET version = excluded.version, position = excluded.position, \
             state_schema = excluded.state_schema, state = excluded.state, taken_at = now() \
         WHERE snapshots.version < excluded.version \
            OR snapshots.state_schema <> excluded.state_schema",
    )
    .bind(stream.as_str())
    .bind(stream.stream_type())
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .bind(position)
    .bind(&state)
    .bind(i32::try_from(schema).unwrap_or(i32::MAX))
    .execute(store.pool())
    .await?;
    Ok(())
}

impl<A: Aggregate> fmt::Debug for Loaded<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("state", &self.state)
            .field("version", &self.version)
            .field("position", &self.position)
            .finish()
    }
}

impl<A: Aggregate> Clone for Loaded<A> {
    fn clone(&self) -> Self {
        Loaded {
            state: self.state.clone(),
            version: self.version,
            position: self.position,
        }
    }
}

impl<A: Aggregate> fmt::Debug for Outcome<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outcome")
            .field("state", &self.state)
            .field("version", &self.version)
            .field("position", &self.position)
            .field("events", &self.events)
            .finish()
    }
}

impl<A: Aggregate> Clone for Outcome<A> {
    fn clone(&self) -> Self {
        Outcome {
            state: self.state.clone(),
            version: self.version,
            position: self.position,
            events: self.events.clone(),
        }
    }
}

impl<A: Aggregate, R: fmt::Debug> fmt::Debug for Executed<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Executed::Done(outcome) => f.debug_tuple("Done").field(outcome).finish(),
            Executed::Refused(error) => f.debug_tuple("Refused").field(error).finish(),
            Executed::Replayed(stored) => f.debug_tuple("Replayed").field(stored).finish(),
        }
    }
}
