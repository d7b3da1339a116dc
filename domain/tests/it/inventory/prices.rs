//! Given/when/then: an item's price, and items created before prices.

use domain::{
    Aggregate, CatalogPrice, Currency, DomainEvent, ErrorKind, Inventory, InventoryCommand as C,
    InventoryEvent as E, InventoryState, UnitPrice,
};
use serde_json::json;

use super::*;
use test_support::decider::given;

fn set_price(unit_price: i64, currency: Option<Currency>) -> C {
    C::SetPrice {
        unit_price: UnitPrice::new(unit_price).expect("positive"),
        currency,
    }
}

/// `ItemCreated` as schema version 1 stored it: no price.
fn created_v1(quantity: i64) -> E {
    E::from_stored(
        "ItemCreated",
        1,
        json!({"sku": "LAPTOP-15", "name": "Laptop 15\"", "quantity": quantity}),
    )
    .expect("a v1 ItemCreated decodes")
}

#[test]
fn a_created_item_carries_its_price() {
    let state = given::<Inventory>([])
        .when(create_laptop())
        .then([created(10)]);
    assert_eq!(state.price, Some(laptop_price()));
    assert_eq!(state.catalog_price(), CatalogPrice::Priced(laptop_price()));
}

fn create_laptop() -> C {
    C::Create {
        sku: sku(),
        name: "Laptop 15\"".to_owned(),
        quantity: qty(10),
        price: laptop_price(),
    }
}

#[test]
fn a_price_change_applies() {
    let state = given::<Inventory>([created(10)])
        .when(set_price(89_999, None))
        .then([E::PriceChanged {
            price: price(89_999),
        }]);
    assert_eq!(state.catalog_price(), CatalogPrice::Priced(price(89_999)));
    assert_eq!((state.on_hand, state.reserved), (10, 0), "stock untouched");
}

#[test]
fn a_price_change_may_change_the_currency() {
    let usd = domain::Price::new(UnitPrice::new(500).expect("positive"), Currency::USD);
    let state = given::<Inventory>([created(10)])
        .when(set_price(500, Some(Currency::USD)))
        .then([E::PriceChanged { price: usd }]);
    assert_eq!(state.price, Some(usd));
}

#[test]
fn setting_the_current_price_appends_nothing() {
    given::<Inventory>([created(10)])
        .when(set_price(99_999, None))
        .then_nothing();
    given::<Inventory>([created(10)])
        .when(set_price(99_999, Some(Currency::EUR)))
        .then_nothing();
}

#[test]
fn pricing_a_missing_item_is_not_found() {
    given::<Inventory>([])
        .when(set_price(1, Some(Currency::EUR)))
        .then_error_kind("item_not_found", ErrorKind::NotFound);
}

#[test]
fn a_zero_or_negative_price_cannot_be_built() {
    assert!(UnitPrice::new(0).is_err());
    assert!(UnitPrice::new(-1).is_err());
    assert!(UnitPrice::new(i64::MIN).is_err());
}

#[test]
fn a_v1_item_upcasts_to_an_item_without_a_price() {
    assert_eq!(
        created_v1(10),
        E::ItemCreated {
            sku: sku(),
            name: "Laptop 15\"".to_owned(),
            quantity: qty(10),
            price: None,
        }
    );
    let state = Inventory::fold(InventoryState::default(), &[created_v1(10)]);
    assert!(state.exists);
    assert_eq!(state.on_hand, 10);
    assert_eq!(state.catalog_price(), CatalogPrice::Unpriced);
}

#[test]
fn an_unpriced_item_is_priced_with_a_currency() {
    given::<Inventory>([created_v1(10)])
        .when(set_price(1_000, None))
        .then_error_kind("currency_required", ErrorKind::Rejected);
    let state = given::<Inventory>([created_v1(10)])
        .when(set_price(1_000, Some(Currency::EUR)))
        .then([E::PriceChanged {
            price: price(1_000),
        }]);
    assert_eq!(state.catalog_price(), CatalogPrice::Priced(price(1_000)));
}

#[test]
fn price_payloads_have_the_documented_shape() {
    let changed = E::PriceChanged {
        price: price(89_999),
    };
    assert_eq!(
        changed.to_payload(),
        json!({"price": {"unit_price": 89_999, "currency": "EUR"}})
    );
    assert_eq!(
        (changed.event_type(), changed.schema_version()),
        ("PriceChanged", 1)
    );
    // A stored price is validated like any other: zero is no price.
    assert!(matches!(
        E::from_stored(
            "PriceChanged",
            1,
            json!({"price": {"unit_price": 0, "currency": "EUR"}})
        ),
        Err(domain::DecodeError::Payload { .. })
    ));
    assert!(matches!(
        E::from_stored(
            "ItemCreated",
            2,
            json!({"sku": "A", "name": "A", "quantity": 1, "price": {"unit_price": -1, "currency": "EUR"}})
        ),
        Err(domain::DecodeError::Payload { .. })
    ));
    assert!(matches!(
        E::from_stored("ItemCreated", 3, json!({})),
        Err(domain::DecodeError::UnknownType {
            schema_version: 3,
            ..
        })
    ));
}
