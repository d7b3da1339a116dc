//! `Idempotency-Key`: one execution, identical answers, replays marked, and
//! a key reused for another request refused.

use std::sync::Arc;

use futures::future::join_all;
use reqwest::header::ETAG;
use reqwest::StatusCode;
use serde_json::{json, Value};

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem, order_body};

const REPLAYED: &str = "idempotent-replayed";

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_execute_once() {
    let app = Arc::new(TestApp::spawn().await);
    let account = app.open_account(0).await;
    let stream = format!("account-{account}");
    let path = format!("/accounts/{account}/deposits");

    let answers = join_all((0..20).map(|_| {
        let app = Arc::clone(&app);
        let path = path.clone();
        async move {
            let response = app
                .post(&path)
                .header("Idempotency-Key", "deposit-once")
                .json(&json!({"amount": 700}))
                .send()
                .await
                .expect("request sent");
            let status = response.status();
            let replayed = response.headers().get(REPLAYED).cloned();
            let etag = response.headers().get(ETAG).cloned();
            let body: Value = response.json().await.expect("JSON body");
            (status, replayed, etag, body)
        }
    }))
    .await;

    let (status, _, etag, body) = &answers[0];
    assert_eq!(*status, StatusCode::OK, "{body}");
    for (other_status, _, other_etag, other_body) in &answers {
        assert_eq!(other_status, status);
        assert_eq!(other_body, body, "every answer is identical");
        assert_eq!(other_etag, etag);
    }
    let replayed = answers.iter().filter(|(_, r, _, _)| r.is_some()).count();
    assert_eq!(replayed, 19, "all but the one that executed are replays");
    assert!(answers
        .iter()
        .filter_map(|(_, r, _, _)| r.as_ref())
        .all(|r| r == "true"));

    assert_eq!(app.count_of(&stream, "MoneyDeposited").await, 1);
    let (state, version) = app.account(account).await;
    assert_eq!(state.balance.amount(), 700);
    assert_eq!(version, 2);
    assert_eq!(body["version"], 2);
    assert_eq!(app.idempotency_count().await, 1);

    let app = Arc::into_inner(app).expect("no other owner");
    app.stop().await;
}

#[tokio::test]
async fn replay_returns_the_stored_answer_and_a_different_request_is_refused() {
    let app = TestApp::spawn().await;
    let account = app.open_account(1_000).await;
    let path = format!("/accounts/{account}/withdrawals");
    let send = |amount: i64, key: &'static str| {
        app.post(&path)
            .header("Idempotency-Key", key)
            .json(&json!({"amount": amount}))
            .send()
    };

    let first = send(300, "w-1").await.unwrap();
    assert!(first.headers().get(REPLAYED).is_none());
    let first_etag = first.headers()[ETAG].clone();
    let first = assert_json(first, StatusCode::OK).await;
    let events = app.event_count().await;

    let again = send(300, "w-1").await.unwrap();
    assert_eq!(again.headers()[REPLAYED], "true");
    assert_eq!(again.headers()[ETAG], first_etag);
    assert_eq!(assert_json(again, StatusCode::OK).await, first);
    assert_eq!(app.event_count().await, events, "a replay appends nothing");

    assert_problem(
        send(301, "w-1").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    // Same body on another path is another request too.
    let response = app
        .post(&format!("/accounts/{account}/deposits"))
        .header("Idempotency-Key", "w-1")
        .json(&json!({"amount": 300}))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.event_count().await, events);

    // A refusal is stored too: after a deposit that would make it succeed,
    // the same request with the same key still gets the stored 422.
    let refused = send(5_000, "w-2").await.unwrap();
    let refused = assert_problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    )
    .await;
    assert_json(
        app.post_json(
            &format!("/accounts/{account}/deposits"),
            &json!({"amount": 10_000}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let events = app.event_count().await;
    let replayed = send(5_000, "w-2").await.unwrap();
    assert_eq!(replayed.headers()[REPLAYED], "true");
    assert_eq!(
        assert_problem(
            replayed,
            StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient_funds"
        )
        .await,
        refused
    );
    assert_eq!(app.event_count().await, events);
    app.stop().await;
}

#[tokio::test]
async fn a_placed_order_is_placed_once_per_key() {
    let app = TestApp::spawn().await;
    app.create_item_at("A", 5, 100, "EUR").await;
    let body = order_body(json!([{"sku": "A", "quantity": 1, "unit_price": 100}]));
    let place = || {
        app.post("/orders")
            .header("Idempotency-Key", "order-7f3a")
            .json(&body)
            .send()
    };
    let first = assert_json(place().await.unwrap(), StatusCode::ACCEPTED).await;
    let second = place().await.unwrap();
    assert_eq!(second.headers()[REPLAYED], "true");
    assert_eq!(assert_json(second, StatusCode::ACCEPTED).await, first);
    assert_eq!(
        app.event_count().await,
        2,
        "one item, one order, one OrderPlaced"
    );
    app.stop().await;
}
