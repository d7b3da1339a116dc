//! Tests of the `purser` binary itself, run as a child process against a
//! database of its own: crash safety of the saga orchestrator under a real
//! process kill; `purser projections ...` (a rebuild killed for real);
//! `purser auth init` and `purser token`; relay failover between two
//! `purser relay` processes; `purser serve` and its `--migrate`; the nginx
//! gateway in front of the services; every component several times over
//! behind it, killed one of each kind under load; the book's
//! walkthrough, run as written; `DATABASE_URL` over TLS (`sslmode`) and
//! Kafka settings refused at start; the operator console in a real
//! browser (headless Chromium over WebDriver); and, in this process, traces
//! from a request through Kafka to the projections and the saga.

mod auth_cli;
mod console;
mod crash;
mod gateway;
mod group_commit;
mod metrics;
mod projections_cli;
mod relay_failover;
mod scale_out;
mod serve;
mod traces;
mod transport;
mod walkthrough;
mod webdriver;

use std::process::Output;
use std::time::Duration;

use sqlx::PgPool;
use test_support::TestDatabase;

/// The binary under test, built by cargo for the integration tests.
pub const PURSER: &str = env!("CARGO_BIN_EXE_purser");

pub const DEADLINE: Duration = Duration::from_secs(60);

/// `purser <args>` against `db`, to completion.
pub async fn purser(db: &TestDatabase, args: &[&str]) -> Output {
    tokio::process::Command::new(PURSER)
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info,sqlx=warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run purser")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Appends `accounts` account streams of `per_account` events each (an
/// `AccountOpened`, then deposits of 100) with one bulk INSERT per round, so
/// the streams interleave in the log as concurrent commands leave them.
pub async fn seed_accounts(pool: &PgPool, accounts: i64, per_account: i64) {
    sqlx::query(
        "CREATE TABLE public.seed_accounts AS \
         SELECT gen_random_uuid() AS id, gen_random_uuid() AS customer FROM generate_series(1, $1)",
    )
    .bind(accounts)
    .execute(pool)
    .await
    .expect("seed ids");
    for version in 1..=per_account {
        sqlx::query(
            "INSERT INTO event_store.events \
                (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
             SELECT gen_random_uuid(), 'account', 'account-' || id, $1, \
                    CASE WHEN $1 = 1 THEN 'AccountOpened' ELSE 'MoneyDeposited' END, \
                    CASE WHEN $1 = 1 THEN 2 ELSE 1 END, \
                    CASE WHEN $1 = 1 \
                         THEN jsonb_build_object('account_id', id, 'customer_id', customer, 'currency', 'EUR') \
                         ELSE jsonb_build_object('amount', 100, 'balance_after', 100 * ($1 - 1)) END \
             FROM public.seed_accounts ORDER BY id",
        )
        .bind(version)
        .execute(pool)
        .await
        .expect("seed events");
    }
}

/// Every row of the accounts read model and its applied versions, as text.
pub async fn accounts_snapshot(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for (table, order) in [
        ("read_models.accounts", "account_id"),
        ("read_models.account_transactions", "account_id, seq"),
        ("read_models.parked", "projection, stream_id"),
    ] {
        let text: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT t::text FROM {table} AS t ORDER BY {order}"
        ))
        .fetch_all(pool)
        .await
        .expect("snapshot");
        rows.extend(text.into_iter().map(|t| format!("{table} {t}")));
    }
    // However they are recorded: rows, or a rebuild's replayed checkpoint.
    let applied = projections::applied_versions(pool, "accounts", &["account"])
        .await
        .expect("applied versions");
    rows.extend(
        applied
            .into_iter()
            .map(|(stream, version)| format!("applied accounts {stream} {version}")),
    );
    rows
}

/// `events_done` of the accounts rebuild in progress (0 if none).
pub async fn rebuild_done(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT coalesce((SELECT events_done FROM read_models.rebuilds WHERE projection = 'accounts'), 0)",
    )
    .fetch_one(pool)
    .await
    .expect("rebuild state")
}
