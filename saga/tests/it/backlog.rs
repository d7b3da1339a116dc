//! The backlog's measure reads what the backlog holds, not the log: with a
//! long history and the planner's figures for `saga.trigger` and `saga.due`
//! as wrong as a live system makes them, it is still a few index probes.

use serde_json::Value;
use sqlx::PgPool;
use test_support::TestDatabase;

use saga::Backlog;

/// `orders` orders placed (`OrderPlaced`, version 1 of `order-{id}`), each
/// with its saga started when `started`; `events` deposits besides.
async fn history(pool: &PgPool, orders: i32, started: bool, events: i32) {
    sqlx::query(
        "INSERT INTO event_store.events \
         (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         SELECT gen_random_uuid(), 'account', 'account-' || (g % 100), g, 'MoneyDeposited', 1, '{}' \
         FROM generate_series(1, $1) g",
    )
    .bind(events)
    .execute(pool)
    .await
    .expect("deposits");
    sqlx::query(
        "WITH o AS (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)), \
         placed AS ( \
             INSERT INTO event_store.events \
             (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
             SELECT gen_random_uuid(), 'order', 'order-' || id, 1, 'OrderPlaced', 1, '{}' FROM o) \
         INSERT INTO event_store.events \
         (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         SELECT gen_random_uuid(), 'saga', 'saga-' || id, 1, 'SagaStarted', 1, '{}' FROM o WHERE $2",
    )
    .bind(orders)
    .bind(started)
    .execute(pool)
    .await
    .expect("orders");
}

/// The trigger's checkpoint after every event so far.
async fn trigger_passes_everything(pool: &PgPool) {
    sqlx::query(
        "UPDATE saga.trigger SET (transaction_id, position) = \
         (SELECT max(transaction_id), max(position) FROM event_store.events)",
    )
    .execute(pool)
    .await
    .expect("checkpoint");
}

/// How many rows of `event_store.events` the plan's nodes read, those
/// filtered out included.
fn events_rows_read(node: &Value) -> f64 {
    let number = |key: &str| node[key].as_f64().unwrap_or(0.0);
    let own = if node["Relation Name"] == "events" {
        (number("Actual Rows") + number("Rows Removed by Filter")) * number("Actual Loops")
    } else {
        0.0
    };
    let removed_by_join = number("Rows Removed by Join Filter");
    let children: f64 = node["Plans"]
        .as_array()
        .map(|plans| plans.iter().map(events_rows_read).sum())
        .unwrap_or(0.0);
    own + removed_by_join + children
}

#[tokio::test]
async fn the_backlog_measure_reads_the_backlog_not_the_history() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    // A long history: 2,000 orders whose sagas started, 5,000 deposits.
    history(pool, 2_000, true, 5_000).await;
    // One order the trigger passed, its saga due and not started.
    history(pool, 1, false, 0).await;
    sqlx::query(
        "INSERT INTO saga.due (order_id) \
         SELECT substr(stream_id, 7)::uuid FROM event_store.events \
         WHERE event_type = 'OrderPlaced' \
           AND NOT EXISTS (SELECT FROM event_store.events s \
                           WHERE s.stream_id = 'saga-' || substr(events.stream_id, 7))",
    )
    .execute(pool)
    .await
    .expect("due");
    trigger_passes_everything(pool).await;
    // Two orders placed since, which the trigger has not read yet.
    history(pool, 2, false, 0).await;

    // The figures a busy system leaves the planner: the checkpoint's table
    // never analysed, saga.due believed large.
    sqlx::query("ANALYZE event_store.events")
        .execute(pool)
        .await
        .expect("analyze");
    for statement in [
        "UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE oid = 'saga.trigger'::regclass",
        "UPDATE pg_class SET reltuples = 5000, relpages = 50 WHERE oid = 'saga.due'::regclass",
        "DELETE FROM pg_statistic \
         WHERE starelid IN ('saga.trigger'::regclass, 'saga.due'::regclass)",
    ] {
        sqlx::query(statement)
            .execute(pool)
            .await
            .expect("planner figures");
    }

    let backlog = Backlog::measure(pool).await.expect("measure");
    assert_eq!(backlog.orders, 3, "{backlog:?}");

    let plan: Value = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        Backlog::QUERY
    ))
    .fetch_one(pool)
    .await
    .expect("explain");
    let read = events_rows_read(&plan[0]["Plan"]);
    // Per candidate: a trigger event or a due row, its order's and its
    // saga's first event. Nothing of the 9,000 events of history.
    assert!(read <= 20.0, "{read} rows of events read: {plan:#}");
    db.drop().await;
}

/// The measure runs on a timer (the `/metrics` gauges, the Command API's
/// bound on placing): it leaves no prepared statement on the connection it
/// ran on, which the pool would otherwise keep on every connection in turn
/// (projections' readiness tests, `what_runs_on_a_timer_...`).
#[tokio::test]
async fn the_backlog_measure_leaves_no_prepared_statement_behind() {
    let db = TestDatabase::create().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("pool");
    Backlog::measure(&pool).await.expect("measure");
    let prepared: Vec<String> = sqlx::query_scalar("SELECT statement FROM pg_prepared_statements")
        .persistent(false)
        .fetch_all(&pool)
        .await
        .expect("prepared statements");
    assert!(prepared.is_empty(), "{prepared:#?}");
    pool.close().await;
    db.drop().await;
}
