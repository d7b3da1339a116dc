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
use test_support::eventually;
use test_support::http::{assert_json, assert_problem, order_body};
use test_support::store::stream_events;

/// How often the gate measures in these tests.
const REFRESH: Duration = Duration::from_millis(10);

fn one_line() -> Value {
    order_body(json!([{"sku": "HOT", "quantity": 1, "unit_price": 10}]))
}

/// Waits until the gate's measure decides an order as `status` does
/// (503: refused for the backlog; 422: admitted), probing with an order for
/// a SKU no one sells, which the catalog refuses after the gate admitted it:
/// the probes append nothing.
async fn until_the_gate_answers(app: &TestApp, status: StatusCode) {
    let probe = order_body(json!([{"sku": "NOT-SOLD", "quantity": 1, "unit_price": 10}]));
    eventually(
        &format!("the backlog gate to answer {status}"),
        Duration::from_secs(30),
        REFRESH,
        || {
            let request = app.post("/orders").json(&probe).send();
            async move {
                let answer = request.await.map_err(|e| e.to_string())?.status();
                if answer == status {
                    Ok(())
                } else {
                    Err(answer.to_string())
                }
            }
        },
    )
    .await;
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
        config.saga_backlog_refresh = REFRESH;
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
    until_the_gate_answers(&app, StatusCode::SERVICE_UNAVAILABLE).await;

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
    until_the_gate_answers(&app, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_json(
        app.post_json("/orders", &one_line()).await,
        StatusCode::ACCEPTED,
    )
    .await;
    app.stop().await;
}

/// The gate measures in the background, and a request takes the last
/// measure: an order never waits for a measurement, however slow the query
/// (it once ran under a lock that every order took, and the p99 of
/// `POST /orders` grew with the query's time).
#[tokio::test]
async fn an_order_does_not_wait_for_a_backlog_measurement_in_flight() {
    let app = TestApp::spawn_with(|config| {
        config.saga_backlog_limit = 1_000;
        config.saga_backlog_refresh = REFRESH;
    })
    .await;
    app.create_item_at("HOT", 100, 10, "EUR").await;
    assert_json(
        app.post_json("/orders", &one_line()).await,
        StatusCode::ACCEPTED,
    )
    .await;

    // Every measurement reads saga.due: while this lock is held, the next
    // one waits for it (and placing an order never reads saga.due).
    let mut blocker = app.db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE saga.due IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("lock saga.due");
    // An order arriving now, for a gate that measures when a request comes.
    let first = tokio::spawn(app.post("/orders").json(&one_line()).send());
    eventually(
        "a backlog measurement waiting for the lock",
        Duration::from_secs(30),
        REFRESH,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                 AND query LIKE '%saga.due%'",
            )
            .fetch_one(&app.db.pool)
            .await
            .map_err(|e| e.to_string())?;
            if waiting > 0 {
                Ok(())
            } else {
                Err("none waits".to_owned())
            }
        },
    )
    .await;

    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        app.post_json("/orders", &one_line()),
    )
    .await
    .expect("an order answered while the measurement waits");
    assert_json(answered, StatusCode::ACCEPTED).await;
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first order answered while the measurement waits")
        .expect("the first order's task")
        .expect("the first order sent");
    assert_json(first, StatusCode::ACCEPTED).await;

    blocker.rollback().await.expect("unlock saga.due");
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
