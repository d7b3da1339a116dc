//! Delivery latency through the broker: an event published with the
//! relay's `EventPublisher` until an `EventConsumer` (the projection
//! workers' and the saga's reader) has it, one event at a time at a steady
//! pace, as at a steady command rate.
//!
//! `cargo bench -p kafka --bench delivery`; needs a broker at
//! `KAFKA_BROKERS`. `DELIVERY_BENCH_EVENTS` (default 100) events, one every
//! `DELIVERY_BENCH_INTERVAL_MS` (default 50). Prints the publish
//! acknowledgement and the publish-to-consume latency, p50/p90/max.

use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::env_or;

use chrono::Utc;
use event_store::{Metadata, RecordedEvent};
use kafka::{ensure_topics, EventConsumer, EventPublisher};
use uuid::Uuid;

fn event(n: i64, sent_us: u128) -> RecordedEvent {
    RecordedEvent {
        position: n,
        transaction_id: n as u64,
        stream_type: "account".to_owned(),
        stream_id: format!("account-{}", Uuid::new_v4()),
        version: 1,
        event_id: Uuid::now_v7(),
        event_type: "MoneyDeposited".to_owned(),
        schema_version: 1,
        payload: serde_json::json!({ "sent_us": sent_us.to_string() }),
        metadata: Metadata::default(),
        recorded_at: Utc::now(),
    }
}

fn percentiles(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
    format!(
        "p50 {:6.1} ms  p90 {:6.1} ms  max {:6.1} ms",
        at(0.5),
        at(0.9),
        at(1.0)
    )
}

#[tokio::main]
async fn main() {
    let events: usize = env_or("DELIVERY_BENCH_EVENTS", 100);
    let interval = Duration::from_millis(env_or("DELIVERY_BENCH_INTERVAL_MS", 50));
    let config = test_support::kafka::isolated("delivery-bench");
    ensure_topics(&config, &["account"]).await.expect("topics");
    let consumer = EventConsumer::new(
        &config,
        &format!("{}.bench", config.topic_prefix),
        &["account"],
    )
    .expect("consumer");
    let publisher =
        Arc::new(EventPublisher::new(&config, Duration::from_secs(10)).expect("publisher"));
    let start = Instant::now();

    // Until the group is joined, events wait for the consumer: publish until
    // one arrives, and measure only what is published after that.
    let mut n = 0;
    let warm = loop {
        publisher
            .publish(&[event(n, start.elapsed().as_micros())])
            .await
            .expect("publish");
        n += 1;
        if !consumer
            .next_batch(100, interval)
            .await
            .expect("consume")
            .is_empty()
        {
            break start.elapsed().as_micros();
        }
    };
    let producing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            let mut acks = Vec::new();
            let mut tick = tokio::time::interval(interval);
            for i in 0..events as i64 + 20 {
                tick.tick().await;
                let sent = Instant::now();
                publisher
                    .publish(&[event(n + i, start.elapsed().as_micros())])
                    .await
                    .expect("publish");
                acks.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            acks
        }
    });
    let mut latencies = Vec::new();
    while latencies.len() < events {
        for delivered in consumer
            .next_batch(100, Duration::from_secs(10))
            .await
            .expect("consume")
        {
            let now = start.elapsed().as_micros();
            let sent: u128 = delivered.event.payload["sent_us"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("sent_us");
            if sent > warm && latencies.len() < events {
                latencies.push((now - sent) as f64 / 1000.0);
            }
        }
    }
    let acks = producing.await.expect("producer");
    println!(
        "delivery bench: {events} events, one every {} ms",
        interval.as_millis()
    );
    println!("  publish acknowledged:  {}", percentiles(acks));
    println!("  publish -> consumed:   {}", percentiles(latencies));
}
