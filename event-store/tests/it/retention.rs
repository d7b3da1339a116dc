//! Idempotency keys per scope, and their purge after a time to live.

use std::time::Duration;

use event_store::{EventStore, ExecuteOptions, Executed, IdempotencyKey, Repository};
use test_support::TestDatabase;

use crate::counter::{record, Counter, CounterCommand};
use test_support::store::event_count;

fn scoped(scope: &str, key: &str) -> ExecuteOptions {
    ExecuteOptions {
        idempotency: Some(IdempotencyKey {
            scope: scope.to_owned(),
            key: key.to_owned(),
            fingerprint: "same request".to_owned(),
        }),
        ..ExecuteOptions::default()
    }
}

#[tokio::test]
async fn one_key_in_two_scopes_is_two_keys() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let repo = Repository::<Counter>::new(store.clone());
    let id = uuid::Uuid::now_v7().to_string();
    repo.execute(
        &id,
        &CounterCommand::Open,
        ExecuteOptions::default(),
        record,
    )
    .await
    .expect("open");

    let mut answers = Vec::new();
    for scope in ["ana", "bo"] {
        let executed = repo
            .execute(&id, &CounterCommand::Add(5), scoped(scope, "k"), record)
            .await
            .expect("execute");
        let Executed::Done(outcome) = executed else {
            panic!("{scope}: expected its own execution, got {executed:?}")
        };
        answers.push(record(Ok(&outcome)));
    }
    assert_eq!(repo.load(&id).await.expect("load").state.total, 10);
    assert_eq!(event_count(&store).await, 3);
    for (scope, answer) in ["ana", "bo"].into_iter().zip(&answers) {
        let again = repo
            .execute(&id, &CounterCommand::Add(5), scoped(scope, "k"), record)
            .await
            .expect("replay");
        assert!(
            matches!(&again, Executed::Replayed(stored) if stored == answer),
            "{scope}: {again:?}"
        );
    }
    assert_eq!(event_count(&store).await, 3, "replays append nothing");
    db.drop().await;
}

#[tokio::test]
async fn the_purge_deletes_in_batches_what_is_older_than_the_ttl() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let repo = Repository::<Counter>::new(store.clone());
    let id = uuid::Uuid::now_v7().to_string();
    repo.execute(
        &id,
        &CounterCommand::Open,
        ExecuteOptions::default(),
        record,
    )
    .await
    .expect("open");
    for key in ["fresh-1", "fresh-2", "old"] {
        repo.execute(&id, &CounterCommand::Add(1), scoped("ana", key), record)
            .await
            .expect("execute");
    }
    // 2,500 more past the TTL, as many as two and a half batches.
    sqlx::query(
        "INSERT INTO event_store.idempotency (scope, key, fingerprint, record, created_at) \
         SELECT 'bo', 'old-' || n, 'f', '{}', now() - interval '2 hours' \
         FROM generate_series(1, 2500) AS n",
    )
    .execute(&db.pool)
    .await
    .expect("old keys");
    sqlx::query(
        "UPDATE event_store.idempotency SET created_at = now() - interval '61 minutes' \
         WHERE key = 'old'",
    )
    .execute(&db.pool)
    .await
    .expect("age a key");
    sqlx::query(
        "UPDATE event_store.idempotency SET created_at = now() - interval '59 minutes' \
         WHERE key = 'fresh-2'",
    )
    .execute(&db.pool)
    .await
    .expect("age a key less");

    let ttl = Duration::from_secs(3600);
    assert_eq!(
        store.purge_idempotency(ttl, 1000).await.expect("purge"),
        2501
    );
    let mut kept: Vec<String> = sqlx::query_scalar("SELECT key FROM event_store.idempotency")
        .fetch_all(&db.pool)
        .await
        .expect("keys");
    kept.sort();
    assert_eq!(kept, ["fresh-1", "fresh-2"]);
    assert_eq!(store.purge_idempotency(ttl, 1000).await.expect("purge"), 0);

    // A purged key is unknown again: the command runs again.
    let again = repo
        .execute(&id, &CounterCommand::Add(1), scoped("ana", "old"), record)
        .await
        .expect("execute");
    assert!(matches!(again, Executed::Done(_)), "{again:?}");
    db.drop().await;
}
