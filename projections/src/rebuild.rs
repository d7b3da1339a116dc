//! Rebuilding a projection from the event store, never from Kafka
//! (DESIGN.md point 6), without taking the Query API down.
//!
//! A rebuild of projection `p`:
//!
//! 1. takes `p`'s rebuild lock (a session advisory lock on a connection of
//!    its own: a second rebuild fails fast, and the server releases the lock
//!    when the process dies);
//! 2. creates the shadow schema `rebuild_p`: copies of `p`'s tables
//!    (`CREATE TABLE .. (LIKE read_models.t)` with their primary keys, so the
//!    migrations stay the only definition) and of the bookkeeping tables
//!    `applied`, `parked`, `projection_status`, plus a row in
//!    `read_models.rebuilds`;
//! 3. **replays** the events of `p`'s stream types in the gap-safe global
//!    order `(transaction_id, position)`, a window of `batch_size` events
//!    per transaction through [`Projection::apply_many`] (which folds each
//!    stream's events of the window and writes its rows once), with the
//!    transaction's `search_path` set to the shadow schema. A reader task
//!    reads the next window meanwhile. In that order every event is the
//!    next one of its stream, so no per-stream versions are kept; the
//!    checkpoint in `read_models.rebuilds` commits with each window, so an
//!    interrupted rebuild resumes after the last window it committed. An
//!    event that keeps failing parks its stream in the shadow `parked`, as a
//!    live worker would;
//! 4. enters **catch-up**: records the checkpoint as the shadow's replayed
//!    checkpoint (every event up to it is applied: one row, not one per
//!    stream, migration 0007) and an `applied` row for each parked stream
//!    (the version before its parked event), builds the secondary indexes
//!    and foreign keys, analyzes; from now on events
//!    go through a [`Projector`] on the shadow schema, which skips what it
//!    has applied, per stream version. Catch-up ends when a read comes back
//!    short after every transaction older than the rebuild has finished: a
//!    transaction left open anywhere on the server holds the gap-safe read
//!    back, and the rebuild waits for it rather than swap in a read model
//!    that misses events committed before it started;
//! 5. **swaps**, in one transaction: takes `p`'s apply lock exclusively (the
//!    live workers of `p` pause at the start of their next batch; other
//!    projections and the Query API go on), replays the last events of the
//!    log, then applies to the shadow every stream the live workers got
//!    further in than the shadow (an event they applied that the gap-safe
//!    read does not show yet, or an unpark), so the shadow holds everything
//!    the live tables hold; replaces `p`'s rows of `read_models.applied`,
//!    `parked` and `projection_status` (with the replayed checkpoint) with
//!    the shadow's; drops the live
//!    tables, moves the shadow tables into `read_models`, drops the shadow
//!    schema and `p`'s `rebuilds` row; notifies; commits. The Query API reads
//!    the old tables until that commit and the new ones right after (its
//!    statements name the tables, and the server re-resolves names of cached
//!    statements after DDL).
//!
//! Once the live workers resume, they find the new applied versions (a
//! stream's row, or else what the replayed checkpoint covers of it, which the
//! [`Projector`] reads from the event store the first time it meets the
//! stream): an event the rebuild already applied is a duplicate, one it did
//! not is applied (or its stream's gap is filled from the store), so nothing
//! is lost or doubled.
//!
//! Table grants on the read-model tables are granted on the shadow tables in
//! the swap, and the new tables are given to the live tables' owner, so both
//! carry over; column grants do not.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{Checkpoint, EventStore, RecordedEvent};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;

use crate::projector::{park, parse_stream_id, quote_ident};
use crate::{
    ApplyError, Error, Projection, Projector, Result, APPLY_LOCK, DEFAULT_MAX_ATTEMPTS,
    NOTIFY_CHANNEL, REBUILD_LOCK,
};

/// The bookkeeping tables a shadow schema has copies of.
const BOOKKEEPING: [&str; 3] = ["applied", "parked", "projection_status"];

/// How many times the swap is tried when it cannot get its locks within
/// [`SWAP_LOCK_TIMEOUT`] (a long query holding a read-model table).
const SWAP_ATTEMPTS: u32 = 5;
const SWAP_LOCK_TIMEOUT: &str = "5s";

/// Events per transaction unless told otherwise (`--batch-size`).
pub const DEFAULT_BATCH_SIZE: usize = 100_000;

/// Events per transaction, at most, once the bulk replay is over: catch-up
/// applies through the [`Projector`] (a poison event makes it retry the
/// batch event by event), and the swap holds the live workers back while it
/// applies the last events.
pub const CATCH_UP_BATCH: usize = 5_000;

/// Events the replay reads per query, ahead of the window it applies.
const READ_CHUNK: usize = 10_000;

/// How often a rebuild that has read everything visible checks whether the
/// transactions older than it have finished.
const HORIZON_POLL: Duration = Duration::from_millis(100);

/// Tuning of a rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildOptions {
    /// Events applied per transaction in the bulk replay: the window folded
    /// in memory, so a row that several of the window's events change is
    /// written once, and bigger windows rebuild fold-heavy read models (a
    /// SKU's stock, a saga's steps) faster. About two windows are in memory
    /// (the one written, the next one read meanwhile). Catch-up and the swap
    /// apply at most [`CATCH_UP_BATCH`] events per transaction.
    pub batch_size: usize,
    /// Discard an interrupted rebuild and start over.
    pub restart: bool,
    /// Throttle: at most this many events per second (`None`: as fast as it
    /// goes), so a rebuild can leave the database room for the live traffic.
    pub max_events_per_second: Option<u64>,
    /// Attempts before an event that fails to apply parks its stream.
    pub max_attempts: u32,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            restart: false,
            max_events_per_second: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bulk replay of the log into the shadow tables.
    Replay,
    /// Replaying what arrived meanwhile, with per-stream versions.
    CatchUp,
    /// Swapping the shadow tables in.
    Swap,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Replay => "replay",
            Phase::CatchUp => "catch_up",
            Phase::Swap => "swap",
        }
    }
}

/// Reported after every batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub projection: &'static str,
    pub phase: Phase,
    /// Events replayed so far, by this run and the interrupted ones before.
    pub events_done: u64,
    /// Events of the projection's stream types in the store (counted when
    /// the run started; raised when more were replayed).
    pub events_total: u64,
    /// Of `events_done`, those an earlier run had replayed.
    pub resumed_from: u64,
    /// Since this run started.
    pub elapsed: Duration,
}

impl Progress {
    /// Events per second replayed by this run.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events_done.saturating_sub(self.resumed_from) as f64 / secs
        } else {
            0.0
        }
    }

    /// Time left at the current rate, when there is a rate.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| {
            Duration::from_secs_f64(
                self.events_total.saturating_sub(self.events_done) as f64 / rate,
            )
        })
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub projection: &'static str,
    /// Events replayed into the new read model (all runs).
    pub events: u64,
    /// Of `events`, those an earlier, interrupted run had replayed.
    pub resumed_from: u64,
    /// Streams parked in the new read model.
    pub parked: u64,
    /// This run's duration.
    pub elapsed: Duration,
}

/// The shadow schema of a projection's rebuild.
pub fn shadow_schema(projection: &str) -> String {
    format!("rebuild_{projection}")
}

/// Rebuilds `projection` into shadow tables and swaps them in (see the
/// module's documentation). `on_progress` is called after every batch.
/// When `shutdown` is cancelled, the batch being written is committed and
/// [`Error::Interrupted`] returned: the next run resumes there (and reads
/// again what had been read ahead).
#[tracing::instrument(skip_all, fields(projection = projection.name()), err)]
pub async fn rebuild(
    projection: Arc<dyn Projection>,
    store: &EventStore,
    options: &RebuildOptions,
    shutdown: &CancellationToken,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RebuildReport> {
    let lock = RebuildLock::acquire(store.pool(), projection.name()).await?;
    let rebuild = Rebuild::new(projection, store.clone(), options.clone());
    let result = rebuild.run(shutdown, on_progress).await;
    lock.release().await;
    result
}

/// A projection's rebuild lock, held on a connection of its own (closing it,
/// or the process dying, releases the lock).
pub(crate) struct RebuildLock {
    conn: PgConnection,
    projection: String,
}

impl RebuildLock {
    /// Takes the lock, or fails with [`Error::RebuildRunning`].
    pub(crate) async fn acquire(pool: &PgPool, projection: &str) -> Result<RebuildLock> {
        let mut conn = pool.acquire().await?.detach();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))")
                .bind(REBUILD_LOCK)
                .bind(projection)
                .fetch_one(&mut conn)
                .await?;
        if !locked {
            let _ = conn.close().await;
            return Err(Error::RebuildRunning(projection.to_owned()));
        }
        Ok(RebuildLock {
            conn,
            projection: projection.to_owned(),
        })
    }

    /// Releases the lock (before this returns: another process may take it
    /// right away) and closes the connection.
    pub(crate) async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))")
            .bind(REBUILD_LOCK)
            .bind(&self.projection)
            .execute(&mut self.conn)
            .await;
        if let Err(error) = unlocked {
            // Closing the session releases it too, a moment later.
            tracing::warn!(projection = %self.projection, error = %error, "cannot release the rebuild lock");
        }
        let _ = self.conn.close().await;
    }
}

/// Whether some process holds `projection`'s rebuild lock now.
pub async fn is_running(pool: &PgPool, projection: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND classid = hashtext($1)::oid AND objid = hashtext($2)::oid)",
    )
    .bind(REBUILD_LOCK)
    .bind(projection)
    .fetch_one(pool)
    .await?)
}

/// A rebuild's persisted progress (`read_models.rebuilds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    phase: Phase,
    checkpoint: Checkpoint,
    events_done: u64,
    last_position: i64,
}

struct Rebuild {
    projection: Arc<dyn Projection>,
    store: EventStore,
    options: RebuildOptions,
    schema: String,
    /// `schema`, double-quoted for SQL.
    shadow: String,
    types: &'static [&'static str],
}

impl Rebuild {
    fn new(projection: Arc<dyn Projection>, store: EventStore, options: RebuildOptions) -> Self {
        let schema = shadow_schema(projection.name());
        Rebuild {
            shadow: quote_ident(&schema),
            schema,
            types: projection.stream_types(),
            projection,
            store,
            options: RebuildOptions {
                batch_size: options.batch_size.max(1),
                ..options
            },
        }
    }

    fn name(&self) -> &'static str {
        self.projection.name()
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    fn projector(&self) -> Projector {
        Projector::shadow(self.projection.clone(), self.store.clone(), &self.schema)
            .with_max_attempts(self.options.max_attempts)
    }

    async fn run(
        &self,
        shutdown: &CancellationToken,
        on_progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<RebuildReport> {
        let started = Instant::now();
        // Every transaction that committed before now has a lower id.
        let start: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                .fetch_one(self.pool())
                .await?;
        let start = u64::try_from(start).unwrap_or_default();
        let mut state = self.prepare().await?;
        let resumed_from = state.events_done;
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM event_store.events WHERE stream_type = ANY($1)",
        )
        .bind(self.types)
        .fetch_one(self.pool())
        .await?;
        let total = u64::try_from(total).unwrap_or_default();
        let mut report = |phase: Phase, state: &State| {
            on_progress(&Progress {
                projection: self.name(),
                phase,
                events_done: state.events_done,
                events_total: total.max(state.events_done),
                resumed_from,
                elapsed: started.elapsed(),
            });
        };
        report(state.phase, &state);
        if state.phase == Phase::Replay {
            self.replay(
                &mut state,
                start,
                started,
                resumed_from,
                shutdown,
                &mut report,
            )
            .await?;
            self.enter_catch_up(&mut state).await?;
        }
        self.catch_up(&mut state, start, shutdown, &mut report)
            .await?;
        report(Phase::Swap, &state);
        self.swap(&mut state).await?;
        let parked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM read_models.parked WHERE projection = $1")
                .bind(self.name())
                .fetch_one(self.pool())
                .await?;
        tracing::debug!(
            projection = self.name(),
            events = state.events_done,
            parked,
            "rebuild swapped in"
        );
        Ok(RebuildReport {
            projection: self.name(),
            events: state.events_done,
            resumed_from,
            parked: u64::try_from(parked).unwrap_or_default(),
            elapsed: started.elapsed(),
        })
    }

    /// Resumes the rebuild in progress, or creates the shadow schema.
    async fn prepare(&self) -> Result<State> {
        let row: Option<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT phase, transaction_id::text::bigint, position, events_done, last_position \
             FROM read_models.rebuilds WHERE projection = $1",
        )
        .bind(self.name())
        .fetch_optional(self.pool())
        .await?;
        let schema_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&self.schema)
                .fetch_one(self.pool())
                .await?;
        if let (Some((phase, transaction_id, position, done, last_position)), true, false) =
            (row, schema_exists, self.options.restart)
        {
            let stale = self.stale_shadow_tables().await?;
            if !stale.is_empty() {
                return Err(self.unsupported(format!(
                    "the interrupted rebuild's shadow tables ({}) predate a migration that \
                     changed them; start over with --restart",
                    stale.join(", ")
                )));
            }
            let state = State {
                phase: if phase == "catch_up" {
                    Phase::CatchUp
                } else {
                    Phase::Replay
                },
                checkpoint: Checkpoint {
                    transaction_id: u64::try_from(transaction_id).unwrap_or_default(),
                    position,
                },
                events_done: u64::try_from(done).unwrap_or_default(),
                last_position,
            };
            tracing::info!(
                projection = self.name(),
                events_done = state.events_done,
                phase = state.phase.as_str(),
                "resuming an interrupted rebuild"
            );
            return Ok(state);
        }

        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.shadow))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM read_models.rebuilds WHERE projection = $1")
            .bind(self.name())
            .execute(&mut *tx)
            .await?;
        self.create_shadow(&mut tx).await?;
        sqlx::query("INSERT INTO read_models.rebuilds (projection, shadow_schema) VALUES ($1, $2)")
            .bind(self.name())
            .bind(&self.schema)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            projection = self.name(),
            schema = %self.schema,
            "rebuild started"
        );
        Ok(State {
            phase: Phase::Replay,
            checkpoint: Checkpoint::START,
            events_done: 0,
            last_position: 0,
        })
    }

    /// The tables of the shadow schema whose columns differ from those of
    /// their `read_models` counterparts: a migration changed them since the
    /// rebuild started, so what it wrote cannot be swapped in.
    async fn stale_shadow_tables(&self) -> Result<Vec<String>> {
        let tables: Vec<&str> = BOOKKEEPING
            .iter()
            .copied()
            .chain(self.projection.tables().iter().map(|t| t.name))
            .collect();
        Ok(sqlx::query_scalar(
            "WITH columns AS ( \
                SELECT t, s, (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) \
                                               ORDER BY attnum) \
                              FROM pg_attribute \
                              WHERE attrelid = to_regclass(quote_ident(s) || '.' || quote_ident(t)) \
                                AND attnum > 0 AND NOT attisdropped) AS c \
                FROM unnest($1::text[]) AS t, unnest(ARRAY['read_models', $2]) AS s) \
             SELECT live.t FROM columns AS live JOIN columns AS shadow ON shadow.t = live.t \
             WHERE live.s = 'read_models' AND shadow.s = $2 AND live.c IS DISTINCT FROM shadow.c \
             ORDER BY 1",
        )
        .bind(&tables)
        .bind(&self.schema)
        .fetch_all(self.pool())
        .await?)
    }

    /// The shadow schema: the bookkeeping tables, and the projection's tables
    /// with their columns, defaults, checks and primary or unique keys.
    /// Secondary indexes and foreign keys come after the bulk replay.
    async fn create_shadow(&self, tx: &mut Transaction<'_, Postgres>) -> Result<()> {
        let s = &self.shadow;
        sqlx::query(&format!("CREATE SCHEMA {s}"))
            .execute(&mut **tx)
            .await?;
        for table in BOOKKEEPING {
            sqlx::query(&format!(
                "CREATE TABLE {s}.{table} (LIKE read_models.{table} INCLUDING ALL)"
            ))
            .execute(&mut **tx)
            .await?;
        }
        for table in self.projection.tables() {
            let t = quote_ident(table.name);
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(format!("read_models.{t}"))
                .fetch_one(&mut **tx)
                .await?;
            if !exists {
                return Err(
                    self.unsupported(format!("table read_models.{} does not exist", table.name))
                );
            }
            sqlx::query(&format!(
                "CREATE TABLE {s}.{t} (LIKE read_models.{t} INCLUDING ALL EXCLUDING INDEXES)"
            ))
            .execute(&mut **tx)
            .await?;
            let keys: Vec<(String, String)> = sqlx::query_as(
                "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'x') ORDER BY conname",
            )
            .bind(format!("read_models.{t}"))
            .fetch_all(&mut **tx)
            .await?;
            for (name, definition) in keys {
                sqlx::query(&format!(
                    "ALTER TABLE {s}.{t} ADD CONSTRAINT {} {definition}",
                    quote_ident(&name)
                ))
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    /// The shadow tables' secondary indexes and foreign keys, named as in
    /// `read_models`.
    async fn finish_shadow(&self, tx: &mut Transaction<'_, Postgres>) -> Result<()> {
        let s = &self.shadow;
        let own: HashSet<&str> = self.projection.tables().iter().map(|t| t.name).collect();
        // With `read_models` as search_path, definitions name its tables
        // unqualified; they are executed with the shadow schema's.
        sqlx::query("SELECT set_config('search_path', 'read_models', true)")
            .execute(&mut **tx)
            .await?;
        let mut statements = Vec::new();
        for table in self.projection.tables() {
            let t = quote_ident(table.name);
            let regclass = format!("read_models.{t}");
            let indexes: Vec<(String, bool, String)> = sqlx::query_as(
                "SELECT i.relname::text, x.indisunique, pg_get_indexdef(x.indexrelid) \
                 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
                 WHERE x.indrelid = $1::regclass \
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c \
                                   WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid \
                                     AND c.contype IN ('p', 'u', 'x')) \
                 ORDER BY 1",
            )
            .bind(&regclass)
            .fetch_all(&mut **tx)
            .await?;
            for (name, unique, definition) in indexes {
                let Some((_, method)) = definition.split_once(" USING ") else {
                    return Err(self.unsupported(format!("index {name}: {definition}")));
                };
                statements.push(format!(
                    "CREATE {}INDEX {} ON {s}.{t} USING {method}",
                    if unique { "UNIQUE " } else { "" },
                    quote_ident(&name)
                ));
            }
            let foreign: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT conname::text, pg_get_constraintdef(oid), \
                        (SELECT relname::text FROM pg_class WHERE oid = confrelid) \
                 FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f' ORDER BY 1",
            )
            .bind(&regclass)
            .fetch_all(&mut **tx)
            .await?;
            for (name, definition, target) in foreign {
                if !own.contains(target.as_str()) {
                    return Err(self.unsupported(format!(
                        "foreign key {name} of {} points to {target}, a table of another projection",
                        table.name
                    )));
                }
                statements.push(format!(
                    "ALTER TABLE {s}.{t} ADD CONSTRAINT {} {definition}",
                    quote_ident(&name)
                ));
            }
        }
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(s)
            .execute(&mut **tx)
            .await?;
        for statement in statements {
            sqlx::query(&statement).execute(&mut **tx).await?;
        }
        Ok(())
    }

    fn unsupported(&self, reason: String) -> Error {
        Error::Unsupported {
            projection: self.name().to_owned(),
            reason,
        }
    }

    /// Phase 3: the bulk replay, a window per transaction, reading the next
    /// window while the current one is applied.
    async fn replay(
        &self,
        state: &mut State,
        start: u64,
        started: Instant,
        resumed_from: u64,
        shutdown: &CancellationToken,
        report: &mut (dyn FnMut(Phase, &State) + Send),
    ) -> Result<()> {
        let mut parked: HashSet<String> = sqlx::query_scalar(&format!(
            "SELECT stream_id FROM {}.parked WHERE projection = $1",
            self.shadow
        ))
        .bind(self.name())
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .collect();
        // A throttled rebuild writes about a second's worth per transaction,
        // not a burst of a whole window and then a long pause.
        let window = match self.options.max_events_per_second {
            Some(rate) => self
                .options
                .batch_size
                .min(usize::try_from(rate).unwrap_or(usize::MAX).max(1)),
            None => self.options.batch_size,
        };
        let chunk = i64::try_from(window.min(READ_CHUNK)).unwrap_or(i64::MAX);
        // The reader reads the log in chunks, ahead of the apply; it ends
        // after a short read taken once every transaction older than the
        // rebuild had finished (see `catch_up`). Each chunk says whether it
        // was a short read: the log's head, where a window is applied
        // without waiting for more.
        // Room for a whole window: the next one is read while this one applies.
        let (sender, mut chunks) = tokio::sync::mpsc::channel::<Result<(Vec<RecordedEvent>, bool)>>(
            window.div_ceil(READ_CHUNK.min(window)) + 1,
        );
        let reader = {
            let store = self.store.clone();
            let types = self.types;
            let mut after = state.checkpoint;
            tokio::spawn(async move {
                loop {
                    let read = async {
                        let passed = horizon(store.pool()).await? >= start;
                        let events = store.read_all_of_types(after, types, chunk).await?;
                        Ok::<_, Error>((events, passed))
                    }
                    .await;
                    let (events, passed) = match read {
                        Ok(read) => read,
                        Err(error) => {
                            let _ = sender.send(Err(error)).await;
                            return;
                        }
                    };
                    let short = (events.len() as i64) < chunk;
                    if events.is_empty() && !passed {
                        tokio::time::sleep(HORIZON_POLL).await;
                        continue;
                    }
                    if let Some(event) = events.last() {
                        after = event.checkpoint();
                    }
                    if sender.send(Ok((events, short))).await.is_err() || (short && passed) {
                        return;
                    }
                }
            })
        };
        let _abort_reader = AbortOnDrop(reader);
        // A window of up to `batch_size` events, folded and written in one
        // transaction: a row that several of its events change is written
        // once per window, not once per chunk read.
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut ended = false;
        while !ended {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Err(self.interrupted(state)),
                next = chunks.recv() => next,
            };
            let at_head = match next {
                Some(chunk) => {
                    let (chunk, short) = chunk?;
                    if events.is_empty() {
                        events = chunk;
                    } else {
                        events.extend(chunk);
                    }
                    short
                }
                None => {
                    ended = true;
                    true
                }
            };
            // Whole windows; at the head (or the end), what there is.
            while !events.is_empty() && (events.len() >= window || at_head) {
                let rest = events.split_off(window.min(events.len()));
                self.replay_batch(&events, &mut parked, state).await?;
                events = rest;
                report(Phase::Replay, state);
                self.throttle(started, state.events_done - resumed_from, shutdown)
                    .await;
                if shutdown.is_cancelled() {
                    return Err(self.interrupted(state));
                }
            }
        }
        Ok(())
    }

    /// Sleeps as long as the throttle asks (or until `shutdown`).
    async fn throttle(&self, started: Instant, done: u64, shutdown: &CancellationToken) {
        let Some(rate) = self.options.max_events_per_second.filter(|r| *r > 0) else {
            return;
        };
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(ahead) => {}
            }
        }
    }

    fn interrupted(&self, state: &State) -> Error {
        Error::Interrupted {
            projection: self.name().to_owned(),
            events_done: state.events_done,
        }
    }

    /// One replay batch and its checkpoint, in one transaction.
    async fn replay_batch(
        &self,
        events: &[RecordedEvent],
        parked: &mut HashSet<String>,
        state: &mut State,
    ) -> Result<()> {
        let projector = self.projector();
        let mut conn = self.pool().acquire().await?;
        // In the log's order, each stream's events are its next versions.
        let mut streams: BTreeMap<&str, Vec<&RecordedEvent>> = BTreeMap::new();
        for event in events.iter().filter(|e| !parked.contains(&e.stream_id)) {
            streams.entry(&event.stream_id).or_default().push(event);
        }
        let slices: Vec<&[&RecordedEvent]> = streams.values().map(Vec::as_slice).collect();

        let mut tx = conn.begin().await?;
        projector.enter(&mut tx).await?;
        let mut before = Writes::take(&mut tx).await?;
        match self.projection.apply_many(&mut tx, &slices).await {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Err(error_of(events, error)),
            Err(error) => {
                tracing::warn!(projection = self.name(), error = %error, "replay batch failed; applying it event by event");
                tx.rollback().await?;
                tx = conn.begin().await?;
                projector.enter(&mut tx).await?;
                before = Writes::take(&mut tx).await?;
                for (stream_id, events) in &streams {
                    for event in events {
                        match projector.apply_with_retries(&mut tx, event).await? {
                            Ok(()) => {}
                            Err((error, _)) if error.is_transient() => {
                                return Err(error_of(std::slice::from_ref(*event), error))
                            }
                            Err((error, attempts)) => {
                                tracing::error!(projection = self.name(), stream_id, event_id = %event.event_id, error = %error, attempts, "poison event: parking its stream in the rebuild");
                                park(&mut tx, self.name(), event, &error, attempts).await?;
                                parked.insert((*stream_id).to_owned());
                                break;
                            }
                        }
                    }
                }
            }
        }
        self.check_live_untouched(&mut tx, &before).await?;
        let next = self.advance(&mut tx, state, events).await?;
        tx.commit().await?;
        *state = next;
        Ok(())
    }

    /// Moves the checkpoint past `events` (in `tx`); returns the new state,
    /// to adopt once `tx` commits.
    async fn advance(
        &self,
        tx: &mut PgConnection,
        state: &State,
        events: &[RecordedEvent],
    ) -> Result<State> {
        let Some(last) = events.last() else {
            return Ok(*state);
        };
        let next = State {
            checkpoint: last.checkpoint(),
            events_done: state.events_done + events.len() as u64,
            last_position: events
                .iter()
                .map(|e| e.position)
                .fold(state.last_position, i64::max),
            ..*state
        };
        sqlx::query(
            "UPDATE read_models.rebuilds SET transaction_id = $2::text::xid8, position = $3, \
                events_done = $4, last_position = $5, updated_at = now() \
             WHERE projection = $1",
        )
        .bind(self.name())
        .bind(next.checkpoint.transaction_id.to_string())
        .bind(next.checkpoint.position)
        .bind(i64::try_from(next.events_done).unwrap_or(i64::MAX))
        .bind(next.last_position)
        .execute(&mut *tx)
        .await?;
        Ok(next)
    }

    /// Fails if the transaction wrote to a table of `read_models` since
    /// `before` was taken: the projection names a table qualified, bypassing
    /// the shadow schema.
    async fn check_live_untouched(&self, tx: &mut PgConnection, before: &Writes) -> Result<()> {
        let after = Writes::take(tx).await?;
        match after.live_written_since(before) {
            Some(table) => Err(Error::WritesLiveTables {
                projection: self.name().to_owned(),
                table: table.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Phase 4: the replayed checkpoint, indexes and foreign keys, statistics.
    async fn enter_catch_up(&self, state: &mut State) -> Result<()> {
        let s = &self.shadow;
        let mut tx = self.pool().begin().await?;
        self.finish_shadow(&mut tx).await?;
        // Every event up to the checkpoint is applied, recorded as the
        // replayed checkpoint rather than a row per stream (migration 0007),
        // but for the parked streams: they stopped before their parked event.
        sqlx::query(&format!(
            "INSERT INTO {s}.projection_status \
                (projection, last_position, last_transaction_id, events_applied, updated_at, \
                 replayed_transaction_id, replayed_position, replayed_events) \
             VALUES ($1, $2, $3, $4, now(), $5::text::xid8, $6, $4)"
        ))
        .bind(self.name())
        .bind(state.last_position)
        .bind(i64::try_from(state.checkpoint.transaction_id).unwrap_or(i64::MAX))
        .bind(i64::try_from(state.events_done).unwrap_or(i64::MAX))
        .bind(state.checkpoint.transaction_id.to_string())
        .bind(state.checkpoint.position)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {s}.applied (projection, stream_id, version, base) \
             SELECT p.projection, p.stream_id, p.version - 1, \
                    (SELECT coalesce(max(e.version), 0) FROM event_store.events AS e \
                     WHERE e.stream_id = p.stream_id \
                       AND (e.transaction_id, e.position) <= ($2::text::xid8, $3)) \
             FROM {s}.parked AS p WHERE p.projection = $1"
        ))
        .bind(self.name())
        .bind(state.checkpoint.transaction_id.to_string())
        .bind(state.checkpoint.position)
        .execute(&mut *tx)
        .await?;
        let tables: Vec<String> = self
            .projection
            .tables()
            .iter()
            .map(|t| format!("{s}.{}", quote_ident(t.name)))
            .chain(std::iter::once(format!("{s}.applied")))
            .collect();
        sqlx::query(&format!("ANALYZE {}", tables.join(", ")))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE read_models.rebuilds SET phase = 'catch_up', updated_at = now() \
             WHERE projection = $1",
        )
        .bind(self.name())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        state.phase = Phase::CatchUp;
        Ok(())
    }

    /// Phase 4, continued: what the log got meanwhile, until a read comes
    /// back short (the rebuild has reached the head) and every transaction
    /// older than the rebuild has finished (so the gap-safe read has passed
    /// every event committed before the rebuild started).
    async fn catch_up(
        &self,
        state: &mut State,
        start: u64,
        shutdown: &CancellationToken,
        report: &mut (dyn FnMut(Phase, &State) + Send),
    ) -> Result<()> {
        let projector = self.projector();
        let batch = i64::try_from(self.options.batch_size.min(CATCH_UP_BATCH)).unwrap_or(i64::MAX);
        let mut waiting = false;
        loop {
            if shutdown.is_cancelled() {
                return Err(self.interrupted(state));
            }
            // Taken before the read: if every transaction that had started
            // when the rebuild did has finished, a short read means the
            // rebuild holds every event committed before it started.
            let passed = horizon(self.pool()).await? >= start;
            let events = self
                .store
                .read_all_of_types(state.checkpoint, self.types, batch)
                .await?;
            if !events.is_empty() {
                let mut tx = self.pool().begin().await?;
                let before = Writes::take(&mut tx).await?;
                projector.apply_batch_in(&mut tx, &events).await?;
                self.check_live_untouched(&mut tx, &before).await?;
                let next = self.advance(&mut tx, state, &events).await?;
                tx.commit().await?;
                *state = next;
                report(Phase::CatchUp, state);
            }
            if (events.len() as i64) < batch {
                if passed {
                    return Ok(());
                }
                // A transaction older than the rebuild is still open
                // (anywhere on the server): the gap-safe read cannot pass it.
                if !waiting {
                    tracing::info!(
                        projection = self.name(),
                        "waiting for transactions older than the rebuild to finish"
                    );
                    waiting = true;
                }
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(HORIZON_POLL) => {}
                }
            }
        }
    }

    /// Phase 5, retried when its locks are not granted in time.
    async fn swap(&self, state: &mut State) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.try_swap(state).await {
                Err(Error::Database(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("55P03") && attempt < SWAP_ATTEMPTS =>
                {
                    tracing::warn!(projection = self.name(), attempt, error = %e, "swap could not take its locks; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn try_swap(&self, state: &mut State) -> Result<()> {
        let s = &self.shadow;
        let name = self.name();
        let projector = self.projector();
        let batch = i64::try_from(self.options.batch_size.min(CATCH_UP_BATCH)).unwrap_or(i64::MAX);
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        // The live workers of this projection wait from here on.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
            .bind(APPLY_LOCK)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let before = Writes::take(&mut tx).await?;

        // The last events of the log.
        let mut next = *state;
        loop {
            let events = self
                .store
                .read_all_of_types(next.checkpoint, self.types, batch)
                .await?;
            if events.is_empty() {
                break;
            }
            projector.apply_batch_in(&mut tx, &events).await?;
            next = self.advance(&mut tx, &next, &events).await?;
            if (events.len() as i64) < batch {
                break;
            }
        }
        // Streams the live workers got further in than the shadow: one with
        // a row in the shadow (parked there, unparked live, or met in
        // catch-up) the live row passes, or one the live workers applied an
        // event of that the gap-safe read does not show yet (beyond the
        // shadow's checkpoint); everything else up to that checkpoint the
        // shadow holds. With the version the shadow has of each.
        let behind: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT l.stream_id, s.version FROM {s}.applied AS s \
             JOIN read_models.applied AS l ON l.projection = s.projection AND l.stream_id = s.stream_id \
             WHERE s.projection = $1 AND l.version > s.version \
             UNION \
             SELECT l.stream_id, \
                    (SELECT coalesce(max(f.version), 0) FROM event_store.events AS f \
                     JOIN {s}.projection_status AS st ON st.projection = $1 \
                      AND (f.transaction_id, f.position) \
                          <= (st.replayed_transaction_id, st.replayed_position) \
                     WHERE f.stream_id = l.stream_id) \
             FROM event_store.events AS e \
             JOIN read_models.applied AS l \
               ON l.projection = $1 AND l.stream_id = e.stream_id AND l.version >= e.version \
             WHERE e.stream_type = ANY($2) AND (e.transaction_id, e.position) > ($3::text::xid8, $4) \
               AND NOT EXISTS (SELECT 1 FROM {s}.applied AS s \
                               WHERE s.projection = $1 AND s.stream_id = e.stream_id)"
        ))
        .bind(name)
        .bind(self.types)
        .bind(next.checkpoint.transaction_id.to_string())
        .bind(next.checkpoint.position)
        .fetch_all(&mut *tx)
        .await?;
        if !behind.is_empty() {
            let mut events = Vec::new();
            for (stream_id, version) in &behind {
                let Some(stream) = parse_stream_id(stream_id, self.types) else {
                    continue;
                };
                let from = u64::try_from(*version).unwrap_or_default() + 1;
                events.extend(self.store.read_stream(&stream, from).await?);
            }
            tracing::info!(
                projection = name,
                streams = behind.len(),
                events = events.len(),
                "applying to the shadow what the live workers applied beyond it"
            );
            projector.apply_batch_in(&mut tx, &events).await?;
        }
        self.check_live_untouched(&mut tx, &before).await?;
        // The shadow's bookkeeping replaces the live one.
        for (table, columns) in [
            ("applied", "projection, stream_id, version, base"),
            (
                "parked",
                "projection, stream_id, version, event_id, error, attempts, parked_at",
            ),
            (
                "projection_status",
                "projection, last_position, last_transaction_id, events_applied, updated_at, \
                 replayed_transaction_id, replayed_position, replayed_events",
            ),
        ] {
            sqlx::query(&format!(
                "DELETE FROM read_models.{table} WHERE projection = $1"
            ))
            .bind(name)
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "INSERT INTO read_models.{table} ({columns}) SELECT {columns} FROM {s}.{table} \
                 WHERE projection = $1"
            ))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        // Grants on the live tables carry over to the new ones (a Query API
        // running as a role that may only read them goes on reading), and so
        // does their owner, when it is not the role rebuilding.
        let mut owners = Vec::new();
        for table in self.projection.tables() {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT quote_ident(pg_get_userbyid(relowner)) FROM pg_class \
                 WHERE oid = $1::regclass AND pg_get_userbyid(relowner) <> current_user",
            )
            .bind(format!("read_models.{}", quote_ident(table.name)))
            .fetch_optional(&mut *tx)
            .await?;
            owners.push((table.name, owner));
            let shadow_table = format!("{s}.{}", quote_ident(table.name));
            let grants: Vec<String> = sqlx::query_scalar(
                "SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, $2::text, \
                        CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, \
                        CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
                 FROM pg_class AS c CROSS JOIN LATERAL aclexplode(c.relacl) AS a \
                 LEFT JOIN pg_roles AS r ON r.oid = a.grantee \
                 WHERE c.oid = $1::regclass AND a.grantee <> c.relowner \
                 ORDER BY 1",
            )
            .bind(format!("read_models.{}", quote_ident(table.name)))
            .bind(&shadow_table)
            .fetch_all(&mut *tx)
            .await?;
            for grant in grants {
                sqlx::query(&grant).execute(&mut *tx).await?;
            }
        }
        // The tables: from here to the commit the Query API's reads of them wait.
        for table in self.projection.tables().iter().rev() {
            sqlx::query(&format!(
                "DROP TABLE read_models.{}",
                quote_ident(table.name)
            ))
            .execute(&mut *tx)
            .await?;
        }
        for table in self.projection.tables() {
            sqlx::query(&format!(
                "ALTER TABLE {s}.{} SET SCHEMA read_models",
                quote_ident(table.name)
            ))
            .execute(&mut *tx)
            .await?;
        }
        for (table, owner) in owners {
            if let Some(owner) = owner {
                sqlx::query(&format!(
                    "ALTER TABLE read_models.{} OWNER TO {owner}",
                    quote_ident(table)
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(&format!("DROP SCHEMA {s} CASCADE"))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM read_models.rebuilds WHERE projection = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        *state = next;
        Ok(())
    }
}

/// Rows written to each table by this backend and not yet reported to the
/// cumulative statistics, by table oid, with the table's name when it is in
/// `read_models` (but the rebuild's own `rebuilds`). The counts only grow
/// within a transaction, so two readings bracket what it wrote. By oid,
/// because a shadow table written earlier on this connection may have been
/// swapped into `read_models` (by another rebuild) in between.
struct Writes(Vec<(i64, Option<String>, i64)>);

impl Writes {
    async fn take(tx: &mut PgConnection) -> Result<Writes> {
        Ok(Writes(
            sqlx::query_as(
                "SELECT relid::int8, \
                        CASE WHEN schemaname = 'read_models' AND relname <> 'rebuilds' \
                             THEN relname::text END, \
                        n_tup_ins + n_tup_upd + n_tup_del \
                 FROM pg_stat_xact_user_tables",
            )
            .fetch_all(&mut *tx)
            .await?,
        ))
    }

    /// A table of `read_models` written since `before`.
    fn live_written_since(&self, before: &Writes) -> Option<&str> {
        self.0.iter().find_map(|(oid, name, n)| {
            let name = name.as_deref()?;
            let earlier = before
                .0
                .iter()
                .find(|(o, _, _)| o == oid)
                .map_or(0, |(_, _, n)| *n);
            (earlier < *n).then_some(name)
        })
    }
}

/// The oldest transaction id still in flight on the server: the gap-safe
/// read returns only events of older transactions.
async fn horizon(pool: &PgPool) -> Result<u64> {
    let xmin: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?;
    Ok(u64::try_from(xmin).unwrap_or_default())
}

/// Aborts the reader task when the replay returns, however it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn error_of(events: &[RecordedEvent], source: ApplyError) -> Error {
    match events.first() {
        Some(event) => Error::Apply {
            stream_id: event.stream_id.clone(),
            event_id: event.event_id,
            source,
        },
        None => Error::Database(sqlx::Error::Protocol(source.to_string())),
    }
}
