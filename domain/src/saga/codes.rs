//! The stable codes a saga step's `error` is shown as (the API guide: never an
//! internal message, always a code such as `insufficient_funds` or
//! `carrier_unavailable`).
//!
//! A refusal carries the refusing aggregate's own code (`insufficient_funds`,
//! `insufficient_stock`, `account_closed`...) or the carrier's
//! (`shipment_refused`, `shipment_not_cancellable`). A transient failure is
//! one of the codes below. The orchestrator records the code in
//! `StepFailed.error` and `SagaNeedsAttention.error` and logs the detail;
//! sagas recorded before it did (free text in those fields) are shown
//! through [`error_code`], which derives the code from the old text.

/// The step had no outcome before its deadline.
pub const TIMEOUT: &str = "timeout";
/// The carrier could not be reached, or answered that it cannot now.
pub const CARRIER_UNAVAILABLE: &str = "carrier_unavailable";
/// The carrier did not answer within its request timeout.
pub const CARRIER_TIMEOUT: &str = "carrier_timeout";
/// The carrier was not called: its circuit breaker is open (too many
/// failures lately), and the step is retried after the cool-down.
pub const CARRIER_CIRCUIT_OPEN: &str = "carrier_circuit_open";
/// The event store (the database) could not be used.
pub const UNAVAILABLE: &str = "unavailable";
/// The aggregate kept changing under the step (optimistic concurrency ran
/// out of retries).
pub const CONCURRENCY_CONFLICT: &str = "concurrency_conflict";
/// Anything else: a bug, logged with the detail.
pub const INTERNAL_ERROR: &str = "internal_error";

/// Whether `text` is a code: 1 to 64 of `[a-z0-9_]`, starting with a letter.
pub fn is_code(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// The stable code of what a saga recorded as the `error` of the step named
/// `step` (`ship`, `charge_payment`...; empty when unknown): a code as it
/// is; the free text of a saga recorded by an earlier version mapped to the
/// code it would have today (never the text itself).
pub fn error_code(step: &str, recorded: &str) -> String {
    if is_code(recorded) {
        return recorded.to_owned();
    }
    // `SagaNeedsAttention` after retries: "N attempts failed, the last with: X".
    if let Some((_, last)) = recorded.split_once(" attempts failed, the last with: ") {
        return error_code(step, last);
    }
    // A refusal as it was shown: "{code}: {detail}".
    if let Some((code, _)) = recorded.split_once(": ") {
        if is_code(code) {
            return code.to_owned();
        }
    }
    let lower = recorded.to_ascii_lowercase();
    if lower.contains("deadline") || lower.contains("timed out") || lower.contains("timeout") {
        TIMEOUT.to_owned()
    } else if matches!(step, "ship" | "cancel_shipment") || lower.contains("carrier") {
        // The carrier's only transient failure is being unavailable.
        CARRIER_UNAVAILABLE.to_owned()
    } else if lower.starts_with("saga without") || lower.starts_with("no line for") {
        INTERNAL_ERROR.to_owned()
    } else if lower.contains("concurrency") || lower.contains("conflict") {
        CONCURRENCY_CONFLICT.to_owned()
    } else {
        UNAVAILABLE.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_kept_and_old_free_text_becomes_one() {
        let (ship, charge) = ("ship", "charge_payment");
        for (step, recorded, code) in [
            (charge, "insufficient_funds", "insufficient_funds"),
            (ship, "carrier_unavailable", "carrier_unavailable"),
            (ship, "carrier_timeout", CARRIER_TIMEOUT),
            (ship, "carrier_circuit_open", CARRIER_CIRCUIT_OPEN),
            (ship, "no outcome before the step's deadline", TIMEOUT),
            (
                charge,
                "no answer before the step's deadline (2000 ms)",
                TIMEOUT,
            ),
            (ship, "carrier timed out", TIMEOUT),
            (ship, "simulated outage", CARRIER_UNAVAILABLE),
            (
                charge,
                "insufficient_funds: balance 5 is less than 10",
                "insufficient_funds",
            ),
            (
                charge,
                "error returned from database: relation \"event_store.events\" does not exist",
                UNAVAILABLE,
            ),
            (
                charge,
                "pool timed out while waiting for an open connection",
                TIMEOUT,
            ),
            (charge, "saga without an order", INTERNAL_ERROR),
            (
                ship,
                "3 attempts failed, the last with: carrier timed out",
                TIMEOUT,
            ),
            (
                charge,
                "3 attempts failed, the last with: error returned from database: x",
                UNAVAILABLE,
            ),
            (charge, "", UNAVAILABLE),
            (charge, "Insufficient_Funds", UNAVAILABLE),
        ] {
            assert_eq!(error_code(step, recorded), code, "{recorded:?}");
            assert!(is_code(&error_code(step, recorded)));
        }
    }
}
