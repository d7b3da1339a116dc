mod prices;
mod properties;
mod rules;

use domain::{Currency, InventoryEvent, OrderId, Price, Quantity, Sku, UnitPrice};
use uuid::Uuid;

pub fn sku() -> Sku {
    Sku::parse("LAPTOP-15").expect("valid sku")
}

pub fn qty(v: i64) -> Quantity {
    Quantity::new(v).expect("valid quantity")
}

pub fn order(n: u128) -> OrderId {
    OrderId::new(Uuid::from_u128(0x0D00 + n))
}

/// 999.99 EUR.
pub fn price(unit_price: i64) -> Price {
    Price::new(
        UnitPrice::new(unit_price).expect("positive price"),
        Currency::EUR,
    )
}

pub fn laptop_price() -> Price {
    price(99_999)
}

pub fn created(quantity: i64) -> InventoryEvent {
    InventoryEvent::ItemCreated {
        sku: sku(),
        name: "Laptop 15\"".to_owned(),
        quantity: qty(quantity),
        price: Some(laptop_price()),
    }
}

pub fn reserved(order_: u128, quantity: i64) -> InventoryEvent {
    InventoryEvent::StockReserved {
        order_id: order(order_),
        quantity: qty(quantity),
    }
}

pub fn released(order_: u128, quantity: i64) -> InventoryEvent {
    InventoryEvent::ReservationReleased {
        order_id: order(order_),
        quantity: qty(quantity),
    }
}

pub fn committed(order_: u128, quantity: i64) -> InventoryEvent {
    InventoryEvent::ReservationCommitted {
        order_id: order(order_),
        quantity: qty(quantity),
    }
}
