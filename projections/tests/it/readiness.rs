//! Readiness from the database: a projection is ready once a live worker of
//! its group has partitions and the projection has applied what the store
//! held when that worker joined.

use std::sync::Arc;
use std::time::Duration;

use projections::readiness::{self, Readiness};
use projections::{Accounts, Worker, WorkerConfig};
use sqlx::PgPool;
use test_support::{eventually, Harness};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

async fn accounts(pool: &PgPool) -> Readiness {
    readiness::check(pool, &["accounts"])
        .await
        .unwrap()
        .remove(0)
        .1
}

#[tokio::test]
async fn a_member_is_ready_once_its_projection_applied_the_head_it_joined_at() {
    let h = Harness::new().await;
    let pool = &h.db.pool;
    assert_eq!(accounts(pool).await, Readiness::NoWorker);
    let (account, _) = h.open_account("EUR").await;
    h.deposit(account, 5).await;

    // Joined with two events in the store, none applied.
    let member = Uuid::now_v7();
    let head = readiness::joined(pool, &Accounts, member).await.unwrap();
    assert!(head > 0);
    assert_eq!(
        accounts(pool).await,
        Readiness::CatchingUp {
            checkpoint: 0,
            start_head: head
        }
    );
    assert_eq!(
        readiness::check(pool, &["accounts", "orders"])
            .await
            .unwrap()[1],
        ("orders".to_owned(), Readiness::NoWorker)
    );
    h.project_all().await;
    assert_eq!(accounts(pool).await, Readiness::Ready);
    // Later events do not take readiness back: the member keeps up.
    h.deposit(account, 5).await;
    assert_eq!(accounts(pool).await, Readiness::Ready);

    // A member not seen for longer than the expiry counts for nothing.
    sqlx::query("UPDATE read_models.workers SET seen_at = now() - interval '1 hour'")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(accounts(pool).await, Readiness::NoWorker);
    // The next member that joins deletes it.
    readiness::joined(pool, &Accounts, Uuid::now_v7())
        .await
        .unwrap();
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM read_models.workers")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(members, 1);
    h.drop().await;
}

/// A running worker records itself once its group gave it partitions, and
/// removes itself when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_joins_and_leaves() {
    let h = Harness::new().await;
    let kafka = test_support::kafka::topics("readiness").await;
    let worker = Worker::new(
        Arc::new(Accounts),
        h.store.clone(),
        &kafka,
        WorkerConfig {
            poll_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let pool = &h.db.pool;
    eventually(
        "the worker to join",
        DEADLINE,
        Duration::from_millis(50),
        || async {
            match accounts(pool).await {
                Readiness::Ready => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(accounts(pool).await, Readiness::NoWorker);
    h.drop().await;
}

/// What runs on a timer (a worker's heartbeat, readiness, the status and
/// `/metrics` figures, the store's head and checkpoints, the idempotency
/// sweep) leaves no prepared statement on the connection it ran on. The
/// pool lends every connection to everything in turn, so each connection
/// would in time keep one of every such statement, about a KiB each in the
/// process (and a plan in the server): memory that grew for as long as
/// rarely run statements kept reaching connections that had not met them
/// (BENCHMARKS.md, the soak).
#[tokio::test]
async fn what_runs_on_a_timer_leaves_no_prepared_statement_behind() {
    let h = Harness::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&h.db.url)
        .await
        .unwrap();
    let member = Uuid::now_v7();
    readiness::joined(&pool, &Accounts, member).await.unwrap();
    readiness::heartbeat(&pool, "accounts", member)
        .await
        .unwrap();
    readiness::check(&pool, &["accounts"]).await.unwrap();
    readiness::left(&pool, "accounts", member).await.unwrap();
    projections::status::all(&pool).await.unwrap();
    projections::metrics::StatusMetrics::new()
        .refresh(&pool)
        .await
        .unwrap();
    let store = event_store::EventStore::new(pool.clone());
    store.head_position().await.unwrap();
    store.load_checkpoint("relay").await.unwrap();
    store
        .purge_idempotency(Duration::from_secs(3600), 100)
        .await
        .unwrap();

    let prepared: Vec<String> = sqlx::query_scalar("SELECT statement FROM pg_prepared_statements")
        .persistent(false)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(prepared.is_empty(), "{prepared:#?}");
    // The check can fail: a statement run the ordinary way stays prepared.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let prepared: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
        .persistent(false)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(prepared, 1);
    pool.close().await;
}
