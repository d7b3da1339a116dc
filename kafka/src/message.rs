//! The shape of a Purser message on Kafka: key = stream id, value = the
//! recorded event as JSON, and headers that let a consumer route, trace and
//! deduplicate without parsing the value.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use event_store::{RawRecordedEvent, RecordedEvent};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::Message;
use serde::Serialize;
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
    /// The W3C trace context of the relay's publish span (or, from a
    /// publisher that traces nothing, the event's own): a consumer's span
    /// joins the trace of the request that appended the event.
    pub const TRACEPARENT: &str = "traceparent";
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
    /// The message's `traceparent` header: the span that published it.
    pub traceparent: Option<String>,
}

/// Messages ready to be produced, in order. Their values lie one after the
/// other in one buffer (the producer copies each), not in one allocation each.
pub(crate) struct Messages {
    pub(crate) values: Vec<u8>,
    pub(crate) messages: Vec<Outgoing>,
}

impl Messages {
    pub(crate) fn with_capacity(messages: usize) -> Self {
        Messages {
            values: Vec::with_capacity(messages * VALUE_CAPACITY),
            messages: Vec::with_capacity(messages),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }
}

/// A message ready to be produced, with what the traces of its delivery need.
pub(crate) struct Outgoing {
    pub(crate) topic: Arc<str>,
    /// The stream id.
    pub(crate) key: String,
    /// Where its value is in [`Messages::values`].
    pub(crate) value: Range<usize>,
    pub(crate) headers: OwnedHeaders,
    pub(crate) event_id: Uuid,
    pub(crate) position: i64,
    pub(crate) correlation_id: Option<String>,
    /// The publish span (when tracing is on; ends once acknowledged).
    pub(crate) span: tracing::Span,
}

/// Turns events into [`Outgoing`] messages. Keeps the topic names by stream
/// type (built once each) and a scratch buffer for the numeric headers.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    config: KafkaConfig,
    names: Vec<(String, Arc<str>)>,
    numbers: String,
}

/// Room for a typical encoded event, so the buffer of a batch's values is
/// rarely grown while writing.
const VALUE_CAPACITY: usize = 512;

/// An event to encode: a [`RecordedEvent`] (its payload parsed) or a
/// [`RawRecordedEvent`] (the payload's stored JSON text, forwarded as is).
/// Both serialise to the same JSON object.
pub(crate) trait Encodable: Serialize {
    /// The fields the key and the headers are made of.
    fn into_parts(self) -> Parts;
}

/// What the key and the headers of an event's message are made of.
pub(crate) struct Parts {
    event_id: Uuid,
    event_type: String,
    schema_version: u32,
    version: u64,
    position: i64,
    stream_type: String,
    stream_id: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    traceparent: Option<String>,
}

impl Encodable for RawRecordedEvent {
    fn into_parts(self) -> Parts {
        Parts {
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            version: self.version,
            position: self.position,
            stream_type: self.stream_type,
            stream_id: self.stream_id,
            correlation_id: self.metadata.correlation_id,
            causation_id: self.metadata.causation_id,
            traceparent: self.metadata.traceparent,
        }
    }
}

impl Encodable for &RecordedEvent {
    fn into_parts(self) -> Parts {
        Parts {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            version: self.version,
            position: self.position,
            stream_type: self.stream_type.clone(),
            stream_id: self.stream_id.clone(),
            correlation_id: self.metadata.correlation_id.clone(),
            causation_id: self.metadata.causation_id.clone(),
            traceparent: self.metadata.traceparent.clone(),
        }
    }
}

impl Encoder {
    pub(crate) fn new(config: &KafkaConfig) -> Self {
        Encoder {
            config: config.clone(),
            names: Vec::new(),
            numbers: String::new(),
        }
    }

    fn topic(&mut self, stream_type: &str) -> Arc<str> {
        if let Some((_, name)) = self.names.iter().find(|(t, _)| t == stream_type) {
            return name.clone();
        }
        let name: Arc<str> = self.config.topic(stream_type).into();
        self.names.push((stream_type.to_owned(), name.clone()));
        name
    }

    /// Adds the message for `event` to `out`: key = stream id, value = the
    /// event as JSON, and the [`headers`].
    pub(crate) fn encode(&mut self, event: impl Encodable, out: &mut Messages) -> Result<()> {
        let start = out.values.len();
        if let Err(source) = serde_json::to_writer(&mut out.values, &event) {
            out.values.truncate(start);
            return Err(Error::Encode {
                event_id: event.into_parts().event_id,
                source,
            });
        }
        let value = start..out.values.len();
        let event = event.into_parts();
        let mut uuid = Uuid::encode_buffer();
        let event_id = event.event_id.hyphenated().encode_lower(&mut uuid);
        // The three numbers, one after the other in one reused buffer
        // (the headers copy their values).
        let numbers = &mut self.numbers;
        numbers.clear();
        // Writing to a String cannot fail.
        let _ = write!(numbers, "{}", event.schema_version);
        let schema_version_end = numbers.len();
        let _ = write!(numbers, "{}", event.version);
        let version_end = numbers.len();
        let _ = write!(numbers, "{}", event.position);
        let mut headers = OwnedHeaders::new_with_capacity(7)
            .insert(header(headers::EVENT_ID, event_id))
            .insert(header(headers::EVENT_TYPE, &event.event_type))
            .insert(header(
                headers::SCHEMA_VERSION,
                &numbers[..schema_version_end],
            ))
            .insert(header(
                headers::STREAM_VERSION,
                &numbers[schema_version_end..version_end],
            ))
            .insert(header(headers::POSITION, &numbers[version_end..]));
        if let Some(id) = &event.correlation_id {
            headers = headers.insert(header(headers::CORRELATION_ID, id));
        }
        if let Some(id) = &event.causation_id {
            headers = headers.insert(header(headers::CAUSATION_ID, id));
        }
        // A span per event traced (a child of the span that appended it),
        // from now until the broker acknowledges it.
        let (span, traceparent) = match &event.traceparent {
            Some(parent) if event_store::trace::enabled() => {
                let span = tracing::info_span!(
                    "relay publish",
                    stream_id = %event.stream_id,
                    event_id = %event.event_id,
                    position = event.position,
                    partition = tracing::field::Empty,
                    offset = tracing::field::Empty,
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty,
                );
                event_store::trace::set_parent(&span, parent);
                event_store::trace::record_ids(&span);
                let own = event_store::trace::traceparent_of(&span);
                (span, own.or_else(|| event.traceparent.clone()))
            }
            _ => (tracing::Span::none(), event.traceparent.clone()),
        };
        if let Some(traceparent) = &traceparent {
            headers = headers.insert(header(headers::TRACEPARENT, traceparent));
        }
        let topic = self.topic(&event.stream_type);
        out.messages.push(Outgoing {
            topic,
            key: event.stream_id,
            value,
            headers,
            event_id: event.event_id,
            position: event.position,
            correlation_id: event.correlation_id,
            span,
        });
        Ok(())
    }
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
    let traceparent = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key == headers::TRACEPARENT)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    });
    Ok(Delivered {
        event,
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        traceparent,
    })
}
