//! Producing recorded events to their topics with the idempotent producer.

use std::collections::VecDeque;
use std::time::Duration;

use event_store::RecordedEvent;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::message::encode;
use crate::{Error, KafkaConfig, Result};

/// Where the broker stored a published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The partition (chosen by the key, the stream id).
    pub partition: i32,
    /// The offset within it.
    pub offset: i64,
}

/// Publishes recorded events: topic `{prefix}.{stream_type}`, key = stream id,
/// value = the event as JSON, and the headers of [`crate::headers`].
///
/// The producer is idempotent (`enable.idempotence=true`, `acks=all`), so the
/// broker neither reorders nor duplicates the messages of one producer
/// session. Publishing the same event again (after a failure, or on purpose)
/// produces a second copy: delivery is at-least-once.
pub struct EventPublisher {
    producer: FutureProducer,
    config: KafkaConfig,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A publisher whose messages fail when the broker has not acknowledged
    /// them within `delivery_timeout` (librdkafka's `message.timeout.ms`).
    pub fn new(config: &KafkaConfig, delivery_timeout: Duration) -> Result<Self> {
        let timeout_ms = delivery_timeout.as_millis().clamp(1, i32::MAX as u128);
        let producer: FutureProducer = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("linger.ms", "5")
            .create()?;
        Ok(Self {
            producer,
            config: config.clone(),
        })
    }

    /// Publishes `events` in order and waits until the broker acknowledged
    /// every one of them. The result has one entry per event, in order.
    ///
    /// On error some of the events may have been stored by the broker
    /// anyway; the caller publishes the batch again (at-least-once).
    #[tracing::instrument(
        skip_all,
        fields(
            count = events.len(),
            first_position = events.first().map(|e| e.position),
            last_position = events.last().map(|e| e.position),
        ),
        err
    )]
    pub async fn publish(&self, events: &[RecordedEvent]) -> Result<Vec<Acked>> {
        let mut acked = Vec::with_capacity(events.len());
        let mut pending: VecDeque<(&RecordedEvent, DeliveryFuture)> = VecDeque::new();
        for event in events {
            let outgoing = encode(&self.config, event)?;
            let mut record = FutureRecord::to(&outgoing.topic)
                .key(event.stream_id.as_str())
                .payload(&outgoing.payload)
                .headers(outgoing.headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back((event, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        // Make room by waiting for the oldest message in flight.
                        match pending.pop_front() {
                            Some((event, delivery)) => acked.push(wait(event, delivery).await?),
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((error, _)) => return Err(Error::Kafka(error)),
                }
            }
        }
        while let Some((event, delivery)) = pending.pop_front() {
            acked.push(wait(event, delivery).await?);
        }
        Ok(acked)
    }

    /// The fatal error that made this producer unusable, if any (a new
    /// publisher is needed then).
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }

    /// Waits up to `timeout` for every message still queued to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }
}

async fn wait(event: &RecordedEvent, delivery: DeliveryFuture) -> Result<Acked> {
    match delivery.await {
        Ok(Ok(delivery)) => {
            tracing::debug!(
                stream_id = %event.stream_id,
                event_id = %event.event_id,
                position = event.position,
                partition = delivery.partition,
                offset = delivery.offset,
                correlation_id = event.metadata.correlation_id.as_deref(),
                "event published"
            );
            Ok(Acked {
                partition: delivery.partition,
                offset: delivery.offset,
            })
        }
        Ok(Err((source, _))) => Err(Error::Delivery {
            event_id: event.event_id,
            position: event.position,
            source,
        }),
        Err(_canceled) => Err(Error::DeliveryCanceled {
            event_id: event.event_id,
        }),
    }
}
