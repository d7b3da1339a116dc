//! Value objects, parsed once at the edge: once you hold one, it is valid.
//!
//! Every type here has private fields and is built only through `new`/`parse`
//! or `TryFrom`; serde goes through the same validation
//! (`#[serde(try_from = ..., into = ...)]`), so a stored event or a request
//! body can never smuggle in an invalid value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A value could not be parsed. The message names the field problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("money must not be negative, got {0}")]
    NegativeMoney(i64),
    #[error("amount must be greater than zero, got {0}")]
    NonPositiveAmount(i64),
    #[error("quantity must be between 1 and {max}, got {value}", max = Quantity::MAX)]
    QuantityOutOfRange { value: i64 },
    #[error("sku must match [A-Z0-9-]{{1,64}}, got {0:?}")]
    InvalidSku(String),
    #[error("currency must be an ISO 4217 code (3 uppercase letters), got {0:?}")]
    InvalidCurrency(String),
    #[error("country must be an ISO 3166-1 alpha-2 code (2 uppercase letters), got {0:?}")]
    InvalidCountryCode(String),
    #[error("{kind} must be a uuid, got {value:?}")]
    InvalidId { kind: &'static str, value: String },
    #[error("{field} must not be blank")]
    BlankText { field: &'static str },
    #[error("{field} must be at most {max} characters, got {len}", max = TEXT_MAX_CHARS)]
    TextTooLong { field: &'static str, len: usize },
}

impl ValueError {
    /// Stable machine-readable code (API.md).
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

// ---------------------------------------------------------------------------
// Money, Amount, Quantity

/// A non-negative sum of money in integer minor units (cents).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
pub struct Money(i64);

impl Money {
    pub const ZERO: Money = Money(0);
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

// ---------------------------------------------------------------------------
// Sku, Currency, CountryCode

/// A stock keeping unit, `[A-Z0-9-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Result<Sku, ValueError> {
        let valid = (1..=Self::MAX_LEN).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(ValueError::InvalidSku(value.to_owned()));
        }
        Ok(Sku(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Sku::parse(&value)
    }
}

impl TryFrom<&str> for Sku {
    type Error = ValueError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Sku::parse(value)
    }
}

impl FromStr for Sku {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sku::parse(s)
    }
}

impl From<Sku> for String {
    fn from(value: Sku) -> Self {
        value.0
    }
}

impl AsRef<str> for Sku {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses exactly `N` ASCII uppercase letters.
fn upper_letters<const N: usize>(value: &str) -> Option<[u8; N]> {
    let bytes: [u8; N] = value.as_bytes().try_into().ok()?;
    bytes.iter().all(u8::is_ascii_uppercase).then_some(bytes)
}

/// The bytes were checked to be ASCII uppercase letters on construction.
fn ascii_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("ASCII letters by construction")
}

/// An ISO 4217 currency code: exactly 3 ASCII uppercase letters (`EUR`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");
    pub const USD: Currency = Currency(*b"USD");

    pub fn parse(value: &str) -> Result<Currency, ValueError> {
        upper_letters(value)
            .map(Currency)
            .ok_or_else(|| ValueError::InvalidCurrency(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        ascii_str(&self.0)
    }
}

impl TryFrom<String> for Currency {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Currency::parse(&value)
    }
}

impl TryFrom<&str> for Currency {
    type Error = ValueError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Currency::parse(value)
    }
}

impl FromStr for Currency {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Currency").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ISO 3166-1 alpha-2 country code: exactly 2 ASCII uppercase letters.
/// `XX` (user-assigned, never a real country) is accepted here; the carrier
/// refuses it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    pub fn parse(value: &str) -> Result<CountryCode, ValueError> {
        upper_letters(value)
            .map(CountryCode)
            .ok_or_else(|| ValueError::InvalidCountryCode(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        ascii_str(&self.0)
    }
}

impl TryFrom<String> for CountryCode {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        CountryCode::parse(&value)
    }
}

impl TryFrom<&str> for CountryCode {
    type Error = ValueError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        CountryCode::parse(value)
    }
}

impl FromStr for CountryCode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CountryCode::parse(s)
    }
}

impl From<CountryCode> for String {
    fn from(value: CountryCode) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CountryCode").field(&self.as_str()).finish()
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Ids

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new(id: Uuid) -> Self {
                Self(id)
            }

            /// Parses any textual uuid form `uuid` accepts (hyphenated, simple, ...).
            pub fn parse(value: &str) -> Result<Self, ValueError> {
                Uuid::parse_str(value).map(Self).map_err(|_| ValueError::InvalidId {
                    kind: $kind,
                    value: value.to_owned(),
                })
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        /// The hyphenated uuid.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

uuid_id!(
    /// Identifies a bank account (and its stream).
    AccountId,
    "account_id"
);
uuid_id!(
    /// Identifies a customer.
    CustomerId,
    "customer_id"
);
uuid_id!(
    /// Identifies an order (and its stream, and its saga).
    OrderId,
    "order_id"
);

// ---------------------------------------------------------------------------
// ShippingAddress, OrderLine

/// Where an order goes. Text fields are non-blank and at most
/// [`TEXT_MAX_CHARS`] characters; `line2` is optional.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ShippingAddressFields", into = "ShippingAddressFields")]
pub struct ShippingAddress {
    name: String,
    line1: String,
    line2: Option<String>,
    city: String,
    postal_code: String,
    country: CountryCode,
}

/// The serialised shape of a [`ShippingAddress`], unchecked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShippingAddressFields {
    name: String,
    line1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    line2: Option<String>,
    city: String,
    postal_code: String,
    country: CountryCode,
}

impl ShippingAddress {
    pub fn new(
        name: String,
        line1: String,
        line2: Option<String>,
        city: String,
        postal_code: String,
        country: CountryCode,
    ) -> Result<ShippingAddress, ValueError> {
        validate_text("shipping_address.name", &name)?;
        validate_text("shipping_address.line1", &line1)?;
        if let Some(line2) = &line2 {
            validate_text("shipping_address.line2", line2)?;
        }
        validate_text("shipping_address.city", &city)?;
        validate_text("shipping_address.postal_code", &postal_code)?;
        Ok(ShippingAddress {
            name,
            line1,
            line2,
            city,
            postal_code,
            country,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn line1(&self) -> &str {
        &self.line1
    }

    pub fn line2(&self) -> Option<&str> {
        self.line2.as_deref()
    }

    pub fn city(&self) -> &str {
        &self.city
    }

    pub fn postal_code(&self) -> &str {
        &self.postal_code
    }

    pub fn country(&self) -> CountryCode {
        self.country
    }
}

impl TryFrom<ShippingAddressFields> for ShippingAddress {
    type Error = ValueError;
    fn try_from(f: ShippingAddressFields) -> Result<Self, Self::Error> {
        ShippingAddress::new(f.name, f.line1, f.line2, f.city, f.postal_code, f.country)
    }
}

impl From<ShippingAddress> for ShippingAddressFields {
    fn from(a: ShippingAddress) -> Self {
        ShippingAddressFields {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

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

    #[test]
    fn sku_shape() {
        assert!(Sku::parse("LAPTOP-15").is_ok());
        assert!(Sku::parse(&"A".repeat(64)).is_ok());
        for bad in ["", "laptop", "A B", "Á", "A_B", &"A".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn currency_and_country_shape() {
        assert_eq!(Currency::parse("EUR").unwrap(), Currency::EUR);
        assert_eq!(Currency::EUR.as_str(), "EUR");
        for bad in ["", "eur", "EU", "EURO", "E1R", "ÉUR"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(CountryCode::parse("XX").unwrap().as_str(), "XX");
        for bad in ["", "es", "E", "ESP", "E1"] {
            assert!(CountryCode::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_parse_and_display_hyphenated() {
        let text = "0191d0c2-7a3e-7cc1-9a41-3f1f0d5b2a10";
        let id = AccountId::parse(text).unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(
            AccountId::parse("0191d0c27a3e7cc19a413f1f0d5b2a10").unwrap(),
            id
        );
        let err = OrderId::parse("nope").unwrap_err();
        assert_eq!(err.to_string(), "order_id must be a uuid, got \"nope\"");
        assert_eq!(err.code(), "invalid_value");
    }

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

    #[test]
    fn shipping_address_validates_text_fields() {
        let es = CountryCode::parse("ES").unwrap();
        let ok = |name: &str, line2: Option<&str>| {
            ShippingAddress::new(
                name.into(),
                "Calle Mayor 1".into(),
                line2.map(Into::into),
                "Madrid".into(),
                "28013".into(),
                es,
            )
        };
        assert!(ok("Ana", None).is_ok());
        assert!(ok(&"é".repeat(200), Some("2º")).is_ok());
        assert_eq!(
            ok("  ", None),
            Err(ValueError::BlankText {
                field: "shipping_address.name"
            })
        );
        assert_eq!(
            ok(&"a".repeat(201), None),
            Err(ValueError::TextTooLong {
                field: "shipping_address.name",
                len: 201
            })
        );
        assert!(ok("Ana", Some("")).is_err());

        let json = r#"{"name":"Ana","line1":"Calle Mayor 1","city":"Madrid","postal_code":"28013","country":"ES"}"#;
        let parsed: ShippingAddress = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, ok("Ana", None).unwrap());
        assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        let blank = json.replace("Madrid", "");
        assert!(serde_json::from_str::<ShippingAddress>(&blank).is_err());
        let unknown = json.replace("\"city\"", "\"town\":\"x\",\"city\"");
        assert!(serde_json::from_str::<ShippingAddress>(&unknown).is_err());
    }
}
