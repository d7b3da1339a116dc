//! The inventory read model holds each item's catalog price and follows
//! its changes, one event at a time (`apply`), set-based (`apply_many`)
//! and in a rebuild; an item created before prices has none.

use std::sync::Arc;

use domain::{Currency, InventoryCommand, UnitPrice};
use event_store::{ExpectedVersion, Metadata, NewEvent, StreamId};
use projections::rebuild::{self, RebuildOptions};
use projections::{Inventory, Projection};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use test_support::Harness;

type Row = (String, i64, Option<i64>, Option<String>, i64);

async fn rows(h: &Harness) -> Vec<Row> {
    sqlx::query_as(
        "SELECT sku, on_hand, unit_price, currency, version FROM read_models.inventory ORDER BY sku",
    )
    .fetch_all(&h.db.pool)
    .await
    .expect("inventory rows")
}

fn set_price(unit_price: i64, currency: Option<Currency>) -> InventoryCommand {
    InventoryCommand::SetPrice {
        unit_price: UnitPrice::new(unit_price).expect("positive"),
        currency,
    }
}

/// LAPTOP-15 created at 999.99 then repriced; OLD-1 created by a schema
/// version 1 `ItemCreated` (no price) and priced later; NEW-1 created and
/// repriced; KB-2 never repriced; OLD-2 never priced.
async fn history(h: &Harness) {
    for sku in ["LAPTOP-15", "NEW-1", "KB-2"] {
        h.create_item(sku, 5).await;
    }
    for sku in ["OLD-1", "OLD-2"] {
        let v1 = NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "ItemCreated".to_owned(),
            schema_version: 1,
            payload: json!({"sku": sku, "name": "Old", "quantity": 4}),
        };
        h.store
            .append(
                &StreamId::new("inventory", sku),
                ExpectedVersion::NoStream,
                &[v1],
                &Metadata::default(),
            )
            .await
            .expect("append a v1 ItemCreated");
    }
    for (sku, command) in [
        ("LAPTOP-15", set_price(89_999, None)),
        ("OLD-1", set_price(500, Some(Currency::EUR))),
        ("NEW-1", set_price(700, Some(Currency::USD))),
        ("LAPTOP-15", set_price(79_999, None)),
    ] {
        h.inventory(sku, command).await.expect("priced");
    }
    h.inventory(
        "OLD-1",
        InventoryCommand::Restock {
            quantity: domain::Quantity::new(1).expect("quantity"),
        },
    )
    .await
    .expect("restocked");
}

fn expected() -> Vec<Row> {
    let row = |sku: &str, on_hand, price: Option<(i64, &str)>, version| {
        (
            sku.to_owned(),
            on_hand,
            price.map(|p| p.0),
            price.map(|p| p.1.to_owned()),
            version,
        )
    };
    vec![
        row("KB-2", 5, Some((1_000, "EUR")), 1),
        row("LAPTOP-15", 5, Some((79_999, "EUR")), 3),
        row("NEW-1", 5, Some((700, "USD")), 2),
        row("OLD-1", 5, Some((500, "EUR")), 3),
        row("OLD-2", 4, None, 1),
    ]
}

#[tokio::test]
async fn prices_are_projected_set_based() {
    let h = Harness::new().await;
    history(&h).await;
    let events = h.all_events().await;
    // One batch: every stream's events folded together.
    h.projector(Inventory).apply_batch(&events).await.unwrap();
    assert_eq!(rows(&h).await, expected());
    h.drop().await;
}

#[tokio::test]
async fn prices_are_projected_one_event_at_a_time() {
    let h = Harness::new().await;
    history(&h).await;
    let events = h.all_events().await;
    let mut tx = h.db.pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('search_path', 'read_models', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    for event in &events {
        Inventory.apply(&mut tx, event).await.expect("applies");
    }
    tx.commit().await.unwrap();
    assert_eq!(rows(&h).await, expected());
    h.drop().await;
}

#[tokio::test]
async fn a_rebuild_reproduces_the_prices() {
    let h = Harness::new().await;
    history(&h).await;
    let events = h.all_events().await;
    for event in &events {
        h.projector(Inventory)
            .apply_batch(std::slice::from_ref(event))
            .await
            .unwrap();
    }
    assert_eq!(rows(&h).await, expected());
    let options = RebuildOptions {
        batch_size: 3,
        ..RebuildOptions::default()
    };
    rebuild::rebuild(
        Arc::new(Inventory),
        &h.store,
        &options,
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .expect("rebuild");
    assert_eq!(rows(&h).await, expected());
    h.drop().await;
}

#[tokio::test]
async fn a_price_is_never_zero_nor_half_there() {
    let h = Harness::new().await;
    for (unit_price, currency) in [
        ("0", "'EUR'"),
        ("-1", "'EUR'"),
        ("5", "NULL"),
        ("NULL", "'EUR'"),
    ] {
        let result = sqlx::query(&format!(
            "INSERT INTO read_models.inventory \
                (sku, name, on_hand, reserved, unit_price, currency, version, updated_at) \
             VALUES ('X', 'X', 1, 0, {unit_price}, {currency}, 1, now())"
        ))
        .execute(&h.db.pool)
        .await;
        assert!(result.is_err(), "({unit_price}, {currency}) accepted");
    }
    h.drop().await;
}
