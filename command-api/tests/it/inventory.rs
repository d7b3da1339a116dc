//! Inventory commands.

use domain::{Inventory, InventoryEvent};
use event_store::Repository;
use reqwest::header::ETAG;
use reqwest::StatusCode;
use serde_json::json;

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem};
use test_support::store::stream_events;

#[tokio::test]
async fn create_and_restock() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/inventory",
            &json!({"sku": "LAPTOP-15", "name": "Laptop 15\"", "quantity": 10,
                    "unit_price": 99_999, "currency": "EUR"}),
        )
        .await;
    assert_eq!(response.headers()[ETAG], "\"1\"");
    let body = assert_json(response, StatusCode::CREATED).await;
    assert_eq!(body["sku"], "LAPTOP-15");
    assert_eq!(body["version"], 1);
    assert!(body["position"].as_i64().unwrap() >= 1);

    let body = assert_json(
        app.post_json("/inventory/LAPTOP-15/restock", &json!({"quantity": 5}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["sku"], "LAPTOP-15");
    assert_eq!(body["version"], 2);

    let loaded = Repository::<Inventory>::new(app.store())
        .load("LAPTOP-15")
        .await
        .unwrap();
    assert_eq!(loaded.state.on_hand, 15);
    assert_eq!(
        loaded
            .state
            .price
            .map(|p| (p.unit_price.amount(), p.currency.to_string())),
        Some((99_999, "EUR".to_owned()))
    );
    assert_eq!(loaded.state.available(), 15);
    let events: Vec<InventoryEvent> = stream_events(&app.store(), "inventory-LAPTOP-15").await;
    assert_eq!(events.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn existing_and_unknown_skus() {
    let app = TestApp::spawn().await;
    app.create_item("MOUSE", 3).await;
    assert_problem(
        app.post_json(
            "/inventory",
            &json!({"sku": "MOUSE", "name": "Mouse", "quantity": 1,
                    "unit_price": 1_500, "currency": "EUR"}),
        )
        .await,
        StatusCode::CONFLICT,
        "item_already_exists",
    )
    .await;
    assert_problem(
        app.post_json("/inventory/KEYBOARD/restock", &json!({"quantity": 1}))
            .await,
        StatusCode::NOT_FOUND,
        "item_not_found",
    )
    .await;
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}
