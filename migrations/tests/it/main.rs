//! The migrations apply to a fresh database, and `TestDatabase` cleans up.

use serde_json::json;
use test_support::TestDatabase;

#[tokio::test]
async fn a_test_database_is_migrated_and_dropped() {
    let db = TestDatabase::create().await;
    assert!(db.name.starts_with(test_support::NAME_PREFIX));
    assert!(db.url.ends_with(&db.name));

    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname IN ('event_store', 'read_models') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("schemas");
    assert_eq!(schemas, ["event_store", "read_models"]);

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'event_store' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("tables");
    assert_eq!(
        tables,
        ["checkpoints", "events", "idempotency", "snapshots"]
    );

    let name = db.name.clone();
    let admin = sqlx::PgPool::connect(
        &std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| test_support::DEFAULT_DATABASE_URL.to_owned()),
    )
    .await
    .expect("admin");
    db.drop().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&admin)
        .await
        .expect("count");
    assert_eq!(left, 0);
    admin.close().await;
}

/// Migration 9 turns the stored HTTP answers into the callers' records: a
/// saga step's (its key has spaces) into what the step did, any other into
/// the answer's status and body, which the Command API replays.
#[tokio::test]
async fn idempotency_answers_become_the_callers_records() {
    let db = TestDatabase::create().await;
    // The table as it was before migration 9, with rows of that time.
    sqlx::raw_sql(
        "DROP TABLE event_store.idempotency; \
         CREATE TABLE event_store.idempotency ( \
             key text PRIMARY KEY, fingerprint text NOT NULL, \
             status integer NOT NULL CHECK (status BETWEEN 100 AND 599), \
             body jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO event_store.idempotency (key, fingerprint, status, body) VALUES \
             ('deposit-1', 'f1', 200, '{\"balance\": 5, \"version\": 2}'), \
             ('withdraw-1', 'f2', 422, '{\"code\": \"insufficient_funds\", \"status\": 422}'), \
             ('saga 0193 0 charge_payment', 'saga 0193 0 charge_payment', 200, '{\"outcome\": \"done\"}'), \
             ('saga 0193 1 reserve_stock:A', 'saga 0193 1 reserve_stock:A', 422, \
              '{\"code\": \"insufficient_stock\", \"error\": \"only 1 left\"}'), \
             ('saga:0193:0:charge_payment', 'saga:0193:0:charge_payment', 200, '{\"outcome\": \"done\"}')",
    )
    .execute(&db.pool)
    .await
    .expect("the table before migration 9");
    let migration = migrations::MIGRATOR
        .iter()
        .find(|m| m.version == 9)
        .expect("migration 9");
    sqlx::raw_sql(&migration.sql)
        .execute(&db.pool)
        .await
        .expect("migration 9 applies");

    let rows: Vec<(String, String, serde_json::Value)> =
        sqlx::query_as("SELECT key, fingerprint, record FROM event_store.idempotency ORDER BY key")
            .fetch_all(&db.pool)
            .await
            .expect("records");
    let expected = [
        (
            "deposit-1",
            "f1",
            json!({"status": 200, "body": {"balance": 5, "version": 2}}),
        ),
        (
            "saga 0193 0 charge_payment",
            "saga 0193 0 charge_payment",
            json!({"outcome": "done"}),
        ),
        (
            "saga 0193 1 reserve_stock:A",
            "saga 0193 1 reserve_stock:A",
            json!({"outcome": "refused", "code": "insufficient_stock", "error": "only 1 left"}),
        ),
        (
            "saga:0193:0:charge_payment",
            "saga:0193:0:charge_payment",
            json!({"status": 200, "body": {"outcome": "done"}}),
        ),
        (
            "withdraw-1",
            "f2",
            json!({"status": 422, "body": {"code": "insufficient_funds", "status": 422}}),
        ),
    ];
    let rows: Vec<(&str, &str, serde_json::Value)> = rows
        .iter()
        .map(|(k, f, r)| (k.as_str(), f.as_str(), r.clone()))
        .collect();
    assert_eq!(rows, expected);
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'event_store' AND table_name = 'idempotency' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .expect("columns");
    assert_eq!(columns, ["created_at", "fingerprint", "key", "record"]);
    db.drop().await;
}

/// Migration 13 gives every saga row its owner, the order's customer from
/// the saga's `SagaStarted`, and indexes it.
#[tokio::test]
async fn saga_rows_get_their_orders_customer() {
    let db = TestDatabase::create().await;
    let (order, customer) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    // The table as it was before migration 13, with a row of that time and
    // the event it was projected from.
    sqlx::raw_sql("ALTER TABLE read_models.sagas DROP COLUMN customer_id")
        .execute(&db.pool)
        .await
        .expect("the table before migration 13");
    sqlx::query(
        "INSERT INTO event_store.events \
             (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         VALUES ($1, 'saga', $2, 1, 'SagaStarted', 1, $3)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(format!("saga-{order}"))
    .bind(
        json!({"event_type": "SagaStarted", "saga_id": uuid::Uuid::now_v7(),
                 "order": {"order_id": order, "customer_id": customer}}),
    )
    .execute(&db.pool)
    .await
    .expect("event");
    sqlx::query(
        "INSERT INTO read_models.sagas (order_id, saga_id, state, version, started_at, updated_at) \
         VALUES ($1, $2, 'running', 1, now(), now())",
    )
    .bind(order)
    .bind(uuid::Uuid::now_v7())
    .execute(&db.pool)
    .await
    .expect("row");
    let migration = migrations::MIGRATOR
        .iter()
        .find(|m| m.version == 13)
        .expect("migration 13");
    sqlx::raw_sql(&migration.sql)
        .execute(&db.pool)
        .await
        .expect("migration 13 applies");

    let owner: uuid::Uuid =
        sqlx::query_scalar("SELECT customer_id FROM read_models.sagas WHERE order_id = $1")
            .bind(order)
            .fetch_one(&db.pool)
            .await
            .expect("owner");
    assert_eq!(owner, customer);
    let nullable: String = sqlx::query_scalar(
        "SELECT is_nullable::text FROM information_schema.columns \
         WHERE table_schema = 'read_models' AND table_name = 'sagas' AND column_name = 'customer_id'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("column");
    assert_eq!(nullable, "NO");
    db.drop().await;
}
