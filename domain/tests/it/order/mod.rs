mod prices;
mod properties;
mod rules;

use domain::{
    AccountId, CountryCode, Currency, CustomerId, LineToPlace, Money, OrderCommand, OrderEvent,
    OrderId, OrderLine, Price, Quantity, ShippingAddress, Sku, UnitPrice,
};
use uuid::Uuid;

pub fn order_id() -> OrderId {
    OrderId::new(Uuid::from_u128(0x0D01))
}

pub fn line(sku: &str, quantity: i64, unit_price: i64) -> OrderLine {
    OrderLine::new(
        Sku::parse(sku).expect("valid sku"),
        Quantity::new(quantity).expect("valid quantity"),
        Money::new(unit_price).expect("valid price"),
    )
}

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

/// Places `lines`, each of an item the catalog holds at the line's price in
/// EUR (so every price must be `> 0`).
pub fn place(lines: Vec<OrderLine>) -> OrderCommand {
    place_lines(
        lines
            .into_iter()
            .map(|l| {
                let price = UnitPrice::new(l.unit_price.amount()).expect("a positive price");
                LineToPlace::priced(l.sku, l.quantity, Price::new(price, Currency::EUR))
            })
            .collect(),
    )
}

/// Places `lines` as given, catalog facts included.
pub fn place_lines(lines: Vec<LineToPlace>) -> OrderCommand {
    OrderCommand::Place {
        order_id: order_id(),
        customer_id: CustomerId::new(Uuid::from_u128(0xC1)),
        account_id: AccountId::new(Uuid::from_u128(0xA1)),
        currency: Currency::EUR,
        lines,
        shipping_address: address("ES"),
    }
}

pub fn placed(lines: Vec<OrderLine>, total: i64) -> OrderEvent {
    OrderEvent::OrderPlaced {
        order_id: order_id(),
        customer_id: CustomerId::new(Uuid::from_u128(0xC1)),
        account_id: AccountId::new(Uuid::from_u128(0xA1)),
        currency: Currency::EUR,
        lines,
        total: Money::new(total).expect("valid total"),
        shipping_address: address("ES"),
    }
}

/// An order of one laptop at 999.99.
pub fn placed_one() -> OrderEvent {
    placed(vec![line("LAPTOP-15", 1, 99_999)], 99_999)
}
