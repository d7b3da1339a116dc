//! Codes: stock keeping units, currencies, countries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ValueError;

/// A stock keeping unit, `[A-Z0-9-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    /// The longest SKU, in characters (ASCII, so also in bytes).
    pub const MAX_LEN: usize = 64;

    /// Accepts 1 to [`Sku::MAX_LEN`] characters of `[A-Z0-9-]`, as given
    /// (nothing is trimmed or upper-cased); anything else is
    /// [`ValueError::InvalidSku`].
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

    /// The SKU as text, e.g. `LAPTOP-15`: the item's id, in its stream id
    /// `inventory-{sku}` too.
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
    /// The euro; also the currency of an account opened before accounts
    /// had one ([`AccountEvent::V1_CURRENCY`](crate::AccountEvent::V1_CURRENCY)).
    pub const EUR: Currency = Currency(*b"EUR");
    /// The US dollar.
    pub const USD: Currency = Currency(*b"USD");

    /// Accepts exactly 3 ASCII uppercase letters (`EUR`), otherwise
    /// [`ValueError::InvalidCurrency`]. The shape is checked, not whether
    /// ISO 4217 assigns the code.
    pub fn parse(value: &str) -> Result<Currency, ValueError> {
        upper_letters(value)
            .map(Currency)
            .ok_or_else(|| ValueError::InvalidCurrency(value.to_owned()))
    }

    /// The three-letter code, e.g. `EUR`.
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
    /// Accepts exactly 2 ASCII uppercase letters (`ES`), otherwise
    /// [`ValueError::InvalidCountryCode`]. The shape is checked, not
    /// whether ISO 3166-1 assigns the code.
    pub fn parse(value: &str) -> Result<CountryCode, ValueError> {
        upper_letters(value)
            .map(CountryCode)
            .ok_or_else(|| ValueError::InvalidCountryCode(value.to_owned()))
    }

    /// The two-letter code, e.g. `ES`.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
