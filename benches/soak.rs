//! A soak: `purser serve` under a steady mixed load for ten minutes, one
//! popular SKU taking every order, to show that throughput holds as the
//! streams grow, that the sagas keep up, and that memory stays flat.
//!
//! `cargo bench -p purser --bench soak` (or `scripts/bench soak`)
//!
//! One `purser serve` (release build, `--insecure-no-auth`, the simulated
//! carrier answering at once) on a fresh database and topics of its own.
//! `BENCH_ACCOUNTS` (100) accounts with money to spare and one SKU with
//! stock to spare. Open-loop load for `BENCH_SECONDS` (600): deposits at
//! `BENCH_DEPOSIT_RATE` (300/s) round-robin over the accounts and one-line
//! orders for the one SKU at `BENCH_ORDER_RATE` (20/s), each request sent on
//! its tick whatever the answers before it (at most 256 in flight; a tick
//! with none free is counted as missed). Every `BENCH_WINDOW` (60) seconds
//! it prints the window's accepted deposits and orders per second, their
//! p99, the orders shipped per second (from the `OrderShipped` events'
//! `recorded_at`), the process's resident memory (all of it, and the
//! anonymous part: its heaps, not its binary's pages), the aggregates its
//! bounded caches remember and the database connections its pool holds
//! (from its `/metrics`). At `BENCH_STALL_AT` seconds (270; 0 for none)
//! the database stalls the writers for `BENCH_STALL_MS` (3000): the bench
//! holds a lock on the event log that every append waits for, as a
//! checkpoint or a failover would, so requests pile up to the process's
//! caps. Memory that follows the work in flight must come back after it.
//! When the load stops it
//! waits for every order placed to ship and prints how long that took.
//!
//! What it shows: the last window's rates next to the first's (the
//! baseline of the same run), the drain time, and the resident memory (all
//! of it and the anonymous part) of the second window next to the last
//! (after warm-up).

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::gateway::free_port;
use test_support::{env_or, eventually, TestDatabase};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use uuid::Uuid;

const PURSER: &str = env!("CARGO_BIN_EXE_purser");
const IN_FLIGHT: usize = 256;
const SKU: &str = "FLASH-1";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `purser serve` on `db`; the Command API's base URL.
async fn serve(db: &TestDatabase) -> Result<(Child, String), BoxError> {
    let kafka = test_support::kafka::isolated("soak");
    let port = free_port();
    let child = Command::new(PURSER)
        .args(["serve", "--insecure-no-auth", "--migrate"])
        .args(["--database-url", &db.url])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .args(["--query-api-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--kafka-brokers", &kafka.brokers])
        .args(["--kafka-topic-prefix", &kafka.topic_prefix])
        .env("RUST_LOG", "error")
        .env_remove("PURSER_CARRIER_DELAY_MS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = format!("{base}/health/ready");
    eventually(
        "purser serve to be ready",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            let request = http.get(&ready).send();
            async move {
                match request.await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    Ok((child, base))
}

/// The sum of every sample of the metrics whose name ends with `suffix` in
/// the process's `/metrics`: `_aggregate_cache_entries`, the aggregates its
/// bounded caches remember (what its memory holds that grows, up to their
/// bounds, with the aggregates it touched); `_db_pool_connections`, the
/// database connections its pool holds open (each with its buffers and
/// statement cache; the pool grows, up to its bound, with the requests in
/// flight at once).
async fn metric_sum(http: &reqwest::Client, base: &str, suffix: &str) -> f64 {
    let Ok(response) = http.get(format!("{base}/metrics")).send().await else {
        return f64::NAN;
    };
    let Ok(text) = response.text().await else {
        return f64::NAN;
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' '])
                .next()
                .is_some_and(|name| name.ends_with(suffix))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A memory figure of process `pid` from `/proc/<pid>/status`, in MiB:
/// `VmRSS` (all it has resident) or `RssAnon` (its resident anonymous
/// memory: heaps, stacks; not the binary's pages, which are `RssFile`).
fn memory_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// What one window of the load saw, per kind of request.
#[derive(Default)]
struct Window {
    deposits: Vec<Duration>,
    orders: Vec<Duration>,
    errors: usize,
    /// The failures by status (or `transport` when no answer came).
    failures: std::collections::BTreeMap<String, usize>,
}

fn p99(latencies: &mut [Duration]) -> f64 {
    latencies.sort_unstable();
    let i = ((latencies.len() as f64 - 1.0) * 0.99).round() as usize;
    latencies.get(i).copied().unwrap_or_default().as_secs_f64() * 1000.0
}

/// Sends one request on each tick of `rate` per second until `until`.
#[allow(clippy::too_many_arguments)]
async fn open_loop(
    http: reqwest::Client,
    base: Arc<String>,
    accounts: Arc<Vec<(Uuid, Uuid)>>,
    rate: f64,
    orders: bool,
    started: Instant,
    until: Instant,
    window: Duration,
    windows: Arc<Mutex<Vec<Window>>>,
    missed: Arc<AtomicUsize>,
) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0usize;
    while Instant::now() < until {
        ticks.tick().await;
        n += 1;
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            missed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (account, customer) = accounts[n % accounts.len()];
        let request = if orders {
            http.post(format!("{base}/orders")).json(&json!({
                "customer_id": customer,
                "account_id": account,
                "currency": "EUR",
                "lines": [{"sku": SKU, "quantity": 1}],
                "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                                     "postal_code": "28013", "country": "ES"}
            }))
        } else {
            http.post(format!("{base}/accounts/{account}/deposits"))
                .json(&json!({"amount": 1}))
        };
        let windows = Arc::clone(&windows);
        tokio::spawn(async move {
            let sent = Instant::now();
            let answer = request.send().await;
            let latency = sent.elapsed();
            let failure = match &answer {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(r.status().as_u16().to_string()),
                Err(_) => Some("transport".to_owned()),
            };
            let ok = failure.is_none();
            let index =
                (sent.duration_since(started).as_secs_f64() / window.as_secs_f64()) as usize;
            let mut windows = windows.lock().expect("windows");
            if windows.len() <= index {
                windows.resize_with(index + 1, Window::default);
            }
            let w = &mut windows[index];
            match (ok, orders) {
                (true, true) => w.orders.push(latency),
                (true, false) => w.deposits.push(latency),
                (false, _) => {
                    w.errors += 1;
                    *w.failures.entry(failure.unwrap_or_default()).or_default() += 1;
                }
            }
            drop(permit);
        });
    }
    // The requests still in flight finish (or time out).
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        permits.acquire_many(IN_FLIGHT as u32),
    )
    .await;
}

/// At `at`, holds a lock on the event log that every append waits for
/// (reads go on), for `stall`.
async fn stall_appends(pool: sqlx::PgPool, at: Instant, stall: Duration) -> Result<(), BoxError> {
    tokio::time::sleep_until(at.into()).await;
    let mut transaction = pool.begin().await?;
    sqlx::query("LOCK TABLE event_store.events IN EXCLUSIVE MODE")
        .execute(&mut *transaction)
        .await?;
    tokio::time::sleep(stall).await;
    transaction.commit().await?;
    Ok(())
}

async fn count(pool: &sqlx::PgPool, event_type: &str) -> Result<i64, BoxError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM event_store.events WHERE event_type = $1")
            .bind(event_type)
            .fetch_one(pool)
            .await?,
    )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let seconds: u64 = env_or("BENCH_SECONDS", 600);
    let window = Duration::from_secs(env_or("BENCH_WINDOW", 60u64).max(1));
    let deposit_rate: f64 = env_or("BENCH_DEPOSIT_RATE", 300.0);
    let order_rate: f64 = env_or("BENCH_ORDER_RATE", 20.0);
    let account_count: usize = env_or("BENCH_ACCOUNTS", 100);
    let stall_at = Duration::from_secs(env_or("BENCH_STALL_AT", 270u64));
    let stall = Duration::from_millis(env_or("BENCH_STALL_MS", 3000u64));

    let db = TestDatabase::create().await;
    let (child, base) = serve(&db).await?;
    let pid = child.id().ok_or("no pid")?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;

    let mut accounts = Vec::with_capacity(account_count);
    for _ in 0..account_count {
        let customer = Uuid::now_v7();
        let opened: Value = http
            .post(format!("{base}/accounts"))
            .json(&json!({"customer_id": customer, "currency": "EUR"}))
            .send()
            .await?
            .json()
            .await?;
        let account: Uuid = opened["account_id"]
            .as_str()
            .ok_or("no account_id")?
            .parse()?;
        let funded = http
            .post(format!("{base}/accounts/{account}/deposits"))
            .json(&json!({"amount": 1_000_000_000_000i64}))
            .send()
            .await?;
        if !funded.status().is_success() {
            return Err(format!("funding answered {}", funded.status()).into());
        }
        accounts.push((account, customer));
    }
    let created = http
        .post(format!("{base}/inventory"))
        .json(
            &json!({"sku": SKU, "name": "Flash sale", "quantity": 1_000_000_000,
                      "unit_price": 100, "currency": "EUR"}),
        )
        .send()
        .await?;
    if !created.status().is_success() {
        return Err(format!("creating {SKU} answered {}", created.status()).into());
    }
    println!(
        "soak: purser serve, {seconds} s of {deposit_rate}/s deposits over {account_count} \
         accounts and {order_rate}/s one-line orders for one SKU, open loop; windows of {} s",
        window.as_secs()
    );
    if !stall_at.is_zero() {
        println!(
            "  at {} s the database stalls every append for {} ms",
            stall_at.as_secs(),
            stall.as_millis()
        );
    }

    let started = Instant::now();
    let wall_start: f64 = sqlx::query_scalar("SELECT extract(epoch FROM now())::float8")
        .fetch_one(&db.pool)
        .await?;
    let until = started + Duration::from_secs(seconds);
    let windows: Arc<Mutex<Vec<Window>>> = Arc::default();
    let missed = Arc::new(AtomicUsize::new(0));
    let (base, accounts) = (Arc::new(base), Arc::new(accounts));
    let loads: Vec<_> = [(deposit_rate, false), (order_rate, true)]
        .into_iter()
        .map(|(rate, orders)| {
            tokio::spawn(open_loop(
                http.clone(),
                Arc::clone(&base),
                Arc::clone(&accounts),
                rate,
                orders,
                started,
                until,
                window,
                Arc::clone(&windows),
                Arc::clone(&missed),
            ))
        })
        .collect();
    if !stall_at.is_zero() && stall_at < Duration::from_secs(seconds) {
        tokio::spawn(stall_appends(db.pool.clone(), started + stall_at, stall));
    }
    let mut memory = Vec::new();
    let mut anonymous = Vec::new();
    let mut cached = Vec::new();
    let mut connections = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(window.min(until - Instant::now())).await;
        memory.push(memory_mib(pid, "VmRSS"));
        anonymous.push(memory_mib(pid, "RssAnon"));
        cached.push(metric_sum(&http, &base, "_aggregate_cache_entries").await);
        connections.push(metric_sum(&http, &base, "_db_pool_connections").await);
    }
    for load in loads {
        load.await?;
    }
    let stopped = Instant::now();
    let placed = count(&db.pool, "OrderPlaced").await?;
    let drained = loop {
        let shipped = count(&db.pool, "OrderShipped").await?;
        if shipped >= placed {
            break Some(stopped.elapsed());
        }
        if stopped.elapsed() > Duration::from_secs(300) {
            println!("  after 300 s only {shipped} of {placed} orders shipped");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let shipped_per_window: Vec<(f64, i64)> = sqlx::query_as(
        "SELECT floor((extract(epoch FROM recorded_at) - $1) / $2)::float8, count(*) \
         FROM event_store.events WHERE event_type = 'OrderShipped' GROUP BY 1 ORDER BY 1",
    )
    .bind(wall_start)
    .bind(window.as_secs_f64())
    .fetch_all(&db.pool)
    .await?;
    let shipped_in = |i: usize| {
        shipped_per_window
            .iter()
            .find(|(w, _)| *w as usize == i)
            .map_or(0, |(_, n)| *n)
    };

    let secs = window.as_secs_f64();
    let mut windows = std::mem::take(&mut *windows.lock().expect("windows"));
    let full = (seconds as f64 / secs).floor() as usize;
    windows.truncate(full.max(1));
    println!(
        "{:>6} {:>11} {:>11} {:>9} {:>9} {:>10} {:>7} {:>9} {:>9} {:>8} {:>9}",
        "window",
        "deposits/s",
        "dep p99 ms",
        "orders/s",
        "ord p99",
        "shipped/s",
        "errors",
        "RSS MiB",
        "anon MiB",
        "cached",
        "db conns"
    );
    let mut rows = Vec::new();
    for (i, w) in windows.iter_mut().enumerate() {
        let row = (
            w.deposits.len() as f64 / secs,
            p99(&mut w.deposits),
            w.orders.len() as f64 / secs,
            p99(&mut w.orders),
            shipped_in(i) as f64 / secs,
            w.errors,
            memory.get(i).copied().unwrap_or(f64::NAN),
            anonymous.get(i).copied().unwrap_or(f64::NAN),
        );
        println!(
            "{:>6} {:>11.1} {:>11.1} {:>9.1} {:>9.1} {:>10.1} {:>7} {:>9.1} {:>9.1} {:>8.0} {:>9.0}",
            i + 1,
            row.0,
            row.1,
            row.2,
            row.3,
            row.4,
            row.5,
            row.6,
            row.7,
            cached.get(i).copied().unwrap_or(f64::NAN),
            connections.get(i).copied().unwrap_or(f64::NAN)
        );
        rows.push(row);
    }
    for (i, w) in windows.iter().enumerate() {
        if !w.failures.is_empty() {
            println!("  window {}: failures by status {:?}", i + 1, w.failures);
        }
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let warm = rows.get(1).unwrap_or(first);
        println!(
            "last window vs first (the baseline): deposits {:.0}%, orders placed {:.0}%, \
             orders shipped {:.0}%; resident memory {:.1} MiB in window 2, {:.1} MiB in the last \
             ({:+.1}%; anonymous {:.1} and {:.1} MiB, {:+.1}%); {} ticks missed (256 requests in \
             flight)",
            last.0 / first.0 * 100.0,
            last.2 / first.2 * 100.0,
            last.4 / first.4 * 100.0,
            warm.6,
            last.6,
            (last.6 / warm.6 - 1.0) * 100.0,
            warm.7,
            last.7,
            (last.7 / warm.7 - 1.0) * 100.0,
            missed.load(Ordering::Relaxed)
        );
        // Warm-up ends when the bounded caches stop filling: the first
        // window whose count is within 1% of the last's.
        let final_count = cached.get(rows.len() - 1).copied().unwrap_or(f64::NAN);
        if let Some(warm) = (0..rows.len()).find(|&i| {
            cached
                .get(i)
                .is_some_and(|&n| (n - final_count).abs() <= final_count * 0.01)
        }) {
            println!(
                "after warm-up (the caches full from window {}): resident memory {:.1} MiB there, \
                 {:.1} MiB in the last ({:+.1}%; anonymous {:.1} and {:.1} MiB, {:+.1}%)",
                warm + 1,
                rows[warm].6,
                last.6,
                (last.6 / rows[warm].6 - 1.0) * 100.0,
                rows[warm].7,
                last.7,
                (last.7 / rows[warm].7 - 1.0) * 100.0
            );
        }
    }
    match drained {
        Some(took) => println!(
            "after the load stopped, all {placed} orders placed had shipped within {:.1} s",
            took.as_secs_f64()
        ),
        None => println!("after the load stopped, the orders did not all ship within 300 s"),
    }
    drop(child);
    db.drop().await;
    Ok(())
}
