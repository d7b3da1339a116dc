//! The gateway's cost, and what a second Command API instance adds: deposits
//! straight to the Command API next to the same deposits through the nginx
//! gateway, with one and with two instances, in one run.
//!
//! `cargo bench -p purser --bench gateway` (or `scripts/bench gateway`)
//!
//! Two `purser command-api` processes (release build, `--insecure-no-auth`
//! so that tokens are not part of the comparison) on one fresh database, and
//! two gateways rendered from `deploy/nginx/purser.conf.template`: one in
//! front of the first instance, one in front of both. Four targets:
//!
//! - **direct x1**: every client to the first instance;
//! - **gateway x1**: through the gateway of the first instance;
//! - **direct x2**: the clients split between the two instances;
//! - **gateway x2**: through the gateway of both (nginx balances).
//!
//! `BENCH_CLIENTS` concurrent clients (keep-alive, one connection each) post
//! `{"amount": 1}` deposits round-robin over `BENCH_ACCOUNTS` accounts,
//! `BENCH_SECONDS` per target split into `BENCH_ROUNDS` rounds that rotate
//! the targets' order, so that load from elsewhere weighs on all alike.
//! Defaults: 32 clients, 1,000 accounts, 8 s, 4 rounds.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::gateway::{free_port, Gateway, Settings};
use test_support::{env_or, eventually, TestDatabase};
use tokio::process::{Child, Command};
use uuid::Uuid;

const PURSER: &str = env!("CARGO_BIN_EXE_purser");

/// One `purser command-api` on a free port.
async fn command_api(db: &TestDatabase) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(PURSER)
        .args(["command-api", "--insecure-no-auth"])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &db.url])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("purser command-api starts");
    let http = reqwest::Client::new();
    let live = format!("http://127.0.0.1:{port}/health/live");
    eventually(
        "the Command API to be live",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let request = http.get(&live).send();
            async move { request.await.map(drop).map_err(|e| e.to_string()) }
        },
    )
    .await;
    (child, port)
}

#[derive(Default)]
struct Run {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn add(&mut self, other: Run) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
    }

    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

/// `clients` loops posting deposits for `for_`, client `c` to
/// `bases[c % bases.len()]`.
async fn drive(bases: &[String], accounts: &[Uuid], clients: usize, for_: Duration) -> Run {
    let started = Instant::now();
    let deadline = started + for_;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let base = bases[c % bases.len()].clone();
        let accounts = accounts.to_vec();
        tasks.spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .tcp_nodelay(true)
                .no_proxy()
                .build()
                .expect("client");
            let (mut latencies, mut errors) = (Vec::with_capacity(4096), 0);
            let mut i = c;
            while Instant::now() < deadline {
                let account = accounts[i % accounts.len()];
                i += clients;
                let sent = Instant::now();
                let response = http
                    .post(format!("{base}/accounts/{account}/deposits"))
                    .json(&json!({ "amount": 1 }))
                    .send()
                    .await;
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
        });
    }
    let mut run = Run::default();
    while let Some(done) = tasks.join_next().await {
        let (latencies, errors) = done.expect("client task");
        run.requests += latencies.len();
        run.errors += errors;
        run.latencies.extend(latencies);
    }
    run.elapsed = started.elapsed();
    run.latencies.sort_unstable();
    run
}

#[tokio::main]
async fn main() {
    let clients: usize = env_or("BENCH_CLIENTS", 32);
    let accounts: usize = env_or("BENCH_ACCOUNTS", 1000);
    let seconds: u64 = env_or("BENCH_SECONDS", 8);
    let rounds: u32 = env_or("BENCH_ROUNDS", 4);

    let db = TestDatabase::create().await;
    let (_first, one) = command_api(&db).await;
    let (_second, two) = command_api(&db).await;
    let unlimited = |command: Vec<u16>| Settings {
        rate: "100000r/s",
        burst: 100_000,
        ..Settings::to(command, vec![free_port()])
    };
    let gateway_one = Gateway::start(unlimited(vec![one])).await;
    let gateway_two = Gateway::start(unlimited(vec![one, two])).await;

    let direct = |port: u16| format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ids = Vec::with_capacity(accounts);
    for _ in 0..accounts {
        let opened: serde_json::Value = http
            .post(format!("{}/accounts", direct(one)))
            .json(&json!({ "currency": "EUR", "customer_id": Uuid::now_v7() }))
            .send()
            .await
            .expect("open an account")
            .json()
            .await
            .expect("JSON");
        ids.push(
            opened["account_id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .expect("account_id"),
        );
    }

    let targets: Vec<(&str, Vec<String>)> = vec![
        ("direct x1", vec![direct(one)]),
        ("gateway x1", vec![gateway_one.url("")]),
        ("direct x2", vec![direct(one), direct(two)]),
        ("gateway x2", vec![gateway_two.url("")]),
    ];
    println!(
        "gateway bench: {clients} clients, {accounts} accounts, {seconds} s per target in {rounds} rounds"
    );
    for (_, bases) in &targets {
        drive(bases, &ids, clients, Duration::from_secs(1)).await;
    }
    let slice = Duration::from_secs(seconds) / rounds;
    let mut runs: Vec<Run> = targets.iter().map(|_| Run::default()).collect();
    for round in 0..rounds as usize {
        for k in 0..targets.len() {
            let t = (k + round) % targets.len();
            let run = drive(&targets[t].1, &ids, clients, slice).await;
            runs[t].add(run);
        }
    }

    let baseline = runs[0].per_second();
    println!("| target | deposits/s | p50 ms | p99 ms | errors | vs direct x1 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for ((name, _), run) in targets.iter().zip(&runs) {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {:.0}% |",
            run.per_second(),
            run.ms(0.5),
            run.ms(0.99),
            run.errors,
            100.0 * run.per_second() / baseline
        );
    }
    drop((gateway_one, gateway_two));
    db.drop().await;
}
