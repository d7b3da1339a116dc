//! Workers over the real broker at `KAFKA_BROKERS`: events appended to the
//! store, published by the real relay, consumed in the projection's group.

use std::sync::Arc;
use std::time::Duration;

use event_store::EventStore;
use kafka::{KafkaConfig, Relay, RelayOutcome};
use projections::{Accounts, Outcome, Projector, Worker, WorkerConfig};
use tokio::time::Instant;

use test_support::Harness;

const DEADLINE: Duration = Duration::from_secs(60);

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        batch_size: 100,
        poll_wait: Duration::from_millis(200),
        ..WorkerConfig::default()
    }
}

async fn setup() -> (Harness, KafkaConfig, Publisher) {
    let h = Harness::new().await;
    let kafka = test_support::kafka::topics("projections-test").await;
    let relay = Publisher::new(&h.store, &kafka);
    (h, kafka, relay)
}

/// The real relay, counting what it published.
struct Publisher {
    relay: Relay,
    store: EventStore,
    published: i64,
}

impl Publisher {
    fn new(store: &EventStore, kafka: &KafkaConfig) -> Publisher {
        Publisher {
            relay: Relay::new(store.clone(), kafka.clone()).expect("relay"),
            store: store.clone(),
            published: 0,
        }
    }

    /// Publishes everything in the store. The relay's gap-safe read holds
    /// events back while any older transaction is in flight on the server
    /// (other tests' included), so an idle step does not mean it is done.
    async fn publish_all(&mut self) {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM event_store.events")
            .fetch_one(self.store.pool())
            .await
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        while self.published < total {
            match self.relay.process_batch().await {
                Ok(RelayOutcome::Idle) => {}
                Ok(RelayOutcome::Published { events, .. }) => self.published += events as i64,
                Err(error) => panic!("relay: {error}"),
            }
            assert!(Instant::now() < deadline, "relay did not drain in time");
        }
    }
}

/// Events of the account streams in the store.
async fn account_events(store: &EventStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_store.events WHERE stream_type = 'account'")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

async fn applied_events(store: &EventStore, projection: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(version), 0)::bigint FROM read_models.applied WHERE projection = $1",
    )
    .bind(projection)
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// Steps `worker` until the accounts projection has applied every account
/// event of the store; returns what the steps reported.
async fn drain(worker: &mut Worker, store: &EventStore) -> (u64, u64) {
    let deadline = Instant::now() + DEADLINE;
    let (mut applied, mut duplicates) = (0, 0);
    while applied_events(store, Accounts::NAME).await < account_events(store).await {
        assert!(Instant::now() < deadline, "worker did not catch up in time");
        if let Outcome::Applied(report) = worker.process_batch().await.expect("process_batch") {
            applied += report.applied;
            duplicates += report.duplicates;
        }
    }
    (applied, duplicates)
}

/// Rebuilds the accounts read model from the event store alone and returns
/// its snapshot (what a worker that never stopped converges to).
async fn rebuilt_snapshot(h: &Harness) -> Vec<String> {
    sqlx::query(
        "TRUNCATE read_models.account_transactions, read_models.accounts, read_models.applied, \
         read_models.projection_status, read_models.parked",
    )
    .execute(&h.db.pool)
    .await
    .unwrap();
    Projector::new(Arc::new(Accounts), h.store.clone())
        .apply_batch(&h.all_events().await)
        .await
        .unwrap();
    h.snapshot().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_applies_what_the_relay_publishes_and_redelivery_changes_nothing() {
    let (h, kafka, mut relay) = setup().await;
    let mut accounts = Vec::new();
    for i in 0..6 {
        let (account, _) = h.open_account("EUR").await;
        h.deposit(account, 100 + i).await;
        accounts.push(account);
    }
    relay.publish_all().await;

    let mut worker =
        Worker::new(Arc::new(Accounts), h.store.clone(), &kafka, worker_config()).unwrap();
    let (applied, _) = drain(&mut worker, &h.store).await;
    assert_eq!(applied, 12);
    let balance: i64 = sqlx::query_scalar("SELECT sum(balance)::bigint FROM read_models.accounts")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(balance, (100..106).sum::<i64>());
    let before = h.snapshot().await;

    // Republish everything (a relay that lost its checkpoint): a second
    // group reads all of it again and changes nothing.
    h.store
        .save_checkpoint(kafka::CHECKPOINT_NAME, event_store::Checkpoint::START)
        .await
        .unwrap();
    let mut relay = Publisher::new(&h.store, &kafka);
    relay.publish_all().await;
    drop(worker);
    let mut second =
        Worker::new(Arc::new(Accounts), h.store.clone(), &kafka, worker_config()).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut duplicates = 0;
    while duplicates < 12 {
        assert!(
            Instant::now() < deadline,
            "republished events did not arrive"
        );
        if let Outcome::Applied(report) = second.process_batch().await.unwrap() {
            assert_eq!(report.applied, 0, "{report:?}");
            duplicates += report.duplicates;
        }
    }
    assert_eq!(h.snapshot().await, before);
    drop(second);
    h.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_db_and_kafka_commit_converges_after_restart() {
    let (h, kafka, mut relay) = setup().await;
    for i in 0..5 {
        let (account, _) = h.open_account("EUR").await;
        h.deposit(account, 10 * (i + 1)).await;
        h.withdraw(account, 5).await.unwrap();
    }
    relay.publish_all().await;

    // The first worker commits a batch to the database, then dies before
    // committing its Kafka offsets.
    let mut first =
        Worker::new(Arc::new(Accounts), h.store.clone(), &kafka, worker_config()).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let batch = loop {
        assert!(Instant::now() < deadline, "no batch arrived");
        if let Some(batch) = first.apply_next_batch().await.unwrap() {
            break batch;
        }
    };
    assert!(batch.report.applied > 0);
    let died_after = batch.report.applied;
    drop(batch);
    drop(first);

    // More commands while it is down.
    let (late, _) = h.open_account("EUR").await;
    h.deposit(late, 77).await;
    relay.publish_all().await;

    // Its replacement gets the uncommitted batch again: duplicates, skipped.
    let mut second =
        Worker::new(Arc::new(Accounts), h.store.clone(), &kafka, worker_config()).unwrap();
    let (mut applied, mut duplicates) = (0, 0);
    let deadline = Instant::now() + DEADLINE;
    while applied + died_after < 17 || duplicates < died_after {
        assert!(
            Instant::now() < deadline,
            "no convergence: {applied} applied, {duplicates} duplicates"
        );
        if let Outcome::Applied(report) = second.process_batch().await.unwrap() {
            applied += report.applied;
            duplicates += report.duplicates;
        }
    }
    assert_eq!(applied + died_after, 17);
    assert_eq!(
        duplicates, died_after,
        "the uncommitted batch is redelivered and skipped"
    );
    let restarted = h.snapshot().await;
    drop(second);

    assert_eq!(restarted, rebuilt_snapshot(&h).await);
    h.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_partitions_and_one_takes_over_when_the_other_stops() {
    let (h, kafka, mut relay) = setup().await;
    let mut w1 = Worker::new(Arc::new(Accounts), h.store.clone(), &kafka, worker_config()).unwrap();
    let mut w2 = Worker::new(Arc::new(Accounts), h.store.clone(), &kafka, worker_config()).unwrap();

    // Both join the group and split the 3 partitions of `account`.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (r1, r2) = tokio::join!(w1.process_batch(), w2.process_batch());
        r1.unwrap();
        r2.unwrap();
        let (a1, a2) = (w1.assignment().unwrap(), w2.assignment().unwrap());
        if !a1.is_empty() && !a2.is_empty() && a1.len() + a2.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle: {a1:?} {a2:?}"
        );
    }

    // Enough accounts that every partition gets some.
    for _ in 0..24 {
        let (account, _) = h.open_account("EUR").await;
        h.deposit(account, 1).await;
    }
    relay.publish_all().await;
    let (mut by_w1, mut by_w2) = (0, 0);
    let deadline = Instant::now() + DEADLINE;
    while applied_events(&h.store, Accounts::NAME).await < account_events(&h.store).await {
        assert!(Instant::now() < deadline, "the workers did not catch up");
        let (r1, r2) = tokio::join!(w1.process_batch(), w2.process_batch());
        if let Outcome::Applied(report) = r1.unwrap() {
            by_w1 += report.applied;
        }
        if let Outcome::Applied(report) = r2.unwrap() {
            by_w2 += report.applied;
        }
    }
    assert!(
        by_w1 > 0 && by_w2 > 0,
        "both workers applied events: {by_w1} {by_w2}"
    );
    assert_eq!(by_w1 + by_w2, 48);

    // The first stops; the second takes over its partitions.
    drop(w1);
    for _ in 0..24 {
        let (account, _) = h.open_account("EUR").await;
        h.deposit(account, 2).await;
    }
    relay.publish_all().await;
    let (applied, _) = drain(&mut w2, &h.store).await;
    assert_eq!(applied, 48);
    assert_eq!(w2.assignment().unwrap().len(), 3);
    let total: i64 = sqlx::query_scalar("SELECT sum(balance)::bigint FROM read_models.accounts")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(total, 24 + 48);
    drop(w2);
    h.drop().await;
}
