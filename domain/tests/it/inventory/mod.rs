mod properties;
mod rules;

use domain::{InventoryEvent, OrderId, Quantity, Sku};
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

pub fn created(quantity: i64) -> InventoryEvent {
    InventoryEvent::ItemCreated {
        sku: sku(),
        name: "Laptop 15\"".to_owned(),
        quantity: qty(quantity),
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
