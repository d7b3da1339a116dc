//! Prices live in the catalog, server side: an order is placed at the
//! catalog's price looked up in the event store when it is decided, and
//! every refusal appends nothing.

use domain::{DomainEvent, InventoryEvent, OrderEvent};
use event_store::{ExpectedVersion, Metadata, NewEvent, StreamId};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem, order_body};
use test_support::store::stream_events;

fn line(sku: &str, quantity: i64) -> Value {
    json!({"sku": sku, "quantity": quantity})
}

fn line_at(sku: &str, quantity: i64, unit_price: i64) -> Value {
    json!({"sku": sku, "quantity": quantity, "unit_price": unit_price})
}

/// Places an order that must be accepted; its `OrderPlaced` (lines, total).
async fn place(app: &TestApp, lines: Value) -> (Vec<(String, i64, i64)>, i64) {
    let answer = assert_json(
        app.post_json("/orders", &order_body(lines)).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let order_id = answer["order_id"].as_str().expect("order_id");
    let events: Vec<OrderEvent> = stream_events(&app.store(), &format!("order-{order_id}")).await;
    let [OrderEvent::OrderPlaced { lines, total, .. }] = events.as_slice() else {
        panic!("expected one OrderPlaced, got {events:?}");
    };
    let lines = lines
        .iter()
        .map(|l| {
            (
                l.sku.to_string(),
                i64::from(l.quantity),
                l.unit_price.amount(),
            )
        })
        .collect();
    (lines, total.amount())
}

/// Sends an order that must be refused with 422 `code`, appending nothing.
async fn refused(app: &TestApp, lines: Value, code: &str) -> Value {
    let before = app.event_count().await;
    let problem = assert_problem(
        app.post_json("/orders", &order_body(lines)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
    )
    .await;
    assert_eq!(app.event_count().await, before, "{code} appended nothing");
    problem
}

#[tokio::test]
async fn an_order_is_placed_at_the_catalog_price() {
    let app = TestApp::spawn().await;
    app.create_item_at("LAPTOP-15", 5, 99_999, "EUR").await;
    app.create_item_at("MOUSE", 9, 1_500, "EUR").await;

    // Without a client price, and with the catalog's own.
    let (lines, total) = place(
        &app,
        json!([line("LAPTOP-15", 2), line_at("MOUSE", 3, 1_500)]),
    )
    .await;
    assert_eq!(
        lines,
        [
            ("LAPTOP-15".to_owned(), 2, 99_999),
            ("MOUSE".to_owned(), 3, 1_500)
        ]
    );
    assert_eq!(total, 2 * 99_999 + 3 * 1_500, "the total is the catalog's");
    app.stop().await;
}

#[tokio::test]
async fn a_price_change_makes_the_old_price_price_changed() {
    let app = TestApp::spawn().await;
    app.create_item_at("LAPTOP-15", 5, 99_999, "EUR").await;
    place(&app, json!([line_at("LAPTOP-15", 1, 99_999)])).await;

    let answer = assert_json(
        app.post_json("/inventory/LAPTOP-15/price", &json!({"unit_price": 89_999}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["sku"], "LAPTOP-15");
    assert_eq!(answer["version"], 2);
    let events: Vec<InventoryEvent> = stream_events(&app.store(), "inventory-LAPTOP-15").await;
    assert!(
        matches!(events.last(), Some(InventoryEvent::PriceChanged { price }) if price.unit_price.amount() == 89_999 && price.currency.as_str() == "EUR"),
        "{events:?}"
    );

    // The client still shows 999.99: refused, with nothing appended.
    let problem = refused(
        &app,
        json!([line_at("LAPTOP-15", 1, 99_999)]),
        "price_changed",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("89999"),
        "{problem}"
    );
    // At the new price, or without a price, it goes through at 899.99.
    let (lines, total) = place(&app, json!([line_at("LAPTOP-15", 2, 89_999)])).await;
    assert_eq!(lines, [("LAPTOP-15".to_owned(), 2, 89_999)]);
    assert_eq!(total, 2 * 89_999);
    let (_, total) = place(&app, json!([line("LAPTOP-15", 1)])).await;
    assert_eq!(total, 89_999);

    // Setting the current price again appends nothing.
    let before = app.event_count().await;
    let answer = assert_json(
        app.post_json("/inventory/LAPTOP-15/price", &json!({"unit_price": 89_999}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["version"], 2);
    assert_eq!(app.event_count().await, before);
    app.stop().await;
}

#[tokio::test]
async fn zero_and_negative_prices_are_refused() {
    let app = TestApp::spawn().await;
    app.create_item_at("LAPTOP-15", 5, 99_999, "EUR").await;
    let before = app.event_count().await;
    let create = |unit_price: Value| json!({"sku": "NEW", "name": "New", "quantity": 1, "unit_price": unit_price, "currency": "EUR"});
    for (body, status, code) in [
        (
            create(json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            create(json!(-1)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            create(json!(i64::MIN)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (create(json!(12.5)), StatusCode::BAD_REQUEST, "invalid_body"),
        (
            create(json!("100")),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"sku": "NEW", "name": "New", "quantity": 1, "currency": "EUR"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"sku": "NEW", "name": "New", "quantity": 1, "unit_price": 5, "currency": "eur"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_currency",
        ),
    ] {
        assert_problem(app.post_json("/inventory", &body).await, status, code).await;
    }
    for (body, status, code) in [
        (
            json!({"unit_price": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!({"unit_price": -5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        ),
        (
            json!({"unit_price": 1.5}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (json!({}), StatusCode::BAD_REQUEST, "invalid_body"),
        (
            json!({"unit_price": 5, "discount": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ] {
        assert_problem(
            app.post_json("/inventory/LAPTOP-15/price", &body).await,
            status,
            code,
        )
        .await;
    }
    // The price a client shows must be a price too.
    for unit_price in [0, -1] {
        assert_problem(
            app.post_json(
                "/orders",
                &order_body(json!([line_at("LAPTOP-15", 1, unit_price)])),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
        )
        .await;
    }
    assert_eq!(app.event_count().await, before, "refusals append nothing");
    app.stop().await;
}

#[tokio::test]
async fn pricing_checks_the_sku_first() {
    let app = TestApp::spawn().await;
    assert_problem(
        app.post_json("/inventory/laptop/price", &json!({"unit_price": 0}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
    )
    .await;
    assert_problem(
        app.post_json("/inventory/GHOST/price", &json!({"unit_price": 5}))
            .await,
        StatusCode::NOT_FOUND,
        "item_not_found",
    )
    .await;
    assert_eq!(app.event_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_sku_is_unknown_sku() {
    let app = TestApp::spawn().await;
    app.create_item_at("LAPTOP-15", 5, 99_999, "EUR").await;
    refused(
        &app,
        json!([line("LAPTOP-15", 1), line("GHOST", 1)]),
        "unknown_sku",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn an_item_priced_in_another_currency_is_currency_mismatch() {
    let app = TestApp::spawn().await;
    app.create_item_at("LAPTOP-15", 5, 99_999, "EUR").await;
    app.create_item_at("CABLE-US", 5, 900, "USD").await;
    refused(
        &app,
        json!([line("LAPTOP-15", 1), line("CABLE-US", 1)]),
        "currency_mismatch",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_total_past_i64_at_catalog_prices_is_invalid_order() {
    let app = TestApp::spawn().await;
    app.create_item_at("GOLD", 5, i64::MAX / 2 + 1, "EUR").await;
    refused(&app, json!([line("GOLD", 2)]), "invalid_order").await;
    app.stop().await;
}

/// An item created before prices existed: `ItemCreated` schema version 1,
/// appended as it was stored then.
#[tokio::test]
async fn an_item_created_before_prices_is_item_not_priced_until_priced() {
    let app = TestApp::spawn().await;
    let old = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "ItemCreated".to_owned(),
        schema_version: 1,
        payload: json!({"sku": "OLD-1", "name": "Old", "quantity": 4}),
    };
    app.store()
        .append(
            &StreamId::new("inventory", "OLD-1"),
            ExpectedVersion::NoStream,
            &[old],
            &Metadata::default(),
        )
        .await
        .expect("append a v1 ItemCreated");

    refused(&app, json!([line("OLD-1", 1)]), "item_not_priced").await;
    refused(&app, json!([line_at("OLD-1", 1, 500)]), "item_not_priced").await;

    // Its first price needs a currency.
    let before = app.event_count().await;
    assert_problem(
        app.post_json("/inventory/OLD-1/price", &json!({"unit_price": 500}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "currency_required",
    )
    .await;
    assert_eq!(app.event_count().await, before);
    let answer = assert_json(
        app.post_json(
            "/inventory/OLD-1/price",
            &json!({"unit_price": 500, "currency": "EUR"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["version"], 2);

    let (lines, total) = place(&app, json!([line("OLD-1", 3)])).await;
    assert_eq!(lines, [("OLD-1".to_owned(), 3, 500)]);
    assert_eq!(total, 1_500);
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_shows_prices() {
    let app = TestApp::spawn().await;
    let document = assert_json(app.get("/openapi.json").await, StatusCode::OK).await;
    assert!(document["paths"]["/inventory/{sku}/price"]["post"].is_object());
    let schemas = &document["components"]["schemas"];
    for (schema, field) in [
        ("CreateItemRequest", "unit_price"),
        ("CreateItemRequest", "currency"),
        ("SetPriceRequest", "unit_price"),
        ("SetPriceRequest", "currency"),
        ("OrderLineRequest", "unit_price"),
    ] {
        assert!(
            schemas[schema]["properties"][field].is_object(),
            "{schema}.{field} undocumented"
        );
    }
    let required = |schema: &str| schemas[schema]["required"].clone();
    assert!(required("CreateItemRequest")
        .as_array()
        .unwrap()
        .contains(&json!("unit_price")));
    assert!(!required("OrderLineRequest")
        .as_array()
        .unwrap()
        .contains(&json!("unit_price")));
    app.stop().await;
}

#[test]
fn the_v1_payload_in_these_tests_is_what_the_domain_upcasts() {
    let event = InventoryEvent::from_stored(
        "ItemCreated",
        1,
        json!({"sku": "OLD-1", "name": "Old", "quantity": 4}),
    )
    .expect("v1 decodes");
    assert!(matches!(
        event,
        InventoryEvent::ItemCreated { price: None, .. }
    ));
    assert_eq!(event.schema_version(), 2);
}
