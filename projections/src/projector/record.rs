//! Recording a batch in its transaction: the streams' applied versions, the
//! projection's status, the notification; and the parking of a stream.

use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};

use super::apply::Applied;
use super::{version, Projector, Target};
use crate::{ApplyError, BatchReport, Result, NOTIFY_CHANNEL};

impl Projector {
    /// Moves the applied rows of the streams that moved on, adds the batch
    /// to `projection_status` and, for the live read models, notifies the
    /// Query API (on commit) when anything was applied or parked.
    pub(super) async fn record(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        applied: Applied,
        report: &BatchReport,
    ) -> Result<()> {
        let name = self.name();
        // Names the streams that moved: the Query API wakes only their
        // `min_version` waits.
        let payload =
            crate::notification::payload(name, applied.changed.iter().map(|(id, _)| id.as_str()));
        if !applied.changed.is_empty() {
            let (ids, versions): (Vec<String>, Vec<i64>) = applied.changed.into_iter().unzip();
            sqlx::query(
                "UPDATE applied AS a SET version = c.version \
                 FROM unnest($2::text[], $3::bigint[]) AS c (stream_id, version) \
                 WHERE a.projection = $1 AND a.stream_id = c.stream_id",
            )
            .bind(name)
            .bind(ids)
            .bind(versions)
            .execute(&mut **tx)
            .await?;
        }
        if report.applied == 0 && report.parked.is_empty() {
            return Ok(());
        }
        let (last_transaction_id, last_position) = applied.last;
        sqlx::query(
            "INSERT INTO projection_status AS s \
                (projection, last_position, last_transaction_id, events_applied, updated_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (projection) DO UPDATE SET \
                last_position = greatest(s.last_position, excluded.last_position), \
                last_transaction_id = greatest(s.last_transaction_id, excluded.last_transaction_id), \
                events_applied = s.events_applied + excluded.events_applied, \
                updated_at = now()",
        )
        .bind(name)
        .bind(last_position)
        .bind(last_transaction_id)
        .bind(report.applied as i64)
        .execute(&mut **tx)
        .await?;
        if self.target == Target::Live {
            // Delivered on commit: wakes the Query API's `min_version` waits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(&payload)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// Parks `event`'s stream (`attempts` failed with `error`): its later events
/// wait until it is unparked.
pub(crate) async fn park(
    tx: &mut Transaction<'_, Postgres>,
    projection: &str,
    event: &RecordedEvent,
    error: &ApplyError,
    attempts: u32,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO parked \
            (projection, stream_id, version, event_id, error, attempts, parked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now()) \
         ON CONFLICT (projection, stream_id) DO UPDATE SET \
            version = excluded.version, event_id = excluded.event_id, error = excluded.error, \
            attempts = excluded.attempts, parked_at = excluded.parked_at",
    )
    .bind(projection)
    .bind(&event.stream_id)
    .bind(version(event))
    .bind(event.event_id)
    .bind(error.to_string())
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
