//! The migrations apply to a fresh database, and `TestDatabase` cleans up.

use migrations::testing::TestDatabase;

#[tokio::test]
async fn a_test_database_is_migrated_and_dropped() {
    let db = TestDatabase::create().await;
    assert!(db.name.starts_with(migrations::testing::NAME_PREFIX));
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
            .unwrap_or_else(|_| migrations::testing::DEFAULT_DATABASE_URL.to_owned()),
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
