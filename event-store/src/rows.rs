//! The events of a multi-row insert, as the columns its `unnest` reads:
//! one builder for the statements that append to several streams at once
//! (`several`'s and the group commit's, in `group`).

use sqlx::postgres::{PgArguments, PgHasArrayType, PgRow};
use sqlx::query::QueryAs;
use sqlx::{Encode, FromRow, Postgres, Type};
use uuid::Uuid;

use crate::{NewEvent, StreamId};

/// One element per event, in the order of the statement's parameters $1 to
/// $10: the index of its stream's append among the statement's, stream id,
/// stream type, the stream's expected version, the event's place in its
/// stream's append (1..), event id, type, schema version, payload,
/// metadata. `M` is the metadata as bound: a JSON value, or a reference to
/// one that a whole append shares.
#[derive(Debug)]
pub(crate) struct Rows<'a, M> {
    items: Vec<i32>,
    stream_ids: Vec<&'a str>,
    stream_types: Vec<&'a str>,
    expected: Vec<i64>,
    n: Vec<i64>,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    payloads: Vec<&'a serde_json::Value>,
    metadata: Vec<M>,
}

impl<'a, M> Rows<'a, M> {
    /// Room for `rows` events.
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Rows {
            items: Vec::with_capacity(rows),
            stream_ids: Vec::with_capacity(rows),
            stream_types: Vec::with_capacity(rows),
            expected: Vec::with_capacity(rows),
            n: Vec::with_capacity(rows),
            ids: Vec::with_capacity(rows),
            types: Vec::with_capacity(rows),
            schema_versions: Vec::with_capacity(rows),
            payloads: Vec::with_capacity(rows),
            metadata: Vec::with_capacity(rows),
        }
    }

    /// `event`, at `place` (from 0) in append `item` of the statement, to
    /// `stream` at version `expected`.
    pub(crate) fn push(
        &mut self,
        item: usize,
        stream: &'a StreamId,
        expected: u64,
        place: usize,
        event: &'a NewEvent,
        metadata: M,
    ) {
        self.items.push(i32::try_from(item).unwrap_or(i32::MAX));
        self.stream_ids.push(stream.as_str());
        self.stream_types.push(stream.stream_type());
        self.expected
            .push(i64::try_from(expected).unwrap_or(i64::MAX));
        self.n.push(i64::try_from(place).unwrap_or(i64::MAX) + 1);
        self.ids.push(event.event_id);
        self.types.push(event.event_type.as_str());
        self.schema_versions
            .push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
        self.payloads.push(&event.payload);
        self.metadata.push(metadata);
    }

    /// `sql` with the events bound as its parameters $1 to $10; the
    /// statement's own parameters follow.
    pub(crate) fn query_as<'q, O>(&'q self, sql: &'q str) -> QueryAs<'q, Postgres, O, PgArguments>
    where
        'a: 'q,
        O: for<'r> FromRow<'r, PgRow>,
        M: Encode<'q, Postgres> + Type<Postgres> + PgHasArrayType + 'q,
    {
        sqlx::query_as(sql)
            .bind(&self.items)
            .bind(&self.stream_ids)
            .bind(&self.stream_types)
            .bind(&self.expected)
            .bind(&self.n)
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.schema_versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
    }
}
