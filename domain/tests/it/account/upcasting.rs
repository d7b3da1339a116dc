//! Stored payloads of older schema versions decode into the current shape.

use domain::{AccountEvent, DecodeError, DomainEvent};
use serde_json::json;

use super::*;

#[test]
fn a_v1_account_opened_payload_decodes_as_eur() {
    let stored = json!({
        "account_id": "00000000-0000-0000-0000-0000000000a1",
        "customer_id": "00000000-0000-0000-0000-0000000000c1",
    });
    let event = AccountEvent::from_stored("AccountOpened", 1, stored).expect("v1 decodes");
    assert_eq!(event, opened());
    // and it is written back at the current version, with the currency
    assert_eq!(event.schema_version(), 2);
    assert_eq!(event.to_payload()["currency"], "EUR");
}

#[test]
fn a_v1_payload_that_somehow_names_a_currency_keeps_it() {
    let stored = json!({
        "account_id": "00000000-0000-0000-0000-0000000000a1",
        "customer_id": "00000000-0000-0000-0000-0000000000c1",
        "currency": "USD",
    });
    let event = AccountEvent::from_stored("AccountOpened", 1, stored).expect("v1 decodes");
    assert!(
        matches!(event, AccountEvent::AccountOpened { currency, .. } if currency == Currency::USD)
    );
}

#[test]
fn a_v2_account_opened_payload_without_currency_is_refused() {
    let stored = json!({
        "account_id": "00000000-0000-0000-0000-0000000000a1",
        "customer_id": "00000000-0000-0000-0000-0000000000c1",
    });
    let error = AccountEvent::from_stored("AccountOpened", 2, stored).unwrap_err();
    assert!(matches!(error, DecodeError::Payload { .. }), "{error}");
}

#[test]
fn unknown_types_and_versions_are_unknown_type() {
    for (event_type, version) in [
        ("AccountRenamed", 1),
        ("AccountOpened", 3),
        ("MoneyDeposited", 2),
        ("MoneyDeposited", 0),
    ] {
        let error = AccountEvent::from_stored(event_type, version, json!({})).unwrap_err();
        assert!(
            matches!(&error, DecodeError::UnknownType { event_type: t, schema_version: v } if t == event_type && *v == version),
            "{event_type} v{version}: {error}"
        );
    }
}

#[test]
fn invalid_payloads_are_payload_errors() {
    for payload in [
        json!({"amount": -5, "balance_after": 0}),
        json!({"amount": 0, "balance_after": 0}),
        json!({"amount": 5}),
        json!([5, 0]),
        json!("5"),
    ] {
        let error = AccountEvent::from_stored("MoneyDeposited", 1, payload.clone()).unwrap_err();
        assert!(
            matches!(error, DecodeError::Payload { .. }),
            "{payload}: {error}"
        );
    }
}
