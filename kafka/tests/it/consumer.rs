//! EventConsumer: consumer groups, commits, restarts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_store::RecordedEvent;
use kafka::{ensure_topics, Delivered, EventConsumer, EventPublisher, KafkaConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{consume_ids, recorded, DEADLINE};
use test_support::wait_until;

/// One event on each of `streams` fresh account streams (spread over the partitions).
fn events(streams: usize, first_position: i64) -> Vec<RecordedEvent> {
    (0..streams)
        .map(|n| {
            recorded(
                "account",
                &Uuid::new_v4().to_string(),
                1,
                first_position + n as i64,
            )
        })
        .collect()
}

fn ids(events: &[RecordedEvent]) -> HashSet<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

async fn publish(config: &KafkaConfig, events: &[RecordedEvent]) {
    let publisher = EventPublisher::new(config, Duration::from_secs(10)).expect("publisher");
    let acked = publisher.publish(events).await.expect("publish");
    assert_eq!(acked.len(), events.len());
}

/// A consumer polled in the background, collecting what it receives.
struct Member {
    consumer: Arc<EventConsumer>,
    received: Arc<Mutex<Vec<Delivered>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    fn start(config: &KafkaConfig, group: &str) -> Member {
        let consumer = Arc::new(EventConsumer::new(config, group, &["account"]).expect("consumer"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (consumer, received, stop) = (consumer.clone(), received.clone(), stop.clone());
            async move {
                while !stop.is_cancelled() {
                    let batch = consumer
                        .next_batch(100, Duration::from_millis(100))
                        .await
                        .expect("next batch");
                    consumer.commit(&batch).expect("commit");
                    received.lock().expect("lock").extend(batch);
                }
            }
        });
        Member {
            consumer,
            received,
            stop,
            task,
        }
    }

    fn ids(&self) -> HashSet<Uuid> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .map(|d| d.event.event_id)
            .collect()
    }

    fn partitions(&self) -> HashSet<i32> {
        self.consumer
            .assignment()
            .expect("assignment")
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// Stops polling and leaves the group.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("member task");
        let consumer = Arc::try_unwrap(self.consumer).expect("sole owner");
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .expect("close");
    }
}

#[tokio::test]
async fn two_consumers_of_one_group_share_the_partitions() {
    let config = test_support::kafka::config("kafka-test");
    ensure_topics(&config, &["account"]).await.expect("topics");
    let group = format!("{}.share", config.topic_prefix);
    let a = Member::start(&config, &group);
    let b = Member::start(&config, &group);
    wait_until("both members to hold partitions", DEADLINE, || async {
        let (pa, pb) = (a.partitions(), b.partitions());
        !pa.is_empty() && !pb.is_empty() && pa.is_disjoint(&pb) && pa.len() + pb.len() == 3
    })
    .await;

    let sent = events(30, 1);
    publish(&config, &sent).await;
    let wanted = ids(&sent);
    wait_until("every event consumed", DEADLINE, || async {
        a.ids().union(&b.ids()).copied().collect::<HashSet<_>>() == wanted
    })
    .await;
    assert!(
        !a.ids().is_empty() && !b.ids().is_empty(),
        "both consumers got messages"
    );
    assert!(
        a.ids().is_disjoint(&b.ids()),
        "each message went to one member"
    );

    // When one leaves, the other takes its partitions over.
    a.stop().await;
    wait_until(
        "the remaining member to hold every partition",
        DEADLINE,
        || async { b.partitions().len() == 3 },
    )
    .await;
    let more = events(12, 100);
    publish(&config, &more).await;
    let wanted = ids(&more);
    wait_until(
        "the remaining member to consume everything",
        DEADLINE,
        || async { wanted.is_subset(&b.ids()) },
    )
    .await;
    b.stop().await;
}

#[tokio::test]
async fn a_restarted_consumer_resumes_after_its_committed_offsets() {
    let config = test_support::kafka::config("kafka-test");
    ensure_topics(&config, &["account"]).await.expect("topics");
    let group = format!("{}.restart", config.topic_prefix);
    let first = events(10, 1);
    publish(&config, &first).await;

    let consumer = EventConsumer::new(&config, &group, &["account"]).expect("consumer");
    let delivered = consume_ids(&consumer, &ids(&first)).await;
    consumer.commit(&delivered).expect("commit");
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .expect("close");

    let second = events(5, 100);
    publish(&config, &second).await;
    let consumer = EventConsumer::new(&config, &group, &["account"]).expect("consumer");
    let delivered = consume_ids(&consumer, &ids(&second)).await;
    let old = ids(&first);
    assert!(
        delivered.iter().all(|d| !old.contains(&d.event.event_id)),
        "nothing before the committed offsets is delivered again"
    );
    assert_eq!(delivered.len(), 5);

    // Without a commit, a restart delivers the batch again (at-least-once).
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .expect("close");
    let consumer = EventConsumer::new(&config, &group, &["account"]).expect("consumer");
    let again = consume_ids(&consumer, &ids(&second)).await;
    assert_eq!(
        ids(&again.iter().map(|d| d.event.clone()).collect::<Vec<_>>()),
        ids(&second)
    );
    tokio::task::spawn_blocking(move || drop(consumer))
        .await
        .expect("close");
}

#[tokio::test]
async fn next_batch_returns_empty_when_nothing_arrives() {
    let config = test_support::kafka::config("kafka-test");
    ensure_topics(&config, &["saga"]).await.expect("topics");
    let consumer = EventConsumer::new(&config, &format!("{}.idle", config.topic_prefix), &["saga"])
        .expect("consumer");
    let batch = consumer
        .next_batch(10, Duration::from_millis(300))
        .await
        .expect("batch");
    assert!(batch.is_empty());
    assert!(consumer
        .next_batch(0, Duration::from_secs(60))
        .await
        .expect("batch")
        .is_empty());
    consumer.commit(&[]).expect("empty commit");
}
