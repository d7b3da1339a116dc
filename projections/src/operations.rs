//! Operating projections (`purser projections ...`): reset, unpark, and the
//! rebuild of one stream's rows. The full rebuild is [`crate::rebuild`];
//! where each projection stands, [`crate::status`].

use std::sync::Arc;

use event_store::EventStore;
use sqlx::Connection;

use crate::projector::{parse_stream_id, quote_ident};
use crate::rebuild::{shadow_schema, RebuildLock};
use crate::{BatchReport, Error, Projection, Projector, Result, APPLY_LOCK, NOTIFY_CHANNEL};

/// Empties `projection`'s read model: its tables, applied versions, parked
/// streams and status, and any interrupted rebuild, in one transaction under
/// its apply lock (refused while a rebuild of it runs). The live workers
/// then only fill streams that get new events (a gap is read from the
/// store); `purser projections rebuild` refills everything.
#[tracing::instrument(skip_all, fields(projection = projection.name()), err)]
pub async fn reset(projection: &dyn Projection, store: &EventStore) -> Result<()> {
    let name = projection.name();
    let lock = RebuildLock::acquire(store.pool(), name).await?;
    let result = async {
        let mut tx = store.pool().begin().await?;
        lock_apply(&mut tx, name).await?;
        let tables: Vec<String> = projection
            .tables()
            .iter()
            .map(|t| format!("read_models.{}", quote_ident(t.name)))
            .collect();
        if !tables.is_empty() {
            sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
                .execute(&mut *tx)
                .await?;
        }
        for table in ["applied", "parked", "projection_status", "rebuilds"] {
            sqlx::query(&format!(
                "DELETE FROM read_models.{table} WHERE projection = $1"
            ))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            quote_ident(&shadow_schema(name))
        ))
        .execute(&mut *tx)
        .await?;
        notify(&mut tx, name).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    lock.release().await;
    result
}

/// Un-parks every parked stream of the projector's projection and applies
/// their waiting events; returns each stream with what was applied.
pub async fn unpark_all(projector: &Projector) -> Result<Vec<(String, BatchReport)>> {
    let parked = crate::status::parked_streams(projector.store().pool(), projector.name()).await?;
    let mut reports = Vec::with_capacity(parked.len());
    for stream in parked {
        let report = projector.unpark(&stream.stream_id).await?;
        reports.push((stream.stream_id, report));
    }
    Ok(reports)
}

/// Rebuilds the rows of one stream in the live read model, in one
/// transaction under the apply lock (the live workers of this projection
/// wait meanwhile; the Query API sees the old rows until the commit): its
/// rows are deleted, its applied version and parking forgotten, and its
/// events applied again from the event store. Refused while a rebuild of the
/// projection runs.
#[tracing::instrument(skip_all, fields(projection = projection.name(), stream_id), err)]
pub async fn rebuild_stream(
    projection: Arc<dyn Projection>,
    store: &EventStore,
    stream_id: &str,
    max_attempts: u32,
) -> Result<BatchReport> {
    let name = projection.name();
    let stream = parse_stream_id(stream_id, projection.stream_types())
        .ok_or_else(|| Error::InvalidStreamId(stream_id.to_owned()))?;
    let lock = RebuildLock::acquire(store.pool(), name).await?;
    let result = async {
        let mut conn = store.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        lock_apply(&mut tx, name).await?;
        // Read under the lock: whatever a live worker applied is committed.
        let events = store.read_stream(&stream, 1).await?;
        for table in projection.tables().iter().rev() {
            let regclass = format!("read_models.{}", quote_ident(table.name));
            let key_type: String = sqlx::query_scalar(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped",
            )
            .bind(&regclass)
            .bind(table.stream_key)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::Unsupported {
                projection: name.to_owned(),
                reason: format!("{regclass} has no column {}", table.stream_key),
            })?;
            sqlx::query(&format!(
                "DELETE FROM {regclass} WHERE {} = $1::text::{key_type}",
                quote_ident(table.stream_key)
            ))
            .bind(stream.id())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM read_models.parked WHERE projection = $1 AND stream_id = $2")
            .bind(name)
            .bind(stream_id)
            .execute(&mut *tx)
            .await?;
        // Version 0, in a row: without one, the stream would count as applied
        // as far as a rebuild's replayed checkpoint covers it (migration 0007).
        sqlx::query(
            "INSERT INTO read_models.applied (projection, stream_id, version, base) \
             SELECT $1, $2, 0, \
                    coalesce((SELECT max(e.version) FROM read_models.projection_status AS s \
                              JOIN event_store.events AS e ON e.stream_id = $2 \
                               AND (e.transaction_id, e.position) \
                                   <= (s.replayed_transaction_id, s.replayed_position) \
                              WHERE s.projection = $1), 0) \
             ON CONFLICT (projection, stream_id) DO UPDATE SET version = 0",
        )
        .bind(name)
        .bind(stream_id)
        .execute(&mut *tx)
        .await?;
        let projector =
            Projector::new(projection.clone(), store.clone()).with_max_attempts(max_attempts);
        let report = projector.apply_batch_in(&mut tx, &events).await?;
        notify(&mut tx, name).await?;
        tx.commit().await?;
        Ok(report)
    }
    .await;
    lock.release().await;
    result
}

/// Takes `projection`'s apply lock exclusively, for the transaction: the live
/// workers of that projection wait at their next batch.
async fn lock_apply(tx: &mut sqlx::PgConnection, projection: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
        .bind(APPLY_LOCK)
        .bind(projection)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn notify(tx: &mut sqlx::PgConnection, projection: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(projection)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
