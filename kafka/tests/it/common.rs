//! The kafka tests' own helpers: events appended and made by hand, and
//! reads of the topics.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};
use kafka::{Delivered, EventConsumer, KafkaConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use test_support::TestDatabase;
use uuid::Uuid;

/// How long any wait for the broker may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Topics created, and a fresh database with its event store.
pub async fn setup() -> (TestDatabase, EventStore, KafkaConfig) {
    let config = test_support::kafka::topics("kafka-test").await;
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    (db, store, config)
}

/// Appends `count` events to `stream`, returning them as stored.
pub async fn append(store: &EventStore, stream: &StreamId, count: usize) -> Vec<RecordedEvent> {
    let events: Vec<NewEvent> = (0..count)
        .map(|n| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "TestHappened".to_owned(),
            schema_version: 1,
            payload: serde_json::json!({ "n": n, "stream": stream.to_string() }),
        })
        .collect();
    let metadata = Metadata {
        correlation_id: Some(format!("corr-{}", Uuid::new_v4())),
        causation_id: Some(format!("cause-{}", Uuid::new_v4())),
        actor: None,
        traceparent: None,
    };
    let appended = store
        .append(stream, ExpectedVersion::Any, &events, &metadata)
        .await
        .expect("append");
    let from = appended.version + 1 - count as u64;
    store.read_stream(stream, from).await.expect("read back")
}

/// A hand-made recorded event (for tests that need no database).
pub fn recorded(stream_type: &str, id: &str, version: u64, position: i64) -> RecordedEvent {
    RecordedEvent {
        position,
        transaction_id: 1000 + position as u64,
        stream_type: stream_type.to_owned(),
        stream_id: format!("{stream_type}-{id}"),
        version,
        event_id: Uuid::now_v7(),
        event_type: "TestHappened".to_owned(),
        schema_version: 1,
        payload: serde_json::json!({ "version": version }),
        metadata: Metadata {
            correlation_id: Some(format!("corr-{id}")),
            causation_id: None,
            actor: None,
            traceparent: None,
        },
        recorded_at: Utc::now(),
    }
}

/// Reads from `consumer` until every id of `wanted` was seen (duplicates are
/// kept), failing after [`DEADLINE`].
pub async fn consume_ids(consumer: &EventConsumer, wanted: &HashSet<Uuid>) -> Vec<Delivered> {
    match try_consume_ids(consumer, wanted).await {
        Ok(delivered) => delivered,
        Err(missing) => panic!("{}", missing.message),
    }
}

/// What [`try_consume_ids`] had not seen by its deadline.
pub struct Missing {
    /// `timed out: N of M events consumed`.
    pub message: String,
    /// The ids never seen.
    pub ids: HashSet<Uuid>,
}

/// [`consume_ids`], returning what was missing at the deadline instead of
/// panicking (so the caller can say where the missing events are).
pub async fn try_consume_ids(
    consumer: &EventConsumer,
    wanted: &HashSet<Uuid>,
) -> Result<Vec<Delivered>, Missing> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = HashSet::new();
    let mut delivered = Vec::new();
    while !wanted.is_subset(&seen) {
        if Instant::now() >= deadline {
            return Err(Missing {
                message: format!(
                    "timed out: {} of {} events consumed",
                    wanted.intersection(&seen).count(),
                    wanted.len()
                ),
                ids: wanted.difference(&seen).copied().collect(),
            });
        }
        let batch = consumer
            .next_batch(500, Duration::from_millis(200))
            .await
            .expect("next batch");
        seen.extend(batch.iter().map(|d| d.event.event_id));
        delivered.extend(batch);
    }
    Ok(delivered)
}

/// Which of some events are on the broker, and where.
pub struct Located {
    /// The ids found.
    pub found: HashSet<Uuid>,
    /// Where they are (topic, partition, offset), which are not there, and
    /// how much of the topics was read.
    pub description: String,
}

/// Where each of `ids` is on the broker: reads every partition of the
/// topics of `stream_types` from offset 0 up to its high watermark, without
/// a consumer group and uncommitted messages included, and tells which of
/// `ids` are there and which are not in Kafka at all.
pub async fn locate_on_broker(
    config: &KafkaConfig,
    stream_types: &[&str],
    ids: &HashSet<Uuid>,
) -> Located {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("locate-{}", Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("raw consumer");
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = Vec::new();
    for stream_type in stream_types {
        let topic = config.topic(stream_type);
        for partition in 0..config.partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(10))
                .expect("watermarks");
            ends.push(format!("{topic}/{partition}: {low}..{high}"));
            remaining += high - low;
            assignment
                .add_partition_offset(&topic, partition, Offset::Beginning)
                .expect("add partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut found = Vec::new();
    let mut read = 0i64;
    let reading = async {
        while read < remaining {
            let message = consumer.recv().await.expect("raw consumer");
            read += 1;
            let id = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == kafka::headers::EVENT_ID)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<Uuid>().ok())
            });
            if let Some(id) = id.filter(|id| ids.contains(id)) {
                found.push((
                    id,
                    message.topic().to_owned(),
                    message.partition(),
                    message.offset(),
                ));
            }
        }
    };
    let complete = tokio::time::timeout(DEADLINE, reading).await.is_ok();
    let located: HashSet<Uuid> = found.iter().map(|(id, ..)| *id).collect();
    let absent: Vec<&Uuid> = ids.difference(&located).collect();
    let description = format!(
        "{} of {} missing events are on the broker{}, {} are not ({read} of {remaining} messages read; \
         partitions {}); found: {:?}; absent: {:?}",
        located.len(),
        ids.len(),
        if complete { "" } else { " (reading timed out)" },
        absent.len(),
        ends.join(", "),
        found.iter().take(20).collect::<Vec<_>>(),
        absent.iter().take(20).collect::<Vec<_>>(),
    );
    Located {
        found: located,
        description,
    }
}

/// Reads every message of the given topics from the beginning, without a
/// consumer group, until `count` were read (for checking keys and headers).
pub async fn read_raw(
    config: &KafkaConfig,
    stream_types: &[&str],
    count: usize,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("raw-{}", Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("raw consumer");
    let mut assignment = TopicPartitionList::new();
    for stream_type in stream_types {
        for partition in 0..config.partitions {
            assignment
                .add_partition_offset(&config.topic(stream_type), partition, Offset::Beginning)
                .expect("add partition");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut messages = Vec::new();
    let read = async {
        while messages.len() < count {
            let message = consumer.recv().await.expect("raw consumer");
            messages.push(message.detach());
        }
    };
    if tokio::time::timeout(DEADLINE, read).await.is_err() {
        panic!("timed out reading {count} raw messages");
    }
    messages
}

/// The value of header `name` as UTF-8, if present.
pub fn header<'m>(message: &'m OwnedMessage, name: &str) -> Option<&'m str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| std::str::from_utf8(v).expect("UTF-8 header"))
}
