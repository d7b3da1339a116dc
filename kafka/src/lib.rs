//! Purser's Kafka side (design decisions 4 and 5).
//!
//! - [`ensure_topics`] creates one topic per stream type, `{prefix}.{stream_type}`.
//! - [`Relay`] tails the event store gap-safely and publishes every event
//!   (key = stream id, value = the [`event_store::RecordedEvent`] as JSON,
//!   [`headers`]) with the idempotent producer, saving its checkpoint only
//!   after the broker acknowledged; only the relay holding the relay lock
//!   (a PostgreSQL advisory lock, [`Leadership`]) publishes, others stand by.
//! - [`EventConsumer`] is what projection workers and the saga read with:
//!   a consumer group member with manual commits.
//!
//! This is the only crate that knows rdkafka.

#![warn(unreachable_pub)]

mod config;
mod consumer;
mod error;
mod leadership;
mod message;
mod metrics;
mod publisher;
mod relay;
mod topics;

pub use config::{
    KafkaConfig, KafkaProperties, KafkaSecurity, SaslMechanism, Secret, SecurityProtocol,
    STREAM_TYPES,
};
pub use consumer::EventConsumer;
pub use error::{Error, Result};
pub use leadership::{Leadership, Lease, RELAY_LOCK_KEY};
pub use message::{headers, Delivered};
pub use metrics::RelayMetrics;
pub use publisher::{Acked, EventPublisher};
pub use relay::{Relay, RelayOptions, RelayOutcome, RelayRole, CHECKPOINT_NAME};
pub use topics::{ensure_topics, ensure_topics_retrying};
