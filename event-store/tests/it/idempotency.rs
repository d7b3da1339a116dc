use std::sync::Arc;

use event_store::{
    Error, EventStore, ExecuteError, ExecuteOptions, Executed, IdempotencyKey, Repository,
    StoredResponse,
};
use migrations::testing::TestDatabase;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Barrier;

use crate::support::{event_count, respond, Counter, CounterCommand, CounterError};

fn key(key: &str, fingerprint: &str) -> ExecuteOptions {
    ExecuteOptions {
        idempotency: Some(IdempotencyKey {
            key: key.to_owned(),
            fingerprint: fingerprint.to_owned(),
        }),
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
            respond,
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
        .execute(&id, &CounterCommand::Add(5), key("k-1", "f-1"), respond)
        .await
        .expect("first");
    let Executed::Done(outcome) = first else {
        panic!("expected Done, got {first:?}")
    };
    let stored = respond(Ok(&outcome));
    assert_eq!(stored.body["total"], json!(5));
    assert_eq!(event_count(&store).await, 2);

    for _ in 0..2 {
        let again = repo
            .execute(&id, &CounterCommand::Add(5), key("k-1", "f-1"), respond)
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
        .find_response(&IdempotencyKey {
            key: "k-1".to_owned(),
            fingerprint: "f-1".to_owned(),
        })
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
    repo.execute(&id, &CounterCommand::Add(5), key("k-1", "f-1"), respond)
        .await
        .expect("first");

    let err = repo
        .execute(&id, &CounterCommand::Add(6), key("k-1", "f-2"), respond)
        .await
        .expect_err("reused key");
    assert!(
        matches!(err, ExecuteError::Store(Error::IdempotencyKeyReused)),
        "{err:?}"
    );
    let err = store
        .find_response(&IdempotencyKey {
            key: "k-1".to_owned(),
            fingerprint: "f-2".to_owned(),
        })
        .await
        .expect_err("reused key");
    assert!(matches!(err, Error::IdempotencyKeyReused), "{err:?}");
    assert!(store
        .find_response(&IdempotencyKey {
            key: "unknown".to_owned(),
            fingerprint: "f-1".to_owned(),
        })
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
            repo.execute(&id, &CounterCommand::Add(7), key("once", "f"), respond)
                .await
        }));
    }
    let mut answers: Vec<StoredResponse> = Vec::new();
    let mut executed = 0;
    for request in requests {
        match request.await.expect("task").expect("execute") {
            Executed::Done(outcome) => {
                executed += 1;
                answers.push(respond(Ok(&outcome)));
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
    assert_eq!(answers[0].body["total"], json!(7));
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
        .execute(&id, &CounterCommand::Add(1), key("r-1", "f"), respond)
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
        respond,
    )
    .await
    .expect("open");
    let replayed = repo
        .execute(&id, &CounterCommand::Add(1), key("r-1", "f"), respond)
        .await
        .expect("replay");
    let expected = StoredResponse {
        status: 422,
        body: json!({ "code": "counter_not_found" }),
    };
    assert!(
        matches!(&replayed, Executed::Replayed(r) if *r == expected),
        "{replayed:?}"
    );
    assert_eq!(event_count(&store).await, 1, "only the Open");

    // A no-op (Add(0) appends nothing) is stored too.
    let noop = repo
        .execute(&id, &CounterCommand::Add(0), key("n-1", "f"), respond)
        .await
        .expect("noop");
    let Executed::Done(outcome) = noop else {
        panic!("expected Done, got {noop:?}")
    };
    assert!(outcome.events.is_empty());
    assert_eq!(outcome.version, 1);
    assert!(outcome.position.is_some());
    let replayed = repo
        .execute(&id, &CounterCommand::Add(0), key("n-1", "f"), respond)
        .await
        .expect("noop replay");
    assert!(
        matches!(&replayed, Executed::Replayed(r) if *r == respond(Ok(&outcome))),
        "{replayed:?}"
    );
    db.drop().await;
}
