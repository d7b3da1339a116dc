//! The stored shape of events: the type name apart, the variant's fields as a
//! JSON object.
//!
//! Event enums derive serde with `#[serde(tag = "event_type")]`, so a
//! variant serialises as its fields plus the tag; the payload is that object
//! without the tag, and decoding puts the tag back.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};

use crate::DecodeError;

pub(crate) const TAG: &str = "event_type";

/// The variant's fields as a JSON object (`{}` for a unit variant).
pub(crate) fn to_payload<E: Serialize>(event: &E) -> Value {
    // Events hold only strings, integers and structs with string keys, which
    // always serialise.
    let value = serde_json::to_value(event).expect("event serialises to JSON");
    match value {
        Value::Object(mut map) => {
            map.remove(TAG);
            Value::Object(map)
        }
        other => other,
    }
}

/// Decodes `payload` as the variant named `event_type`, which the caller has
/// checked to be one of the enum's variants.
pub(crate) fn from_payload<E: DeserializeOwned>(
    event_type: &str,
    payload: Value,
) -> Result<E, DecodeError> {
    let payload_error = |source| DecodeError::Payload {
        event_type: event_type.to_owned(),
        source,
    };
    let mut map = match payload {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => {
            return Err(payload_error(serde::de::Error::custom(format_args!(
                "payload must be a JSON object, got {other}"
            ))))
        }
    };
    map.insert(TAG.to_owned(), Value::String(event_type.to_owned()));
    serde_json::from_value(Value::Object(map)).map_err(payload_error)
}

/// The error for a type name or schema version this crate does not know.
pub(crate) fn unknown(event_type: &str, schema_version: u32) -> DecodeError {
    DecodeError::UnknownType {
        event_type: event_type.to_owned(),
        schema_version,
    }
}
