//! One line of an order.

use serde::{Deserialize, Serialize};

use super::{Money, Quantity, Sku};

/// One line of an order. Every field is a parsed value, so any combination
/// is a valid line; the order checks the lines together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
}

impl OrderLine {
    pub fn new(sku: Sku, quantity: Quantity, unit_price: Money) -> OrderLine {
        OrderLine {
            sku,
            quantity,
            unit_price,
        }
    }

    /// `unit_price * quantity`, `None` on overflow.
    pub fn line_total(&self) -> Option<Money> {
        self.unit_price.checked_mul(self.quantity)
    }
}
