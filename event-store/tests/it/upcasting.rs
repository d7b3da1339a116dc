use event_store::{Error, EventStore, Repository, StreamId};
use test_support::TestDatabase;
use uuid::Uuid;

use crate::counter::{Counter, CounterEvent};

async fn insert_raw(
    store: &EventStore,
    stream: &StreamId,
    version: i64,
    event_type: &str,
    schema_version: i32,
    payload: serde_json::Value,
) {
    sqlx::query(
        "INSERT INTO event_store.events \
         (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(stream.stream_type())
    .bind(stream.to_string())
    .bind(version)
    .bind(event_type)
    .bind(schema_version)
    .bind(payload)
    .execute(store.pool())
    .await
    .expect("raw insert");
}

#[tokio::test]
async fn a_stored_v1_payload_is_upcast_on_read() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let id = Uuid::now_v7().to_string();
    let stream = StreamId::of::<Counter>(&id);
    insert_raw(&store, &stream, 1, "Opened", 1, serde_json::json!({})).await;
    insert_raw(
        &store,
        &stream,
        2,
        "Added",
        1,
        serde_json::json!({ "value": 5 }),
    )
    .await;
    insert_raw(
        &store,
        &stream,
        3,
        "Added",
        2,
        serde_json::json!({ "amount": 2 }),
    )
    .await;

    let events = store.read_stream(&stream, 1).await.expect("read");
    assert_eq!(events[1].schema_version, 1);
    assert_eq!(
        events[1].decode::<CounterEvent>().expect("upcast"),
        CounterEvent::Added { amount: 5 }
    );
    let loaded = Repository::<Counter>::new(store.clone())
        .load(&id)
        .await
        .expect("load");
    assert_eq!(
        (loaded.state.total, loaded.state.additions, loaded.version),
        (7, 2, 3)
    );
    db.drop().await;
}

#[tokio::test]
async fn an_unknown_stored_event_is_a_decode_error() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let id = Uuid::now_v7().to_string();
    let stream = StreamId::of::<Counter>(&id);
    insert_raw(&store, &stream, 1, "Opened", 1, serde_json::json!({})).await;
    insert_raw(
        &store,
        &stream,
        2,
        "Added",
        9,
        serde_json::json!({ "amount": 1 }),
    )
    .await;

    let err = Repository::<Counter>::new(store)
        .load(&id)
        .await
        .expect_err("unknown version");
    assert!(
        matches!(&err, Error::Decode(domain::DecodeError::UnknownType { event_type, schema_version: 9 }) if event_type == "Added"),
        "{err:?}"
    );
    db.drop().await;
}

/// The real domain's evolved event: `AccountOpened` v1 had no currency and
/// meant EUR.
#[tokio::test]
async fn a_stored_v1_account_opened_loads_as_a_eur_account() {
    use domain::{AccountCommand, AccountStatus, Amount, BankAccount, Currency};
    use event_store::{ExecuteOptions, Executed};

    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let account_id = Uuid::now_v7();
    let customer_id = Uuid::now_v7();
    let stream = StreamId::of::<BankAccount>(account_id);
    insert_raw(
        &store,
        &stream,
        1,
        "AccountOpened",
        1,
        serde_json::json!({ "account_id": account_id, "customer_id": customer_id }),
    )
    .await;

    let repo = Repository::<BankAccount>::new(store.clone());
    let loaded = repo.load(&account_id.to_string()).await.expect("load");
    assert_eq!(loaded.state.status, AccountStatus::Open);
    assert_eq!(
        loaded.state.currency,
        Some(Currency::parse("EUR").expect("currency"))
    );

    let deposit = AccountCommand::Deposit {
        amount: Amount::new(250).expect("amount"),
    };
    let done = repo
        .execute(
            &account_id.to_string(),
            &deposit,
            ExecuteOptions::default(),
            |_| (),
        )
        .await
        .expect("deposit");
    let Executed::Done(outcome) = done else {
        panic!("expected Done, got {done:?}")
    };
    assert_eq!(outcome.version, 2);
    assert_eq!(outcome.state.balance.amount(), 250);
    db.drop().await;
}
