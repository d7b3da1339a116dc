//! Abuse limits on a real socket: header-read and idle timeouts, and the
//! request id rule (load shedding: query-api's `limits` tests).

use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::assert_json;

/// Reads until the server closes the connection (or resets it); what it
/// sent before.
async fn read_until_closed(stream: &mut tokio::net::tcp::OwnedReadHalf) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_headers_slowly_is_cut_off_while_others_are_served() {
    let app = TestApp::spawn_with(|config| config.http.header_timeout_ms = 1_500).await;
    let stream = TcpStream::connect(app.address).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    // One byte a second: the whole head would take over a minute.
    let trickle = tokio::spawn(async move {
        let head = b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        for byte in head {
            interval.tick().await;
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    });

    // Meanwhile another client is served normally.
    let live = app.get("/health/live").await;
    assert_eq!(live.status(), StatusCode::OK);
    let account = app.open_account(100).await;
    let deposit = app
        .post_json(
            &format!("/accounts/{account}/deposits"),
            &json!({"amount": 5}),
        )
        .await;
    assert_json(deposit, StatusCode::OK).await;

    let answered = tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut read))
        .await
        .expect("the slow client is cut off well before its head is complete");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_400),
        "cut off after the header timeout, not before: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(8),
        "cut off near the header timeout: {elapsed:?}"
    );
    assert!(
        answered.is_empty() || answered.starts_with("HTTP/1.1 408"),
        "no answer but a timeout: {answered:?}"
    );
    trickle.abort();
    app.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_with(|config| {
        config.http.header_timeout_ms = 60_000;
        config.http.idle_timeout_ms = 1_000;
    })
    .await;
    let started = Instant::now();
    let stream = TcpStream::connect(app.address).await.unwrap();
    let (mut read, _write) = stream.into_split();
    tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut read))
        .await
        .expect("an idle connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(900));
    app.stop().await;
}

/// The correlation id of the latest `MoneyDeposited`.
async fn last_correlation_id(app: &TestApp) -> String {
    let metadata: Value = sqlx::query_scalar(
        "SELECT metadata FROM event_store.events WHERE event_type = 'MoneyDeposited' \
         ORDER BY position DESC LIMIT 1",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    metadata["correlation_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn request_ids_outside_the_safe_alphabet_or_length_are_replaced() {
    let app = TestApp::spawn().await;
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/deposits");

    let valid = "A-z.0_9:".repeat(16);
    assert_eq!(valid.len(), 128);
    let response = app
        .post(&path)
        .header("x-request-id", &valid)
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], valid.as_str());
    assert_json(response, StatusCode::OK).await;
    assert_eq!(last_correlation_id(&app).await, valid);

    let too_long = "a".repeat(200);
    let invalid = [
        HeaderValue::from_str(&too_long).unwrap(),
        HeaderValue::from_static("has spaces in it"),
        HeaderValue::from_static("a/b"),
        HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        HeaderValue::from_static(""),
    ];
    for sent in invalid {
        let response = app
            .post(&path)
            .header("x-request-id", sent.clone())
            .json(&json!({"amount": 1}))
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"].clone();
        assert_ne!(echoed, sent);
        let fresh: Uuid = echoed.to_str().unwrap().parse().expect("a fresh uuid");
        assert_eq!(fresh.get_version_num(), 7);
        assert_json(response, StatusCode::OK).await;
        assert_eq!(last_correlation_id(&app).await, fresh.to_string());
    }
    app.stop().await;
}
