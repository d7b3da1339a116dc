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
