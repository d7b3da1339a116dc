//! Graceful shutdown: stop accepting, finish what is in flight.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::wait_until;

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
        "the deposit to wait on the lock",
        Duration::from_secs(10),
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
    wait_until("the listener to close", Duration::from_secs(10), || async {
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

/// A client that never finishes sending its request cannot hold shutdown
/// up beyond the drain period (request timeout plus a margin).
#[tokio::test]
async fn a_stalled_client_does_not_hold_shutdown_up() {
    use tokio::io::AsyncWriteExt;

    let app = TestApp::spawn_with(|config| config.request_timeout_ms = 200).await;
    let TestApp { mut server, db } = app;
    let mut stalled = TcpStream::connect(server.address).await.unwrap();
    stalled
        .write_all(b"POST /accounts HTTP/1.1\r\nHost: localhost\r\nContent-")
        .await
        .unwrap();
    stalled.flush().await.unwrap();
    // Connections are accepted in order: once a later one is answered, the
    // stalled one is being read.
    let live = server.get("/health/live").await;
    assert!(live.status().is_success());
    server.signal_shutdown();
    // The drain period here is 5.2 s; without it the server would wait for
    // the stalled request head for as long as hyper's own header timeout.
    tokio::time::timeout(Duration::from_secs(20), server.join())
        .await
        .expect("stopped within the drain period")
        .expect("clean stop");
    drop(stalled);
    db.drop().await;
}
