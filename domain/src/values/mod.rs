//! Value objects, parsed once at the edge: once you hold one, it is valid.
//!
//! Every type here has private fields and is built only through `new`/`parse`
//! or `TryFrom`; serde goes through the same validation
//! (`#[serde(try_from = ..., into = ...)]`), so a stored event or a request
//! body can never smuggle in an invalid value.

mod address;
mod codes;
mod ids;
mod line;
mod money;
mod price;

pub use address::ShippingAddress;
pub use codes::{CountryCode, Currency, Sku};
pub use ids::{AccountId, CustomerId, OrderId};
pub use line::OrderLine;
pub use money::{Amount, Money, Quantity};
pub use price::{Price, UnitPrice};

/// A value could not be parsed. The message names the field problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A [`Money`] below zero, in minor units as given.
    #[error("money must not be negative, got {0}")]
    NegativeMoney(i64),
    /// An [`Amount`] or a [`UnitPrice`] of zero or less, in minor units as
    /// given.
    #[error("amount must be greater than zero, got {0}")]
    NonPositiveAmount(i64),
    /// A [`Quantity`] outside `1..=`[`Quantity::MAX`].
    #[error("quantity must be between 1 and {max}, got {value}", max = Quantity::MAX)]
    QuantityOutOfRange {
        /// The number given.
        value: i64,
    },
    /// A [`Sku`] that is not 1 to 64 of `[A-Z0-9-]`; the text given.
    #[error("sku must match [A-Z0-9-]{{1,64}}, got {0:?}")]
    InvalidSku(String),
    /// A [`Currency`] that is not 3 ASCII uppercase letters; the text given.
    #[error("currency must be an ISO 4217 code (3 uppercase letters), got {0:?}")]
    InvalidCurrency(String),
    /// A [`CountryCode`] that is not 2 ASCII uppercase letters; the text
    /// given.
    #[error("country must be an ISO 3166-1 alpha-2 code (2 uppercase letters), got {0:?}")]
    InvalidCountryCode(String),
    /// An id ([`AccountId`], [`CustomerId`], [`OrderId`]) that is not a uuid.
    #[error("{kind} must be a uuid, got {value:?}")]
    InvalidId {
        /// Which id: `account_id`, `customer_id` or `order_id`.
        kind: &'static str,
        /// The text given.
        value: String,
    },
    /// A free text field that is empty or only whitespace.
    #[error("{field} must not be blank")]
    BlankText {
        /// The field's name, e.g. `name` or `shipping_address.city`.
        field: &'static str,
    },
    /// A free text field longer than [`TEXT_MAX_CHARS`] characters.
    #[error("{field} must be at most {max} characters, got {len}", max = TEXT_MAX_CHARS)]
    TextTooLong {
        /// The field's name, e.g. `name` or `shipping_address.city`.
        field: &'static str,
        /// Its length in characters (not bytes).
        len: usize,
    },
}

impl ValueError {
    /// Stable machine-readable code: `invalid_value`, whichever the
    /// variant. A caller that knows which field it parsed may answer with a
    /// more precise code of its own (the Command API says `invalid_amount`,
    /// `invalid_currency`...).
    pub fn code(&self) -> &'static str {
        "invalid_value"
    }
}

/// The longest free text field (names, address lines), in characters.
pub const TEXT_MAX_CHARS: usize = 200;

/// Checks a free text field: not blank, at most [`TEXT_MAX_CHARS`] characters.
pub fn validate_text(field: &'static str, value: &str) -> Result<(), ValueError> {
    if value.trim().is_empty() {
        return Err(ValueError::BlankText { field });
    }
    let len = value.chars().count();
    if len > TEXT_MAX_CHARS {
        return Err(ValueError::TextTooLong { field, len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<Money>("-1").is_err());
        assert!(serde_json::from_str::<Amount>("0").is_err());
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        assert!(serde_json::from_str::<Sku>("\"bad sku\"").is_err());
        assert!(serde_json::from_str::<Currency>("\"eur\"").is_err());
        assert_eq!(serde_json::to_string(&Currency::EUR).unwrap(), "\"EUR\"");
        assert_eq!(serde_json::to_string(&Money::new(7).unwrap()).unwrap(), "7");
    }
}
