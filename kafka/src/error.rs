//! The crate's error type.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use uuid::Uuid;

/// Everything that can go wrong on the Kafka side of Purser.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka settings are refused (which variable, and why).
    #[error("invalid Kafka settings: {0}")]
    Config(String),
    /// A client could not be created or a broker request failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker refused to create a topic (other than because it exists).
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        /// The topic's name.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The broker did not acknowledge an event (it is published again later).
    #[error("event {event_id} at position {position} was not acknowledged: {source}")]
    Delivery {
        /// The event's id.
        event_id: Uuid,
        /// The event's global position.
        position: i64,
        /// Why the delivery failed.
        source: KafkaError,
    },
    /// The producer was dropped before it reported a delivery.
    #[error("the producer went away before acknowledging event {event_id}")]
    DeliveryCanceled {
        /// The event's id.
        event_id: Uuid,
    },
    /// An event could not be turned into JSON.
    #[error("cannot encode event {event_id}: {source}")]
    Encode {
        /// The event's id.
        event_id: Uuid,
        /// The serialiser's error.
        source: serde_json::Error,
    },
    /// The relay's reader task ended unexpectedly (it is started again).
    #[error("the relay's event store reader stopped")]
    ReaderStopped,
    /// The event store failed (reading events or saving the checkpoint).
    #[error("event store: {0}")]
    Store(#[from] event_store::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
