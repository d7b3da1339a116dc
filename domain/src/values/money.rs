//! Sums of money and counts of items.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValueError;

/// A non-negative sum of money in integer minor units (cents).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
pub struct Money(i64);

impl Money {
    /// No money: a new account's balance.
    pub const ZERO: Money = Money(0);
    /// The largest sum there is, `i64::MAX` minor units; a balance or an
    /// order total that would pass it is refused, never wrapped.
    pub const MAX: Money = Money(i64::MAX);

    /// Refuses negative sums.
    pub fn new(minor_units: i64) -> Result<Money, ValueError> {
        if minor_units < 0 {
            return Err(ValueError::NegativeMoney(minor_units));
        }
        Ok(Money(minor_units))
    }

    /// The sum in minor units.
    pub fn amount(self) -> i64 {
        self.0
    }

    /// Whether the sum is zero (an account closes only then).
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `None` on overflow of `i64`.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// `None` when the result would be negative.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).filter(|v| *v >= 0).map(Money)
    }

    /// `None` on overflow of `i64`.
    pub fn checked_mul(self, quantity: Quantity) -> Option<Money> {
        self.0.checked_mul(i64::from(quantity.get())).map(Money)
    }
}

impl TryFrom<i64> for Money {
    type Error = ValueError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Money::new(value)
    }
}

impl From<Money> for i64 {
    fn from(value: Money) -> Self {
        value.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A strictly positive sum of money, as commands carry it (deposit,
/// withdrawal, charge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(Money);

impl Amount {
    /// Refuses zero and negative sums.
    pub fn new(minor_units: i64) -> Result<Amount, ValueError> {
        if minor_units <= 0 {
            return Err(ValueError::NonPositiveAmount(minor_units));
        }
        Ok(Amount(Money(minor_units)))
    }

    /// The same sum as a [`Money`], to add to or take from a balance.
    pub fn money(self) -> Money {
        self.0
    }

    /// The sum in minor units.
    pub fn amount(self) -> i64 {
        self.0 .0
    }
}

impl TryFrom<i64> for Amount {
    type Error = ValueError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Amount::new(value)
    }
}

impl TryFrom<Money> for Amount {
    type Error = ValueError;
    fn try_from(value: Money) -> Result<Self, Self::Error> {
        Amount::new(value.0)
    }
}

impl From<Amount> for i64 {
    fn from(value: Amount) -> Self {
        value.0 .0
    }
}

impl From<Amount> for Money {
    fn from(value: Amount) -> Self {
        value.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A count of items, `1..=1_000_000_000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Quantity(u32);

impl Quantity {
    /// The largest quantity one command may carry.
    pub const MAX: u32 = 1_000_000_000;

    /// API numbers are `i64`: refuses 0, negatives and anything above
    /// [`Quantity::MAX`].
    pub fn new(value: i64) -> Result<Quantity, ValueError> {
        match u32::try_from(value) {
            Ok(v) if (1..=Self::MAX).contains(&v) => Ok(Quantity(v)),
            _ => Err(ValueError::QuantityOutOfRange { value }),
        }
    }

    /// The count, `1..=`[`Quantity::MAX`].
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = ValueError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Quantity::new(value)
    }
}

impl TryFrom<u32> for Quantity {
    type Error = ValueError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Quantity::new(i64::from(value))
    }
}

impl From<Quantity> for i64 {
    fn from(value: Quantity) -> Self {
        i64::from(value.0)
    }
}

impl From<Quantity> for u32 {
    fn from(value: Quantity) -> Self {
        value.0
    }
}

impl From<Quantity> for u64 {
    fn from(value: Quantity) -> Self {
        u64::from(value.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_refuses_negative_and_checks_arithmetic() {
        assert_eq!(Money::new(-1), Err(ValueError::NegativeMoney(-1)));
        let max = Money::new(i64::MAX).unwrap();
        let one = Money::new(1).unwrap();
        assert_eq!(max.checked_add(one), None);
        assert_eq!(Money::ZERO.checked_sub(one), None);
        assert_eq!(one.checked_sub(one), Some(Money::ZERO));
        let two = Quantity::new(2).unwrap();
        assert_eq!(max.checked_mul(two), None);
        assert_eq!(one.checked_mul(two).map(Money::amount), Some(2));
    }

    #[test]
    fn amount_is_strictly_positive() {
        assert_eq!(Amount::new(0), Err(ValueError::NonPositiveAmount(0)));
        assert_eq!(Amount::new(-5), Err(ValueError::NonPositiveAmount(-5)));
        assert_eq!(Amount::new(5).unwrap().money().amount(), 5);
    }

    #[test]
    fn quantity_bounds() {
        for bad in [0, -1, i64::from(Quantity::MAX) + 1, i64::MAX, i64::MIN] {
            assert!(Quantity::new(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(Quantity::new(1).unwrap().get(), 1);
        assert_eq!(
            Quantity::new(i64::from(Quantity::MAX)).unwrap().get(),
            Quantity::MAX
        );
    }
}
