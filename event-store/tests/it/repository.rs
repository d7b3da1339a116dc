use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use event_store::{EventStore, ExecuteError, ExecuteOptions, Executed, Repository, StreamId};
use serde_json::json;
use test_support::TestDatabase;
use uuid::Uuid;

use crate::counter::{record, Counter, CounterCommand, CounterEvent, CounterRecord};
use test_support::store::wait_for_lock_waiter;

async fn execute(
    repo: &Repository<Counter>,
    id: &str,
    command: CounterCommand,
) -> Executed<Counter, CounterRecord> {
    repo.execute(id, &command, ExecuteOptions::default(), record)
        .await
        .expect("execute")
}

#[tokio::test]
async fn execute_loads_decides_and_appends() {
    let db = TestDatabase::create().await;
    let repo = Repository::<Counter>::new(EventStore::new(db.pool.clone()));
    let id = Uuid::now_v7().to_string();

    let refused = execute(&repo, &id, CounterCommand::Add(1)).await;
    assert!(matches!(refused, Executed::Refused(_)), "{refused:?}");
    execute(&repo, &id, CounterCommand::Open).await;
    let done = execute(&repo, &id, CounterCommand::Add(4)).await;
    let Executed::Done(outcome) = done else {
        panic!("expected Done, got {done:?}")
    };
    assert_eq!(outcome.events, [CounterEvent::Added { amount: 4 }]);
    assert_eq!((outcome.state.total, outcome.version), (4, 2));

    let loaded = repo.load(&id).await.expect("load");
    assert_eq!(loaded.state, outcome.state);
    assert_eq!(loaded.version, 2);
    assert_eq!(loaded.position, outcome.position);
    let empty = repo.load("never-written").await.expect("load");
    assert_eq!((empty.version, empty.position), (0, None));
    db.drop().await;
}

/// Starts an `Add(amount)` while another writer holds version 2 of the
/// stream uncommitted, so the execute's first attempt must lose the race.
async fn execute_against_a_racing_writer(
    db: &TestDatabase,
    repo: Repository<Counter>,
    id: &str,
    options: ExecuteOptions,
) -> Result<Executed<Counter, CounterRecord>, ExecuteError<crate::counter::CounterError>> {
    let mut writer = db.pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO event_store.events \
         (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         VALUES ($1, 'counter', $2, 2, 'Added', 2, '{\"amount\": 100}')",
    )
    .bind(Uuid::now_v7())
    .bind(StreamId::of::<Counter>(id).to_string())
    .execute(&mut *writer)
    .await
    .expect("racing insert");
    let task = {
        let (repo, id) = (repo.clone(), id.to_owned());
        tokio::spawn(async move {
            repo.execute(&id, &CounterCommand::Add(1), options, record)
                .await
        })
    };
    // The execute decided on version 1 and now waits on the writer's row.
    wait_for_lock_waiter(repo.store()).await;
    writer.commit().await.expect("commit");
    task.await.expect("task")
}

#[tokio::test]
async fn a_conflict_is_retried_with_a_fresh_decision() {
    let db = TestDatabase::create().await;
    let repo = Repository::<Counter>::new(EventStore::new(db.pool.clone()));
    let id = Uuid::now_v7().to_string();
    execute(&repo, &id, CounterCommand::Open).await;

    let result = execute_against_a_racing_writer(&db, repo.clone(), &id, ExecuteOptions::default())
        .await
        .expect("retried");
    let Executed::Done(outcome) = result else {
        panic!("expected Done, got {result:?}")
    };
    assert_eq!(outcome.version, 3, "appended after the racing event");
    assert_eq!(outcome.state.total, 101, "decided again on the new state");
    db.drop().await;
}

#[tokio::test]
async fn conflicts_beyond_the_retry_budget_are_reported() {
    let db = TestDatabase::create().await;
    let repo = Repository::<Counter>::new(EventStore::new(db.pool.clone())).with_max_retries(0);
    let id = Uuid::now_v7().to_string();
    execute(&repo, &id, CounterCommand::Open).await;

    let err = execute_against_a_racing_writer(&db, repo.clone(), &id, ExecuteOptions::default())
        .await
        .expect_err("no retry left");
    assert!(
        matches!(err, ExecuteError::ConflictRetriesExhausted { attempts: 1 }),
        "{err:?}"
    );
    assert_eq!(repo.load(&id).await.expect("load").version, 2);
    db.drop().await;
}

#[tokio::test]
async fn a_pinned_version_is_a_precondition_never_retried() {
    let db = TestDatabase::create().await;
    let repo = Repository::<Counter>::new(EventStore::new(db.pool.clone()));
    let id = Uuid::now_v7().to_string();
    execute(&repo, &id, CounterCommand::Open).await;
    let pinned = |version| ExecuteOptions {
        expected_version: Some(version),
        ..ExecuteOptions::default()
    };

    let err = repo
        .execute(&id, &CounterCommand::Add(1), pinned(5), record)
        .await
        .expect_err("stale pin");
    assert!(
        matches!(
            err,
            ExecuteError::PreconditionFailed {
                expected: 5,
                actual: 1
            }
        ),
        "{err:?}"
    );

    // Pinned at the right version but overtaken during the append.
    let err = execute_against_a_racing_writer(&db, repo.clone(), &id, pinned(1))
        .await
        .expect_err("overtaken");
    assert!(
        matches!(
            err,
            ExecuteError::PreconditionFailed {
                expected: 1,
                actual: 2
            }
        ),
        "{err:?}"
    );

    let done = repo
        .execute(&id, &CounterCommand::Add(1), pinned(2), record)
        .await
        .expect("right pin");
    assert!(
        matches!(done, Executed::Done(ref o) if o.version == 3),
        "{done:?}"
    );
    db.drop().await;
}

#[tokio::test]
async fn loading_from_a_snapshot_and_tail_equals_the_full_fold() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let plain = Repository::<Counter>::new(store.clone());
    let snapshotting = Repository::<Counter>::new(store.clone()).with_snapshots(4);
    let id = Uuid::now_v7().to_string();
    execute(&snapshotting, &id, CounterCommand::Open).await;
    for amount in 1..=10 {
        execute(&snapshotting, &id, CounterCommand::Add(amount)).await;
    }

    let (version, state): (i64, serde_json::Value) =
        sqlx::query_as("SELECT version, state FROM event_store.snapshots WHERE stream_id = $1")
            .bind(StreamId::of::<Counter>(&id).to_string())
            .fetch_one(&db.pool)
            .await
            .expect("snapshot saved");
    assert_eq!(version, 8, "every 4 events");
    assert_eq!(state["total"], json!(28));

    let full = plain.load(&id).await.expect("full fold");
    let from_snapshot = snapshotting.load(&id).await.expect("snapshot + tail");
    assert_eq!(full.state.total, 55);
    assert_eq!(full.version, 11);
    assert_eq!(from_snapshot.state, full.state);
    assert_eq!(from_snapshot.version, full.version);
    assert_eq!(from_snapshot.position, full.position);

    // The snapshot really is used: a doctored one shows through.
    sqlx::query("UPDATE event_store.snapshots SET state = jsonb_set(state, '{total}', '1000')")
        .execute(&db.pool)
        .await
        .expect("doctor snapshot");
    let doctored = snapshotting.load(&id).await.expect("load");
    assert_eq!(doctored.state.total, 1000 + 8 + 9 + 10);
    assert_eq!(plain.load(&id).await.expect("load").state.total, 55);
    db.drop().await;
}

/// The command API awaits `execute` inside axum handlers: its future must be
/// `Send`.
#[tokio::test]
async fn execute_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy("postgres://localhost/unused")
        .expect("lazy pool");
    let repo = Repository::<Counter>::new(EventStore::new(pool));
    let command = CounterCommand::Add(1);
    let future = repo.execute("id", &command, ExecuteOptions::default(), record);
    assert_send(&future);
    let load = repo.load("id");
    assert_send(&load);
}

/// Counts the retries `Repository::on_retry` reports.
fn counting(repo: Repository<Counter>) -> (Repository<Counter>, Arc<AtomicU32>) {
    let retries = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&retries);
    let repo = repo.on_retry(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    (repo, retries)
}

#[tokio::test]
async fn each_retry_is_reported_and_the_last_conflict_is_not() {
    let db = TestDatabase::create().await;
    let (repo, retries) = counting(Repository::<Counter>::new(EventStore::new(db.pool.clone())));
    let id = Uuid::now_v7().to_string();
    execute(&repo, &id, CounterCommand::Open).await;
    execute_against_a_racing_writer(&db, repo.clone(), &id, ExecuteOptions::default())
        .await
        .expect("retried");
    assert_eq!(retries.load(Ordering::SeqCst), 1);

    let (repo, retries) = counting(repo.with_max_retries(0));
    let id = Uuid::now_v7().to_string();
    execute(&repo, &id, CounterCommand::Open).await;
    execute_against_a_racing_writer(&db, repo, &id, ExecuteOptions::default())
        .await
        .expect_err("no retry left");
    assert_eq!(retries.load(Ordering::SeqCst), 0, "exhausted, not retried");
    db.drop().await;
}

/// A state the caller remembers is decided on as it is when the stream is
/// still at its version: the append there proves it current.
#[tokio::test]
async fn a_remembered_state_at_the_streams_version_is_decided_on() {
    let db = TestDatabase::create().await;
    let (repo, retries) = counting(Repository::<Counter>::new(EventStore::new(db.pool.clone())));
    let id = Uuid::now_v7().to_string();
    execute(&repo, &id, CounterCommand::Open).await;
    let mut known = repo.load(&id).await.expect("load");
    // Doctored, so that a decision on it shows.
    known.state.total = 1_000;

    let done = repo
        .execute_from(
            Some(known),
            &id,
            &CounterCommand::Add(1),
            ExecuteOptions::default(),
            record,
        )
        .await
        .expect("execute");
    let Executed::Done(outcome) = done else {
        panic!("expected Done, got {done:?}")
    };
    assert_eq!((outcome.state.total, outcome.version), (1_001, 2));
    assert_eq!(retries.load(Ordering::SeqCst), 0);
    db.drop().await;
}

/// A remembered state the stream has moved past: its append conflicts (a
/// retry that does not count against the budget) and the command is
/// decided again on a fresh load. A refusal or a no-op on it, or a pinned
/// version it does not have, settle nothing: decided on a fresh load.
#[tokio::test]
async fn a_stale_remembered_state_is_decided_again_on_a_fresh_load() {
    let db = TestDatabase::create().await;
    let repo = Repository::<Counter>::new(EventStore::new(db.pool.clone()));
    let id = Uuid::now_v7().to_string();
    let never_opened = repo.load(&id).await.expect("load");
    execute(&repo, &id, CounterCommand::Open).await;
    let opened = repo.load(&id).await.expect("load");
    execute(&repo, &id, CounterCommand::Add(100)).await;

    let (repo, retries) = counting(repo.with_max_retries(0));
    let done = repo
        .execute_from(
            Some(opened.clone()),
            &id,
            &CounterCommand::Add(1),
            ExecuteOptions::default(),
            record,
        )
        .await
        .expect("execute");
    let Executed::Done(outcome) = done else {
        panic!("expected Done, got {done:?}")
    };
    assert_eq!((outcome.state.total, outcome.version), (101, 3));
    assert_eq!(retries.load(Ordering::SeqCst), 1, "the stale append");

    // Refused on the memory (never opened), done on the stream.
    let done = repo
        .execute_from(
            Some(never_opened),
            &id,
            &CounterCommand::Add(1),
            ExecuteOptions::default(),
            record,
        )
        .await
        .expect("execute");
    assert!(
        matches!(&done, Executed::Done(o) if o.version == 4 && o.state.total == 102),
        "{done:?}"
    );

    // Pinned at the stream's version, which the memory is not at.
    let pinned = ExecuteOptions {
        expected_version: Some(4),
        ..ExecuteOptions::default()
    };
    let done = repo
        .execute_from(Some(opened), &id, &CounterCommand::Add(1), pinned, record)
        .await
        .expect("execute");
    assert!(
        matches!(&done, Executed::Done(o) if o.version == 5),
        "{done:?}"
    );
    assert_eq!(retries.load(Ordering::SeqCst), 1);
    db.drop().await;
}
