//! The saga backlog: orders placed whose saga has not started yet, and how
//! long the oldest has waited. What `/metrics` shows and what the Command
//! API refuses new orders over (the API guide, 503 `saga_backlog`).
//!
//! Bounded by the backlog itself, never by the log: the candidates are the
//! `OrderPlaced` events the trigger has not passed yet (a range scan of
//! `events_saga_trigger_idx` from its checkpoint) and the sagas due in
//! `saga.due` (sagas not over); each is one index lookup of its order's and
//! its saga's first event.
//!
//! The query is written so that no plan can read more than that. The
//! planner's figures for `saga.trigger` (one row rewritten at every step) and
//! `saga.due` (rows that come and go by the second) are seldom right, and
//! when the checkpoint was a joined row, or the lookups joins, it chose to
//! filter every trigger event ever and to hash the whole log's first events:
//! a measure that grew with history (65 ms at 37,000 events, 520 at 125,000,
//! for a backlog of 20). Hence the checkpoint as scalar subqueries (constants
//! for the index range), and the lookups as scalar subqueries (one index
//! probe per candidate, never a join the planner could turn into a scan).

use std::time::Duration;

use sqlx::PgPool;

use crate::Result;

/// Orders placed and not started by a saga.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// How many.
    pub orders: u64,
    /// How long ago the oldest of them was placed (zero when none).
    pub oldest: Duration,
}

/// The trigger's read (`trigger::READ`'s predicate, word for word, so that
/// the partial index serves it) united with the due sagas, less those whose
/// saga has a stream. `waiting` is materialised so that each candidate's
/// lookups run once, not once per aggregate that reads them.
const BACKLOG: &str = "\
WITH candidates AS (
    SELECT substr(e.stream_id, 7)::uuid AS order_id
    FROM event_store.events e
    WHERE e.stream_type IN ('order', 'saga')
      AND e.event_type IN ('OrderPlaced', 'CancellationRequested', 'SagaRetried')
      AND (e.transaction_id, e.position)
          > ((SELECT transaction_id FROM saga.trigger), (SELECT position FROM saga.trigger))
      AND e.event_type = 'OrderPlaced'
    UNION
    SELECT order_id FROM saga.due
), waiting AS MATERIALIZED (
    SELECT (
        SELECT placed.recorded_at FROM event_store.events placed
        WHERE placed.stream_id = 'order-' || c.order_id AND placed.version = 1
    ) AS placed_at
    FROM candidates c
    WHERE (
        SELECT true FROM event_store.events s
        WHERE s.stream_id = 'saga-' || c.order_id AND s.version = 1
    ) IS NULL
)
SELECT count(placed_at), coalesce(extract(epoch FROM now() - min(placed_at))::float8, 0)
FROM waiting";

impl Backlog {
    /// The statement [`Backlog::measure`] runs (for a look at its plan).
    pub const QUERY: &'static str = BACKLOG;

    /// Measures the backlog now.
    #[tracing::instrument(skip_all, err)]
    pub async fn measure(pool: &PgPool) -> Result<Backlog> {
        let mut transaction = pool.begin().await?;
        // A cost estimated from saga.due's figures (off by thousands of rows
        // when it has not been analysed since it churned) crosses
        // `jit_above_cost`, and compiling the plan then took longer (130 ms)
        // than running it. Read only: the transaction takes no xid, so it
        // holds no reader's horizon back.
        sqlx::query("SET LOCAL jit = off")
            // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
            .persistent(false)
            .execute(&mut *transaction)
            .await?;
        let (orders, oldest): (i64, f64) = sqlx::query_as(BACKLOG)
            // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
            .persistent(false)
            .fetch_one(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(Backlog {
            orders: u64::try_from(orders).unwrap_or(0),
            oldest: Duration::try_from_secs_f64(oldest.max(0.0)).unwrap_or_default(),
        })
    }
}
