//! What starts and wakes sagas: `OrderPlaced`, `CancellationRequested` and
//! `SagaRetried`, consumed from Kafka in the saga's own consumer group.

use std::time::Duration;

use domain::{OrderEvent, OrderId};
use event_store::{Metadata, RecordedEvent};
use kafka::{Delivered, EventConsumer, KafkaConfig};
use tokio_util::sync::CancellationToken;

use crate::orchestrator::saga_order;
use crate::{Orchestrator, Result};

/// The saga's consumer group: `{prefix}.saga`.
pub fn group_id(kafka: &KafkaConfig) -> String {
    format!("{}.saga", kafka.topic_prefix)
}

/// What one step of the trigger did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerOutcome {
    /// Nothing arrived in time.
    Idle,
    /// This many messages were handled and their offsets committed.
    Handled(usize),
}

/// Consumes the order and saga topics and starts or wakes sagas. Offsets
/// are committed once the batch's sagas are started and woken, so a crash
/// redelivers the batch, and a redelivered `OrderPlaced` starts nothing
/// new: the saga's stream exists.
pub struct Trigger {
    orchestrator: Orchestrator,
    consumer: EventConsumer,
    pending: Option<Vec<Delivered>>,
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trigger")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl Trigger {
    pub fn new(orchestrator: Orchestrator, kafka: &KafkaConfig) -> Result<Self> {
        let consumer = EventConsumer::new(kafka, &group_id(kafka), &["order", "saga"])?;
        Ok(Trigger {
            orchestrator,
            consumer,
            pending: None,
        })
    }

    /// The partitions this trigger holds now.
    pub fn assignment(&self) -> Result<Vec<(String, i32)>> {
        Ok(self.consumer.assignment()?)
    }

    /// Fetches a batch (or retries the one that failed) and handles it.
    pub async fn process_batch(&mut self) -> Result<TriggerOutcome> {
        let batch = match self.pending.take() {
            Some(batch) => batch,
            None => {
                self.consumer
                    .next_batch(500, Duration::from_millis(500))
                    .await?
            }
        };
        if batch.is_empty() {
            return Ok(TriggerOutcome::Idle);
        }
        for delivered in &batch {
            if let Err(error) = self.handle(&delivered.event).await {
                self.pending = Some(batch);
                return Err(error);
            }
        }
        if let Err(error) = self.consumer.commit(&batch) {
            // A redelivery starts nothing twice.
            tracing::warn!(%error, "cannot commit offsets");
        }
        Ok(TriggerOutcome::Handled(batch.len()))
    }

    #[tracing::instrument(skip_all, fields(
        stream_id = %event.stream_id,
        event_id = %event.event_id,
        position = event.position,
        correlation_id = event.metadata.correlation_id.as_deref(),
    ))]
    async fn handle(&self, event: &RecordedEvent) -> Result<()> {
        match (event.stream_type.as_str(), event.event_type.as_str()) {
            ("order", "OrderPlaced") => {
                let decoded: OrderEvent = match event.decode() {
                    Ok(decoded) => decoded,
                    Err(error) => {
                        tracing::error!(%error, "skipping an OrderPlaced that does not decode");
                        return Ok(());
                    }
                };
                if let Some(order) = saga_order(&decoded) {
                    let metadata = Metadata {
                        causation_id: Some(event.event_id.to_string()),
                        ..event.metadata.clone()
                    };
                    self.orchestrator.start(order, metadata).await?;
                }
                Ok(())
            }
            ("order", "CancellationRequested") | ("saga", "SagaRetried") => {
                match order_id_of(&event.stream_id) {
                    Some(order_id) => self.orchestrator.wake(order_id).await,
                    None => {
                        tracing::error!("skipping an event whose stream id names no order");
                        Ok(())
                    }
                }
            }
            _ => Ok(()),
        }
    }

    /// Runs until `shutdown`; failures (database or broker down) are
    /// retried with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        const MIN_BACKOFF: Duration = Duration::from_millis(100);
        const MAX_BACKOFF: Duration = Duration::from_secs(5);
        let mut backoff = MIN_BACKOFF;
        tracing::info!("saga trigger started");
        while !shutdown.is_cancelled() {
            let step = tokio::select! {
                () = shutdown.cancelled() => break,
                step = self.process_batch() => step,
            };
            match step {
                Ok(_) => backoff = MIN_BACKOFF,
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "saga trigger failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tracing::info!("saga trigger stopped");
        Ok(())
    }
}

/// `order-{uuid}` or `saga-{uuid}` -> the uuid.
fn order_id_of(stream_id: &str) -> Option<OrderId> {
    let (_, id) = stream_id.split_once('-')?;
    OrderId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_saga_stream_ids_name_their_order() {
        let id = "0191d0c2-7a3e-7cc1-9a41-3f1f0d5b2a10";
        assert_eq!(
            order_id_of(&format!("order-{id}")).map(|o| o.to_string()),
            Some(id.to_owned())
        );
        assert_eq!(
            order_id_of(&format!("saga-{id}")).map(|o| o.to_string()),
            Some(id.to_owned())
        );
        assert_eq!(order_id_of("order-nope"), None);
    }
}
