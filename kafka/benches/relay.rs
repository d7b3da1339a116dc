//! Relay throughput against a bare producer of the same messages through the
//! same broker, in one run (the book's design page, "How the numbers are taken").
//!
//! `cargo bench -p kafka --bench relay`; needs Postgres at `DATABASE_URL` and a
//! broker at `KAFKA_BROKERS`. `RELAY_BENCH_EVENTS` (default 50000),
//! `RELAY_BENCH_ROUNDS` (default 7, after one warm-up round),
//! `PURSER_RELAY_BATCH_SIZE` and `PURSER_RELAY_MAX_IN_FLIGHT` (the relay's defaults
//! otherwise) tune it. Prints every round, the medians and their ratio, and
//! the median of the per-round ratios.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use test_support::env_or;

use event_store::{
    Checkpoint, EventStore, ExpectedVersion, Metadata, NewEvent, RawRecordedEvent, StreamId,
};
use kafka::{
    ensure_topics, KafkaConfig, Relay, RelayOptions, RelayOutcome, CHECKPOINT_NAME, STREAM_TYPES,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use test_support::TestDatabase;
use uuid::Uuid;

const STREAMS: usize = 1000;

/// Time both producers get to connect and obtain their idempotent producer
/// id before the clock starts (about a second on Tansu; not what is measured).
const PRODUCER_WARM_UP: Duration = Duration::from_secs(2);

fn config() -> KafkaConfig {
    test_support::kafka::isolated("bench")
}

/// `count` events over [`STREAMS`] account streams, appended in chunks.
async fn fill(store: &EventStore, count: usize) {
    let streams: Vec<StreamId> = (0..STREAMS)
        .map(|_| StreamId::new("account", Uuid::new_v4()))
        .collect();
    let metadata = Metadata {
        correlation_id: Some(Uuid::new_v4().to_string()),
        causation_id: Some(Uuid::new_v4().to_string()),
        actor: None,
        traceparent: None,
    };
    let chunk = 50;
    let mut written = 0;
    let mut n = 0;
    while written < count {
        let size = chunk.min(count - written);
        let events: Vec<NewEvent> = (0..size)
            .map(|i| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "MoneyDeposited".to_owned(),
                schema_version: 1,
                payload: serde_json::json!({ "amount": 100 + i, "balance_after": 1000 + i }),
            })
            .collect();
        store
            .append(
                &streams[n % STREAMS],
                ExpectedVersion::Any,
                &events,
                &metadata,
            )
            .await
            .expect("append");
        written += size;
        n += 1;
    }
}

/// The messages the relay produces, built ahead of time: the same topic,
/// key, headers and value bytes (the recorded event as JSON with the
/// payload's stored text, as the relay encodes it).
struct Prepared {
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

fn prepare(config: &KafkaConfig, events: &[RawRecordedEvent]) -> Vec<Prepared> {
    events
        .iter()
        .map(|e| {
            let mut headers = vec![
                ("event_id", e.event_id.to_string()),
                ("event_type", e.event_type.clone()),
                ("schema_version", e.schema_version.to_string()),
                ("stream_version", e.version.to_string()),
                ("position", e.position.to_string()),
            ];
            if let Some(id) = &e.metadata.correlation_id {
                headers.push(("correlation_id", id.clone()));
            }
            if let Some(id) = &e.metadata.causation_id {
                headers.push(("causation_id", id.clone()));
            }
            Prepared {
                topic: config.topic(&e.stream_type),
                key: e.stream_id.clone(),
                payload: serde_json::to_vec(e).expect("encode"),
                headers,
            }
        })
        .collect()
}

/// A bare idempotent producer sending the prepared messages, awaiting every ack.
async fn bare(config: &KafkaConfig, messages: &[Prepared]) -> Duration {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    tokio::time::sleep(PRODUCER_WARM_UP).await;
    let started = Instant::now();
    let mut pending = VecDeque::new();
    for m in messages {
        let headers = m
            .headers
            .iter()
            .fold(OwnedHeaders::new_with_capacity(7), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                })
            });
        let mut record = FutureRecord::to(&m.topic)
            .key(m.key.as_str())
            .payload(&m.payload)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    let oldest = pending.pop_front().expect("a message in flight");
                    oldest.await.expect("delivery").expect("acknowledged");
                }
                Err((error, _)) => panic!("produce: {error}"),
            }
        }
    }
    for delivery in pending {
        delivery.await.expect("delivery").expect("acknowledged");
    }
    started.elapsed()
}

async fn relay(
    store: &EventStore,
    config: &KafkaConfig,
    total: usize,
    batch_size: u32,
) -> Duration {
    store
        .save_checkpoint(CHECKPOINT_NAME, Checkpoint::START)
        .await
        .expect("reset checkpoint");
    let options = RelayOptions {
        batch_size,
        max_in_flight: env_or(
            "PURSER_RELAY_MAX_IN_FLIGHT",
            RelayOptions::default().max_in_flight,
        ),
        idle_wait_ms: 1000,
        ..RelayOptions::default()
    };
    let mut relay = Relay::with_options(store.clone(), config.clone(), options).expect("relay");
    tokio::time::sleep(PRODUCER_WARM_UP).await;
    let started = Instant::now();
    let mut published = 0;
    while published < total {
        match relay.process_batch().await.expect("relay step") {
            RelayOutcome::Published { events, .. } => published += events,
            // Only while the reader starts (or another transaction on the
            // server holds the gap-safe read back).
            RelayOutcome::Idle => {}
        }
    }
    started.elapsed()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn rate(events: usize, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let events: usize = env_or("RELAY_BENCH_EVENTS", 50_000);
    let rounds: usize = env_or("RELAY_BENCH_ROUNDS", 7);
    let batch_size: u32 = env_or(
        "PURSER_RELAY_BATCH_SIZE",
        RelayOptions::default().batch_size,
    );

    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let filling = Instant::now();
    fill(&store, events).await;
    // read_all only shows transactions older than every one in flight on the
    // server (in any database): wait until every append is visible.
    let deadline = Instant::now() + Duration::from_secs(120);
    let stored = loop {
        let stored = store
            .read_all_raw(Checkpoint::START, i64::MAX)
            .await
            .expect("read all");
        if stored.len() == events {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {events} events visible",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "relay bench: {events} events over {STREAMS} streams appended in {:.1}s; batch size {batch_size}; {rounds} rounds",
        filling.elapsed().as_secs_f64()
    );

    let reading = Instant::now();
    let mut from = Checkpoint::START;
    loop {
        let batch = store
            .read_all(from, i64::from(batch_size))
            .await
            .expect("read");
        let Some(last) = batch.last() else { break };
        from = last.checkpoint();
    }
    println!(
        "store read_all alone: {:.0} events/s",
        rate(events, reading.elapsed())
    );
    let reading = Instant::now();
    let mut from = Checkpoint::START;
    loop {
        let batch = store
            .read_all_raw(from, i64::from(batch_size))
            .await
            .expect("read");
        let Some(last) = batch.last() else { break };
        from = last.checkpoint();
    }
    println!(
        "store read_all_raw alone (what the relay reads): {:.0} events/s",
        rate(events, reading.elapsed())
    );

    // Round 0 warms the broker, Postgres and the page cache up and is not
    // counted; the others alternate which side goes first.
    let mut bare_rates = Vec::new();
    let mut relay_rates = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..=rounds {
        let bare_config = config();
        let relay_config = config();
        ensure_topics(&bare_config, STREAM_TYPES)
            .await
            .expect("topics");
        ensure_topics(&relay_config, STREAM_TYPES)
            .await
            .expect("topics");
        let messages = prepare(&bare_config, &stored);
        let (bare_rate, relay_rate) = if round % 2 == 0 {
            let b = rate(events, bare(&bare_config, &messages).await);
            let r = rate(
                events,
                relay(&store, &relay_config, events, batch_size).await,
            );
            (b, r)
        } else {
            let r = rate(
                events,
                relay(&store, &relay_config, events, batch_size).await,
            );
            let b = rate(events, bare(&bare_config, &messages).await);
            (b, r)
        };
        let label = if round == 0 {
            "warm-up".to_owned()
        } else {
            format!("round {round}")
        };
        println!(
            "{label:>8}: bare producer {bare_rate:>7.0} events/s   relay {relay_rate:>7.0} events/s   relay/bare {:>3.0}%",
            100.0 * relay_rate / bare_rate
        );
        if round > 0 {
            bare_rates.push(bare_rate);
            relay_rates.push(relay_rate);
            ratios.push(relay_rate / bare_rate);
        }
    }
    let (bare_median, relay_median) = (median(&mut bare_rates), median(&mut relay_rates));
    println!(
        "  median: bare producer {bare_median:>7.0} events/s   relay {relay_median:>7.0} events/s   relay/bare {:>3.0}%   (median of the rounds' ratios {:.0}%)",
        100.0 * relay_median / bare_median,
        100.0 * median(&mut ratios)
    );
    db.drop().await;
}
