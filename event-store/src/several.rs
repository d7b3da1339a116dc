//! Appends to several streams in one statement, all or nothing
//! ([`Appends::append_to_streams`] in a transaction,
//! [`EventStore::append_to_streams`] on its own): one round trip for what
//! would be one per stream.
//!
//! The statement ([`APPEND_STREAMS`]) checks every stream's expectation
//! under its one snapshot, taken before its first write (so, as for a lone
//! append, every version it appends at committed before its transaction
//! got an id: the rule of `store.rs`), and inserts the events of every
//! stream only if every expectation holds; otherwise it inserts nothing
//! and names the streams that were not where expected. A concurrent
//! writer in flight on one of the versions is the one thing a snapshot
//! cannot see: the statement then waits for it and fails as a whole on
//! `UNIQUE (stream_id, version)`, like a lone append.

use uuid::Uuid;

use crate::rows::Rows;
use crate::store::current_version;
use crate::{
    Appended, Appends, Error, EventStore, ExpectedVersion, Metadata, NewEvent, Result, StreamId,
};

/// Inputs, one element per event: $1 its stream's index among the
/// statement's streams, $2 stream id, $3 stream type, $4 the stream's
/// expected version, $5 the event's place in its stream's append (1..),
/// $6 event id, $7 type, $8 schema version, $9 payload, $10 metadata.
/// Returns a row per event inserted (its id and position), or, when an
/// expectation failed, a row per stream that failed it (its index) and
/// nothing inserted.
const APPEND_STREAMS: &str = "\
WITH e AS (
    SELECT *
    FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::uuid[],
                $7::text[], $8::int4[], $9::jsonb[], $10::jsonb[])
             WITH ORDINALITY
             AS e(item, stream_id, stream_type, expected, n, event_id, event_type,
                  schema_version, payload, metadata, ord)
), failed AS (
    SELECT e.item FROM e
    WHERE e.n = 1
      AND NOT (
          (e.expected = 0 OR EXISTS (
              SELECT FROM event_store.events x
              WHERE x.stream_id = e.stream_id AND x.version = e.expected))
          AND NOT EXISTS (
              SELECT FROM event_store.events x
              WHERE x.stream_id = e.stream_id AND x.version = e.expected + 1))
), appended AS (
    INSERT INTO event_store.events
        (event_id, stream_type, stream_id, version, event_type, schema_version, payload,
         metadata)
    SELECT e.event_id, e.stream_type, e.stream_id, e.expected + e.n, e.event_type,
           e.schema_version, e.payload, e.metadata
    FROM e
    WHERE NOT EXISTS (SELECT FROM failed)
    ORDER BY e.ord
    RETURNING event_id, position
)
SELECT NULL::int4 AS item, event_id, position FROM appended
UNION ALL
SELECT item, NULL, NULL FROM failed";

/// One stream's part of [`Appends::append_to_streams`]: events at an exact
/// expected version, each with its own metadata.
#[derive(Debug, Clone, Copy)]
pub struct StreamAppend<'a> {
    /// The stream.
    pub stream: &'a StreamId,
    /// Its version before these events.
    pub expected: u64,
    /// The events, in order, each with its metadata.
    pub events: &'a [(&'a NewEvent, &'a Metadata)],
}

/// Why [`Appends::append_to_streams`] wrote nothing.
#[derive(Debug)]
pub enum StreamsRejected {
    /// These streams (their indexes in the call, each with its
    /// [`Error::Conflict`]) were not at the expected version. The
    /// transaction is still open, with nothing of the call written: the
    /// caller may append again, or roll it back by dropping it.
    Conflicts(Vec<(usize, Error)>),
    /// The statement failed as a whole (a concurrent writer in flight on
    /// one of the versions, the database refusing the events...): the
    /// transaction is rolled back, and every later call fails.
    Failed(Error),
}

impl Appends {
    /// Appends to every stream of `streams` (each at most once) in one
    /// statement: all of them, or nothing (see the module's documentation).
    /// Like [`Appends::append`], it must be the transaction's first write.
    /// The streams' versions and last positions after it, in the order of
    /// `streams`.
    pub async fn append_to_streams(
        &mut self,
        streams: &[StreamAppend<'_>],
    ) -> std::result::Result<Vec<Appended>, StreamsRejected> {
        let appended = match self.transaction() {
            Some(tx) => append_streams(tx, streams).await,
            None => Err(Error::RolledBack),
        };
        match appended {
            Ok(Ok(appended)) => {
                self.wrote();
                Ok(appended)
            }
            Ok(Err(conflicts)) => Err(StreamsRejected::Conflicts(conflicts)),
            Err(error) => {
                self.roll_back().await;
                Err(StreamsRejected::Failed(error))
            }
        }
    }
}

impl EventStore {
    /// [`Appends::append_to_streams`] as a statement of its own, which
    /// commits as it ends (one round trip for all of it), and wakes the
    /// subscribers. Conflicts: nothing was written.
    pub async fn append_to_streams(
        &self,
        streams: &[StreamAppend<'_>],
    ) -> std::result::Result<Vec<Appended>, StreamsRejected> {
        let appended = match self.pool().acquire().await {
            Ok(mut connection) => append_streams(&mut connection, streams).await,
            Err(error) => Err(error.into()),
        };
        match appended {
            Ok(Ok(appended)) => {
                self.notify_appended();
                Ok(appended)
            }
            Ok(Err(conflicts)) => Err(StreamsRejected::Conflicts(conflicts)),
            Err(error) => Err(StreamsRejected::Failed(error)),
        }
    }
}

/// The statement, and on a conflict each stale stream's version, read on the
/// same connection (a transaction's holds it; the pool may have no other).
async fn append_streams(
    connection: &mut sqlx::PgConnection,
    streams: &[StreamAppend<'_>],
) -> Result<std::result::Result<Vec<Appended>, Vec<(usize, Error)>>> {
    if streams.is_empty() || streams.iter().any(|s| s.events.is_empty()) {
        return Err(Error::NoEvents);
    }
    let count = streams.iter().map(|s| s.events.len()).sum();
    let mut events = Rows::with_capacity(count);
    for (index, append) in streams.iter().enumerate() {
        for (place, (event, meta)) in append.events.iter().enumerate() {
            let meta = serde_json::to_value(meta).map_err(|source| Error::Json {
                what: "metadata",
                source,
            })?;
            events.push(index, append.stream, append.expected, place, event, meta);
        }
    }
    let rows: Vec<(Option<i32>, Option<Uuid>, Option<i64>)> = events
        .query_as(APPEND_STREAMS)
        .fetch_all(&mut *connection)
        .await?;
    let mut failed = Vec::new();
    let mut positions = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        match row {
            (Some(item), _, _) => failed.push(usize::try_from(item).unwrap_or(usize::MAX)),
            (None, Some(id), Some(position)) => {
                positions.insert(id, position);
            }
            // Every row names a stream that failed, or an event inserted.
            (None, _, _) => return Err(sqlx::Error::RowNotFound.into()),
        }
    }
    if !failed.is_empty() {
        failed.sort_unstable();
        let mut conflicts = Vec::with_capacity(failed.len());
        for index in failed {
            let Some(append) = streams.get(index) else {
                continue;
            };
            let actual = current_version(&mut *connection, append.stream).await?;
            conflicts.push((
                index,
                Error::Conflict {
                    stream: append.stream.to_string(),
                    expected: ExpectedVersion::Exact(append.expected),
                    actual,
                },
            ));
        }
        return Ok(Err(conflicts));
    }
    let mut appended = Vec::with_capacity(streams.len());
    for append in streams {
        let last = append.events.last().map(|(event, _)| event.event_id);
        let position = last.and_then(|id| positions.get(&id).copied());
        let Some(position) = position else {
            // Every event is returned once inserted.
            return Err(sqlx::Error::RowNotFound.into());
        };
        appended.push(Appended {
            version: append.expected + append.events.len() as u64,
            position,
        });
    }
    Ok(Ok(appended))
}
