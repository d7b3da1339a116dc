//! The orchestrator's work queue, `saga.due`: which sagas may have something
//! to do, and from when. Only a hint: the saga streams are the truth.

use std::time::Instant;

use chrono::{DateTime, Utc};
use domain::OrderId;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// A saga taken from the queue, leased to one orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The order whose saga it is.
    pub order_id: OrderId,
    /// The wake-up count when claimed (see [`Queue::reschedule`]).
    pub wakeups: i64,
    /// Just before the claim was asked for: its lease runs at least as
    /// long as asked from then.
    pub leased_at: Instant,
}

/// `saga.due`, seen by one orchestrator (`owner`).
#[derive(Debug, Clone)]
pub struct Queue {
    pool: PgPool,
    owner: Uuid,
}

impl Queue {
    /// The queue on `pool`, seen by a new owner (a fresh id for its leases).
    pub fn new(pool: PgPool) -> Self {
        Queue {
            pool,
            owner: Uuid::now_v7(),
        }
    }

    /// This orchestrator's lease owner id.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Makes the saga of `order_id` due now (a trigger, a cancellation, an
    /// operator's retry). A saga being driven meanwhile is looked at again
    /// as soon as its driver lets it go.
    #[tracing::instrument(skip(self), fields(%order_id), err)]
    pub async fn wake(&self, order_id: OrderId) -> Result<()> {
        sqlx::query(
            "INSERT INTO saga.due (order_id, due_at) VALUES ($1, now()) \
             ON CONFLICT (order_id) DO UPDATE \
             SET due_at = LEAST(saga.due.due_at, now()), wakeups = saga.due.wakeups + 1",
        )
        .bind(order_id.as_uuid())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes up to `limit` due sagas that nobody holds (or whose holder's
    /// lease ran out), leasing them for `lease_ms`.
    #[tracing::instrument(skip(self), err)]
    pub async fn claim(&self, limit: usize, lease_ms: u64) -> Result<Vec<Claimed>> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let leased_at = Instant::now();
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            "UPDATE saga.due AS d \
             SET lease_owner = $1, lease_until = now() + make_interval(secs => $3::float8 / 1000) \
             WHERE d.order_id IN ( \
                 SELECT order_id FROM saga.due \
                 WHERE due_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
                 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING d.order_id, d.wakeups",
        )
        .bind(self.owner)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(lease_ms as f64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(order_id, wakeups)| Claimed {
                order_id: OrderId::new(order_id),
                wakeups,
                leased_at,
            })
            .collect())
    }

    /// Extends this orchestrator's lease on a saga it drives. `false` when
    /// the lease was lost (it ran out and another orchestrator took over).
    pub async fn renew(&self, order_id: OrderId, lease_ms: u64) -> Result<bool> {
        let renewed = sqlx::query(
            "UPDATE saga.due SET lease_until = now() + make_interval(secs => $3::float8 / 1000) \
             WHERE order_id = $1 AND lease_owner = $2",
        )
        .bind(order_id.as_uuid())
        .bind(self.owner)
        .bind(lease_ms as f64)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Lets a saga go until `due_at`, unless it was woken since it was
    /// claimed: then it is due now.
    pub async fn reschedule(&self, claimed: Claimed, due_at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE saga.due \
             SET due_at = CASE WHEN wakeups = $3 THEN $4 ELSE now() END, \
                 lease_owner = NULL, lease_until = NULL \
             WHERE order_id = $1 AND lease_owner = $2",
        )
        .bind(claimed.order_id.as_uuid())
        .bind(self.owner)
        .bind(claimed.wakeups)
        .bind(due_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a saga that has nothing left to do (finished, or waiting for
    /// an operator), unless it was woken since it was claimed.
    pub async fn finish(&self, claimed: Claimed) -> Result<()> {
        let deleted = sqlx::query(
            "DELETE FROM saga.due WHERE order_id = $1 AND lease_owner = $2 AND wakeups = $3",
        )
        .bind(claimed.order_id.as_uuid())
        .bind(self.owner)
        .bind(claimed.wakeups)
        .execute(&self.pool)
        .await?;
        if deleted.rows_affected() == 0 {
            self.reschedule(claimed, Utc::now()).await?;
        }
        Ok(())
    }

    /// Sagas in the queue (due or not), for tests and `purser saga status`.
    pub async fn len(&self) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM saga.due")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }
}
