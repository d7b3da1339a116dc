//! The saga backlog: orders placed whose saga has not started yet. Past `PURSER_SAGA_BACKLOG_LIMIT` a new order is
//! refused with 503 `saga_backlog` and `Retry-After`, appending nothing.

use std::time::Duration;

use domain::{FulfilmentSaga, OrderEvent, SagaCommand, SagaOrder};
use event_store::{ExecuteOptions, Executed, Repository};
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem, order_body};
use test_support::store::stream_events;

fn one_line() -> Value {
    order_body(json!([{"sku": "HOT", "quantity": 1, "unit_price": 10}]))
}

/// The backlog as the Command API measures it.
async fn backlog(app: &TestApp) -> u64 {
    saga::Backlog::measure(&app.db.pool)
        .await
        .expect("measure")
        .orders
}

/// Starts the saga of `order` as the orchestrator would (its first event).
async fn start_saga(app: &TestApp, order: &str) {
    let events: Vec<OrderEvent> = stream_events(&app.store(), &format!("order-{order}")).await;
    let Some(OrderEvent::OrderPlaced {
        order_id,
        customer_id,
        account_id,
        currency,
        lines,
        total,
        shipping_address,
    }) = events.into_iter().next()
    else {
        panic!("no OrderPlaced for {order}");
    };
    let start = SagaCommand::Start {
        saga_id: Uuid::now_v7(),
        order: SagaOrder {
            order_id,
            customer_id,
            account_id,
            currency,
            lines,
            total,
            shipping_address,
        },
    };
    let executed = Repository::<FulfilmentSaga>::new(app.store())
        .execute(order, &start, ExecuteOptions::default(), |_| ())
        .await
        .expect("start");
    assert!(matches!(executed, Executed::Done(_)), "{executed:?}");
}

#[tokio::test]
async fn past_the_backlog_limit_an_order_is_refused_with_retry_after_and_appends_nothing() {
    let app = TestApp::spawn_with(|config| {
        config.saga_backlog_limit = 3;
        // Measured on every request: the test needs no waiting.
        config.saga_backlog_refresh = Duration::ZERO;
    })
    .await;
    app.create_item_at("HOT", 100, 10, "EUR").await;
    assert_eq!(backlog(&app).await, 0);

    let mut orders = Vec::new();
    for _ in 0..3 {
        let answer = assert_json(
            app.post_json("/orders", &one_line()).await,
            StatusCode::ACCEPTED,
        )
        .await;
        orders.push(answer["order_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(backlog(&app).await, 3);

    // No saga runs: the fourth order would wait behind three.
    let events = app.event_count().await;
    let response = app.post_json("/orders", &one_line()).await;
    let retry_after: u64 = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    let problem = assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "saga_backlog").await;
    assert!(
        problem["detail"].as_str().expect("detail").contains('3'),
        "{problem}"
    );
    assert_eq!(
        app.event_count().await,
        events,
        "a refused order appends nothing"
    );

    // A saga starts: the backlog is below the limit again.
    start_saga(&app, &orders[0]).await;
    assert_eq!(backlog(&app).await, 2);
    assert_json(
        app.post_json("/orders", &one_line()).await,
        StatusCode::ACCEPTED,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn without_a_limit_the_backlog_is_only_measured_and_shown_in_metrics() {
    let app = TestApp::spawn_with(|config| {
        config.saga_backlog_limit = 0;
        config.saga_backlog_refresh = Duration::ZERO;
    })
    .await;
    app.create_item_at("HOT", 100, 10, "EUR").await;
    for _ in 0..4 {
        assert_json(
            app.post_json("/orders", &one_line()).await,
            StatusCode::ACCEPTED,
        )
        .await;
    }
    assert_eq!(backlog(&app).await, 4);

    // And /metrics shows it: how many wait, and for how long the oldest.
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.expect("metrics text");
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .expect("a number")
    };
    assert_eq!(sample("purser_saga_backlog_orders"), 4.0);
    assert!(sample("purser_saga_backlog_oldest_seconds") > 0.0);
    app.stop().await;
}

/// The document says where `saga_backlog` can come from: the 503 of
/// `POST /orders` (with `Retry-After`), and no other operation, so a client
/// (and the contract test's hook, which accepts it only where listed) knows
/// which requests may be refused for the backlog.
#[test]
fn the_document_lists_saga_backlog_on_post_orders_only() {
    let document = service::openapi::render(&command_api::openapi::document());
    let mut listed = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            let codes = &operation["responses"]["503"]["x-purser-codes"];
            if codes
                .as_array()
                .is_some_and(|codes| codes.iter().any(|c| c == "saga_backlog"))
            {
                listed.push(format!("{method} {path}"));
            }
        }
    }
    assert_eq!(listed, ["post /orders"]);
    let answer = &document["paths"]["/orders"]["post"]["responses"]["503"];
    assert!(answer["headers"].get("Retry-After").is_some(), "{answer}");
    assert_eq!(
        answer["content"]["application/problem+json"]["schema"]["allOf"][1]["properties"]["status"]
            ["const"],
        503,
        "{answer}"
    );
}
