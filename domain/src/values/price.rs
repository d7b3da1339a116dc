//! Catalog prices: a strictly positive unit price in minor units, and the
//! currency it is in.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Currency, Money, Quantity, ValueError};

/// The price of one unit of an item, in integer minor units: always `> 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct UnitPrice(i64);

impl UnitPrice {
    /// Refuses zero and negative prices.
    pub fn new(minor_units: i64) -> Result<UnitPrice, ValueError> {
        if minor_units <= 0 {
            return Err(ValueError::NonPositiveAmount(minor_units));
        }
        Ok(UnitPrice(minor_units))
    }

    /// The price in minor units.
    pub fn amount(self) -> i64 {
        self.0
    }

    /// The same price as a [`Money`], to multiply and add up.
    pub fn money(self) -> Money {
        Money::new(self.0).expect("a unit price is positive")
    }

    /// `price * quantity`, `None` on overflow of `i64`.
    pub fn checked_mul(self, quantity: Quantity) -> Option<Money> {
        self.money().checked_mul(quantity)
    }
}

impl TryFrom<i64> for UnitPrice {
    type Error = ValueError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        UnitPrice::new(value)
    }
}

impl From<UnitPrice> for i64 {
    fn from(value: UnitPrice) -> Self {
        value.0
    }
}

impl From<UnitPrice> for Money {
    fn from(value: UnitPrice) -> Self {
        value.money()
    }
}

impl fmt::Display for UnitPrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What one unit of an item costs: a unit price in a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// What one unit costs, in minor units of `currency`.
    pub unit_price: UnitPrice,
    /// The currency the item is priced in; an order in another currency
    /// cannot buy it.
    pub currency: Currency,
}

impl Price {
    /// `unit_price` minor units of `currency`. Both are valid already, so
    /// any pair is a valid price.
    pub fn new(unit_price: UnitPrice, currency: Currency) -> Price {
        Price {
            unit_price,
            currency,
        }
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.unit_price, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_price_is_strictly_positive() {
        assert_eq!(UnitPrice::new(0), Err(ValueError::NonPositiveAmount(0)));
        assert_eq!(UnitPrice::new(-1), Err(ValueError::NonPositiveAmount(-1)));
        assert_eq!(UnitPrice::new(1).map(UnitPrice::amount), Ok(1));
        assert!(serde_json::from_str::<UnitPrice>("0").is_err());
        assert!(serde_json::from_str::<UnitPrice>("-5").is_err());
        assert_eq!(
            serde_json::from_str::<UnitPrice>("99999")
                .map(UnitPrice::amount)
                .ok(),
            Some(99_999)
        );
    }

    #[test]
    fn a_line_total_is_checked() {
        let max = UnitPrice::new(i64::MAX).unwrap();
        let two = Quantity::new(2).unwrap();
        assert_eq!(max.checked_mul(two), None);
        let price = UnitPrice::new(1_500).unwrap();
        assert_eq!(price.checked_mul(two).map(Money::amount), Some(3_000));
    }

    #[test]
    fn a_price_serialises_as_unit_price_and_currency() {
        let price = Price::new(UnitPrice::new(99_999).unwrap(), Currency::EUR);
        let json = serde_json::to_string(&price).unwrap();
        assert_eq!(json, r#"{"unit_price":99999,"currency":"EUR"}"#);
        assert_eq!(serde_json::from_str::<Price>(&json).unwrap(), price);
        assert!(serde_json::from_str::<Price>(r#"{"unit_price":0,"currency":"EUR"}"#).is_err());
    }
}
