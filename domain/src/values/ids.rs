//! Uuid identifiers, one type per kind so they cannot be mixed up.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ValueError;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps `id`: any uuid is a valid id. Purser makes v7 ones
            /// (`Uuid::now_v7()`), which sort by creation time.
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

            /// The uuid inside.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
