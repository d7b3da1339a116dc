//! Order fulfilment throughput and latency, placement to `shipped`, next to
//! the Command API's own deposit rate measured in the same run.
//!
//!     cargo bench -p saga --bench fulfilment
//!
//! In one process, against a fresh database on the server at `DATABASE_URL`
//! and a random topic prefix on the broker at `KAFKA_BROKERS` (default
//! 127.0.0.1:9092): the Command API (port 0, a pool of 16), the relay (a
//! pool of 4) and the saga orchestrator with its trigger, which tails the
//! event store and needs no broker (default
//! `SagaConfig`, the simulated carrier answering at once, a pool of 16), as
//! `purser serve` wires them. `BENCH_ACCOUNTS` (200) accounts with money to
//! spare and `BENCH_SKUS` (50) SKUs with stock to spare, so every order
//! ships.
//!
//! Saga rounds: `BENCH_CLIENTS` (16) clients in closed loops, each placing
//! an order (`POST /orders`, one or two lines, accounts and SKUs round-robin)
//! and waiting until it is shipped before placing the next, for
//! `BENCH_SECONDS` (20) per round. "Shipped" is observed in the event store:
//! one watcher task looks up the `OrderShipped` events of the orders in
//! flight (at most one per client) every 5 ms with one indexed query, and
//! wakes their clients. A round's rate is its shipped orders over the time
//! from its start until its last order shipped; latency is from just before
//! the `POST /orders` is sent to the watcher seeing `OrderShipped`. Between
//! rounds the bench waits until every saga has completed (the reservations
//! are committed after the order is marked shipped), so a round never
//! inherits the previous one's tail.
//!
//! Hot-SKU rounds (`BENCH_HOT`, 1 by default; 0 leaves them out): after
//! each saga round, one where every order is for the same SKU, the flash
//! sale's load, next to the rounds whose orders spread over the SKUs. With
//! them on, every order of either kind has one line, so the two differ only
//! in how many items their reservations share.
//!
//! Deposit rounds, the baseline: the same clients post `{"amount": 1}`
//! deposits round-robin over the accounts for `BENCH_DEPOSIT_SECONDS` (5)
//! per round, against the same Command API while the relay and the
//! orchestrator run idle. `BENCH_ROUNDS` (3) rounds of each, alternating
//! which goes first, after a warm-up of each.
//!
//! Diagnostics, printed after the figures: the median time between the
//! stages of the measured sagas (from their events' `recorded_at`); how long
//! an `OrderPlaced` takes to reach a consumer group (the relay and Kafka, the
//! read models' path, which the saga no longer takes); and, sampled every 50 ms during the order
//! rounds, the age of the relay's last checkpointed event and of the oldest
//! transaction elsewhere on the database server (the relay reads only below
//! the server-wide xmin). `BENCH_RELAY_IDLE_WAIT_MS` sets the relay's idle
//! wait (its polling fallback; default that of `RelayOptions`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use test_support::env_or;

use chrono::{DateTime, Utc};

use command_api::{Application, Config};
use event_store::EventStore;
use kafka::{EventConsumer, RelayOptions};
use saga::{SagaConfig, SagaMetrics, SimulatedCarrier};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use test_support::TestDatabase;
use tokio::sync::{oneshot, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WATCH_EVERY: Duration = Duration::from_millis(5);
const WARMUP_ORDERS: usize = 32;

async fn pool(url: &str, size: u32) -> Result<PgPool, BoxError> {
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Orders in flight, by stream id, with the client to wake when shipped.
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// Looks up the `OrderShipped` of every order in flight every 5 ms.
async fn watch(pool: PgPool, waiting: Waiting, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let streams: Vec<String> = waiting.lock().await.keys().cloned().collect();
        if !streams.is_empty() {
            // One index lookup per order in flight (`LATERAL ... LIMIT 1`):
            // with `= ANY($1)` the plan, on tables never analysed, flipped
            // between runs from 0.06 ms to 20 ms a look, every 5 ms, which
            // then dominated the p50 it measures.
            let shipped: Vec<String> = sqlx::query_scalar(
                "SELECT s.stream_id FROM unnest($1::text[]) AS s(stream_id) \
                 CROSS JOIN LATERAL (SELECT 1 FROM event_store.events e \
                    WHERE e.stream_id = s.stream_id AND e.event_type = 'OrderShipped' \
                    LIMIT 1) AS shipped",
            )
            .bind(&streams)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            let seen = Instant::now();
            let mut waiting = waiting.lock().await;
            for stream in shipped {
                if let Some(client) = waiting.remove(&stream) {
                    let _ = client.send(seen);
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

struct Shop {
    http: reqwest::Client,
    base: String,
    accounts: Vec<(Uuid, Uuid)>,
    skus: Vec<String>,
    /// Most lines per order (1 or 2).
    lines: usize,
    waiting: Waiting,
}

impl Shop {
    /// Places order number `n` and waits until it is shipped: the
    /// placement-to-shipped time and the placement's own latency.
    /// Its lines are for `skus` only.
    async fn order_shipped(
        &self,
        n: usize,
        skus: &[String],
    ) -> Result<(Duration, Duration), BoxError> {
        let (account, customer) = self.accounts[n % self.accounts.len()];
        let lines: Vec<Value> = (0..1 + n % self.lines)
            .map(|k| {
                let sku = &skus[(n + k * 7) % skus.len()];
                json!({"sku": sku, "quantity": 1, "unit_price": 100})
            })
            .collect();
        let sent = Instant::now();
        let response = self
            .http
            .post(format!("{}/orders", self.base))
            .json(&json!({
                "customer_id": customer,
                "account_id": account,
                "currency": "EUR",
                "lines": lines,
                "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                                     "postal_code": "28013", "country": "ES"}
            }))
            .send()
            .await?;
        let placed = sent.elapsed();
        if response.status() != reqwest::StatusCode::ACCEPTED {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(format!("placing answered {status}: {body}").into());
        }
        let body: Value = response.json().await?;
        let order_id = body["order_id"].as_str().ok_or("no order_id")?.to_owned();
        // Registered after the answer: the watcher looks in the store, so an
        // order shipped before this line is seen all the same.
        let (shipped, seen) = oneshot::channel();
        self.waiting
            .lock()
            .await
            .insert(format!("order-{order_id}"), shipped);
        let seen = tokio::time::timeout(Duration::from_secs(60), seen)
            .await
            .map_err(|_| format!("order {order_id} not shipped within 60 s"))??;
        Ok((seen - sent, placed))
    }

    async fn deposit(&self, n: usize) -> Result<(), BoxError> {
        let (account, _) = self.accounts[n % self.accounts.len()];
        let response = self
            .http
            .post(format!("{}/accounts/{account}/deposits", self.base))
            .json(&json!({"amount": 1}))
            .send()
            .await?;
        let status = response.status();
        let _ = response.bytes().await;
        if status != reqwest::StatusCode::OK {
            return Err(format!("deposit answered {status}").into());
        }
        Ok(())
    }
}

#[derive(Default)]
struct Round {
    done: usize,
    errors: usize,
    elapsed: Duration,
    /// Placement to shipped, or the deposit's answer.
    latencies: Vec<Duration>,
    /// The placement's own answer (saga rounds).
    placements: Vec<Duration>,
}

impl Round {
    fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }

    fn merge(rounds: &[Round]) -> Round {
        let mut merged = Round::default();
        for round in rounds {
            merged.done += round.done;
            merged.errors += round.errors;
            merged.elapsed += round.elapsed;
            merged.latencies.extend(&round.latencies);
            merged.placements.extend(&round.placements);
        }
        merged.latencies.sort_unstable();
        merged.placements.sort_unstable();
        merged
    }
}

/// `clients` closed loops of orders, placed to shipped, for `for_`; every
/// order for the first SKU when `hot`.
async fn saga_round(
    shop: &Arc<Shop>,
    clients: usize,
    for_: Duration,
    first: usize,
    hot: bool,
) -> Round {
    let started = Instant::now();
    let deadline = started + for_;
    let loops = futures::future::join_all((0..clients).map(|c| {
        let shop = Arc::clone(shop);
        tokio::spawn(async move {
            let mut round = Round::default();
            let mut n = first + c;
            while Instant::now() < deadline {
                let skus = if hot { &shop.skus[..1] } else { &shop.skus[..] };
                match shop.order_shipped(n, skus).await {
                    Ok((shipped, placed)) => {
                        round.done += 1;
                        round.latencies.push(shipped);
                        round.placements.push(placed);
                    }
                    Err(error) => {
                        round.errors += 1;
                        if round.errors <= 3 {
                            eprintln!("  order failed: {error}");
                        }
                    }
                }
                n += clients;
            }
            round
        })
    }))
    .await;
    let elapsed = started.elapsed();
    let rounds: Vec<Round> = loops.into_iter().map(|r| r.expect("client")).collect();
    let mut round = Round::merge(&rounds);
    round.elapsed = elapsed;
    round
}

/// `clients` closed loops of deposits for `for_`.
async fn deposit_round(shop: &Arc<Shop>, clients: usize, for_: Duration) -> Round {
    let started = Instant::now();
    let deadline = started + for_;
    let loops = futures::future::join_all((0..clients).map(|c| {
        let shop = Arc::clone(shop);
        tokio::spawn(async move {
            let mut round = Round::default();
            let mut n = c;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match shop.deposit(n).await {
                    Ok(()) => {
                        round.done += 1;
                        round.latencies.push(sent.elapsed());
                    }
                    Err(_) => round.errors += 1,
                }
                n += clients;
            }
            round
        })
    }))
    .await;
    let elapsed = started.elapsed();
    let rounds: Vec<Round> = loops.into_iter().map(|r| r.expect("client")).collect();
    let mut round = Round::merge(&rounds);
    round.elapsed = elapsed;
    round
}

/// Waits until every saga started so far has completed.
async fn sagas_settled(pool: &PgPool) -> Result<(i64, i64), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (started, completed, attention): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE event_type = 'SagaStarted'), \
                    count(*) FILTER (WHERE event_type = 'SagaCompleted'), \
                    count(*) FILTER (WHERE event_type = 'SagaNeedsAttention') \
             FROM event_store.events WHERE stream_type = 'saga'",
        )
        .fetch_one(pool)
        .await?;
        if attention > 0 {
            return Err(format!("{attention} sagas need attention").into());
        }
        if completed == started {
            return Ok((started, completed));
        }
        if Instant::now() > deadline {
            return Err(format!("only {completed} of {started} sagas completed").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn print_round(name: &str, round: &Round) {
    println!(
        "  {name:<8} {:>8.1}/s  p50 {:>7.1} ms  p99 {:>7.1} ms  ({} done, {} errors, {:.1} s)",
        round.rate(),
        ms(percentile(&round.latencies, 0.50)),
        ms(percentile(&round.latencies, 0.99)),
        round.done,
        round.errors,
        round.elapsed.as_secs_f64()
    );
}

type Samples = Arc<std::sync::Mutex<Vec<Duration>>>;

/// Records, once `measuring`, how long after its append each `OrderPlaced`
/// reaches a consumer of its own group.
async fn probe_delivery(
    consumer: EventConsumer,
    measuring: Arc<AtomicBool>,
    samples: Samples,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let Ok(batch) = consumer.next_batch(500, Duration::from_millis(200)).await else {
            continue;
        };
        let now = Utc::now();
        if !measuring.load(Ordering::SeqCst) {
            continue;
        }
        let mut samples = samples.lock().expect("probe");
        for delivered in batch {
            if delivered.event.event_type == "OrderPlaced" {
                let lag = (now - delivered.event.recorded_at)
                    .to_std()
                    .unwrap_or_default();
                samples.push(lag);
            }
        }
    }
}

/// Samples, while `sampling`: how old the last event the relay has
/// checkpointed (published and acknowledged) is, and the age of the oldest
/// transaction holding an xid in another database of the server (the relay
/// reads only below the server-wide xmin).
async fn sample_relay(
    pool: PgPool,
    sampling: Arc<AtomicBool>,
    samples: Arc<std::sync::Mutex<(Vec<Duration>, Vec<Duration>)>>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if sampling.load(Ordering::SeqCst) {
            let ages: Result<(f64, f64), _> = sqlx::query_as(
                "SELECT \
                   (SELECT coalesce(extract(epoch FROM now() - max(e.recorded_at)), 0)::float8 \
                    FROM event_store.checkpoints c \
                    JOIN event_store.events e ON e.position = c.position \
                    WHERE c.name = $1), \
                   (SELECT coalesce(extract(epoch FROM now() - min(xact_start)), 0)::float8 \
                    FROM pg_stat_activity \
                    WHERE backend_xid IS NOT NULL AND datname <> current_database())",
            )
            .bind(kafka::CHECKPOINT_NAME)
            .fetch_one(&pool)
            .await;
            if let Ok((relayed, oldest)) = ages {
                let mut samples = samples.lock().expect("sampler");
                samples.0.push(Duration::from_secs_f64(relayed.max(0.0)));
                samples.1.push(Duration::from_secs_f64(oldest.max(0.0)));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Median milliseconds between the stages of every saga, from the
/// `recorded_at` of its events.
async fn stages(pool: &PgPool, since: DateTime<Utc>) -> Result<[f64; 4], BoxError> {
    let row: (Option<f64>, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH t AS ( \
           SELECT substr(stream_id, strpos(stream_id, '-') + 1) AS id, \
                  min(recorded_at) FILTER (WHERE event_type = 'OrderPlaced') AS placed, \
                  min(recorded_at) FILTER (WHERE event_type = 'SagaStarted') AS started, \
                  min(recorded_at) FILTER (WHERE event_type = 'StepStarted') AS stepped, \
                  min(recorded_at) FILTER (WHERE event_type = 'OrderShipped') AS shipped, \
                  min(recorded_at) FILTER (WHERE event_type = 'SagaCompleted') AS completed \
           FROM event_store.events WHERE stream_type IN ('order', 'saga') \
           GROUP BY 1), \
         d AS (SELECT max(placed) AS placed, max(started) AS started, max(stepped) AS stepped, \
                      max(shipped) AS shipped, max(completed) AS completed FROM t GROUP BY id \
               HAVING max(placed) >= $1) \
         SELECT \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started - placed) * 1000), \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stepped - started) * 1000), \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM shipped - stepped) * 1000), \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed - shipped) * 1000) \
         FROM d",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok([
        row.0.unwrap_or(f64::NAN),
        row.1.unwrap_or(f64::NAN),
        row.2.unwrap_or(f64::NAN),
        row.3.unwrap_or(f64::NAN),
    ])
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let seconds: u64 = env_or("BENCH_SECONDS", 20);
    let deposit_seconds: u64 = env_or("BENCH_DEPOSIT_SECONDS", 5);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    let clients: usize = env_or("BENCH_CLIENTS", 16).max(1);
    let account_count: usize = env_or("BENCH_ACCOUNTS", 200).max(1);
    let sku_count: usize = env_or("BENCH_SKUS", 50).max(1);
    let hot_rounds = env_or("BENCH_HOT", 1u8) != 0;

    let db = TestDatabase::create().await;
    let kafka = test_support::kafka::isolated("saga-bench");
    kafka::ensure_topics(&kafka, kafka::STREAM_TYPES).await?;
    let shutdown = CancellationToken::new();

    let config = Config {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    let application = Application::build(
        &config,
        pool(&db.url, 16).await?,
        service::auth::Access::insecure(),
    )
    .await?;
    let base = format!("http://{}", application.address());
    let api = tokio::spawn(application.run(shutdown.clone()));

    let relay_options = RelayOptions {
        idle_wait_ms: env_or(
            "BENCH_RELAY_IDLE_WAIT_MS",
            RelayOptions::default().idle_wait_ms,
        ),
        ..RelayOptions::default()
    };
    let relay = kafka::Relay::with_options(
        EventStore::new(pool(&db.url, 4).await?),
        kafka.clone(),
        relay_options.clone(),
    )?;
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    let saga_config = SagaConfig::default();
    let orchestrator = tokio::spawn({
        let (store, config) = (
            EventStore::new(pool(&db.url, 16).await?),
            saga_config.clone(),
        );
        let shutdown = shutdown.clone();
        async move {
            saga::run(
                store,
                config,
                Arc::new(SimulatedCarrier::default()),
                Arc::new(SagaMetrics::new()),
                shutdown,
            )
            .await
        }
    });
    let watcher_pool = pool(&db.url, 4).await?;
    let waiting: Waiting = Arc::default();
    let watcher = tokio::spawn(watch(
        watcher_pool.clone(),
        Arc::clone(&waiting),
        shutdown.clone(),
    ));

    // Diagnostics: a second consumer group on the order topic (how long the
    // relay and Kafka take alone), and the relay's own lag and the oldest
    // transaction elsewhere on the server, sampled every 50 ms during the
    // order rounds.
    let measuring = Arc::new(AtomicBool::new(false));
    let sampling = Arc::new(AtomicBool::new(false));
    let probe: Samples = Arc::default();
    let relay_samples: Arc<std::sync::Mutex<(Vec<Duration>, Vec<Duration>)>> = Arc::default();
    let prober = tokio::spawn(probe_delivery(
        EventConsumer::new(
            &kafka,
            &format!("{}.bench-probe", kafka.topic_prefix),
            &["order"],
        )?,
        Arc::clone(&measuring),
        Arc::clone(&probe),
        shutdown.clone(),
    ));
    let sampler = tokio::spawn(sample_relay(
        watcher_pool.clone(),
        Arc::clone(&sampling),
        Arc::clone(&relay_samples),
        shutdown.clone(),
    ));

    // Customers with money to spare, stock to spare.
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut accounts = Vec::with_capacity(account_count);
    for _ in 0..account_count {
        let customer = Uuid::now_v7();
        let response = http
            .post(format!("{base}/accounts"))
            .json(&json!({"customer_id": customer, "currency": "EUR"}))
            .send()
            .await?;
        let body: Value = response.json().await?;
        let account: Uuid = body["account_id"].as_str().ok_or("no account")?.parse()?;
        let response = http
            .post(format!("{base}/accounts/{account}/deposits"))
            .json(&json!({"amount": 1_000_000_000_000i64}))
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("deposit answered {}", response.status()).into());
        }
        accounts.push((account, customer));
    }
    let skus: Vec<String> = (0..sku_count).map(|i| format!("BENCH-{i}")).collect();
    for sku in &skus {
        let response = http
            .post(format!("{base}/inventory"))
            .json(&json!({"sku": sku, "name": sku, "quantity": 1_000_000,
                          "unit_price": 100, "currency": "EUR"}))
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            return Err(format!("creating {sku} answered {}", response.status()).into());
        }
    }
    let shop = Arc::new(Shop {
        http,
        base,
        accounts,
        skus,
        lines: if hot_rounds { 1 } else { 2 },
        waiting,
    });

    // Warm-up: connections open, the trigger starts listening.
    let warmup = Instant::now();
    futures::future::try_join_all((0..WARMUP_ORDERS).map(|n| shop.order_shipped(n, &shop.skus)))
        .await?;
    sagas_settled(&watcher_pool).await?;
    deposit_round(&shop, clients, Duration::from_secs(2)).await;
    println!(
        "order fulfilment, placement to shipped, {clients} clients in closed loops, \
         {seconds} s per round; baseline: Command API deposits, {clients} clients, \
         {deposit_seconds} s per round; {rounds} rounds of each, alternating \
         (warm-up took {:.1} s; saga concurrency {}, poll {} ms)",
        warmup.elapsed().as_secs_f64(),
        saga_config.concurrency,
        saga_config.poll_ms
    );

    let since = Utc::now();
    measuring.store(true, Ordering::SeqCst);
    let mut sagas = Vec::new();
    let mut hot = Vec::new();
    let mut deposits = Vec::new();
    let mut next_order = WARMUP_ORDERS;
    for i in 0..rounds {
        for k in 0..2 {
            if (i + k) % 2 == 0 {
                let round =
                    deposit_round(&shop, clients, Duration::from_secs(deposit_seconds)).await;
                print_round("deposits", &round);
                deposits.push(round);
            } else {
                sampling.store(true, Ordering::SeqCst);
                let round = saga_round(
                    &shop,
                    clients,
                    Duration::from_secs(seconds),
                    next_order,
                    false,
                )
                .await;
                sampling.store(false, Ordering::SeqCst);
                next_order += round.done + round.errors + clients;
                print_round("orders", &round);
                sagas.push(round);
                sagas_settled(&watcher_pool).await?;
                if hot_rounds {
                    let round = saga_round(
                        &shop,
                        clients,
                        Duration::from_secs(seconds),
                        next_order,
                        true,
                    )
                    .await;
                    next_order += round.done + round.errors + clients;
                    print_round("hot SKU", &round);
                    hot.push(round);
                    sagas_settled(&watcher_pool).await?;
                }
            }
        }
    }

    let orders = Round::merge(&sagas);
    let baseline = Round::merge(&deposits);
    let mut order_rates: Vec<f64> = sagas.iter().map(Round::rate).collect();
    let mut deposit_rates: Vec<f64> = deposits.iter().map(Round::rate).collect();
    let (order_min, order_max) = (
        order_rates.iter().copied().fold(f64::MAX, f64::min),
        order_rates.iter().copied().fold(0.0, f64::max),
    );
    let (deposit_min, deposit_max) = (
        deposit_rates.iter().copied().fold(f64::MAX, f64::min),
        deposit_rates.iter().copied().fold(0.0, f64::max),
    );
    let order_median = median(&mut order_rates);
    let mut hot_rates: Vec<f64> = hot.iter().map(Round::rate).collect();
    let hot_median = if hot_rates.is_empty() {
        f64::NAN
    } else {
        median(&mut hot_rates)
    };
    let hot_orders = Round::merge(&hot);
    let deposit_median = median(&mut deposit_rates);

    let (started, completed) = sagas_settled(&watcher_pool).await?;
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_store.events \
         WHERE event_type NOT IN ('AccountOpened', 'MoneyDeposited', 'ItemCreated')",
    )
    .fetch_one(&watcher_pool)
    .await?;
    println!(
        "{:<34} {:>10} {:>16} {:>9} {:>9} {:>8} {:>7}",
        "", "median/s", "range/s", "p50 ms", "p99 ms", "done", "errors"
    );
    println!(
        "{:<34} {:>10.1} {:>16} {:>9.1} {:>9.1} {:>8} {:>7}",
        "orders placed -> shipped",
        order_median,
        format!("{order_min:.1}-{order_max:.1}"),
        ms(percentile(&orders.latencies, 0.50)),
        ms(percentile(&orders.latencies, 0.99)),
        orders.done,
        orders.errors
    );
    println!(
        "{:<34} {:>10.1} {:>16} {:>9.1} {:>9.1} {:>8} {:>7}",
        "command API deposits (baseline)",
        deposit_median,
        format!("{deposit_min:.0}-{deposit_max:.0}"),
        ms(percentile(&baseline.latencies, 0.50)),
        ms(percentile(&baseline.latencies, 0.99)),
        baseline.done,
        baseline.errors
    );
    if hot_rounds {
        println!(
            "{:<34} {:>10.1} {:>16} {:>9.1} {:>9.1} {:>8} {:>7}",
            "hot SKU: every order one item",
            hot_median,
            format!(
                "{:.1}-{:.1}",
                hot_rates.iter().copied().fold(f64::MAX, f64::min),
                hot_rates.iter().copied().fold(0.0, f64::max)
            ),
            ms(percentile(&hot_orders.latencies, 0.50)),
            ms(percentile(&hot_orders.latencies, 0.99)),
            hot_orders.done,
            hot_orders.errors
        );
        println!(
            "ratio: hot SKU orders/s = {:.1}% of orders/s spread over {sku_count} SKUs \
             (one line per order in both)",
            hot_median / order_median * 100.0
        );
    }
    println!(
        "ratio: orders shipped/s = {:.1}% of deposits/s; POST /orders itself: p50 {:.1} ms, \
         p99 {:.1} ms; {started} sagas started, {completed} completed; \
         {:.1} events stored per order",
        order_median / deposit_median * 100.0,
        ms(percentile(&orders.placements, 0.50)),
        ms(percentile(&orders.placements, 0.99)),
        events as f64 / started.max(1) as f64,
    );

    let stages = stages(&watcher_pool, since).await?;
    println!(
        "where the time goes (medians over the measured orders, from the events' recorded_at): \
         placed -> saga started {:.1} ms (the trigger's wake-up and step, the order read, the \
         first steps decided: the start commits with them), saga started -> first step \
         {:.1} ms, first step -> order shipped {:.1} ms (reserve, charge, ship and \
         their records), shipped -> saga completed {:.1} ms (commits)",
        stages[0], stages[1], stages[2], stages[3]
    );
    let mut delivered = std::mem::take(&mut *probe.lock().expect("probe"));
    let (mut relayed, mut oldest) = std::mem::take(&mut *relay_samples.lock().expect("sampler"));
    for samples in [&mut delivered, &mut relayed, &mut oldest] {
        samples.sort_unstable();
    }
    println!(
        "  the Kafka hop (the read models' path): OrderPlaced appended -> delivered to a consumer group \
         p50 {:.1} ms, p99 {:.1} ms ({} orders); age of the relay's last checkpointed event \
         (published and acknowledged) p50 {:.1} ms, p90 {:.1} ms; oldest transaction holding \
         an xid in another database of this server p50 {:.1} ms, p90 {:.1} ms ({} samples \
         every 50 ms during the order rounds; relay idle wait {} ms)",
        ms(percentile(&delivered, 0.50)),
        ms(percentile(&delivered, 0.99)),
        delivered.len(),
        ms(percentile(&relayed, 0.50)),
        ms(percentile(&relayed, 0.90)),
        ms(percentile(&oldest, 0.50)),
        ms(percentile(&oldest, 0.90)),
        oldest.len(),
        relay_options.idle_wait_ms,
    );

    shutdown.cancel();
    let _ = api.await?;
    let _ = relay.await?;
    let _ = orchestrator.await?;
    watcher.await?;
    prober.await?;
    sampler.await?;
    db.drop().await;
    Ok(())
}
