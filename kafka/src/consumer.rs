//! Reading events back from Kafka in a consumer group, with manual commits.

use std::collections::HashMap;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::message::decode;
use crate::{Delivered, KafkaConfig, Result};

/// How long the broker may hold a fetch that found nothing new
/// (`fetch.wait.max.ms`, librdkafka's default 500). Apache Kafka answers a
/// waiting fetch as soon as a message arrives, so this only bounds idle
/// round trips there (at most 50 a second per broker); Tansu answers only
/// when the wait is over, so it is what a new event waits on its way to a
/// consumer, half of it on average: with 500 ms, produce to consume took 160
/// to 230 ms at the median here, with 50 ms 23 to 29 ms, with 20 ms 15 to
/// 21 ms (BENCHMARKS.md, end-to-end lag).
const FETCH_WAIT_MAX_MS: u32 = 20;

/// How much librdkafka fetches ahead of what the consumer has taken, per
/// partition: a few of a worker's batches (500 events, a few hundred bytes
/// each), not librdkafka's defaults of 100,000 messages or 64 MiB. Those
/// let a worker that fell behind in a stall hold its whole backlog in the
/// process at once, and what a fetch held stays with the allocator.
const PREFETCH_MESSAGES: u32 = 2_000;
const PREFETCH_KIB: u32 = 1_024;

/// A member of a consumer group reading the topics of some stream types.
///
/// Offsets are never committed automatically: the caller commits a batch
/// after its own effects are durable ([`EventConsumer::commit`]). A group
/// with no committed offset starts at the beginning of each partition. Two
/// consumers of one group share the partitions, and a consumer that stops
/// (or is dropped, which leaves the group cleanly) hands its partitions to
/// the others.
pub struct EventConsumer {
    consumer: StreamConsumer,
    group_id: String,
}

impl std::fmt::Debug for EventConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventConsumer")
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

impl EventConsumer {
    /// Joins `group_id` and subscribes to the topics of `stream_types`. The
    /// topics must exist ([`crate::ensure_topics`]).
    pub fn new(config: &KafkaConfig, group_id: &str, stream_types: &[&str]) -> Result<Self> {
        let session_timeout_ms = config.session_timeout_ms.max(3);
        let consumer: StreamConsumer = config
            .client_config()?
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS.to_string())
            .set("queued.min.messages", PREFETCH_MESSAGES.to_string())
            .set("queued.max.messages.kbytes", PREFETCH_KIB.to_string())
            .set("session.timeout.ms", session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (session_timeout_ms / 3).to_string(),
            )
            .create()?;
        let topics: Vec<String> = stream_types.iter().map(|t| config.topic(t)).collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer,
            group_id: group_id.to_owned(),
        })
    }

    /// The consumer group this consumer belongs to.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The partitions currently assigned to this consumer, as `(topic, partition)`.
    /// Empty until the group has been joined (which happens while
    /// [`EventConsumer::next_batch`] is being called).
    pub fn assignment(&self) -> Result<Vec<(String, i32)>> {
        let assigned = self.consumer.assignment()?;
        Ok(assigned
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect())
    }

    /// Waits up to `wait` for the first message, then takes what is
    /// immediately available, up to `max`. An empty batch means nothing
    /// arrived in time.
    ///
    /// A message whose value is not a recorded event (nothing Purser
    /// produces) is logged and skipped: the event store, not Kafka, is the
    /// truth, and read models can be rebuilt from it.
    #[tracing::instrument(skip_all, fields(group_id = %self.group_id, count), err)]
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivered>> {
        let mut batch = Vec::new();
        if max == 0 {
            return Ok(batch);
        }
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_elapsed) => return Ok(batch),
            Ok(message) => message?,
        };
        self.push(&mut batch, &first);
        drop(first);
        while batch.len() < max {
            match self.consumer.recv().now_or_never() {
                None => break,
                Some(Ok(message)) => self.push(&mut batch, &message),
                Some(Err(error)) => {
                    tracing::warn!(%error, "consumer error after a partial batch");
                    break;
                }
            }
        }
        tracing::Span::current().record("count", batch.len());
        Ok(batch)
    }

    fn push(&self, batch: &mut Vec<Delivered>, message: &rdkafka::message::BorrowedMessage<'_>) {
        use rdkafka::Message;
        match decode(message) {
            Ok(delivered) => {
                tracing::debug!(
                    stream_id = %delivered.event.stream_id,
                    event_id = %delivered.event.event_id,
                    position = delivered.event.position,
                    partition = delivered.partition,
                    offset = delivered.offset,
                    correlation_id = delivered.event.metadata.correlation_id.as_deref(),
                    "event received"
                );
                batch.push(delivered);
            }
            Err(error) => tracing::error!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                %error,
                "skipping a message that is not a recorded event"
            ),
        }
    }

    /// Commits, for each partition in `batch`, the offset after its last
    /// message. Call it after the batch's effects are committed: offsets are
    /// only where the group restarts, so a crash before this call means
    /// the batch is delivered again.
    #[tracing::instrument(skip_all, fields(group_id = %self.group_id, count = batch.len()), err)]
    pub fn commit(&self, batch: &[Delivered]) -> Result<()> {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for delivered in batch {
            let offset = next
                .entry((delivered.topic.as_str(), delivered.partition))
                .or_insert(delivered.offset + 1);
            *offset = (*offset).max(delivered.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in next {
            tracing::debug!(topic, partition, offset, "committing");
            offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        }
        self.consumer.commit(&offsets, CommitMode::Async)?;
        Ok(())
    }
}
