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
//! commits alone, as before group commit), and (f) the Command API with
//! tracing on (below). Same process, same runtime, same database. The time
//! is split into rounds that alternate between the targets (and which one
//! goes first), so that load from elsewhere on a shared machine weighs on
//! all alike. Environment:
//! `BENCH_SECONDS` per target (default 10), `BENCH_ROUNDS` (5),
//! `BENCH_CLIENTS` (32), `BENCH_ACCOUNTS` (1000), `BENCH_TARGETS` (a comma
//! list of `bare`, `api`, `append`, `auth`, `alone`, `traced`; default all;
//! `api` is always driven, as the others' reference), `DATABASE_URL`.
//!
//! Each target deposits into accounts of its own (1,000 each): were they
//! shared, each Command API would find the state it remembers moved on by
//! the others' rounds and decide the first command per account again after
//! a conflict, a cost of running several writers on one account that a
//! single Command API does not pay.
//!
//! Tracing on (f): the process installs the tracing layer `purser serve`
//! installs when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`service::otel`: OTLP
//! http/protobuf, batched), exporting to a sink in this process (an axum
//! server on port 0 that answers `POST /v1/traces` with 200 and an empty
//! body, and counts the requests and bytes it received; it keeps the
//! exports and decodes them after each traced round, outside its time, to
//! count the spans, so the run shows they were really made and sent). A
//! subscriber is process-wide, so tracing cannot be on for one server and
//! off for another at once; but only one target is driven at a time, so
//! the OpenTelemetry layer's filter and the `traceparent` propagation
//! (`event_store::trace`) are switched on for the rounds of (f) alone and
//! off for every other round. "Off" is thus the subscriber installed with
//! every span filtered out, a little dearer than no subscriber. Each round
//! of (f) ends with the exporter flushed, timed as part of the round, so
//! exporting what the round made is charged to it and not to the next
//! target; the sink's receiving of the exports runs on the same two
//! cores, charged to tracing too. No log layer is installed for either (logging is not
//! tracing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::env_or;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use command_api::{Application, Config};
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use futures::future::join_all;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde::Deserialize;
use serde_json::json;
use service::otel::opentelemetry_sdk::trace::SdkTracerProvider;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::{dynamic_filter_fn, FilterExt as _};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
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

/// What the OTLP sink received.
#[derive(Default)]
struct Received {
    requests: AtomicU64,
    bytes: AtomicU64,
    /// The exports received and not decoded yet ([`Received::count_spans`]).
    exports: Mutex<Vec<Bytes>>,
    /// The spans in the exports decoded so far.
    spans: AtomicU64,
}

impl Received {
    /// Decodes the exports received since the last call and counts their
    /// spans: called after a traced round, outside its time.
    fn count_spans(&self) -> Result<(), prost::DecodeError> {
        let exports = std::mem::take(&mut *self.exports.lock().expect("exports"));
        for body in exports {
            let export = ExportTraceServiceRequest::decode(body)?;
            let spans: usize = export
                .resource_spans
                .iter()
                .flat_map(|resource| &resource.scope_spans)
                .map(|scope| scope.spans.len())
                .sum();
            self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `POST /v1/traces`: keeps the export and answers as a collector that
/// took everything (200, an empty `ExportTraceServiceResponse`). The export
/// is decoded to count its spans only after the round ([`Received::count_spans`]):
/// a collector that drops everything does not decode, and the benchmark's
/// two cores are the traced server's.
async fn receive_traces(State(received): State<Arc<Received>>, body: Bytes) -> Response {
    received.requests.fetch_add(1, Ordering::Relaxed);
    received
        .bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    received.exports.lock().expect("exports").push(body);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}

async fn start_sink(listener: std::net::TcpListener) -> Result<Arc<Received>, BoxError> {
    let received = Arc::new(Received::default());
    let app = Router::new()
        .route("/v1/traces", post(receive_traces))
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(received)
}

/// Whether the OpenTelemetry layer takes spans: only in the rounds of the
/// traced target (see the module's comment).
static TRACING_ON: AtomicBool = AtomicBool::new(false);

/// Tracing as `purser serve` sets it up with `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (`service::otel`, the layer and its filter), and off until
/// [`switch_tracing`] turns it on.
fn install_tracing() -> Result<SdkTracerProvider, BoxError> {
    let provider = service::otel::exporting_provider()?;
    // A dynamic filter: asked at every span (a `filter_fn` would be asked
    // once per callsite and its answer cached for good).
    let switch = dynamic_filter_fn(|_, _| TRACING_ON.load(Ordering::Relaxed));
    let layer = service::otel::layer(&provider).with_filter(service::otel::exported().and(switch));
    tracing_subscriber::registry().with(layer).try_init()?;
    Ok(provider)
}

/// Turns the OpenTelemetry layer and the propagation of `traceparent` on
/// or off for what follows.
fn switch_tracing(on: bool) {
    TRACING_ON.store(on, Ordering::Relaxed);
    if on {
        event_store::trace::enable();
    } else {
        event_store::trace::disable();
    }
}

/// The targets, in the order they are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Bare,
    Api,
    Append,
    Auth,
    Alone,
    Traced,
}

impl Target {
    const ALL: [Target; 6] = [
        Target::Bare,
        Target::Api,
        Target::Append,
        Target::Auth,
        Target::Alone,
        Target::Traced,
    ];

    /// Its name in `BENCH_TARGETS`.
    fn key(self) -> &'static str {
        match self {
            Target::Bare => "bare",
            Target::Api => "api",
            Target::Append => "append",
            Target::Auth => "auth",
            Target::Alone => "alone",
            Target::Traced => "traced",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::Bare => "bare axum + sqlx insert",
            Target::Api => "command API deposit",
            Target::Append => "store's append alone",
            Target::Auth => "  with auth (1,000 tokens)",
            Target::Alone => "  without group commit",
            Target::Traced => "  with tracing on (OTLP)",
        }
    }

    /// `BENCH_TARGETS`, else every target; `api` always.
    fn chosen() -> Result<Vec<Target>, BoxError> {
        let Ok(list) = std::env::var("BENCH_TARGETS") else {
            return Ok(Target::ALL.to_vec());
        };
        let mut chosen = vec![Target::Api];
        for key in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let target = Target::ALL
                .into_iter()
                .find(|t| t.key() == key)
                .ok_or_else(|| {
                    let keys: Vec<&str> = Target::ALL.iter().map(|t| t.key()).collect();
                    format!(
                        "BENCH_TARGETS: no target {key:?} (targets: {})",
                        keys.join(",")
                    )
                })?;
            if !chosen.contains(&target) {
                chosen.push(target);
            }
        }
        chosen.sort_by_key(|t| Target::ALL.iter().position(|a| a == t));
        Ok(chosen)
    }
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

/// `a / b` in percent, or `None` when either was not driven.
fn percent<'a>(a: Option<&'a Run>, b: Option<&'a Run>) -> Option<(f64, &'a Run, &'a Run)> {
    let (a, b) = (a?, b?);
    Some((a.throughput() / b.throughput() * 100.0, a, b))
}

fn main() -> Result<(), BoxError> {
    // The exporter finds its endpoint in the environment, as in `purser
    // serve`: the sink's port is bound, and the variable set, before the
    // runtime's threads exist.
    let sink = std::net::TcpListener::bind("127.0.0.1:0")?;
    sink.set_nonblocking(true)?;
    std::env::set_var(
        service::otel::OTLP_ENDPOINT_ENV,
        format!("http://{}", sink.local_addr()?),
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(sink))
}

async fn bench(sink: std::net::TcpListener) -> Result<(), BoxError> {
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let rounds: u32 = env_or("BENCH_ROUNDS", 5).max(1);
    let clients: usize = env_or("BENCH_CLIENTS", 32);
    let account_count: usize = env_or("BENCH_ACCOUNTS", 1000);
    let chosen = Target::chosen()?;
    let round = Duration::from_secs(seconds) / rounds;

    let db = TestDatabase::create().await;
    let pool = |size| {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&db.url)
    };
    let received = start_sink(sink).await?;
    let provider = if chosen.contains(&Target::Traced) {
        Some(install_tracing()?)
    } else {
        None
    };

    // The Command API, and 1,000 open accounts through it.
    let mut config = Config {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    config.db_max_connections = POOL_SIZE;
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    let mut addresses: Vec<(Target, SocketAddr)> = Vec::new();
    // The same Command API with authentication (d): a development key pair,
    // the default per-caller rate limit, one token per customer.
    let keys_dir = tempfile::tempdir()?;
    let keys = service::auth::DevKeys::init(keys_dir.path())?;
    for target in [Target::Api, Target::Auth, Target::Alone, Target::Traced] {
        if !chosen.contains(&target) {
            continue;
        }
        let mut config = config.clone();
        let access = match target {
            Target::Auth => keys.access(auth::RateLimitConfig {
                per_second: 200,
                burst: 400,
            }),
            _ => service::auth::Access::insecure(),
        };
        // Without group commit (e): each command commits alone, as before
        // it: what grouping gains, in the same run.
        if target == Target::Alone {
            config.group_commit_max_size = 1;
        }
        let application = Application::build(&config, pool(POOL_SIZE).await?, access).await?;
        addresses.push((target, application.address()));
        servers.push(tokio::spawn(application.run(stop.clone())));
    }
    let command_api = addresses[0].1;
    if chosen.contains(&Target::Bare) {
        addresses.push((Target::Bare, start_bare(pool(POOL_SIZE).await?).await?));
    }
    if chosen.contains(&Target::Append) {
        addresses.push((Target::Append, start_append(pool(POOL_SIZE).await?).await?));
    }
    addresses.sort_by_key(|(t, _)| Target::ALL.iter().position(|a| a == t));
    // Accounts of their own per target (in the order of `addresses`), each
    // owned by a customer of its own, opened through the Command API.
    let setup = reqwest::Client::new();
    let mut account_sets = Vec::new();
    for _ in &addresses {
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
        let tokens: Vec<String> = customers.iter().map(|c| keys.customer_token(*c)).collect();
        account_sets.push((Arc::new(accounts), Arc::new(tokens)));
    }

    let names: Vec<&str> = addresses.iter().map(|(t, _)| t.key()).collect();
    println!(
        "deposits over {account_count} accounts per target, {clients} concurrent keep-alive clients, \
         {seconds} s each in {rounds} alternating rounds (after {} s warm-up each), \
         pools of {POOL_SIZE} connections; targets: {}",
        WARMUP.as_secs(),
        names.join(", ")
    );
    // The `k`th target driven for `for_`; tracing on for the traced one
    // alone, its round ending once what it traced is exported.
    let run_target = |k: usize, for_: Duration| {
        let (target, address) = addresses[k];
        let (accounts, tokens) = &account_sets[k];
        let accounts = Arc::clone(accounts);
        let tokens = (target == Target::Auth).then(|| Arc::clone(tokens));
        let provider = provider.clone();
        let received = Arc::clone(&received);
        async move {
            let traced = target == Target::Traced;
            switch_tracing(traced);
            let mut run = drive(address, accounts, tokens, clients, for_).await;
            if let (true, Some(provider)) = (traced, provider) {
                let flushing = Instant::now();
                tokio::task::spawn_blocking(move || provider.force_flush())
                    .await
                    .expect("flush task")
                    .map_err(|e| format!("flushing the spans: {e}"))
                    .expect("spans flushed");
                run.elapsed += flushing.elapsed();
                received
                    .count_spans()
                    .map_err(|e| format!("an OTLP export the sink received: {e}"))
                    .expect("exports decoded");
            }
            switch_tracing(false);
            run
        }
    };
    for k in 0..addresses.len() {
        run_target(k, WARMUP).await;
    }
    let exported_before = received.spans.load(Ordering::Relaxed);
    let requests_before = received.requests.load(Ordering::Relaxed);
    let bytes_before = received.bytes.load(Ordering::Relaxed);
    let mut runs: Vec<Vec<Run>> = addresses.iter().map(|_| Vec::new()).collect();
    for i in 0..rounds as usize {
        for k in 0..addresses.len() {
            let which = (i + k) % addresses.len();
            runs[which].push(run_target(which, round).await);
        }
    }
    let runs: Vec<(Target, Run)> = addresses
        .iter()
        .map(|(t, _)| *t)
        .zip(runs.into_iter().map(Run::merge))
        .collect();
    let run_of = |target: Target| runs.iter().find(|(t, _)| *t == target).map(|(_, r)| r);

    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "", "req/s", "p50 ms", "p99 ms", "requests", "errors"
    );
    for (target, run) in &runs {
        println!(
            "{:<28} {:>10.0} {:>9.2} {:>9.2} {:>9} {:>7}",
            target.label(),
            run.throughput(),
            ms(run.percentile(0.50)),
            ms(run.percentile(0.99)),
            run.requests,
            run.errors
        );
    }
    let api = run_of(Target::Api);
    if let Some((ratio, api_run, bare_run)) = percent(api, run_of(Target::Bare)) {
        println!(
            "ratio: throughput {:.2}x bare, p99 {:.2}x bare",
            ratio / 100.0,
            ms(api_run.percentile(0.99)) / ms(bare_run.percentile(0.99)),
        );
    }
    if let Some((ratio, alone, bare_run)) = percent(run_of(Target::Alone), run_of(Target::Bare)) {
        println!(
            "without group commit: {:.2}x bare, p99 {:.2}x bare",
            ratio / 100.0,
            ms(alone.percentile(0.99)) / ms(bare_run.percentile(0.99)),
        );
    }
    if let Some((ratio, secured, api_run)) = percent(run_of(Target::Auth), api) {
        println!(
            "authentication and rate limiting: deposits/s with auth {:.0} vs --insecure-no-auth {:.0}: \
             {ratio:.1}% of it (target >= 90%); p99 {:.2} ms vs {:.2} ms",
            secured.throughput(),
            api_run.throughput(),
            ms(secured.percentile(0.99)),
            ms(api_run.percentile(0.99)),
        );
    }
    if let Some((ratio, traced, api_run)) = percent(run_of(Target::Traced), api) {
        let spans = received.spans.load(Ordering::Relaxed) - exported_before;
        if spans == 0 {
            return Err(
                "no span of the traced rounds reached the OTLP sink: tracing was not on".into(),
            );
        }
        println!(
            "tracing: deposits/s with tracing on {:.0} vs off {:.0}: {ratio:.1}% of it \
             (target >= 90%); p99 {:.2} ms vs {:.2} ms",
            traced.throughput(),
            api_run.throughput(),
            ms(traced.percentile(0.99)),
            ms(api_run.percentile(0.99)),
        );
        println!(
            "spans exported in the measured rounds: {spans} ({:.1} per traced deposit) in {} OTLP \
             requests of {:.1} MB in all",
            spans as f64 / traced.requests.max(1) as f64,
            received.requests.load(Ordering::Relaxed) - requests_before,
            (received.bytes.load(Ordering::Relaxed) - bytes_before) as f64 / 1e6,
        );
    }
    if let (Some((append_ratio, _, _)), Some(api_run), Some(append_run)) = (
        percent(run_of(Target::Append), run_of(Target::Bare)),
        api,
        run_of(Target::Append),
    ) {
        println!(
            "for reference, the store's append alone (ExpectedVersion::Any): {append_ratio:.0}% of bare; \
             the command API: {:.0}% of it",
            api_run.throughput() / append_run.throughput() * 100.0
        );
    }

    // Every successful deposit is an event: nothing lost, nothing extra.
    let deposited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_store.events WHERE event_type = 'MoneyDeposited'",
    )
    .fetch_one(&db.pool)
    .await?;
    println!("events appended by the command APIs: {deposited}");

    stop.cancel();
    for server in servers {
        server.await??;
    }
    if let Some(provider) = provider {
        tokio::task::spawn_blocking(move || provider.shutdown()).await??;
    }
    db.drop().await;
    Ok(())
}
