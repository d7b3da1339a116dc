//! Given/when/then: an order is placed at the catalog's prices, looked up
//! on the command side and carried in the command.

use domain::{
    CatalogPrice, Currency, ErrorKind, LineToPlace, Order, OrderError, Price, Quantity, Sku,
    UnitPrice,
};

use super::*;
use test_support::decider::given;

fn eur(unit_price: i64) -> Price {
    Price::new(UnitPrice::new(unit_price).expect("positive"), Currency::EUR)
}

fn to_place(sku: &str, quantity: i64, catalog: CatalogPrice) -> LineToPlace {
    LineToPlace {
        sku: Sku::parse(sku).expect("valid sku"),
        quantity: Quantity::new(quantity).expect("valid quantity"),
        expected_price: None,
        catalog,
    }
}

fn expecting(mut line: LineToPlace, unit_price: i64) -> LineToPlace {
    line.expected_price = Some(UnitPrice::new(unit_price).expect("positive"));
    line
}

#[test]
fn the_order_records_the_catalog_prices_and_their_total() {
    let lines = vec![
        to_place("LAPTOP-15", 2, CatalogPrice::Priced(eur(99_999))),
        expecting(
            to_place("MOUSE", 3, CatalogPrice::Priced(eur(1_500))),
            1_500,
        ),
    ];
    let state = given::<Order>([]).when(place_lines(lines)).then([placed(
        vec![line("LAPTOP-15", 2, 99_999), line("MOUSE", 3, 1_500)],
        2 * 99_999 + 3 * 1_500,
    )]);
    assert_eq!(state.total.amount(), 204_498);
}

#[test]
fn a_price_the_client_saw_that_is_no_longer_the_catalogs_is_price_changed() {
    for seen in [89_999, 100_000] {
        let error = given::<Order>([])
            .when(place_lines(vec![expecting(
                to_place("LAPTOP-15", 1, CatalogPrice::Priced(eur(99_999))),
                seen,
            )]))
            .then_error_kind("price_changed", ErrorKind::Rejected);
        assert!(
            matches!(error, OrderError::PriceChanged { current, .. } if current.amount() == 99_999)
        );
    }
}

#[test]
fn an_unknown_sku_is_unknown_sku() {
    given::<Order>([])
        .when(place_lines(vec![
            to_place("LAPTOP-15", 1, CatalogPrice::Priced(eur(99_999))),
            to_place("GHOST", 1, CatalogPrice::Unknown),
        ]))
        .then_error_kind("unknown_sku", ErrorKind::Rejected);
}

#[test]
fn an_unpriced_item_is_item_not_priced() {
    for line in [
        to_place("OLD", 1, CatalogPrice::Unpriced),
        expecting(to_place("OLD", 1, CatalogPrice::Unpriced), 100),
    ] {
        given::<Order>([])
            .when(place_lines(vec![line]))
            .then_error_kind("item_not_priced", ErrorKind::Rejected);
    }
}

#[test]
fn an_item_priced_in_another_currency_is_currency_mismatch() {
    let usd = Price::new(UnitPrice::new(100).expect("positive"), Currency::USD);
    given::<Order>([])
        .when(place_lines(vec![to_place(
            "A",
            1,
            CatalogPrice::Priced(usd),
        )]))
        .then_error_kind("currency_mismatch", ErrorKind::Rejected);
}

#[test]
fn a_total_overflowing_at_catalog_prices_is_invalid_order() {
    given::<Order>([])
        .when(place_lines(vec![to_place(
            "A",
            2,
            CatalogPrice::Priced(eur(i64::MAX / 2 + 1)),
        )]))
        .then_error("invalid_order");
}

#[test]
fn the_shape_of_the_lines_is_checked_before_the_catalog() {
    given::<Order>([])
        .when(place_lines(vec![
            to_place("A", 1, CatalogPrice::Unknown),
            to_place("A", 1, CatalogPrice::Unknown),
        ]))
        .then_error("invalid_order");
}
