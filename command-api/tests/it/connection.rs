//! Connections killed mid-request never leave a half-written command: the
//! events and the idempotency record of a command are committed together or
//! not at all (the event store's transaction), shown here from the HTTP side.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use test_support::command_api::TestApp;
use test_support::http::assert_json;
use test_support::wait_until;

fn request_head(path: &str, content_length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n{extra}\r\n"
    )
}

/// The `command_api_http_requests_total` sample for a route and status.
async fn requests_counted(app: &TestApp, route: &str, status: u16) -> u64 {
    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    let prefix = format!(
        "command_api_http_requests_total{{method=\"POST\",route=\"{route}\",status=\"{status}\"}} "
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_body_cut_off_midway_appends_nothing() {
    let app = TestApp::spawn().await;
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/deposits");
    let body = br#"{"amount": 100000}"#;

    let mut stream = TcpStream::connect(app.address).await.unwrap();
    stream
        .write_all(request_head(&path, body.len(), "Idempotency-Key: cut-1\r\n").as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();
    drop(stream);

    // The server gives up on the request once it sees the connection end.
    wait_until(
        "the cut request to be answered",
        Duration::from_secs(10),
        || async { requests_counted(&app, "/accounts/{id}/deposits", 400).await == 1 },
    )
    .await;
    assert_eq!(
        app.event_count().await,
        1,
        "only the opening and nothing else"
    );
    assert_eq!(app.idempotency_count().await, 0);

    // The retry with the same key executes, once.
    let response = app
        .post(&path)
        .header("Idempotency-Key", "cut-1")
        .json(&json!({"amount": 100000}))
        .send()
        .await
        .unwrap();
    let answer = assert_json(response, StatusCode::OK).await;
    assert_eq!(answer["version"], 2);
    let (state, _) = app.account(account).await;
    assert_eq!(state.balance.amount(), 100_000);
    app.stop().await;
}

/// Clients that hang up right after sending: whatever the server got to do,
/// at every moment each key has either its event and its record or neither,
/// and a retry with the key completes the command exactly once.
#[tokio::test]
async fn clients_that_hang_up_leave_all_or_nothing() {
    let app = TestApp::spawn().await;
    let account = app.open_account(0).await;
    let path = format!("/accounts/{account}/deposits");
    let body = br#"{"amount": 10}"#;
    const CLIENTS: usize = 20;

    for i in 0..CLIENTS {
        let mut stream = TcpStream::connect(app.address).await.unwrap();
        let head = request_head(
            &path,
            body.len(),
            &format!("Idempotency-Key: hangup-{i}\r\n"),
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        stream.flush().await.unwrap();
        drop(stream);
    }

    // Check the invariant a few times while the server may still be working.
    let mismatches = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM ( \
               SELECT i.key, count(e.position) AS events \
               FROM event_store.idempotency i \
               LEFT JOIN event_store.events e ON e.metadata->>'causation_id' = i.key \
               GROUP BY i.key HAVING count(e.position) <> 1 \
               UNION ALL \
               SELECT e.metadata->>'causation_id', 0 FROM event_store.events e \
               WHERE e.metadata->>'causation_id' LIKE 'hangup-%' \
                 AND NOT EXISTS (SELECT 1 FROM event_store.idempotency i \
                                 WHERE i.key = e.metadata->>'causation_id') \
             ) AS broken",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
    };
    for _ in 0..5 {
        assert_eq!(
            mismatches().await,
            0,
            "an event without its record or the reverse"
        );
    }

    for i in 0..CLIENTS {
        let response = app
            .post(&path)
            .header("Idempotency-Key", format!("hangup-{i}"))
            .json(&json!({"amount": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(mismatches().await, 0);
    assert_eq!(
        app.count_of(&format!("account-{account}"), "MoneyDeposited")
            .await,
        CLIENTS as i64
    );
    assert_eq!(app.idempotency_count().await, CLIENTS as i64);
    let (state, _) = app.account(account).await;
    assert_eq!(state.balance.amount(), 10 * CLIENTS as i64);
    app.stop().await;
}

/// A chunked body (no Content-Length) that grows past the limit is cut off
/// with 413 problem+json too.
#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413() {
    let app = TestApp::spawn().await;
    let account = app.open_account(0).await;
    let mut stream = TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /accounts/{account}/deposits HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..5 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&framed).await.is_err() {
            break; // the server may have answered and closed already
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}
