//! The stream versions a projection has applied, as the projector reads
//! them, for operators and tests.

use std::collections::BTreeMap;

use crate::Result;

/// The stream version `projection` has applied for `stream_id`: its row in
/// `read_models.applied`, or else what the projection's replayed checkpoint
/// covers of the stream (0 if neither).
pub async fn applied_version(
    executor: impl sqlx::PgExecutor<'_>,
    projection: &str,
    stream_id: &str,
) -> Result<i64> {
    let version: Option<i64> = sqlx::query_scalar(
        "SELECT coalesce( \
            (SELECT version FROM read_models.applied WHERE projection = $1 AND stream_id = $2), \
            (SELECT max(e.version) FROM read_models.projection_status AS s \
             JOIN event_store.events AS e ON e.stream_id = $2 \
              AND (e.transaction_id, e.position) <= (s.replayed_transaction_id, s.replayed_position) \
             WHERE s.projection = $1))",
    )
    .bind(projection)
    .bind(stream_id)
    .fetch_one(executor)
    .await?;
    Ok(version.unwrap_or(0))
}

/// Every stream `projection` has applied something of, with its version, as
/// [`applied_version`] reads it: the rows of `read_models.applied` and the
/// streams the replayed checkpoint covers (`stream_types`: the projection's).
/// Streams at version 0 (nothing applied) are left out. For operators and
/// tests; it reads the whole log of those types.
pub async fn applied_versions(
    executor: impl sqlx::PgExecutor<'_>,
    projection: &str,
    stream_types: &[&str],
) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream_id, version FROM read_models.applied WHERE projection = $1 AND version > 0 \
         UNION ALL \
         SELECT e.stream_id, max(e.version) \
         FROM read_models.projection_status AS s JOIN event_store.events AS e \
           ON e.stream_type = ANY($2) \
          AND (e.transaction_id, e.position) <= (s.replayed_transaction_id, s.replayed_position) \
         WHERE s.projection = $1 \
           AND NOT EXISTS (SELECT 1 FROM read_models.applied AS a \
                           WHERE a.projection = $1 AND a.stream_id = e.stream_id) \
         GROUP BY e.stream_id",
    )
    .bind(projection)
    .bind(stream_types)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().collect())
}
