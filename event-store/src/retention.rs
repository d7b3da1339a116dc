//! How long idempotency records are kept: [`EventStore::purge_idempotency`]
//! deletes those older than a time to live, a batch per statement, so a
//! large backlog never holds many locks or one long transaction.

use std::time::Duration;

use crate::{EventStore, Result};

impl EventStore {
    /// Deletes every idempotency record created more than `older_than` ago,
    /// at most `batch` rows per statement (each its own transaction), oldest
    /// first, until none is left; returns how many it deleted. Cheap when
    /// there is nothing to delete: one probe of the index on `created_at`.
    #[tracing::instrument(skip_all, fields(older_than = ?older_than, batch, purged), err)]
    pub async fn purge_idempotency(&self, older_than: Duration, batch: u32) -> Result<u64> {
        let batch = i64::from(batch.max(1));
        let mut purged = 0;
        loop {
            // SKIP LOCKED: a row a concurrent sweep is deleting is its own.
            let deleted = sqlx::query(
                "DELETE FROM event_store.idempotency WHERE (scope, key) IN ( \
                     SELECT scope, key FROM event_store.idempotency \
                     WHERE created_at < now() - make_interval(secs => $1) \
                     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            )
            // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
            .persistent(false)
            .bind(older_than.as_secs_f64())
            .bind(batch)
            .execute(self.pool())
            .await?
            .rows_affected();
            purged += deleted;
            if deleted < batch.unsigned_abs() {
                break;
            }
        }
        tracing::Span::current().record("purged", purged);
        Ok(purged)
    }
}
