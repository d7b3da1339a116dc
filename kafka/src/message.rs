//! The shape of a Purser message on Kafka: key = stream id, value = the
//! recorded event as JSON, and headers that let a consumer route, trace and
//! deduplicate without parsing the value.

use std::sync::Arc;

use event_store::RecordedEvent;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::Message;
use uuid::Uuid;

use crate::{Error, KafkaConfig, Result};

/// Header names (values are UTF-8 strings).
pub mod headers {
    /// The event's id (UUID).
    pub const EVENT_ID: &str = "event_id";
    /// The event's type name.
    pub const EVENT_TYPE: &str = "event_type";
    /// The schema version of the payload.
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// The event's version within its stream.
    pub const STREAM_VERSION: &str = "stream_version";
    /// The event's global position in the event store.
    pub const POSITION: &str = "position";
    /// The correlation id of the request that caused the event (absent if none).
    pub const CORRELATION_ID: &str = "correlation_id";
    /// The id of the message that caused the event (absent if none).
    pub const CAUSATION_ID: &str = "causation_id";
}

/// An event read back from Kafka, with where it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// The event, exactly as the event store recorded it.
    pub event: RecordedEvent,
    /// The topic it came from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// A message ready to be produced, with what the traces of its delivery need.
pub(crate) struct Outgoing {
    pub(crate) topic: Arc<str>,
    /// The stream id.
    pub(crate) key: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: OwnedHeaders,
    pub(crate) event_id: Uuid,
    pub(crate) position: i64,
    pub(crate) correlation_id: Option<String>,
}

/// Topic names by stream type, built once each.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    config: KafkaConfig,
    names: Vec<(String, Arc<str>)>,
}

impl Topics {
    pub(crate) fn new(config: &KafkaConfig) -> Self {
        Topics {
            config: config.clone(),
            names: Vec::new(),
        }
    }

    fn get(&mut self, stream_type: &str) -> Arc<str> {
        if let Some((_, name)) = self.names.iter().find(|(t, _)| t == stream_type) {
            return name.clone();
        }
        let name: Arc<str> = self.config.topic(stream_type).into();
        self.names.push((stream_type.to_owned(), name.clone()));
        name
    }
}

/// A typical encoded event fits, so the buffer is not grown while writing.
const PAYLOAD_CAPACITY: usize = 1024;

/// Builds the message for `event`: key = stream id, value = the event as
/// JSON, and the [`headers`].
pub(crate) fn encode(topics: &mut Topics, event: &RecordedEvent) -> Result<Outgoing> {
    let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
    serde_json::to_writer(&mut payload, event).map_err(|source| Error::Encode {
        event_id: event.event_id,
        source,
    })?;
    let mut uuid = Uuid::encode_buffer();
    let event_id = event.event_id.hyphenated().encode_lower(&mut uuid);
    let schema_version = event.schema_version.to_string();
    let stream_version = event.version.to_string();
    let position = event.position.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(7)
        .insert(header(headers::EVENT_ID, event_id))
        .insert(header(headers::EVENT_TYPE, &event.event_type))
        .insert(header(headers::SCHEMA_VERSION, &schema_version))
        .insert(header(headers::STREAM_VERSION, &stream_version))
        .insert(header(headers::POSITION, &position));
    if let Some(id) = &event.metadata.correlation_id {
        headers = headers.insert(header(headers::CORRELATION_ID, id));
    }
    if let Some(id) = &event.metadata.causation_id {
        headers = headers.insert(header(headers::CAUSATION_ID, id));
    }
    Ok(Outgoing {
        topic: topics.get(&event.stream_type),
        key: event.stream_id.clone(),
        payload,
        headers,
        event_id: event.event_id,
        position: event.position,
        correlation_id: event.metadata.correlation_id.clone(),
    })
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Why a consumed message is not a Purser event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("message has no value")]
    Empty,
    #[error("value is not a recorded event: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads the event back from a consumed message.
pub(crate) fn decode(message: &BorrowedMessage<'_>) -> Result<Delivered, DecodeError> {
    let payload = message.payload().ok_or(DecodeError::Empty)?;
    let event: RecordedEvent = serde_json::from_slice(payload)?;
    Ok(Delivered {
        event,
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
    })
}
