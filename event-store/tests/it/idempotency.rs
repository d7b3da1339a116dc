use std::sync::Arc;

use event_store::{
    Error, EventStore, ExecuteError, ExecuteOptions, Executed, IdempotencyKey, Repository,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use test_support::TestDatabase;
use tokio::sync::Barrier;

use crate::counter::{record, Counter, CounterCommand, CounterError, CounterRecord};
use test_support::store::event_count;

fn key(key: &str, fingerprint: &str) -> ExecuteOptions {
    ExecuteOptions {
        idempotency: Some(IdempotencyKey::new("test", key, fingerprint)),
        ..ExecuteOptions::default()
    }
}

async fn open_counter(repo: &Repository<Counter>) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let opened = repo
        .execute(
            &id,
            &CounterCommand::Open,
            ExecuteOptions::default(),
            record,
        )
        .await
        .expect("open");
    assert!(matches!(opened, Executed::Done(_)), "{opened:?}");
    id
}

#[tokio::test]
async fn a_replayed_key_returns_the_stored_response_and_appends_nothing() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let repo = Repository::<Counter>::new(store.clone());
    let id = open_counter(&repo).await;

    let first = repo
        .execute(&id, &CounterCommand::Add(5), key("k-1", "f-1"), record)
        .await
        .expect("first");
    let Executed::Done(outcome) = first else {
        panic!("expected Done, got {first:?}")
    };
    let stored = record(Ok(&outcome));
    assert!(
        matches!(stored, CounterRecord::Done { total: 5, .. }),
        "{stored:?}"
    );
    assert_eq!(event_count(&store).await, 2);

    for _ in 0..2 {
        let again = repo
            .execute(&id, &CounterCommand::Add(5), key("k-1", "f-1"), record)
            .await
            .expect("replay");
        assert!(
            matches!(&again, Executed::Replayed(r) if *r == stored),
            "{again:?}"
        );
    }
    assert_eq!(event_count(&store).await, 2, "a replay appends nothing");
    assert_eq!(repo.load(&id).await.expect("load").state.total, 5);
    let found = store
        .find_record::<CounterRecord>(&IdempotencyKey::new("test", "k-1", "f-1"))
        .await
        .expect("find");
    assert_eq!(found, Some(stored));
    db.drop().await;
}

#[tokio::test]
async fn a_key_reused_with_another_fingerprint_is_refused() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let repo = Repository::<Counter>::new(store.clone());
    let id = open_counter(&repo).await;
    repo.execute(&id, &CounterCommand::Add(5), key("k-1", "f-1"), record)
        .await
        .expect("first");

    let err = repo
        .execute(&id, &CounterCommand::Add(6), key("k-1", "f-2"), record)
        .await
        .expect_err("reused key");
    assert!(
        matches!(err, ExecuteError::Store(Error::IdempotencyKeyReused)),
        "{err:?}"
    );
    let err = store
        .find_record::<CounterRecord>(&IdempotencyKey::new("test", "k-1", "f-2"))
        .await
        .expect_err("reused key");
    assert!(matches!(err, Error::IdempotencyKeyReused), "{err:?}");
    assert!(store
        .find_record::<CounterRecord>(&IdempotencyKey::new("test", "unknown", "f-1"))
        .await
        .expect("unknown key")
        .is_none());
    assert_eq!(event_count(&store).await, 2);
    db.drop().await;
}

/// Of 20 concurrent requests with one key, one executes; all 20 get the
/// identical answer.
#[tokio::test]
async fn twenty_concurrent_executes_with_one_key_execute_once() {
    const REQUESTS: usize = 20;
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(REQUESTS as u32)
        .connect(&db.url)
        .await
        .expect("pool");
    let store = EventStore::new(pool.clone());
    let repo = Repository::<Counter>::new(store.clone());
    let id = open_counter(&repo).await;

    let barrier = Arc::new(Barrier::new(REQUESTS));
    let mut requests = Vec::new();
    for _ in 0..REQUESTS {
        let (repo, id, barrier) = (repo.clone(), id.clone(), barrier.clone());
        requests.push(tokio::spawn(async move {
            barrier.wait().await;
            repo.execute(&id, &CounterCommand::Add(7), key("once", "f"), record)
                .await
        }));
    }
    let mut answers: Vec<CounterRecord> = Vec::new();
    let mut executed = 0;
    for request in requests {
        match request.await.expect("task").expect("execute") {
            Executed::Done(outcome) => {
                executed += 1;
                answers.push(record(Ok(&outcome)));
            }
            Executed::Replayed(stored) => answers.push(stored),
            Executed::Refused(refusal) => panic!("refused: {refusal}"),
        }
    }
    assert_eq!(executed, 1, "exactly one execution");
    assert_eq!(answers.len(), REQUESTS);
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "identical answers: {answers:?}"
    );
    assert!(
        matches!(answers[0], CounterRecord::Done { total: 7, .. }),
        "{answers:?}"
    );
    let loaded = repo.load(&id).await.expect("load");
    assert_eq!((loaded.state.total, loaded.version), (7, 2));
    assert_eq!(event_count(&store).await, 2);
    pool.close().await;
    db.drop().await;
}

#[tokio::test]
async fn a_refusal_is_stored_and_replayed_even_after_the_state_changed() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let repo = Repository::<Counter>::new(store.clone());
    let id = uuid::Uuid::now_v7().to_string();

    let refused = repo
        .execute(&id, &CounterCommand::Add(1), key("r-1", "f"), record)
        .await
        .expect("execute");
    assert!(
        matches!(refused, Executed::Refused(CounterError::NotOpened)),
        "{refused:?}"
    );
    assert_eq!(event_count(&store).await, 0);

    // Now the command would succeed, but the key's answer is the refusal.
    repo.execute(
        &id,
        &CounterCommand::Open,
        ExecuteOptions::default(),
        record,
    )
    .await
    .expect("open");
    let replayed = repo
        .execute(&id, &CounterCommand::Add(1), key("r-1", "f"), record)
        .await
        .expect("replay");
    let expected = CounterRecord::Refused {
        code: "counter_not_found".to_owned(),
    };
    assert!(
        matches!(&replayed, Executed::Replayed(r) if *r == expected),
        "{replayed:?}"
    );
    assert_eq!(event_count(&store).await, 1, "only the Open");

    // A no-op (Add(0) appends nothing) is stored too.
    let noop = repo
        .execute(&id, &CounterCommand::Add(0), key("n-1", "f"), record)
        .await
        .expect("noop");
    let Executed::Done(outcome) = noop else {
        panic!("expected Done, got {noop:?}")
    };
    assert!(outcome.events.is_empty());
    assert_eq!(outcome.version, 1);
    assert!(outcome.position.is_some());
    let replayed = repo
        .execute(&id, &CounterCommand::Add(0), key("n-1", "f"), record)
        .await
        .expect("noop replay");
    assert!(
        matches!(&replayed, Executed::Replayed(r) if *r == record(Ok(&outcome))),
        "{replayed:?}"
    );
    db.drop().await;
}

/// The record is the caller's own type: stored as its JSON, handed back as
/// the same value; read as another type it is a decoding error, and a
/// different fingerprint is refused before the record is looked at.
#[tokio::test]
async fn a_typed_record_round_trips_through_its_json() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let repo = Repository::<Counter>::new(store.clone());
    let id = open_counter(&repo).await;

    let done = repo
        .execute(&id, &CounterCommand::Add(3), key("t-1", "f"), record)
        .await
        .expect("execute");
    let Executed::Done(outcome) = done else {
        panic!("expected Done, got {done:?}")
    };
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT record FROM event_store.idempotency WHERE key = 't-1'")
            .fetch_one(&db.pool)
            .await
            .expect("stored record");
    assert_eq!(
        stored,
        json!({
            "answer": "done",
            "total": 3,
            "version": 2,
            "position": outcome.position,
        })
    );
    let found = store
        .find_record::<CounterRecord>(&IdempotencyKey::new("test", "t-1", "f"))
        .await
        .expect("find");
    assert_eq!(found, Some(record(Ok(&outcome))));

    let err = store
        .find_record::<u64>(&IdempotencyKey::new("test", "t-1", "f"))
        .await
        .expect_err("not a u64");
    assert!(matches!(err, Error::Json { .. }), "{err:?}");
    let err = store
        .find_record::<u64>(&IdempotencyKey::new("test", "t-1", "other"))
        .await
        .expect_err("another request");
    assert!(matches!(err, Error::IdempotencyKeyReused), "{err:?}");
    db.drop().await;
}

/// Without a key nothing is stored, whatever `record` would say.
#[tokio::test]
async fn without_a_key_no_record_is_stored() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let repo = Repository::<Counter>::new(store.clone());
    let id = open_counter(&repo).await;

    let done = repo
        .execute(
            &id,
            &CounterCommand::Add(2),
            ExecuteOptions::default(),
            |_| -> CounterRecord { panic!("no key: no record") },
        )
        .await
        .expect("execute");
    assert!(matches!(done, Executed::Done(_)), "{done:?}");
    let refused = repo
        .execute(
            &id,
            &CounterCommand::Add(-1),
            ExecuteOptions::default(),
            record,
        )
        .await
        .expect("execute");
    assert!(
        matches!(refused, Executed::Refused(CounterError::Negative)),
        "{refused:?}"
    );
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM event_store.idempotency")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(records, 0);
    db.drop().await;
}
