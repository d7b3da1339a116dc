//! `GET /inventory/{sku}` and `GET /inventory` show each item's catalog
//! price, null for an item created before prices until it is priced.

use domain::{Currency, Inventory, InventoryCommand, UnitPrice};
use event_store::{ExpectedVersion, Metadata, NewEvent, StreamId};
use serde_json::json;
use uuid::Uuid;

use test_support::Harness;

#[tokio::test]
async fn items_show_their_price_and_its_changes() {
    let h = Harness::new().await;
    h.create_item("LAPTOP-15", 10).await;
    let v1 = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "ItemCreated".to_owned(),
        schema_version: 1,
        payload: json!({"sku": "OLD-1", "name": "Old", "quantity": 4}),
    };
    h.store
        .append(
            &StreamId::new("inventory", "OLD-1"),
            ExpectedVersion::NoStream,
            &[v1],
            &Metadata::default(),
        )
        .await
        .expect("append a v1 ItemCreated");
    h.project_all().await;

    let item = h.get("/inventory/LAPTOP-15").await;
    assert_eq!(item.status, 200, "{}", item.text);
    assert_eq!(
        (&item.json["unit_price"], &item.json["currency"]),
        (&json!(99_999), &json!("EUR"))
    );
    let old = h.get("/inventory/OLD-1").await;
    assert_eq!(old.status, 200, "{}", old.text);
    assert!(old.json["unit_price"].is_null() && old.json["currency"].is_null());
    assert!(old.json.as_object().unwrap().contains_key("unit_price"));

    let price = |unit_price, currency| InventoryCommand::SetPrice {
        unit_price: UnitPrice::new(unit_price).unwrap(),
        currency,
    };
    h.exec::<Inventory>("LAPTOP-15", price(89_999, None)).await;
    h.exec::<Inventory>("OLD-1", price(500, Some(Currency::USD)))
        .await;
    h.project_all().await;

    let list = h.get("/inventory").await;
    assert_eq!(list.status, 200, "{}", list.text);
    let prices: Vec<_> = list.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["sku"].clone(),
                i["unit_price"].clone(),
                i["currency"].clone(),
                i["version"].clone(),
            )
        })
        .collect();
    assert_eq!(
        prices,
        vec![
            (json!("LAPTOP-15"), json!(89_999), json!("EUR"), json!(2)),
            (json!("OLD-1"), json!(500), json!("USD"), json!(2)),
        ]
    );
    h.drop().await;
}

#[tokio::test]
async fn the_openapi_document_shows_the_price_fields() {
    let h = Harness::new().await;
    let document = h.get("/openapi.json").await;
    assert_eq!(document.status, 200);
    let view = &document.json["components"]["schemas"]["InventoryView"]["properties"];
    assert!(
        view["unit_price"].is_object() && view["currency"].is_object(),
        "{view}"
    );
    h.drop().await;
}
