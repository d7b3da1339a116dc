//! The saga backlog: orders placed whose saga has not started yet, and how
//! long the oldest has waited. What `/metrics` shows and what the Command
//! API refuses new orders over (the API guide, 503 `saga_backlog`).
//!
//! Bounded by the backlog itself, never by the log: the candidates are the
//! `OrderPlaced` events the trigger has not passed yet (a range scan of
//! `events_saga_trigger_idx` from its checkpoint) and the sagas due in
//! `saga.due` (sagas not over); each is one index lookup of its saga's first
//! event.

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
/// saga has a stream.
const BACKLOG: &str = "\
WITH candidates AS (
    SELECT substr(e.stream_id, 7)::uuid AS order_id
    FROM event_store.events e, saga.trigger t
    WHERE e.stream_type IN ('order', 'saga')
      AND e.event_type IN ('OrderPlaced', 'CancellationRequested', 'SagaRetried')
      AND (e.transaction_id, e.position) > (t.transaction_id, t.position)
      AND e.event_type = 'OrderPlaced'
    UNION
    SELECT order_id FROM saga.due
)
SELECT count(*), coalesce(extract(epoch FROM now() - min(placed.recorded_at))::float8, 0)
FROM candidates c
JOIN event_store.events placed
  ON placed.stream_id = 'order-' || c.order_id AND placed.version = 1
WHERE NOT EXISTS (
    SELECT FROM event_store.events s WHERE s.stream_id = 'saga-' || c.order_id AND s.version = 1
)";

impl Backlog {
    /// Measures the backlog now.
    #[tracing::instrument(skip_all, err)]
    pub async fn measure(pool: &PgPool) -> Result<Backlog> {
        let (orders, oldest): (i64, f64) = sqlx::query_as(BACKLOG).fetch_one(pool).await?;
        Ok(Backlog {
            orders: u64::try_from(orders).unwrap_or(0),
            oldest: Duration::try_from_secs_f64(oldest.max(0.0)).unwrap_or_default(),
        })
    }
}
