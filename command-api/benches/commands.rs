//! Command API throughput and latency, next to a bare axum + sqlx handler
//! that inserts one row, driven the same way in the same run.
//!
//! `cargo bench -p command-api --bench commands`
//!
//! Each account belongs to a customer of its own (1,000 customers); the
//! Command API is driven twice in the same rounds: (d) with authentication,
//! each request carrying its customer's bearer token (EdDSA, verified
//! against a JWKS) under the default per-caller rate limit (200/s, burst
//! 400: checked on every request, never reached here), and (b) the same
//! server code under `--insecure-no-auth` (no token, no limiter). The ratio
//! of the two is what authentication and rate limiting cost (target: at
//! most 10%).
//!
//! 32 concurrent HTTP clients (reqwest, keep-alive, one connection each)
//! post deposits round-robin over 1,000 accounts for a fixed time against
//! (a) the real Command API (parse, load the account's stream, decide,
//! append with optimistic concurrency) and (b) a bare handler that parses
//! the same body and inserts one event-shaped row. For reference it also
//! drives (c) a bare handler around `EventStore::append` alone (with
//! `ExpectedVersion::Any`, as it knows no version; the Command API appends
//! at the exact version it remembers, a cheaper check), and (e) the Command
//! API with group commit off (`PURSER_GROUP_COMMIT_MAX_SIZE=1`: each command
//! commits alone, as before group commit). Same process, same
//! runtime, same database. The time is split into rounds that alternate
//! between the two (and which one goes first), so that load from elsewhere
//! on a shared machine weighs on both alike. Environment: `BENCH_SECONDS`
//! per target (default 10), `BENCH_ROUNDS` (5), `BENCH_CLIENTS` (32),
//! `BENCH_ACCOUNTS` (1000), `DATABASE_URL`.
//!
//! Each target deposits into accounts of its own (1,000 each): were they
//! shared, each Command API would find the state it remembers moved on by
//! the others' rounds and decide the first command per account again after
//! a conflict, a cost of running several writers on one account that a
//! single Command API does not pay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::env_or;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use command_api::{Application, Config};
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use futures::future::join_all;
use serde::Deserialize;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connections per server's pool (the Command API's default).
const POOL_SIZE: u32 = 16;
const WARMUP: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Deposit {
    amount: i64,
}

/// The baseline: parse the body, insert one row shaped like an event.
async fn bare_deposit(
    State(pool): State<PgPool>,
    Path(id): Path<Uuid>,
    Json(deposit): Json<Deposit>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO bench_bare_events (event_id, stream_id, event_type, payload) \
         VALUES ($1, $2, 'MoneyDeposited', $3) RETURNING position",
    )
    .bind(Uuid::now_v7())
    .bind(format!("account-{id}"))
    .bind(json!({"amount": deposit.amount}))
    .fetch_one(&pool)
    .await
    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(json!({"account_id": id, "position": position})))
}

/// For reference: the event store's append alone behind a bare handler (no
/// command layer: no load, no decision, no middleware), so the figures show
/// which part of the gap is the store's and which is the Command API's.
async fn append_deposit(
    State(store): State<EventStore>,
    Path(id): Path<Uuid>,
    Json(deposit): Json<Deposit>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "BenchDeposited".to_owned(),
        schema_version: 1,
        payload: json!({"amount": deposit.amount}),
    };
    let appended = store
        .append(
            &StreamId::new("bench", id),
            ExpectedVersion::Any,
            &[event],
            &Metadata::default(),
        )
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(
        json!({"account_id": id, "version": appended.version, "position": appended.position}),
    ))
}

async fn start_append(pool: PgPool) -> Result<SocketAddr, BoxError> {
    let app = Router::new()
        .route("/accounts/{id}/deposits", post(append_deposit))
        .with_state(EventStore::new(pool));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

async fn start_bare(pool: PgPool) -> Result<SocketAddr, BoxError> {
    sqlx::query(
        "CREATE TABLE bench_bare_events ( \
           position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
           event_id uuid NOT NULL UNIQUE, stream_id text NOT NULL, event_type text NOT NULL, \
           payload jsonb NOT NULL, metadata jsonb NOT NULL DEFAULT '{}'::jsonb, \
           recorded_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    let app = Router::new()
        .route("/accounts/{id}/deposits", post(bare_deposit))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

struct Run {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn merge(runs: Vec<Run>) -> Run {
        let mut merged = Run {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        };
        for run in runs {
            merged.requests += run.requests;
            merged.errors += run.errors;
            merged.elapsed += run.elapsed;
            merged.latencies.extend(run.latencies);
        }
        merged.latencies.sort_unstable();
        merged
    }

    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }
}

/// `clients` loops posting deposits round-robin over `accounts` for `for_`,
/// each with its account's owner's token when `tokens` are given.
async fn drive(
    address: SocketAddr,
    accounts: Arc<Vec<Uuid>>,
    tokens: Option<Arc<Vec<String>>>,
    clients: usize,
    for_: Duration,
) -> Run {
    let started = Instant::now();
    let deadline = started + for_;
    let per_client = join_all((0..clients).map(|c| {
        let accounts = Arc::clone(&accounts);
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .build()
                .expect("client");
            let mut latencies = Vec::with_capacity(8192);
            let mut errors = 0;
            let mut i = c;
            while Instant::now() < deadline {
                let account = accounts[i % accounts.len()];
                let mut request = client
                    .post(format!("http://{address}/accounts/{account}/deposits"))
                    .json(&json!({"amount": 1}));
                if let Some(tokens) = &tokens {
                    request = request.bearer_auth(&tokens[i % tokens.len()]);
                }
                i += clients;
                let sent = Instant::now();
                let response = request.send().await;
                match response {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    Ok(r) => {
                        let _ = r.bytes().await;
                        errors += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        })
    }))
    .await;
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for result in per_client {
        let (l, e) = result.expect("client task");
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    Run {
        requests: latencies.len(),
        errors,
        elapsed,
        latencies,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let rounds: u32 = env_or("BENCH_ROUNDS", 5).max(1);
    let clients: usize = env_or("BENCH_CLIENTS", 32);
    let account_count: usize = env_or("BENCH_ACCOUNTS", 1000);
    let round = Duration::from_secs(seconds) / rounds;

    let db = TestDatabase::create().await;
    let pool = |size| {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&db.url)
    };

    // The Command API, and 1,000 open accounts through it.
    let mut config = Config {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    config.db_max_connections = POOL_SIZE;
    let application = Application::build(
        &config,
        pool(POOL_SIZE).await?,
        service::auth::Access::insecure(),
    )
    .await?;
    let command_api = application.address();
    let stop = CancellationToken::new();
    let server = tokio::spawn(application.run(stop.clone()));
    // The same Command API with authentication: a development key pair, the
    // default per-caller rate limit, one token per customer.
    let keys_dir = tempfile::tempdir()?;
    let keys = service::auth::DevKeys::init(keys_dir.path())?;
    let secured = Application::build(
        &config,
        pool(POOL_SIZE).await?,
        keys.access(auth::RateLimitConfig {
            per_second: 200,
            burst: 400,
        }),
    )
    .await?;
    let secured_api = secured.address();
    let secured_server = tokio::spawn(secured.run(stop.clone()));
    // The same Command API without group commit (each command commits
    // alone, as before it): what grouping gains, in the same run.
    let mut alone_config = config.clone();
    alone_config.group_commit_max_size = 1;
    let alone = Application::build(
        &alone_config,
        pool(POOL_SIZE).await?,
        service::auth::Access::insecure(),
    )
    .await?;
    let alone_api = alone.address();
    let alone_server = tokio::spawn(alone.run(stop.clone()));
    let setup = reqwest::Client::new();
    // Accounts of their own per target (in the order of `targets` below),
    // each owned by a customer of its own, opened through the Command API.
    let mut account_sets = Vec::new();
    let mut token_sets = Vec::new();
    for _ in 0..5 {
        let accounts: Vec<Uuid> = (0..account_count).map(|_| Uuid::now_v7()).collect();
        let customers: Vec<Uuid> = (0..account_count).map(|_| Uuid::now_v7()).collect();
        for (chunk, owners) in accounts.chunks(64).zip(customers.chunks(64)) {
            let opened = join_all(chunk.iter().zip(owners).map(|(id, customer)| {
                setup
                    .post(format!("http://{command_api}/accounts"))
                    .json(&json!({"account_id": id, "customer_id": customer, "currency": "EUR"}))
                    .send()
            }))
            .await;
            for response in opened {
                if response?.status() != reqwest::StatusCode::CREATED {
                    return Err("opening an account failed".into());
                }
            }
        }
        account_sets.push(Arc::new(accounts));
        token_sets.push(Arc::new(
            customers
                .iter()
                .map(|c| keys.customer_token(*c))
                .collect::<Vec<_>>(),
        ));
    }

    let bare = start_bare(pool(POOL_SIZE).await?).await?;
    let append_only = start_append(pool(POOL_SIZE).await?).await?;

    println!(
        "deposits over {account_count} accounts, {clients} concurrent keep-alive clients, \
         {seconds} s each in {rounds} alternating rounds (after {} s warm-up each), \
         pools of {POOL_SIZE} connections",
        WARMUP.as_secs()
    );
    let targets = [
        (bare, None),
        (command_api, None),
        (append_only, None),
        (secured_api, Some(Arc::clone(&token_sets[3]))),
        (alone_api, None),
    ];
    for (k, (target, tokens)) in targets.iter().enumerate() {
        drive(
            *target,
            Arc::clone(&account_sets[k]),
            tokens.clone(),
            clients,
            WARMUP,
        )
        .await;
    }
    let mut runs: [Vec<Run>; 5] = Default::default();
    for i in 0..rounds as usize {
        for k in 0..targets.len() {
            let which = (i + k) % targets.len();
            let (target, tokens) = &targets[which];
            let run = drive(
                *target,
                Arc::clone(&account_sets[which]),
                tokens.clone(),
                clients,
                round,
            )
            .await;
            runs[which].push(run);
        }
    }
    let [bare_runs, api_runs, append_runs, secured_runs, alone_runs] = runs;
    let alone_run = Run::merge(alone_runs);
    let bare_run = Run::merge(bare_runs);
    let api_run = Run::merge(api_runs);
    let append_run = Run::merge(append_runs);
    let secured_run = Run::merge(secured_runs);

    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "", "req/s", "p50 ms", "p99 ms", "requests", "errors"
    );
    for (name, run) in [
        ("bare axum + sqlx insert", &bare_run),
        ("command API deposit", &api_run),
        ("  with auth (1,000 tokens)", &secured_run),
        ("  without group commit", &alone_run),
    ] {
        println!(
            "{:<28} {:>10.0} {:>9.2} {:>9.2} {:>9} {:>7}",
            name,
            run.throughput(),
            ms(run.percentile(0.50)),
            ms(run.percentile(0.99)),
            run.requests,
            run.errors
        );
    }
    let throughput_ratio = api_run.throughput() / bare_run.throughput();
    let p99_ratio = ms(api_run.percentile(0.99)) / ms(bare_run.percentile(0.99));
    println!(
        "ratio: throughput {:.2}x bare, p99 {:.2}x bare; without group commit {:.2}x bare, p99 {:.2}x",
        throughput_ratio,
        p99_ratio,
        alone_run.throughput() / bare_run.throughput(),
        ms(alone_run.percentile(0.99)) / ms(bare_run.percentile(0.99)),
    );
    println!(
        "authentication and rate limiting: deposits/s with auth {:.0} vs --insecure-no-auth {:.0}: \
         {:.1}% of it (target >= 90%); p99 {:.2} ms vs {:.2} ms",
        secured_run.throughput(),
        api_run.throughput(),
        secured_run.throughput() / api_run.throughput() * 100.0,
        ms(secured_run.percentile(0.99)),
        ms(api_run.percentile(0.99)),
    );
    println!(
        "for reference, the store's append alone (ExpectedVersion::Any): {:.0}% of bare; \
         the command API: {:.0}% of it",
        append_run.throughput() / bare_run.throughput() * 100.0,
        api_run.throughput() / append_run.throughput() * 100.0
    );

    // Every successful deposit is an event: nothing lost, nothing extra.
    let deposited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_store.events WHERE event_type = 'MoneyDeposited'",
    )
    .fetch_one(&db.pool)
    .await?;
    println!("events appended by the command APIs (with and without auth, without group commit): {deposited}");

    stop.cancel();
    server.await??;
    secured_server.await??;
    alone_server.await??;
    db.drop().await;
    Ok(())
}
