//! Rebuilding a projection from the event store, never from Kafka
//! (design decision 6), without taking the Query API down.
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
//!
//! Each phase is a module: `lock` (1), `shadow` (2, and the indexes and
//! foreign keys of 4), `replay` (3), `catch_up` (4), `swap` (5); `writes`
//! guards every transaction of a rebuild against a projection that writes
//! the live tables by name.

mod catch_up;
mod lock;
mod replay;
mod shadow;
mod swap;
mod writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{Checkpoint, EventStore, RecordedEvent};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::projector::quote_ident;
use crate::{Error, Projection, Projector, Result, DEFAULT_MAX_ATTEMPTS};

pub use lock::is_running;
pub(crate) use lock::RebuildLock;

/// Events per transaction unless told otherwise (`--batch-size`).
pub const DEFAULT_BATCH_SIZE: usize = 100_000;

/// Events per transaction, at most, once the bulk replay is over: catch-up
/// applies through the [`Projector`] (a poison event makes it retry the
/// batch event by event), and the swap holds the live workers back while it
/// applies the last events.
const CATCH_UP_BATCH: usize = 5_000;

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
    /// apply at most 5 000 events per transaction.
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
    /// The phase's name, as `GET /projections` shows it.
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
    /// The projection rebuilt.
    pub projection: &'static str,
    /// The phase the rebuild is in.
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
    /// The projection rebuilt.
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
pub(crate) fn shadow_schema(projection: &str) -> String {
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

/// A rebuild's persisted progress (`read_models.rebuilds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    phase: Phase,
    checkpoint: Checkpoint,
    events_done: u64,
    last_position: i64,
}

/// One run of a rebuild; its phases are methods, one module each.
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

    /// Phases 2 to 5 (the caller holds the lock), resuming where an
    /// interrupted run stopped.
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

    fn unsupported(&self, reason: String) -> Error {
        Error::Unsupported {
            projection: self.name().to_owned(),
            reason,
        }
    }

    fn interrupted(&self, state: &State) -> Error {
        Error::Interrupted {
            projection: self.name().to_owned(),
            events_done: state.events_done,
        }
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
}
