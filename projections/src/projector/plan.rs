//! Planning a batch: where each stream stands (its applied row locked for
//! the transaction), what of the batch is a duplicate or waits behind a
//! parked event, and, on a gap, the missing events read from the event
//! store.

use std::collections::BTreeMap;

use event_store::RecordedEvent;
use sqlx::{PgConnection, Postgres, Transaction};

use super::{parse_stream_id, version, Projector};
use crate::{BatchReport, Error, Result};

/// What to apply of one stream of the batch.
pub(super) struct StreamPlan<'a> {
    pub(super) stream_id: &'a str,
    /// The stream's version applied before the batch.
    pub(super) from: i64,
    /// The delivered events beyond `from`, in version order, without copies.
    fresh: Vec<&'a RecordedEvent>,
    /// On a gap: the stream's events from `from + 1` to the newest
    /// delivered, read from the event store (which is the truth).
    fetched: Option<Vec<RecordedEvent>>,
}

impl StreamPlan<'_> {
    /// The events to apply: consecutive versions from `from + 1`.
    pub(super) fn todo(&self) -> Vec<&RecordedEvent> {
        match &self.fetched {
            Some(events) => events.iter().collect(),
            None => self.fresh.clone(),
        }
    }
}

/// Where the batch's streams stand.
struct Standing {
    /// Each stream's applied version.
    applied: BTreeMap<String, i64>,
    /// The streams parked (their later events wait).
    parked: Vec<String>,
}

impl Projector {
    /// The plan of a batch: per stream (in stream id order), the events to
    /// apply; and the report so far (duplicates, events waiting behind a
    /// parked event, events read from the store to fill a gap).
    pub(super) async fn plan<'a>(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &BTreeMap<&'a str, Vec<&'a RecordedEvent>>,
    ) -> Result<(Vec<StreamPlan<'a>>, BatchReport)> {
        let standing = self.standing(tx, streams).await?;
        let mut report = BatchReport::default();
        let mut plans = Vec::new();
        for (&stream_id, events) in streams {
            let from = standing.applied.get(stream_id).copied().unwrap_or(0);
            if standing.parked.iter().any(|p| p == stream_id) {
                report.waiting += events.iter().filter(|e| version(e) > from).count() as u64;
                continue;
            }
            // Sorted by version: drop what is applied, and copies within the batch.
            let mut fresh: Vec<&RecordedEvent> = events
                .iter()
                .copied()
                .filter(|e| version(e) > from)
                .collect();
            fresh.dedup_by_key(|e| e.version);
            report.duplicates += (events.len() - fresh.len()) as u64;
            let Some(newest) = fresh.last().map(|e| version(e)) else {
                continue;
            };
            let contiguous = fresh.iter().zip(from + 1..).all(|(e, v)| version(e) == v);
            let fetched = if contiguous {
                None
            } else {
                let events = self.fill_gap(stream_id, from, newest).await?;
                let todo: Vec<&RecordedEvent> = events.iter().collect();
                report.gap_filled += todo.len() as u64 - count_in(&todo, &fresh);
                Some(events)
            };
            plans.push(StreamPlan {
                stream_id,
                from,
                fresh,
                fetched,
            });
        }
        Ok((plans, report))
    }

    /// Locks every stream's applied row (in stream id order) and reads its
    /// version: a second worker of this projection handling the same
    /// stream waits here instead of applying it twice. A row created here
    /// starts at what a rebuild's replayed checkpoint covers of the stream
    /// (migration 0007), when there is one (the last column, computed once).
    async fn standing(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &BTreeMap<&str, Vec<&RecordedEvent>>,
    ) -> Result<Standing> {
        let name = self.name();
        let stream_ids: Vec<&str> = streams.keys().copied().collect();
        let rows: Vec<(String, i64, bool, bool)> = sqlx::query_as(
            "INSERT INTO applied (projection, stream_id, version) \
             SELECT $1, s, 0 FROM unnest($2::text[]) AS s ORDER BY s \
             ON CONFLICT (projection, stream_id) DO UPDATE SET version = applied.version \
             RETURNING stream_id, version, xmax = 0, \
                coalesce((SELECT replayed_transaction_id IS NOT NULL FROM projection_status \
                          WHERE projection = $1), false)",
        )
        .bind(name)
        .bind(&stream_ids)
        .fetch_all(&mut **tx)
        .await?;
        let created: Vec<&str> = rows
            .iter()
            .filter(|(_, _, created, replayed)| *created && *replayed)
            .map(|(stream_id, _, _, _)| stream_id.as_str())
            .collect();
        let replayed = if created.is_empty() {
            Vec::new()
        } else {
            start_from_replayed(tx, name, &created).await?
        };
        let applied: BTreeMap<String, i64> = rows
            .into_iter()
            .map(|(stream_id, version, _, _)| (stream_id, version))
            .chain(replayed)
            .collect();
        let parked: Vec<String> = sqlx::query_scalar(
            "SELECT stream_id FROM parked WHERE projection = $1 AND stream_id = ANY($2)",
        )
        .bind(name)
        .bind(&stream_ids)
        .fetch_all(&mut **tx)
        .await?;
        Ok(Standing { applied, parked })
    }

    /// The events of `stream_id` from `from + 1` to `newest`, read from the
    /// event store, all of them or [`Error::Gap`].
    async fn fill_gap(
        &self,
        stream_id: &str,
        from: i64,
        newest: i64,
    ) -> Result<Vec<RecordedEvent>> {
        let stream = parse_stream_id(stream_id, self.projection.stream_types())
            .ok_or_else(|| Error::InvalidStreamId(stream_id.to_owned()))?;
        let from_version = u64::try_from(from + 1).unwrap_or(1);
        let mut events = self.store.read_stream(&stream, from_version).await?;
        events.retain(|e| version(e) <= newest);
        let complete = events.iter().zip(from + 1..).all(|(e, v)| version(e) == v)
            && events.last().map(version) == Some(newest);
        if !complete {
            return Err(Error::Gap {
                stream_id: stream_id.to_owned(),
                from: from + 1,
                to: newest,
            });
        }
        Ok(events)
    }
}

/// How many of `todo` were already in the delivered batch.
fn count_in(todo: &[&RecordedEvent], delivered: &[&RecordedEvent]) -> u64 {
    todo.iter()
        .filter(|t| delivered.iter().any(|d| d.event_id == t.event_id))
        .count() as u64
}

/// Sets the rows just created for `stream_ids` (at version 0) to what the
/// projection's replayed checkpoint covers of each stream, if it has one:
/// the stream's last version at or before it. Returns the rows changed.
async fn start_from_replayed(
    tx: &mut PgConnection,
    projection: &str,
    stream_ids: &[&str],
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "UPDATE applied AS a SET version = r.version, base = r.version \
         FROM (SELECT e.stream_id, max(e.version) AS version \
               FROM projection_status AS s JOIN event_store.events AS e \
                 ON e.stream_id = ANY($2) \
                AND (e.transaction_id, e.position) \
                    <= (s.replayed_transaction_id, s.replayed_position) \
               WHERE s.projection = $1 AND s.replayed_transaction_id IS NOT NULL \
               GROUP BY e.stream_id) AS r \
         WHERE a.projection = $1 AND a.stream_id = r.stream_id \
         RETURNING a.stream_id, a.version",
    )
    .bind(projection)
    .bind(stream_ids)
    .fetch_all(&mut *tx)
    .await?)
}
