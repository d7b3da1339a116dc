//! Whether the read models are being kept up, read from the database (so a
//! Query API in another process than the workers can tell): each worker
//! that has joined its consumer group and been given partitions records the
//! event store's head among its projection's stream types at that moment
//! (`read_models.workers`, migration 0012), and refreshes its row while it
//! runs. A projection is ready when one of its live members' projection has
//! applied up to the head that member started at: from then on a command is
//! readable as soon as the relay and the consumer deliver it, instead of
//! waiting for a consumer group still forming, or behind a backlog.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::{Projection, Result};

/// How often a running worker refreshes its row.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A member not seen for this long is dead: it counts for nothing.
pub const EXPIRY: Duration = Duration::from_secs(15);

/// Where a projection stands for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// No live member has been given partitions yet.
    NoWorker,
    /// A member consumes, but the projection has not applied what the store
    /// held when it started (`checkpoint < start_head`).
    CatchingUp {
        /// How far the projection has applied.
        checkpoint: i64,
        /// What the store held when the member started.
        start_head: i64,
    },
    /// A member consumes and the projection applied what the store held
    /// when it started.
    Ready,
}

impl Readiness {
    /// `no_worker`, `catching_up` or `ok`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Readiness::NoWorker => "no_worker",
            Readiness::CatchingUp { .. } => "catching_up",
            Readiness::Ready => "ok",
        }
    }

    /// Whether the projection is ready.
    pub fn is_ready(&self) -> bool {
        *self == Readiness::Ready
    }
}

/// The event store's head among `projection`'s stream types (0 when empty).
pub async fn head(pool: &PgPool, projection: &dyn Projection) -> Result<i64> {
    let types: Vec<String> = projection
        .stream_types()
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    Ok(sqlx::query_scalar(
        "SELECT coalesce(max(position), 0) FROM event_store.events WHERE stream_type = ANY($1)",
    )
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(&types)
    .fetch_one(pool)
    .await?)
}

/// Records that `member` of `projection`'s group has partitions, with the
/// store's head now as what it must have applied to be ready; deletes the
/// rows of members not seen for [`EXPIRY`].
pub async fn joined(pool: &PgPool, projection: &dyn Projection, member: Uuid) -> Result<i64> {
    let start_head = head(pool, projection).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "DELETE FROM read_models.workers \
         WHERE projection = $1 AND seen_at < now() - make_interval(secs => $2)",
    )
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(projection.name())
    .bind(EXPIRY.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO read_models.workers (projection, member, start_head) VALUES ($1, $2, $3) \
         ON CONFLICT (projection, member) DO UPDATE SET seen_at = now()",
    )
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(projection.name())
    .bind(member)
    .bind(start_head)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(start_head)
}

/// `member` still runs.
pub async fn heartbeat(pool: &PgPool, projection: &str, member: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE read_models.workers SET seen_at = now() WHERE projection = $1 AND member = $2",
    )
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(projection)
    .bind(member)
    .execute(pool)
    .await?;
    Ok(())
}

/// `member` stopped.
pub async fn left(pool: &PgPool, projection: &str, member: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM read_models.workers WHERE projection = $1 AND member = $2")
        // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
        .persistent(false)
        .bind(projection)
        .bind(member)
        .execute(pool)
        .await?;
    Ok(())
}

/// Where each of `projections` stands, in their order, in one query.
pub async fn check(pool: &PgPool, projections: &[&str]) -> Result<Vec<(String, Readiness)>> {
    let rows: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT p.name, \
                (SELECT min(w.start_head) FROM read_models.workers AS w \
                 WHERE w.projection = p.name \
                   AND w.seen_at >= now() - make_interval(secs => $2)), \
                coalesce((SELECT s.last_position FROM read_models.projection_status AS s \
                          WHERE s.projection = p.name), 0) \
         FROM unnest($1::text[]) WITH ORDINALITY AS p(name, n) ORDER BY p.n",
    )
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(projections)
    .bind(EXPIRY.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, start_head, checkpoint)| {
            let readiness = match start_head {
                None => Readiness::NoWorker,
                Some(start_head) if checkpoint < start_head => Readiness::CatchingUp {
                    checkpoint,
                    start_head,
                },
                Some(_) => Readiness::Ready,
            };
            (name, readiness)
        })
        .collect())
}
