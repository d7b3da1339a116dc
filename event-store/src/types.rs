use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::Result;

/// What an append expects the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Whatever it is: append after the current last event.
    Any,
    /// The stream has no event yet (version 0).
    NoStream,
    /// The stream's last event has exactly this version (0 = no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// The version the stream must be at, if any.
    pub fn required(self) -> Option<u64> {
        match self {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(n) => Some(n),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(n) => write!(f, "{n}"),
        }
    }
}

/// A stream's name: `"{stream_type}-{id}"`, e.g. `"account-0191..."`,
/// `"inventory-LAPTOP-15"`. The id may itself contain `-`; the type is kept
/// separately, so nothing is ever parsed back out of the joined form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamId {
    full: String,
    type_len: usize,
}

impl StreamId {
    /// The stream `"{stream_type}-{id}"`.
    pub fn new(stream_type: &str, id: impl fmt::Display) -> Self {
        StreamId {
            full: format!("{stream_type}-{id}"),
            type_len: stream_type.len(),
        }
    }

    /// The stream of aggregate `A` with this id.
    pub fn of<A: domain::Aggregate>(id: impl fmt::Display) -> Self {
        StreamId::new(A::STREAM_TYPE, id)
    }

    /// The stream type, the part before the first `-`.
    pub fn stream_type(&self) -> &str {
        &self.full[..self.type_len]
    }

    /// The id, without the type prefix.
    pub fn id(&self) -> &str {
        &self.full[self.type_len + 1..]
    }

    /// `"{stream_type}-{id}"`, as stored in `events.stream_id`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Stored with every event of an append.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The request that caused it (the Command API's `x-request-id`), shared by everything that followed.
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The message or event that caused it directly.
    pub causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Who: the caller's `sub`, or `saga`.
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The W3C `traceparent` of the span that appended it (when tracing is
    /// on, [`trace`](crate::trace)): what it causes joins that trace.
    pub traceparent: Option<String>,
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Its id (a fresh UUID v7 from [`NewEvent::from_domain`]).
    pub event_id: Uuid,
    /// The type name, e.g. `MoneyDeposited`.
    pub event_type: String,
    /// The schema version of the payload.
    pub schema_version: u32,
    /// The payload, without the type name.
    pub payload: serde_json::Value,
}

impl NewEvent {
    /// The persisted form of a domain event, with a fresh UUID v7 id.
    pub fn from_domain<E: domain::DomainEvent>(event: &E) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: event.to_payload(),
        }
    }
}

/// A place in the global read order, which is `(transaction_id, position)`
/// (design decision 3; see [`crate::EventStore::read_all`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Checkpoint {
    /// The transaction id of the last event read (`xid8`).
    pub transaction_id: u64,
    /// The position of the last event read.
    pub position: i64,
}

impl Checkpoint {
    /// Before the first event.
    pub const START: Checkpoint = Checkpoint {
        transaction_id: 0,
        position: 0,
    };
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Global position: the order of appends (a `bigint identity`; see [`Checkpoint`] for the order readers use).
    pub position: i64,
    /// The id of the transaction that appended it (`xid8`), first key of the global read order.
    pub transaction_id: u64,
    /// The stream type, e.g. `account` (the aggregate's `STREAM_TYPE`).
    pub stream_type: String,
    /// The full `"{stream_type}-{id}"`.
    pub stream_id: String,
    /// Its version in its stream: 1, 2, 3... without gaps.
    pub version: u64,
    /// Unique id of the event (a UUID v7).
    pub event_id: Uuid,
    /// The event's type name, e.g. `MoneyDeposited`.
    pub event_type: String,
    /// The schema version of its payload.
    pub schema_version: u32,
    /// The payload, as stored.
    pub payload: serde_json::Value,
    /// Correlation, causation and actor.
    pub metadata: Metadata,
    /// When it was appended (the database's clock).
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Where a reader that has handled this event stands.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }

    /// The domain event, upcast from older schema versions by
    /// [`domain::DomainEvent::from_stored`].
    pub fn decode<E: domain::DomainEvent>(&self) -> Result<E> {
        Ok(E::from_stored(
            &self.event_type,
            self.schema_version,
            self.payload.clone(),
        )?)
    }
}

/// An event as stored, with the payload left as the stored JSON text
/// instead of parsed: what the relay forwards (see
/// [`crate::EventStore::read_all_raw`]). It serialises to the JSON of the
/// [`RecordedEvent`] it is, which deserialises from it.
#[derive(Debug, Clone, Serialize)]
pub struct RawRecordedEvent {
    /// Global position: the order of appends (a `bigint identity`; see [`Checkpoint`] for the order readers use).
    pub position: i64,
    /// The id of the transaction that appended it (`xid8`), first key of the global read order.
    pub transaction_id: u64,
    /// The stream type, e.g. `account` (the aggregate's `STREAM_TYPE`).
    pub stream_type: String,
    /// The full `"{stream_type}-{id}"`.
    pub stream_id: String,
    /// Its version in its stream: 1, 2, 3... without gaps.
    pub version: u64,
    /// Unique id of the event (a UUID v7).
    pub event_id: Uuid,
    /// The event's type name, e.g. `MoneyDeposited`.
    pub event_type: String,
    /// The schema version of its payload.
    pub schema_version: u32,
    /// The payload's JSON text, as PostgreSQL renders the stored `jsonb`.
    pub payload: Box<RawValue>,
    /// Correlation, causation and actor.
    pub metadata: Metadata,
    /// When it was appended (the database's clock).
    pub recorded_at: DateTime<Utc>,
}

impl RawRecordedEvent {
    /// Where a reader that has handled this event stands.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }
}

/// Result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append.
    pub version: u64,
    /// Global position of the last event written.
    pub position: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_keeps_type_and_id_apart() {
        let s = StreamId::new("inventory", "LAPTOP-15");
        assert_eq!(s.to_string(), "inventory-LAPTOP-15");
        assert_eq!(s.stream_type(), "inventory");
        assert_eq!(s.id(), "LAPTOP-15");
        assert_eq!(s.as_str(), "inventory-LAPTOP-15");
    }

    #[test]
    fn expected_version_displays_and_encodes() {
        assert_eq!(ExpectedVersion::Any.to_string(), "any");
        assert_eq!(ExpectedVersion::NoStream.to_string(), "no stream");
        assert_eq!(ExpectedVersion::Exact(7).to_string(), "7");
        assert_eq!(ExpectedVersion::Any.required(), None);
        assert_eq!(ExpectedVersion::NoStream.required(), Some(0));
        assert_eq!(ExpectedVersion::Exact(3).required(), Some(3));
    }

    #[test]
    fn checkpoints_order_by_transaction_then_position() {
        let a = Checkpoint {
            transaction_id: 5,
            position: 100,
        };
        let b = Checkpoint {
            transaction_id: 6,
            position: 1,
        };
        assert!(Checkpoint::START < a && a < b);
    }

    #[test]
    fn empty_metadata_serialises_to_an_empty_object() {
        assert_eq!(
            serde_json::to_value(Metadata::default()).expect("serialise"),
            serde_json::json!({})
        );
        let m: Metadata = serde_json::from_value(serde_json::json!({"actor": "a"})).expect("parse");
        assert_eq!(m.actor.as_deref(), Some("a"));
    }
}
