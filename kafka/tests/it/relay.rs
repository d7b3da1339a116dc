//! The relay publishes the event log to Kafka.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use event_store::{Checkpoint, RecordedEvent, StreamId};
use kafka::{
    headers, EventConsumer, KafkaConfig, Relay, RelayOptions, RelayOutcome, CHECKPOINT_NAME,
};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{append, consume_ids, header, read_raw, setup, DEADLINE};
use test_support::store::all_events;
use test_support::wait_until;

fn options(batch_size: u32) -> RelayOptions {
    RelayOptions {
        batch_size,
        delivery_timeout_ms: 10_000,
        idle_wait_ms: 200,
        ..RelayOptions::default()
    }
}

/// Steps the relay until its checkpoint is `target`; returns the number of
/// events it published meanwhile.
async fn relay_until(relay: &mut Relay, target: Checkpoint) -> usize {
    let deadline = Instant::now() + DEADLINE;
    let mut published = 0;
    while relay.checkpoint() != Some(target) {
        assert!(Instant::now() < deadline, "relay never reached {target:?}");
        match relay.process_batch().await.expect("relay step") {
            RelayOutcome::Published { events, .. } => published += events,
            RelayOutcome::Idle => {}
        }
    }
    published
}

/// Steps the relay until a step fails.
async fn relay_until_error(relay: &mut Relay) -> kafka::Error {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the relay never failed");
        match relay.process_batch().await {
            Ok(RelayOutcome::Idle) => {}
            Ok(outcome) => panic!("published without a broker: {outcome:?}"),
            Err(error) => return error,
        }
    }
}

fn last_checkpoint(events: &[RecordedEvent]) -> Checkpoint {
    events.last().expect("events").checkpoint()
}

fn ids(events: &[RecordedEvent]) -> HashSet<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn group(config: &KafkaConfig) -> String {
    format!("{}.test-group", config.topic_prefix)
}

#[tokio::test]
async fn publishes_every_event_in_order_with_key_headers_and_value() {
    let (db, store, config) = setup().await;
    let streams = [
        StreamId::new("account", Uuid::new_v4()),
        StreamId::new("account", Uuid::new_v4()),
        StreamId::new("order", Uuid::new_v4()),
        StreamId::new("inventory", "LAPTOP-15"),
    ];
    // Interleaved appends: 3 rounds of 2 events on every stream.
    for _ in 0..3 {
        for stream in &streams {
            append(&store, stream, 2).await;
        }
    }
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 24);

    let mut relay = Relay::with_options(store.clone(), config.clone(), options(5)).expect("relay");
    let last = last_checkpoint(&stored);
    assert_eq!(relay_until(&mut relay, last).await, 24);
    assert_eq!(
        store
            .load_checkpoint(CHECKPOINT_NAME)
            .await
            .expect("checkpoint"),
        last
    );

    // Values and per-stream order, read back with the EventConsumer.
    let consumer =
        EventConsumer::new(&config, &group(&config), kafka::STREAM_TYPES).expect("consumer");
    let delivered = consume_ids(&consumer, &ids(&stored)).await;
    assert_eq!(delivered.len(), 24, "no duplicates without failures");
    let by_id: HashMap<Uuid, &RecordedEvent> = stored.iter().map(|e| (e.event_id, e)).collect();
    let mut versions: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut partitions: HashMap<&str, HashSet<i32>> = HashMap::new();
    for d in &delivered {
        assert_eq!(
            &d.event, by_id[&d.event.event_id],
            "value is the recorded event"
        );
        assert_eq!(d.topic, config.topic(&d.event.stream_type));
        versions
            .entry(&d.event.stream_id)
            .or_default()
            .push(d.event.version);
        partitions
            .entry(&d.event.stream_id)
            .or_default()
            .insert(d.partition);
    }
    for stream in &streams {
        assert_eq!(
            versions[stream.as_str()],
            (1..=6).collect::<Vec<u64>>(),
            "order of {stream}"
        );
        assert_eq!(
            partitions[stream.as_str()].len(),
            1,
            "{stream} stays on one partition"
        );
    }

    // Keys and headers, read raw.
    let raw = read_raw(&config, kafka::STREAM_TYPES, 24).await;
    for message in &raw {
        let event_id: Uuid = header(message, headers::EVENT_ID)
            .expect("event_id")
            .parse()
            .expect("uuid");
        let event = by_id[&event_id];
        assert_eq!(message.key(), Some(event.stream_id.as_bytes()));
        assert_eq!(
            header(message, headers::EVENT_TYPE),
            Some(event.event_type.as_str())
        );
        assert_eq!(
            header(message, headers::SCHEMA_VERSION),
            Some(event.schema_version.to_string().as_str())
        );
        assert_eq!(
            header(message, headers::STREAM_VERSION),
            Some(event.version.to_string().as_str())
        );
        assert_eq!(
            header(message, headers::POSITION),
            Some(event.position.to_string().as_str())
        );
        assert_eq!(
            header(message, headers::CORRELATION_ID),
            event.metadata.correlation_id.as_deref()
        );
        assert_eq!(
            header(message, headers::CAUSATION_ID),
            event.metadata.causation_id.as_deref()
        );
    }
    drop(consumer);
    db.drop().await;
}

#[tokio::test]
async fn broker_unavailable_checkpoints_nothing_then_everything_arrives() {
    let (db, store, config) = setup().await;
    let account = StreamId::new("account", Uuid::new_v4());
    append(&store, &account, 10).await;

    let dead = KafkaConfig {
        brokers: test_support::kafka::dead_broker(),
        ..config.clone()
    };
    let mut relay = Relay::with_options(
        store.clone(),
        dead,
        RelayOptions {
            delivery_timeout_ms: 1000,
            ..options(4)
        },
    )
    .expect("relay");
    for _ in 0..2 {
        let error = relay_until_error(&mut relay).await;
        assert!(
            matches!(error, kafka::Error::Delivery { .. }),
            "unexpected error: {error}"
        );
    }
    assert_eq!(
        store
            .load_checkpoint(CHECKPOINT_NAME)
            .await
            .expect("checkpoint"),
        Checkpoint::START,
        "nothing checkpointed while the broker is down"
    );
    // Commands go on being accepted meanwhile.
    let order = StreamId::new("order", Uuid::new_v4());
    append(&store, &order, 5).await;
    append(&store, &account, 3).await;
    drop(relay);

    // The broker is back: the next relay publishes everything.
    let stored = all_events(&store).await;
    let mut relay = Relay::with_options(store.clone(), config.clone(), options(4)).expect("relay");
    assert_eq!(
        relay_until(&mut relay, last_checkpoint(&stored)).await,
        stored.len()
    );
    let consumer =
        EventConsumer::new(&config, &group(&config), kafka::STREAM_TYPES).expect("consumer");
    let delivered = consume_ids(&consumer, &ids(&stored)).await;
    let account_versions: Vec<u64> = delivered
        .iter()
        .filter(|d| d.event.stream_id == account.as_str())
        .map(|d| d.event.version)
        .collect();
    assert_eq!(account_versions, (1..=13).collect::<Vec<u64>>());
    drop(consumer);
    db.drop().await;
}

#[tokio::test]
async fn a_new_relay_resumes_after_the_saved_checkpoint() {
    let (db, store, config) = setup().await;
    let stream = StreamId::new("inventory", format!("SKU-{}", Uuid::new_v4().simple()));
    let first = append(&store, &stream, 6).await;
    {
        let mut relay =
            Relay::with_options(store.clone(), config.clone(), options(4)).expect("relay");
        assert_eq!(relay_until(&mut relay, last_checkpoint(&first)).await, 6);
    }
    let second = append(&store, &stream, 4).await;
    let mut relay =
        Relay::with_options(store.clone(), config.clone(), options(100)).expect("relay");
    assert_eq!(
        relay_until(&mut relay, last_checkpoint(&second)).await,
        4,
        "only the events after the checkpoint are published"
    );
    assert_eq!(
        relay.process_batch().await.expect("step"),
        RelayOutcome::Idle
    );

    let mut all = first.clone();
    all.extend(second);
    let consumer = EventConsumer::new(&config, &group(&config), &["inventory"]).expect("consumer");
    let delivered = consume_ids(&consumer, &ids(&all)).await;
    let versions: Vec<u64> = delivered.iter().map(|d| d.event.version).collect();
    assert_eq!(
        versions,
        (1..=10).collect::<Vec<u64>>(),
        "each event once, in order"
    );
    drop(consumer);
    db.drop().await;
}

#[tokio::test]
async fn run_publishes_as_events_arrive_and_stops_on_shutdown() {
    let (db, store, config) = setup().await;
    let relay = Relay::with_options(store.clone(), config.clone(), options(100)).expect("relay");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    let consumer = EventConsumer::new(&config, &group(&config), &["account"]).expect("consumer");
    let stream = StreamId::new("account", Uuid::new_v4());
    let mut expected = HashSet::new();
    for _ in 0..3 {
        let events = append(&store, &stream, 2).await;
        expected.extend(ids(&events));
        consume_ids(&consumer, &ids(&events)).await;
    }
    let last = all_events(&store)
        .await
        .last()
        .expect("events")
        .checkpoint();
    wait_until("the relay checkpoint", DEADLINE, || async {
        store
            .load_checkpoint(CHECKPOINT_NAME)
            .await
            .expect("checkpoint")
            == last
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("relay stops on shutdown")
        .expect("relay task")
        .expect("relay run");
    assert_eq!(expected.len(), 6);
    drop(consumer);
    db.drop().await;
}

#[tokio::test]
async fn steps_dropped_midway_lose_nothing() {
    let (db, store, config) = setup().await;
    for _ in 0..4 {
        append(&store, &StreamId::new("order", Uuid::new_v4()), 10).await;
    }
    let stored = all_events(&store).await;
    let options = RelayOptions {
        max_in_flight: 4,
        ..options(3)
    };
    let mut relay = Relay::with_options(store.clone(), config.clone(), options).expect("relay");
    // Cut steps short at every stage: loading the checkpoint, reading,
    // sending, waiting for acknowledgements, saving the checkpoint.
    for i in 0..40u64 {
        let _ = tokio::time::timeout(Duration::from_millis(i % 8), relay.process_batch()).await;
    }
    relay_until(&mut relay, last_checkpoint(&stored)).await;
    assert_eq!(
        store
            .load_checkpoint(CHECKPOINT_NAME)
            .await
            .expect("checkpoint"),
        last_checkpoint(&stored)
    );
    let consumer = EventConsumer::new(&config, &group(&config), &["order"]).expect("consumer");
    let delivered = consume_ids(&consumer, &ids(&stored)).await;
    assert!(delivered.len() >= stored.len());
    drop(consumer);
    db.drop().await;
}
