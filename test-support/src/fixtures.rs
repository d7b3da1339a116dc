//! Domain values from plain numbers and strings, for tests that know them
//! to be valid (a typo fails the test at once).

use domain::{
    AccountId, Amount, CountryCode, Currency, CustomerId, LineToPlace, Money, OrderCommand,
    OrderId, OrderLine, Price, Quantity, ShippingAddress, Sku, UnitPrice,
};
use uuid::Uuid;

pub fn currency_of(code: &str) -> Currency {
    Currency::parse(code).expect("valid currency")
}

pub fn amount_of(minor_units: i64) -> Amount {
    Amount::new(minor_units).expect("positive amount")
}

pub fn money_of(minor_units: i64) -> Money {
    Money::new(minor_units).expect("valid money")
}

pub fn quantity_of(n: i64) -> Quantity {
    Quantity::new(n).expect("valid quantity")
}

pub fn sku_of(sku: &str) -> Sku {
    Sku::parse(sku).expect("valid sku")
}

pub fn order_id(id: Uuid) -> OrderId {
    OrderId::new(id)
}

/// A price of `unit_price` minor units in `currency`.
pub fn price_of(unit_price: i64, currency: &str) -> Price {
    Price::new(
        UnitPrice::new(unit_price).expect("positive price"),
        currency_of(currency),
    )
}

/// The price (EUR) `Harness::create_item` gives `sku`, the one [`place`]
/// orders it at: 999.99 for `LAPTOP-15`, 15.00 for `MOUSE-1`, 10.00 for any
/// other.
pub fn catalog_price(sku: &str) -> Price {
    let unit_price = match sku {
        "LAPTOP-15" => 99_999,
        "MOUSE-1" => 1_500,
        _ => 1_000,
    };
    price_of(unit_price, "EUR")
}

/// A line to place at `sku`'s [`catalog_price`], as the Command API would
/// have looked it up.
pub fn line_to_place(sku: &str, quantity: i64) -> LineToPlace {
    LineToPlace::priced(sku_of(sku), quantity_of(quantity), catalog_price(sku))
}

/// An order line (as a saga's order carries it).
pub fn line(sku: &str, quantity: i64, unit_price: i64) -> OrderLine {
    OrderLine::new(sku_of(sku), quantity_of(quantity), money_of(unit_price))
}

/// Ana's address in Madrid, in `country`.
pub fn address(country: &str) -> ShippingAddress {
    ShippingAddress::new(
        "Ana".into(),
        "Calle Mayor 1".into(),
        None,
        "Madrid".into(),
        "28013".into(),
        CountryCode::parse(country).expect("valid country"),
    )
    .expect("valid address")
}

/// Places an order in EUR of one `LAPTOP-15` at 999.99 and two `MOUSE-1` at
/// 15.00, to Spain.
pub fn place(order: Uuid, customer: Uuid, account: Uuid) -> OrderCommand {
    OrderCommand::Place {
        order_id: OrderId::new(order),
        customer_id: CustomerId::new(customer),
        account_id: AccountId::new(account),
        currency: currency_of("EUR"),
        lines: vec![line_to_place("LAPTOP-15", 1), line_to_place("MOUSE-1", 2)],
        shipping_address: address("ES"),
    }
}
