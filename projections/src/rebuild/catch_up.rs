//! Phase 4: the replayed checkpoint, indexes and statistics, then what the
//! log got meanwhile, through a [`Projector`](crate::Projector) on the
//! shadow schema, until every transaction older than the rebuild has
//! finished.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::writes::Writes;
use super::{Phase, Rebuild, State, CATCH_UP_BATCH, HORIZON_POLL};
use crate::projector::quote_ident;
use crate::Result;

impl Rebuild {
    /// Phase 4: the replayed checkpoint, indexes and foreign keys, statistics.
    pub(super) async fn enter_catch_up(&self, state: &mut State) -> Result<()> {
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
    pub(super) async fn catch_up(
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
}

/// The oldest transaction id still in flight on the server: the gap-safe
/// read returns only events of older transactions.
pub(super) async fn horizon(pool: &PgPool) -> Result<u64> {
    let xmin: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?;
    Ok(u64::try_from(xmin).unwrap_or_default())
}
