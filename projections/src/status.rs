//! Where each projection stands, read from the database (never from Kafka):
//! its checkpoint, the event store's head and the lag for its stream types,
//! its parked streams, and the rebuild not swapped in yet. The Query API's
//! `GET /projections` and `/metrics` and `purser projections list|status`
//! show these views.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{Projection, Result};

/// A projection's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Highest global position applied.
    pub checkpoint: i64,
    /// Highest global position of the event store among the projection's
    /// stream types.
    pub head: i64,
    /// Events of the projection's stream types not yet applied.
    pub lag_events: i64,
    /// Up to date, catching up, or degraded.
    pub health: Health,
    /// Streams parked by a poison event.
    pub parked_streams: i64,
    /// Events applied since the read models were created.
    pub events_applied: i64,
    /// Its rebuild (`purser projections rebuild`) not swapped in yet:
    /// running now, or interrupted; `None` when there is none.
    pub rebuild: Option<RebuildStatus>,
    /// A rebuild requested over HTTP that waits for a worker process or
    /// runs ([`crate::requests`]).
    pub requested: Option<crate::requests::RebuildRequest>,
}

/// A projection's health, from its lag and parked streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Nothing to apply.
    UpToDate,
    /// Events to apply, none parked.
    CatchingUp,
    /// Some streams are parked.
    Degraded,
}

impl Health {
    /// `up_to_date`, `catching_up` or `degraded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::UpToDate => "up_to_date",
            Health::CatchingUp => "catching_up",
            Health::Degraded => "degraded",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A projection's rebuild in progress, or interrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildStatus {
    /// A process is rebuilding it now (it holds the rebuild's lock); false:
    /// interrupted, run `purser projections rebuild` again to resume.
    pub running: bool,
    /// `replay` (bulk replay of the log) or `catch_up` (what came meanwhile).
    pub phase: String,
    /// Events replayed so far, by every run of this rebuild.
    pub events_done: i64,
    /// Events of the projection's stream types in the store now: about what
    /// the rebuild replays in all (more arrive meanwhile).
    pub events_total: i64,
    /// When the rebuild started.
    pub started_at: DateTime<Utc>,
    /// When it last committed progress.
    pub updated_at: DateTime<Utc>,
}

/// A stream parked by a poison event.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ParkedStream {
    /// The parked stream.
    pub stream_id: String,
    /// The version of the event that failed.
    pub version: i64,
    /// The event that failed.
    pub event_id: uuid::Uuid,
    /// Why it failed, the last time.
    pub error: String,
    /// How many times it was tried.
    pub attempts: i32,
    /// When the stream was parked.
    pub parked_at: DateTime<Utc>,
}

/// The persisted progress of a rebuild not yet swapped in.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RebuildState {
    /// `replay` or `catch_up`.
    pub phase: String,
    /// Events replayed so far, by every run.
    pub events_done: i64,
    /// When the rebuild started.
    pub started_at: DateTime<Utc>,
    /// When it last committed progress.
    pub updated_at: DateTime<Utc>,
}

/// A projection's checkpoint, head, lag, parked streams, events applied and
/// events of its stream types (`$1` the projection, `$2` its stream types). Stream versions are
/// contiguous from 1, so the events not yet applied are the events of these
/// types minus the versions applied (those a rebuild's replayed checkpoint
/// covers, and beyond them the rows of `applied`, migration 0007): no
/// per-stream grouping of the log. The
/// count and the head come from one index-only scan of the types' entries in
/// `events_stream_type_transaction_position_idx` (migration 0005), not from
/// the table. Public for the test of its plan.
pub const PROGRESS_SQL: &str = "\
SELECT
    coalesce((SELECT last_position FROM read_models.projection_status WHERE projection = $1), 0),
    log.head,
    greatest(log.events
             - coalesce((SELECT replayed_events FROM read_models.projection_status
                         WHERE projection = $1), 0)
             - coalesce((SELECT sum(version - base) FROM read_models.applied
                         WHERE projection = $1), 0),
             0)::bigint,
    (SELECT count(*) FROM read_models.parked WHERE projection = $1),
    coalesce((SELECT events_applied FROM read_models.projection_status WHERE projection = $1), 0),
    log.events
FROM (SELECT count(*) AS events, coalesce(max(position), 0) AS head
      FROM event_store.events WHERE stream_type = ANY($2)) AS log";

/// The progress of every projection, in the order of [`crate::all`].
pub async fn all(pool: &PgPool) -> Result<Vec<ProjectionStatus>> {
    let mut statuses = Vec::new();
    for projection in crate::all() {
        statuses.push(of(pool, projection.as_ref()).await?);
    }
    Ok(statuses)
}

/// The progress of `projection`.
async fn of(pool: &PgPool, projection: &dyn Projection) -> Result<ProjectionStatus> {
    let name = projection.name();
    let types: Vec<String> = projection
        .stream_types()
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    let (checkpoint, head, lag_events, parked_streams, events_applied, events): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(PROGRESS_SQL)
        // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
        .persistent(false)
        .bind(name)
        .bind(&types)
        .fetch_one(pool)
        .await?;
    let rebuild = match rebuild_state(pool, name).await? {
        Some(state) => Some(RebuildStatus {
            running: crate::rebuild::is_running(pool, name).await?,
            phase: state.phase,
            events_done: state.events_done,
            events_total: events,
            started_at: state.started_at,
            updated_at: state.updated_at,
        }),
        None => None,
    };
    let health = if parked_streams > 0 {
        Health::Degraded
    } else if lag_events > 0 {
        Health::CatchingUp
    } else {
        Health::UpToDate
    };
    Ok(ProjectionStatus {
        name: name.to_owned(),
        checkpoint,
        head,
        lag_events,
        health,
        parked_streams,
        events_applied,
        rebuild,
        requested: crate::requests::pending(pool, name).await?,
    })
}

/// The streams `projection` has parked, by stream id.
pub async fn parked_streams(pool: &PgPool, projection: &str) -> Result<Vec<ParkedStream>> {
    Ok(sqlx::query_as(
        "SELECT stream_id, version, event_id, error, attempts, parked_at \
         FROM read_models.parked WHERE projection = $1 ORDER BY stream_id",
    )
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(projection)
    .fetch_all(pool)
    .await?)
}

/// The rebuild of `projection` that is running or was interrupted, if any
/// (whether it runs now: [`crate::rebuild::is_running`]).
pub async fn rebuild_state(pool: &PgPool, projection: &str) -> Result<Option<RebuildState>> {
    Ok(sqlx::query_as(
        "SELECT phase, events_done, started_at, updated_at \
         FROM read_models.rebuilds WHERE projection = $1",
    )
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(projection)
    .fetch_optional(pool)
    .await?)
}
