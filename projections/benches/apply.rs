//! Projection apply rate (events/s), next to a raw batched INSERT of the same
//! rows in the same run (the physical limit for writing them).
//!
//!     cargo bench -p projections --bench apply
//!
//! `BENCH_ACCOUNTS` (default 200) accounts with `BENCH_EVENTS_PER_ACCOUNT`
//! (default 25) events each (an open, then deposits) are appended to a fresh
//! database; the accounts projection then applies them in batches of
//! `BENCH_BATCH` (default 500, the worker's default), one transaction per
//! batch, like a worker fed by Kafka. The baseline inserts the same account
//! and ledger rows with one multi-row INSERT per table per batch.

use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::env_or;

use domain::{AccountEvent, AccountId, Amount, Currency, CustomerId, Money};
use event_store::{
    Checkpoint, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId,
};
use projections::{Accounts, Projector};
use sqlx::PgPool;
use test_support::TestDatabase;
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let accounts = env_or("BENCH_ACCOUNTS", 200);
    let per_account = env_or("BENCH_EVENTS_PER_ACCOUNT", 25).max(2);
    let batch = env_or("BENCH_BATCH", 500).max(1);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);

    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let events = seed(&store, accounts, per_account).await;
    println!(
        "projection apply: {} events ({accounts} accounts x {per_account}), batches of {batch}, {rounds} rounds",
        events.len()
    );
    sqlx::raw_sql(
        "CREATE TABLE raw_accounts (LIKE read_models.accounts INCLUDING ALL); \
         CREATE TABLE raw_transactions (LIKE read_models.account_transactions INCLUDING ALL)",
    )
    .execute(&db.pool)
    .await
    .expect("baseline tables");

    let projector = Projector::new(Arc::new(Accounts), store.clone());
    let (mut projected, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        reset(&db.pool).await;
        let started = Instant::now();
        for chunk in events.chunks(batch) {
            let report = projector.apply_batch(chunk).await.expect("apply");
            assert!(
                !report.one_by_one && report.applied == chunk.len() as u64,
                "{report:?}"
            );
        }
        projected.push(rate(events.len(), started.elapsed()));

        let started = Instant::now();
        for chunk in events.chunks(batch) {
            raw_insert(&db.pool, chunk).await;
        }
        raw.push(rate(events.len(), started.elapsed()));
    }
    check(&db.pool, accounts, per_account).await;

    let (projected, raw) = (median(projected), median(raw));
    println!("  projection (accounts, apply_batch)   {projected:>9.0} events/s");
    println!("  raw batched INSERT of the same rows  {raw:>9.0} rows/s");
    println!(
        "  ratio projection / raw               {:>9.2}",
        projected / raw
    );
    db.drop().await;
}

/// Appends the events straight to the store (no decider: faster to seed),
/// one event per account per round, so that the global order interleaves
/// the streams as concurrent commands would.
async fn seed(store: &EventStore, accounts: usize, per_account: usize) -> Vec<RecordedEvent> {
    let ids: Vec<Uuid> = (0..accounts).map(|_| Uuid::now_v7()).collect();
    for n in 0..per_account as i64 {
        for id in &ids {
            let event = if n == 0 {
                NewEvent::from_domain(&AccountEvent::AccountOpened {
                    account_id: AccountId::new(*id),
                    customer_id: CustomerId::new(Uuid::now_v7()),
                    currency: Currency::parse("EUR").expect("currency"),
                })
            } else {
                NewEvent::from_domain(&AccountEvent::MoneyDeposited {
                    amount: Amount::new(100).expect("amount"),
                    balance_after: Money::new(100 * n).expect("money"),
                })
            };
            let expected = if n == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(n as u64)
            };
            store
                .append(
                    &StreamId::new("account", id),
                    expected,
                    &[event],
                    &Metadata::default(),
                )
                .await
                .expect("append");
        }
    }
    // The gap-safe read holds events back while older transactions run.
    let total = accounts * per_account;
    test_support::eventually(
        "read_all to return every event",
        Duration::from_secs(60),
        Duration::from_millis(20),
        move || async move {
            let all = store
                .read_all(Checkpoint::START, i64::MAX)
                .await
                .expect("read_all");
            if all.len() >= total {
                Ok(all)
            } else {
                Err(all.len())
            }
        },
    )
    .await
}

async fn reset(pool: &PgPool) {
    sqlx::query(
        "TRUNCATE read_models.account_transactions, read_models.accounts, read_models.applied, \
         read_models.projection_status, raw_accounts, raw_transactions",
    )
    .execute(pool)
    .await
    .expect("truncate");
}

/// The same rows as the projection writes, one multi-row INSERT per table,
/// one transaction per batch.
async fn raw_insert(pool: &PgPool, events: &[RecordedEvent]) {
    let (mut ids, mut customers, mut versions, mut times) = (vec![], vec![], vec![], vec![]);
    let (mut t_ids, mut seqs, mut amounts, mut balances, mut t_times) =
        (vec![], vec![], vec![], vec![], vec![]);
    for event in events {
        let id = Uuid::parse_str(event.stream_id.trim_start_matches("account-")).expect("uuid");
        match event.decode::<AccountEvent>().expect("decode") {
            AccountEvent::AccountOpened { customer_id, .. } => {
                ids.push(id);
                customers.push(customer_id.as_uuid());
                versions.push(event.version as i64);
                times.push(event.recorded_at);
            }
            AccountEvent::MoneyDeposited {
                amount,
                balance_after,
            } => {
                t_ids.push(id);
                seqs.push(event.version as i64);
                amounts.push(i64::from(amount));
                balances.push(i64::from(balance_after));
                t_times.push(event.recorded_at);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO raw_accounts (account_id, customer_id, currency, balance, status, version, updated_at) \
         SELECT a, c, 'EUR', 0, 'open', v, t FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::timestamptz[]) AS x (a, c, v, t)",
    )
    .bind(&ids)
    .bind(&customers)
    .bind(&versions)
    .bind(&times)
    .execute(&mut *tx)
    .await
    .expect("raw accounts");
    sqlx::query(
        "INSERT INTO raw_transactions (account_id, seq, kind, amount, balance_after, order_id, at) \
         SELECT a, s, 'deposit', m, b, NULL, t \
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::timestamptz[]) AS x (a, s, m, b, t)",
    )
    .bind(&t_ids)
    .bind(&seqs)
    .bind(&amounts)
    .bind(&balances)
    .bind(&t_times)
    .execute(&mut *tx)
    .await
    .expect("raw transactions");
    tx.commit().await.expect("commit");
}

/// Both paths wrote what they should have.
async fn check(pool: &PgPool, accounts: usize, per_account: usize) {
    for (table, expected) in [
        ("read_models.accounts", accounts),
        ("raw_accounts", accounts),
        (
            "read_models.account_transactions",
            accounts * (per_account - 1),
        ),
        ("raw_transactions", accounts * (per_account - 1)),
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .expect("count");
        assert_eq!(n as usize, expected, "{table}");
    }
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
