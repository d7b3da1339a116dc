use std::fmt;
use std::marker::PhantomData;

use domain::Aggregate;

use crate::store::{append_on, find_response_on};
use crate::{
    Error, EventStore, ExpectedVersion, IdempotencyKey, Metadata, NewEvent, Result, StoredResponse,
    StreamId,
};

/// Loads an aggregate, asks it to decide, and appends what it decided;
/// re-reads and re-decides on a version conflict (bounded) unless the caller
/// pinned a version.
pub struct Repository<A: Aggregate> {
    store: EventStore,
    max_retries: u32,
    snapshot_every: Option<u64>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            max_retries: self.max_retries,
            snapshot_every: self.snapshot_every,
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
            .finish()
    }
}

/// An aggregate's state as folded from its stream.
pub struct Loaded<A: Aggregate> {
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
    /// When present, the command's response is stored under this key in the
    /// same transaction as its events, and a repeat is answered from it.
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

/// How [`Repository::execute`] ended, short of an error.
pub enum Executed<A: Aggregate> {
    Done(Outcome<A>),
    /// A domain refusal: nothing appended. (Its response is stored under the
    /// idempotency key too.)
    Refused(A::Error),
    /// The key was seen before with the same fingerprint: the stored answer,
    /// nothing executed.
    Replayed(StoredResponse),
}

/// Why [`Repository::execute`] could not carry out a command. `E` is the
/// aggregate's domain error type, which this enum never holds (refusals are
/// [`Executed::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    /// The pinned version (`If-Match`) is not the stream's (412).
    #[error("expected version {expected}, stream is at {actual}")]
    PreconditionFailed { expected: u64, actual: u64 },
    /// Every attempt lost a race for the stream's next version (409).
    #[error("conflict persisted after {attempts} attempts")]
    ConflictRetriesExhausted { attempts: u32 },
    /// `IdempotencyKeyReused` (422), `Database` (5xx), `Decode`...
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

    pub fn new(store: EventStore) -> Self {
        Repository {
            store,
            max_retries: Self::DEFAULT_MAX_RETRIES,
            snapshot_every: None,
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

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Folds the stream of aggregate `id` (without the stream-type prefix),
    /// starting from its snapshot when snapshots are enabled.
    #[tracing::instrument(skip_all, fields(stream_type = A::STREAM_TYPE, id), err)]
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = StreamId::of::<A>(id);
        let mut loaded = match self.snapshot_every {
            Some(_) => self.load_snapshot(&stream).await?,
            None => None,
        }
        .unwrap_or_else(|| Loaded {
            state: A::initial(),
            version: 0,
            position: None,
        });
        for recorded in self.store.read_stream(&stream, loaded.version + 1).await? {
            let event = recorded.decode::<A::Event>()?;
            loaded.state = A::evolve(loaded.state, &event);
            loaded.version = recorded.version;
            loaded.position = Some(recorded.position);
        }
        Ok(loaded)
    }

    /// Runs `command` against aggregate `id`: load, decide, append; on a
    /// version conflict, again from the load (at most `max_retries` more
    /// times) unless `options.expected_version` pins the version.
    ///
    /// With an idempotency key, `respond` turns the result into the response
    /// stored under the key in the same transaction as the events (for a
    /// refusal or a no-op, the record alone); a key seen before is answered
    /// with its stored response without executing anything. Of concurrent
    /// requests with one key, exactly one executes.
    #[tracing::instrument(skip_all, fields(stream_type = A::STREAM_TYPE, id), err(Debug))]
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        options: ExecuteOptions,
        respond: impl Fn(Result<&Outcome<A>, &A::Error>) -> StoredResponse + Send + Sync,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let stream = StreamId::of::<A>(id);
        let attempts = self.max_retries.saturating_add(1);
        for _ in 0..attempts {
            if let Some(key) = &options.idempotency {
                if let Some(stored) = self.store.find_response(key).await? {
                    return Ok(Executed::Replayed(stored));
                }
            }
            let loaded = self.load(id).await?;
            if let Some(expected) = options.expected_version {
                if loaded.version != expected {
                    return Err(ExecuteError::PreconditionFailed {
                        expected,
                        actual: loaded.version,
                    });
                }
            }
            let events = match A::decide(&loaded.state, command) {
                Ok(events) => events,
                Err(refusal) => {
                    if let Some(key) = &options.idempotency {
                        if let Some(stored) = self.store_alone(key, respond(Err(&refusal))).await? {
                            return Ok(Executed::Replayed(stored));
                        }
                    }
                    return Ok(Executed::Refused(refusal));
                }
            };
            if events.is_empty() {
                let outcome = Outcome {
                    state: loaded.state,
                    version: loaded.version,
                    position: loaded.position,
                    events,
                };
                if let Some(key) = &options.idempotency {
                    if let Some(stored) = self.store_alone(key, respond(Ok(&outcome))).await? {
                        return Ok(Executed::Replayed(stored));
                    }
                }
                return Ok(Executed::Done(outcome));
            }

            let previous_version = loaded.version;
            let state = A::fold(loaded.state, &events);
            match self
                .commit(&stream, previous_version, state, events, &options, &respond)
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
                    if let Some(key) = &options.idempotency {
                        // The winner may have been this very request.
                        if let Some(stored) = self.store.find_response(key).await? {
                            return Ok(Executed::Replayed(stored));
                        }
                    }
                    if let Some(expected) = options.expected_version {
                        return Err(ExecuteError::PreconditionFailed { expected, actual });
                    }
                    tracing::debug!(actual, "version conflict, deciding again");
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(key) = &options.idempotency {
            if let Some(stored) = self.store.find_response(key).await? {
                return Ok(Executed::Replayed(stored));
            }
        }
        Err(ExecuteError::ConflictRetriesExhausted { attempts })
    }

    /// Appends the decided events at `previous_version`; with an
    /// idempotency key, the events and then the response, in one
    /// transaction. The events go first: the transaction id is assigned at
    /// the first write, which must come after the stream's version was read
    /// (see `EventStore::read_all`).
    async fn commit(
        &self,
        stream: &StreamId,
        previous_version: u64,
        state: A::State,
        events: Vec<A::Event>,
        options: &ExecuteOptions,
        respond: &(impl Fn(Result<&Outcome<A>, &A::Error>) -> StoredResponse + Send + Sync),
    ) -> Result<Committed<A>> {
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
        let response = respond(Ok(&outcome));
        if insert_response(&mut *tx, key, &response).await? {
            tx.commit().await?;
            self.store.notify_appended();
            return Ok(Committed::Done(outcome));
        }
        // A concurrent request with the same key committed first: undo the
        // events and answer with its response.
        tx.rollback().await?;
        Ok(match find_response_on(pool, key).await? {
            Some(stored) => Committed::Replayed(stored),
            None => Committed::Retry,
        })
    }

    /// Stores a response that comes without events. `Some` when the key was
    /// taken meanwhile (its stored response), `None` when stored.
    async fn store_alone(
        &self,
        key: &IdempotencyKey,
        response: StoredResponse,
    ) -> Result<Option<StoredResponse>> {
        if insert_response(self.store.pool(), key, &response).await? {
            return Ok(None);
        }
        match self.store.find_response(key).await? {
            Some(stored) => Ok(Some(stored)),
            // Inserted and deleted meanwhile: nothing to replay.
            None => Ok(None),
        }
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Loaded<A>>> {
        let row: Option<(i64, i64, serde_json::Value)> = sqlx::query_as(
            "SELECT version, position, state FROM event_store.snapshots WHERE stream_id = $1",
        )
        .bind(stream.as_str())
        .fetch_optional(self.store.pool())
        .await?;
        let Some((version, position, state)) = row else {
            return Ok(None);
        };
        match serde_json::from_value::<A::State>(state) {
            Ok(state) => Ok(Some(Loaded {
                state,
                version: crate::store::to_u64(version),
                position: Some(position),
            })),
            Err(error) => {
                // The state's shape changed since: the events are the truth.
                tracing::warn!(%stream, %error, "ignoring undecodable snapshot");
                Ok(None)
            }
        }
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
        if let Err(error) = save_snapshot(
            &self.store,
            stream,
            outcome.version,
            position,
            &outcome.state,
        )
        .await
        {
            tracing::warn!(%stream, %error, "cannot save snapshot");
        }
    }
}

enum Committed<A: Aggregate> {
    Done(Outcome<A>),
    Replayed(StoredResponse),
    Retry,
}

/// `true` when stored, `false` when the key exists (after waiting for a
/// concurrent writer of the same key to finish).
async fn insert_response<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    key: &IdempotencyKey,
    response: &StoredResponse,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO event_store.idempotency (key, fingerprint, status, body) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
    )
    .bind(&key.key)
    .bind(&key.fingerprint)
    .bind(i32::from(response.status))
    .bind(&response.body)
    .execute(executor)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

async fn save_snapshot<S: serde::Serialize>(
    store: &EventStore,
    stream: &StreamId,
    version: u64,
    position: i64,
    state: &S,
) -> Result<()> {
    let state = serde_json::to_value(state).map_err(|source| Error::Json {
        what: "snapshot",
        source,
    })?;
    sqlx::query(
        "INSERT INTO event_store.snapshots (stream_id, stream_type, version, position, state) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (stream_id) DO UPDATE \
         SET version = excluded.version, position = excluded.position, state = excluded.state, \
             taken_at = now() \
         WHERE snapshots.version < excluded.version",
    )
    .bind(stream.as_str())
    .bind(stream.stream_type())
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .bind(position)
    .bind(&state)
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

impl<A: Aggregate> fmt::Debug for Executed<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Executed::Done(outcome) => f.debug_tuple("Done").field(outcome).finish(),
            Executed::Refused(error) => f.debug_tuple("Refused").field(error).finish(),
            Executed::Replayed(stored) => f.debug_tuple("Replayed").field(stored).finish(),
        }
    }
}
