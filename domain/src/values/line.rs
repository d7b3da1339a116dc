//! One line of an order.

use serde::{Deserialize, Serialize};

use super::{Money, Quantity, Sku};

/// One line of an order. Every field is a parsed value, so any combination
/// is a valid line; the order checks the lines together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// The item ordered; an order has at most one line per SKU.
    pub sku: Sku,
    /// How many units.
    pub quantity: Quantity,
    /// The price of one unit, in minor units of the order's currency: the
    /// catalog's price when the order was placed, kept with the order so
    /// that a later price change does not touch it.
    pub unit_price: Money,
}

impl OrderLine {
    /// `quantity` units of `sku` at `unit_price` each. Any combination is a
    /// valid line; [`order_total`](crate::order_total) checks the lines
    /// together.
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
