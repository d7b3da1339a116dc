//! Event store append throughput and latency next to a raw INSERT baseline
//! of the same row shape, at the same concurrency, measured in the same run
//! (the book's design page, "How the numbers are taken").
//!
//! ```text
//! cargo bench -p event-store --bench append
//! ```
//!
//! Uses its own fresh database on the server at `DATABASE_URL` (dropped at
//! the end). Each case runs the baseline and the append alternately in
//! ABBA order twice (raw, append, append, raw, raw, append, append, raw),
//! 1.25 s per slice, so drift in the machine's load and the table's growth
//! hits both sides alike. `BENCH_SLICE_MS` overrides the slice length.

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use test_support::TestDatabase;
use uuid::Uuid;

const CONCURRENCY: [usize; 3] = [1, 8, 32];
const BATCH: usize = 100;

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Raw,
    Append,
}

/// One side's measurements, summed over its slices.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    events: u64,
    elapsed: Duration,
}

impl Samples {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

fn payload(i: usize) -> serde_json::Value {
    json!({ "amount": 1000 + i, "currency": "EUR", "note": "benchmark event" })
}

fn metadata() -> Metadata {
    Metadata {
        correlation_id: Some(Uuid::now_v7().to_string()),
        causation_id: None,
        actor: Some("bench".to_owned()),
        traceparent: None,
    }
}

/// The same row an append writes, by a bare loop: one row per transaction
/// (`batch == 1`) or one multi-row INSERT of `batch` rows.
async fn raw_insert(pool: &PgPool, sql: &str, batch: usize) -> sqlx::Result<()> {
    let stream = StreamId::new("bench", Uuid::now_v7());
    let metadata = serde_json::to_value(metadata()).expect("metadata serialises");
    let mut query = sqlx::query(sql);
    for i in 0..batch {
        query = query
            .bind(Uuid::now_v7())
            .bind(stream.stream_type().to_owned())
            .bind(stream.to_string())
            .bind(i as i64 + 1)
            .bind("Happened")
            .bind(1_i32)
            .bind(payload(i))
            .bind(metadata.clone());
    }
    query.execute(pool).await?;
    Ok(())
}

fn raw_sql(batch: usize) -> String {
    let rows: Vec<String> = (0..batch)
        .map(|r| {
            let p: Vec<String> = (1..=8).map(|c| format!("${}", r * 8 + c)).collect();
            format!("({})", p.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO event_store.events \
         (event_id, stream_type, stream_id, version, event_type, schema_version, payload, metadata) \
         VALUES {}",
        rows.join(", ")
    )
}

async fn append(store: &EventStore, batch: usize) -> event_store::Result<()> {
    let stream = StreamId::new("bench", Uuid::now_v7());
    let events: Vec<NewEvent> = (0..batch)
        .map(|i| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "Happened".to_owned(),
            schema_version: 1,
            payload: payload(i),
        })
        .collect();
    store
        .append(&stream, ExpectedVersion::NoStream, &events, &metadata())
        .await?;
    Ok(())
}

/// Runs `writers` concurrent loops of one side for `slice`.
async fn run_slice(
    side: Side,
    store: &EventStore,
    writers: usize,
    batch: usize,
    slice: Duration,
    into: &mut Samples,
) {
    let sql: Arc<str> = raw_sql(batch).into();
    let start = Instant::now();
    let stop = start + slice;
    let mut tasks = Vec::with_capacity(writers);
    for _ in 0..writers {
        let (store, sql) = (store.clone(), sql.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                match side {
                    Side::Raw => raw_insert(store.pool(), &sql, batch)
                        .await
                        .expect("raw insert"),
                    Side::Append => append(&store, batch).await.expect("append"),
                }
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    for task in tasks {
        let latencies = task.await.expect("writer task");
        into.events += (latencies.len() * batch) as u64;
        into.latencies.extend(latencies);
    }
    into.elapsed += start.elapsed();
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let slice = Duration::from_millis(
        std::env::var("BENCH_SLICE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1250),
    );
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(CONCURRENCY[CONCURRENCY.len() - 1] as u32 + 2)
        .connect(&db.url)
        .await
        .expect("bench pool");
    let store = EventStore::new(pool.clone());
    // Warm-up: connections, plans, caches.
    let mut warm = Samples::default();
    for side in [Side::Raw, Side::Append] {
        run_slice(side, &store, 32, 1, Duration::from_millis(500), &mut warm).await;
    }

    println!(
        "event store append vs raw INSERT, {:.1} s per side per case (ABBA ABBA slices of {} ms)\n",
        slice.as_secs_f64() * 4.0,
        slice.as_millis()
    );
    println!("| case | writers | raw events/s | raw p50 ms | raw p99 ms | append events/s | append p50 ms | append p99 ms | append/raw |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for batch in [1, BATCH] {
        for writers in CONCURRENCY {
            let (mut raw, mut app) = (Samples::default(), Samples::default());
            const ABBA: [Side; 4] = [Side::Raw, Side::Append, Side::Append, Side::Raw];
            for side in ABBA.into_iter().chain(ABBA) {
                let into = if side == Side::Raw {
                    &mut raw
                } else {
                    &mut app
                };
                run_slice(side, &store, writers, batch, slice, into).await;
            }
            let case = if batch == 1 {
                "1 event / append".to_owned()
            } else {
                format!("{batch} events / append")
            };
            println!(
                "| {case} | {writers} | {:.0} | {} | {} | {:.0} | {} | {} | {:.0}% |",
                raw.rate(),
                ms(raw.percentile(0.5)),
                ms(raw.percentile(0.99)),
                app.rate(),
                ms(app.percentile(0.5)),
                ms(app.percentile(0.99)),
                100.0 * app.rate() / raw.rate(),
            );
        }
    }
    drop(store);
    pool.close().await;
    db.drop().await;
}
