//! Order commands: place (202, the saga takes over) and cancel.

use domain::{Order, OrderCommand, OrderEvent, OrderId};
use event_store::{ExecuteOptions, Executed, Repository};
use reqwest::header::ETAG;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem, order_body};
use test_support::store::stream_events;

#[tokio::test]
async fn place_appends_order_placed_and_answers_202() {
    let app = TestApp::spawn().await;
    app.create_item_at("LAPTOP-15", 5, 99_999, "EUR").await;
    app.create_item_at("MOUSE", 5, 1_500, "EUR").await;
    let body = order_body(json!([
        {"sku": "LAPTOP-15", "quantity": 1, "unit_price": 99_999},
        {"sku": "MOUSE", "quantity": 3, "unit_price": 1_500}
    ]));
    let response = app.post_json("/orders", &body).await;
    assert_eq!(response.headers()[ETAG], "\"1\"");
    let answer = assert_json(response, StatusCode::ACCEPTED).await;
    let order_id: Uuid = answer["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(order_id.get_version_num(), 7);
    assert_eq!(answer["status"], "placed");
    assert_eq!(answer["version"], 1);
    assert!(answer["position"].as_i64().is_some());

    let events: Vec<OrderEvent> = stream_events(&app.store(), &format!("order-{order_id}")).await;
    let [OrderEvent::OrderPlaced {
        total,
        lines,
        customer_id,
        shipping_address,
        ..
    }] = events.as_slice()
    else {
        panic!("expected one OrderPlaced, got {events:?}");
    };
    assert_eq!(total.amount(), 99_999 + 3 * 1_500);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        customer_id.to_string(),
        body["customer_id"].as_str().unwrap()
    );
    assert_eq!(shipping_address.country().as_str(), "ES");
    app.stop().await;
}

#[tokio::test]
async fn cancel_requests_cancellation_until_shipped() {
    let app = TestApp::spawn().await;
    app.create_item_at("A", 5, 10, "EUR").await;
    app.create_item_at("B", 5, 5, "EUR").await;
    let place = |lines| order_body(lines);
    let answer = assert_json(
        app.post_json(
            "/orders",
            &place(json!([{"sku": "A", "quantity": 1, "unit_price": 10}])),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let order_id = answer["order_id"].as_str().unwrap().to_owned();

    let response = app
        .post_json(
            &format!("/orders/{order_id}/cancel"),
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(response.headers()[ETAG], "\"2\"");
    let answer = assert_json(response, StatusCode::ACCEPTED).await;
    assert_eq!(answer["order_id"], order_id);
    assert_eq!(answer["version"], 2);
    let events: Vec<OrderEvent> = stream_events(&app.store(), &format!("order-{order_id}")).await;
    assert_eq!(
        events.last(),
        Some(&OrderEvent::CancellationRequested {
            reason: "changed my mind".to_owned()
        })
    );

    // A second request is a no-op: same version, nothing appended.
    let answer = assert_json(
        app.post_json(&format!("/orders/{order_id}/cancel"), &json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(answer["version"], 2);
    // The two items, the order placed and its cancellation requested.
    assert_eq!(app.event_count().await, 4);

    // A shipped order can no longer be cancelled. The saga ships; here the
    // repository stands in for it.
    let shipped = assert_json(
        app.post_json(
            "/orders",
            &place(json!([{"sku": "B", "quantity": 2, "unit_price": 5}])),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let shipped_id = shipped["order_id"].as_str().unwrap().to_owned();
    let repository = Repository::<Order>::new(app.store());
    for command in [
        OrderCommand::MarkReserved,
        OrderCommand::MarkPaid,
        OrderCommand::MarkShipped {
            tracking_number: "TRACK-1".to_owned(),
        },
    ] {
        let executed = repository
            .execute(&shipped_id, &command, ExecuteOptions::default(), |_| ())
            .await
            .unwrap();
        assert!(matches!(executed, Executed::Done(_)));
    }
    let before = app.event_count().await;
    assert_problem(
        app.post_json(
            &format!("/orders/{shipped_id}/cancel"),
            &json!({"reason": "late"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "order_not_cancellable",
    )
    .await;
    assert_eq!(app.event_count().await, before);

    assert_problem(
        app.post_json(
            &format!("/orders/{}/cancel", OrderId::new(Uuid::now_v7())),
            &json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "order_not_found",
    )
    .await;
    assert_eq!(app.event_count().await, before);
    app.stop().await;
}
