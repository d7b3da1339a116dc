//! Graceful shutdown: stop accepting, finish what is in flight.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::helpers::{wait_until, TestApp};

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let app = TestApp::spawn().await;
    let account = app.open_account(0).await;
    let TestApp { mut server, db } = app;

    // Another transaction holds the stream's next version, so the deposit
    // below stays in flight inside its handler until that one rolls back.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO event_store.events (event_id, stream_type, stream_id, version, event_type, \
         schema_version, payload) VALUES ($1, 'account', $2, 2, 'MoneyDeposited', 1, \
         '{\"amount\": 1, \"balance_after\": 1}')",
    )
    .bind(Uuid::now_v7())
    .bind(format!("account-{account}"))
    .execute(&mut *blocker)
    .await
    .unwrap();

    let in_flight = {
        let request = server
            .post(&format!("/accounts/{account}/deposits"))
            .json(&json!({"amount": 250}));
        tokio::spawn(async move {
            let response = request.send().await.expect("an answer");
            let status = response.status();
            let body: Value = response.json().await.expect("JSON");
            (status, body)
        })
    };
    let pool = db.pool.clone();
    wait_until(
        Duration::from_secs(10),
        "the deposit to wait on the lock",
        || {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
                    == 1
            }
        },
    )
    .await;

    server.signal_shutdown();
    let address = server.address;
    wait_until(Duration::from_secs(10), "the listener to close", || async {
        TcpStream::connect(address).await.is_err()
    })
    .await;
    assert!(!in_flight.is_finished(), "the deposit was cut short");

    blocker.rollback().await.unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight request completes")
        .expect("task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    server.join().await.expect("clean stop");

    let balance: i64 = sqlx::query_scalar(
        "SELECT (payload->>'balance_after')::bigint FROM event_store.events \
         WHERE event_type = 'MoneyDeposited'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(balance, 250);
    db.drop().await;
}
