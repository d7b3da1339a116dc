//! Where an order goes.

use serde::{Deserialize, Serialize};

use super::{validate_text, CountryCode, ValueError};

/// Where an order goes. Text fields are non-blank and at most
/// [`TEXT_MAX_CHARS`](super::TEXT_MAX_CHARS) characters; `line2` is optional.
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
    /// Checks every text field with [`validate_text`](super::validate_text)
    /// (not blank, at most [`TEXT_MAX_CHARS`](super::TEXT_MAX_CHARS)
    /// characters), `line2` too when present: an empty `line2` is refused,
    /// not taken as none. The error names the field, e.g.
    /// `shipping_address.city`.
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

    /// Who receives the parcel.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first address line: street and number.
    pub fn line1(&self) -> &str {
        &self.line1
    }

    /// The second address line (floor, door...), if any.
    pub fn line2(&self) -> Option<&str> {
        self.line2.as_deref()
    }

    /// The city or town.
    pub fn city(&self) -> &str {
        &self.city
    }

    /// The postal code, as free text: its format is the country's and is
    /// not checked here.
    pub fn postal_code(&self) -> &str {
        &self.postal_code
    }

    /// The destination country. `XX` is accepted here; the carrier refuses
    /// it.
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

#[cfg(test)]
mod tests {
    use super::*;

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
