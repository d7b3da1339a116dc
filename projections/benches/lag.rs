//! End-to-end lag: from a deposit's answer by the Command API to the deposit
//! being visible through the Query API, at steady command rates.
//!
//!     cargo bench -p projections --bench lag
//!
//! In one process, against a fresh database and a random topic prefix on the
//! broker at `KAFKA_BROKERS` (default 127.0.0.1:9092): the Command API, the
//! relay, the accounts projection worker and the Query API, both APIs on
//! port 0. Deposits are sent with reqwest at a fixed rate (a tokio interval
//! ticks once per command, each command its own task) round-robin over
//! `BENCH_ACCOUNTS` (default 200) accounts for `BENCH_SECONDS` (default 10)
//! per rate in `BENCH_RATES` (default "500,2000"). For each deposit, the time
//! from its answer to a `GET /accounts/{id}?min_version=<version>` that is
//! satisfied (the server waits for the version; after a 503
//! `min_version_timeout` the client asks again at once, after a 503
//! `overloaded` it waits the `Retry-After`) is the lag; the deposit's own
//! latency is printed next to it as the reference, and the CPU time per
//! visible deposit of this process (every component and the client
//! together) and of the whole machine (the database and the broker too;
//! whatever else runs on it counts: run it on a quiet machine).
//!
//! Where the lag goes: a tracing layer of the bench's own takes the time of
//! the components' debug events (the broker's acknowledgement reached the
//! relay, the worker's consumer received the event, the worker committed
//! its batch), joined with the events' `recorded_at`, and
//! each rate prints the stages' p50, p99 and their mean over the slowest 1%
//! of the deposits (by lag).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use test_support::env_or;

use chrono::{DateTime, Utc};

use command_api::Config;
use event_store::EventStore;
use kafka::Relay;
use projections::WorkerConfig;
use query_api::QueryApiConfig;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use test_support::TestDatabase;
use tokio::sync::Mutex;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn pool(url: &str, size: u32) -> Result<PgPool, BoxError> {
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .connect(url)
        .await?)
}

#[derive(Default)]
struct Samples {
    command: Vec<Duration>,
    lag: Vec<Duration>,
    /// The deposits that became visible, for the stages.
    deposits: Vec<Deposit>,
    failures: usize,
    /// Reads answered 503 `overloaded` (the client waited its
    /// `Retry-After`) and 503 `min_version_timeout` (read again at once).
    overloaded: usize,
    timed_out: usize,
}

/// One deposit that became visible, on the wall clock (the database's
/// `recorded_at` is on it too).
struct Deposit {
    account: Uuid,
    version: u64,
    answered: DateTime<Utc>,
    visible: DateTime<Utc>,
    lag: Duration,
}

/// When events passed the stages, from the components' debug events.
#[derive(Default)]
struct Stages {
    /// Position -> when the broker's acknowledgement reached the relay.
    acked: HashMap<i64, DateTime<Utc>>,
    /// Position -> when the worker's consumer received it.
    received: HashMap<i64, DateTime<Utc>>,
    /// Received, in a batch not yet committed.
    unapplied: Vec<i64>,
    /// Position -> when the worker had committed its batch.
    applied: HashMap<i64, DateTime<Utc>>,
}

/// Records [`Stages`] from the debug events of the publisher, the consumer
/// and the worker (and nothing else: see [`stage_targets`]).
struct StageLayer(Arc<std::sync::Mutex<Stages>>);

fn stage_targets() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|metadata| {
        metadata.is_event()
            && *metadata.level() <= tracing::Level::DEBUG
            && ["kafka::publisher", "kafka::consumer", "projections::worker"]
                .contains(&metadata.target())
    })
}

#[derive(Default)]
struct Fields {
    message: String,
    position: Option<i64>,
}

impl tracing::field::Visit for Fields {
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "position" {
            self.position = Some(value);
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.record_i64(field, i64::try_from(value).unwrap_or(i64::MAX));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for StageLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let now = Utc::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut stages = self.0.lock().expect("stages");
        match (fields.message.as_str(), fields.position) {
            ("event published", Some(position)) => {
                stages.acked.entry(position).or_insert(now);
            }
            ("event received", Some(position)) => {
                stages.received.entry(position).or_insert(now);
                stages.unapplied.push(position);
            }
            ("batch applied", _) => {
                let batch = std::mem::take(&mut stages.unapplied);
                for position in batch {
                    stages.applied.entry(position).or_insert(now);
                }
            }
            _ => {}
        }
    }
}

/// Milliseconds from `a` to `b` (negative when `b` came first).
fn between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

fn percentile_f(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints where the time of the visible deposits went, stage by stage.
async fn print_stages(
    pool: &PgPool,
    deposits: &[Deposit],
    stages: &std::sync::Mutex<Stages>,
) -> Result<(), BoxError> {
    // (stream id, version) -> (position, recorded_at)
    let rows: Vec<(String, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT stream_id, version, position, recorded_at \
         FROM event_store.events WHERE stream_type = 'account'",
    )
    .fetch_all(pool)
    .await?;
    let events: HashMap<(String, i64), (i64, DateTime<Utc>)> = rows
        .into_iter()
        .map(|(stream, version, position, at)| ((stream, version), (position, at)))
        .collect();
    let stages = stages.lock().expect("stages");
    const NAMES: [&str; 5] = [
        "transaction start -> deposit answered",
        "answered -> relay has the broker's ack",
        "broker's ack -> consumer received",
        "received -> worker committed",
        "committed -> read answered",
    ];
    let mut rows: Vec<(Duration, [f64; 5])> = Vec::with_capacity(deposits.len());
    let mut missing = 0;
    for deposit in deposits {
        let key = (
            format!("account-{}", deposit.account),
            deposit.version as i64,
        );
        let Some(&(position, recorded)) = events.get(&key) else {
            missing += 1;
            continue;
        };
        let (Some(acked), Some(received), Some(applied)) = (
            stages.acked.get(&position).copied(),
            stages.received.get(&position).copied(),
            stages.applied.get(&position).copied(),
        ) else {
            missing += 1;
            continue;
        };
        rows.push((
            deposit.lag,
            [
                between(recorded, deposit.answered),
                between(deposit.answered, acked),
                between(acked, received),
                between(received, applied),
                between(applied, deposit.visible),
            ],
        ));
    }
    if rows.is_empty() {
        println!(
            "  stages: no deposit with every stage seen ({missing} without; seen: \
             {} acknowledged, {} received, {} applied)",
            stages.acked.len(),
            stages.received.len(),
            stages.applied.len()
        );
        return Ok(());
    }
    rows.sort_by_key(|(lag, _)| *lag);
    let slowest = &rows[rows.len() - rows.len().div_ceil(100)..];
    println!(
        "  stages of {} deposits ({missing} not traced), ms: p50 / p99 / mean of the slowest 1% ({})",
        rows.len(),
        slowest.len()
    );
    for (i, name) in NAMES.iter().enumerate() {
        let mut values: Vec<f64> = rows.iter().map(|(_, stage)| stage[i]).collect();
        values.sort_by(f64::total_cmp);
        let mean = slowest.iter().map(|(_, stage)| stage[i]).sum::<f64>() / slowest.len() as f64;
        println!(
            "    {name:<42} {:>7.1} {:>7.1} {:>7.1}",
            percentile_f(&values, 0.50),
            percentile_f(&values, 0.99),
            mean,
        );
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU time of this whole process so far (every component and the load's
/// client, all threads): `utime + stime` of `/proc/self/stat`, in the
/// kernel's clock ticks of 10 ms (`CLK_TCK` is 100 on Linux).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// CPU time the whole machine has spent busy so far (every process: the
/// database, the broker and this one) and its number of CPUs, from the
/// first line of `/proc/stat` (clock ticks of 10 ms; idle and iowait are
/// not busy).
fn machine_busy() -> (Duration, usize) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let idle = ticks.get(3).unwrap_or(&0) + ticks.get(4).unwrap_or(&0);
    let busy = ticks.iter().sum::<u64>().saturating_sub(idle);
    let cpus = stat
        .lines()
        .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
        .count();
    (Duration::from_millis(busy * 10), cpus)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One deposit, then the read that sees it; pushes both timings.
async fn deposit_and_read(
    http: reqwest::Client,
    command_base: Arc<str>,
    query_base: Arc<str>,
    account: Uuid,
    samples: Arc<Mutex<Samples>>,
) {
    let result: Result<(Duration, Duration, Deposit, usize, usize), BoxError> = async {
        let sent = Instant::now();
        let response = http
            .post(format!("{command_base}/accounts/{account}/deposits"))
            .json(&json!({"amount": 1}))
            .send()
            .await?;
        if response.status() != 200 {
            return Err(format!("deposit answered {}", response.status()).into());
        }
        let body: Value = response.json().await?;
        let answered = Instant::now();
        let answered_at = Utc::now();
        let version = body["version"].as_u64().ok_or("no version")?;
        let deadline = answered + Duration::from_secs(30);
        let (mut overloaded, mut timed_out) = (0, 0);
        loop {
            let response = http
                .get(format!(
                    "{query_base}/accounts/{account}?min_version={version}&wait_ms=5000"
                ))
                .send()
                .await?;
            let status = response.status();
            if status == 503 {
                // A client that reads its own write: after a wait that timed
                // out it asks again; told the server is overloaded, it comes
                // back after `Retry-After` (in seconds), as the contract says.
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
                let body: Value = response.json().await.unwrap_or_default();
                if body["code"] == "overloaded" {
                    overloaded += 1;
                    tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
                } else {
                    timed_out += 1;
                }
            } else if status == 200 {
                let body: Value = response.json().await?;
                if body["version"].as_u64().is_some_and(|v| v >= version) {
                    let lag = answered.elapsed();
                    let deposit = Deposit {
                        account,
                        version,
                        answered: answered_at,
                        visible: Utc::now(),
                        lag,
                    };
                    return Ok((answered - sent, lag, deposit, overloaded, timed_out));
                }
            } else if status != 404 {
                return Err(format!("read answered {status}").into());
            }
            if Instant::now() > deadline {
                return Err("the deposit never became visible".into());
            }
        }
    }
    .await;
    let mut samples = samples.lock().await;
    match result {
        Ok((command, lag, deposit, overloaded, timed_out)) => {
            samples.overloaded += overloaded;
            samples.timed_out += timed_out;
            samples.command.push(command);
            samples.lag.push(lag);
            samples.deposits.push(deposit);
        }
        Err(error) => {
            samples.failures += 1;
            if samples.failures <= 3 {
                eprintln!("  failed: {error}");
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let accounts_n: usize = env_or("BENCH_ACCOUNTS", 200);
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "500,2000".to_owned())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();

    let stages = Arc::new(std::sync::Mutex::new(Stages::default()));
    tracing_subscriber::registry()
        .with(StageLayer(Arc::clone(&stages)).with_filter(stage_targets()))
        .init();

    let db = TestDatabase::create().await;
    let kafka = test_support::kafka::isolated("lag-bench");
    kafka::ensure_topics(&kafka, kafka::STREAM_TYPES).await?;
    let store = EventStore::new(db.pool.clone());
    let shutdown = CancellationToken::new();

    let command_config = Config {
        bind: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    let command_app = command_api::Application::build(
        &command_config,
        pool(&db.url, 16).await?,
        service::auth::Access::insecure(),
    )
    .await?;
    let command_base: Arc<str> = format!("http://127.0.0.1:{}", command_app.port()).into();
    let command_server = tokio::spawn(command_app.run(shutdown.clone()));

    let relay = Relay::new(store.clone(), kafka.clone())?;
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let worker_task = tokio::spawn({
        let (store, kafka, shutdown) = (store.clone(), kafka.clone(), shutdown.clone());
        async move {
            projections::run_workers(
                &["accounts".to_owned()],
                store,
                &kafka,
                WorkerConfig::default(),
                shutdown,
            )
            .await
        }
    });

    let query_config = QueryApiConfig {
        addr: "127.0.0.1:0".parse()?,
        ..QueryApiConfig::default()
    };
    let query_app = query_api::Application::build(
        &query_config,
        pool(&db.url, 16).await?,
        service::auth::Access::insecure(),
    )
    .await?;
    let query_base: Arc<str> = format!("http://127.0.0.1:{}", query_app.port()).into();
    let query_server = tokio::spawn(query_app.run(shutdown.clone()));

    let http = reqwest::Client::new();
    let mut accounts = Vec::with_capacity(accounts_n);
    for _ in 0..accounts_n {
        let response = http
            .post(format!("{command_base}/accounts"))
            .json(&json!({"customer_id": Uuid::now_v7(), "currency": "EUR"}))
            .send()
            .await?;
        if response.status() != 201 {
            return Err(format!("open account answered {}", response.status()).into());
        }
        let body: Value = response.json().await?;
        let id: Uuid = body["account_id"]
            .as_str()
            .ok_or("no account_id")?
            .parse()?;
        accounts.push(id);
    }
    // Warm up: the consumer group forms and the last account is visible.
    let last = accounts.last().ok_or("no accounts")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = http
            .get(format!(
                "{query_base}/accounts/{last}?min_version=1&wait_ms=5000"
            ))
            .send()
            .await?;
        if response.status() == 200 {
            break;
        }
        if Instant::now() > deadline {
            return Err("the projection never caught up with the opened accounts".into());
        }
    }

    println!(
        "end-to-end lag: deposit answered -> visible via GET /accounts/{{id}}?min_version \
         ({seconds} s per rate, {accounts_n} accounts)"
    );
    for rate in rates {
        let samples = Arc::new(Mutex::new(Samples::default()));
        let total = rate * seconds;
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(total as usize);
        let (cpu_before, machine_before) = (process_cpu(), machine_busy().0);
        let started = Instant::now();
        for n in 0..total {
            interval.tick().await;
            tasks.push(tokio::spawn(deposit_and_read(
                http.clone(),
                command_base.clone(),
                query_base.clone(),
                accounts[n as usize % accounts.len()],
                samples.clone(),
            )));
        }
        let sending = started.elapsed();
        for task in tasks {
            task.await?;
        }
        let (cpu, wall) = (process_cpu() - cpu_before, started.elapsed());
        let (machine_after, cpus) = machine_busy();
        let machine = machine_after - machine_before;
        let mut samples = samples.lock().await;
        samples.command.sort();
        samples.lag.sort();
        println!(
            "target {rate:>4}/s: achieved {:>6.1}/s | lag p50 {:>7.1} ms p99 {:>7.1} ms max {:>7.1} ms \
             | deposit p50 {:>6.1} ms p99 {:>6.1} ms | {} ok, {} failed",
            samples.command.len() as f64 / sending.as_secs_f64(),
            ms(percentile(&samples.lag, 0.50)),
            ms(percentile(&samples.lag, 0.99)),
            ms(percentile(&samples.lag, 1.0)),
            ms(percentile(&samples.command, 0.50)),
            ms(percentile(&samples.command, 0.99)),
            samples.lag.len(),
            samples.failures,
        );
        println!(
            "  reads answered 503: {} overloaded (the client waited Retry-After), {} min_version_timeout \
             | CPU per visible deposit: this process {:.2} ms ({:.2} cores), the machine {:.2} ms \
             ({:.2} of its {cpus} cores busy)",
            samples.overloaded,
            samples.timed_out,
            ms(cpu) / samples.lag.len().max(1) as f64,
            cpu.as_secs_f64() / wall.as_secs_f64(),
            ms(machine) / samples.lag.len().max(1) as f64,
            machine.as_secs_f64() / wall.as_secs_f64(),
        );
        print_stages(&db.pool, &samples.deposits, &stages).await?;
    }

    shutdown.cancel();
    command_server.await??;
    relay_task.await??;
    worker_task.await??;
    query_server.await??;
    db.drop().await;
    Ok(())
}
