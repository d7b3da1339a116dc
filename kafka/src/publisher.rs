//! Producing recorded events to their topics with the idempotent producer.

use std::collections::VecDeque;
use std::time::Duration;

use event_store::RecordedEvent;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use uuid::Uuid;

use crate::message::{Encoder, Messages, Outgoing};
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
            .client_config()?
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
        let mut encoder = Encoder::new(&self.config);
        let mut messages = Messages::with_capacity(events.len());
        for event in events {
            encoder.encode(event, &mut messages)?;
        }
        self.send(messages).await?.wait().await
    }

    /// Hands `messages` to the producer, in order, without waiting for their
    /// acknowledgements (except to make room in a full queue); the result
    /// waits for them. Batches sent one after the other keep their order.
    pub(crate) async fn send(&self, messages: Messages) -> Result<Pending> {
        let mut pending = Pending {
            deliveries: VecDeque::with_capacity(messages.len()),
            acked: Vec::with_capacity(messages.len()),
        };
        let Messages { values, messages } = messages;
        for message in messages {
            let Outgoing {
                topic,
                key,
                value,
                headers,
                event_id,
                position,
                correlation_id,
                span,
            } = message;
            let mut record = FutureRecord::to(&topic)
                .key(key.as_str())
                .payload(&values[value])
                .headers(headers);
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        // Make room by waiting for the oldest message in flight.
                        if !pending.wait_oldest().await? {
                            tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                        }
                    }
                    Err((error, _)) => return Err(Error::Kafka(error)),
                }
            };
            let sent = Sent {
                event_id,
                position,
                stream_id: key,
                correlation_id,
                span,
            };
            pending.deliveries.push_back((sent, delivery));
        }
        Ok(pending)
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

/// Pause when the producer's queue is full and none of this batch's own
/// messages is in flight (earlier batches fill it).
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// What the traces and errors of a sent event need (the batch itself need
/// not stay in memory while it is in flight).
struct Sent {
    event_id: Uuid,
    position: i64,
    stream_id: String,
    correlation_id: Option<String>,
    /// The event's publish span, ended with this.
    span: tracing::Span,
}

/// The acknowledgements a sent batch is waiting for.
pub(crate) struct Pending {
    /// In send order, after those already acknowledged.
    deliveries: VecDeque<(Sent, DeliveryFuture)>,
    acked: Vec<Acked>,
}

impl Pending {
    /// Waits for every acknowledgement, in order.
    pub(crate) async fn wait(mut self) -> Result<Vec<Acked>> {
        while self.wait_oldest().await? {}
        Ok(self.acked)
    }

    /// Waits for the oldest delivery still pending; `false` if there is none.
    async fn wait_oldest(&mut self) -> Result<bool> {
        let Some((sent, delivery)) = self.deliveries.pop_front() else {
            return Ok(false);
        };
        self.acked.push(wait(sent, delivery).await?);
        Ok(true)
    }
}

async fn wait(event: Sent, delivery: DeliveryFuture) -> Result<Acked> {
    match delivery.await {
        Ok(Ok(delivery)) => {
            event.span.record("partition", delivery.partition);
            event.span.record("offset", delivery.offset);
            tracing::debug!(
                stream_id = %event.stream_id,
                event_id = %event.event_id,
                position = event.position,
                partition = delivery.partition,
                offset = delivery.offset,
                correlation_id = event.correlation_id.as_deref(),
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
