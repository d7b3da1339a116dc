//! What a saga records, step by step.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{SagaOrder, Step};
use crate::codec;
use crate::order::CancellationReason;
use crate::{DecodeError, DomainEvent};

/// What a saga recorded, step by step: an audit trail of what the
/// orchestrator did, and where a restarted orchestrator carries on from.
/// Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum SagaEvent {
    /// The saga of an order began, forward.
    SagaStarted {
        /// The saga's own id.
        saga_id: Uuid,
        /// What it knows of its order.
        order: SagaOrder,
    },
    /// An attempt of `step` begins; it counts as timed out at `deadline_ms`
    /// (milliseconds since the Unix epoch), even across a restart.
    StepStarted {
        /// The step attempted.
        step: Step,
        /// The attempt's number, from 1, counted across operator retries.
        attempt: u32,
        /// When the attempt times out.
        deadline_ms: i64,
    },
    /// The running attempt of `step` succeeded: the step is done.
    StepSucceeded {
        /// The step.
        step: Step,
        /// For [`Step::Ship`], the carrier's tracking number; absent
        /// otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracking_number: Option<String>,
    },
    /// A transient failure: retried at `retry_at_ms`, never compensated for
    /// by itself. `error` is its code ([`codes`](super::codes): `timeout`,
    /// `carrier_unavailable`...); sagas recorded before codes have free text
    /// there, which [`codes::error_code`](super::codes::error_code) maps.
    StepFailed {
        /// The step.
        step: Step,
        /// The attempt that failed.
        attempt: u32,
        /// The failure's code.
        error: String,
        /// When the next attempt is due.
        retry_at_ms: i64,
    },
    /// A business refusal, with the refusing aggregate's code (what the
    /// saga shows) and its message (for operators reading the stream).
    StepRefused {
        /// The step.
        step: Step,
        /// The refusing aggregate's or the carrier's code, e.g.
        /// `insufficient_stock`.
        code: String,
        /// The refusal's message.
        error: String,
    },
    /// The saga turned to undoing every step it attempted, in reverse,
    /// and then cancelling the order.
    CompensationStarted {
        /// What the order will be cancelled as.
        reason: CancellationReason,
    },
    /// Every forward step succeeded: the order shipped and its stock is
    /// committed. Nothing happens afterwards.
    SagaCompleted,
    /// Every compensation succeeded: the order is cancelled, its charge
    /// refunded and its stock released. Nothing happens afterwards.
    SagaCompensated,
    /// A step ran out of retries, or a compensation was refused: nothing
    /// happens until an operator retries. `error` is the code of the last
    /// failure or refusal (free text before codes, mapped like
    /// `StepFailed`'s).
    SagaNeedsAttention {
        /// The step that stopped the saga.
        step: Step,
        /// The code of its last failure or refusal.
        error: String,
    },
    /// An operator resumes a saga that needed attention; the step that
    /// stopped it gets a fresh retry budget.
    SagaRetried,
}

impl SagaEvent {
    /// Every event type name, in declaration order.
    pub const EVENT_TYPES: &'static [&'static str] = &[
        "SagaStarted",
        "StepStarted",
        "StepSucceeded",
        "StepFailed",
        "StepRefused",
        "CompensationStarted",
        "SagaCompleted",
        "SagaCompensated",
        "SagaNeedsAttention",
        "SagaRetried",
    ];
}

impl DomainEvent for SagaEvent {
    fn event_type(&self) -> &'static str {
        match self {
            SagaEvent::SagaStarted { .. } => "SagaStarted",
            SagaEvent::StepStarted { .. } => "StepStarted",
            SagaEvent::StepSucceeded { .. } => "StepSucceeded",
            SagaEvent::StepFailed { .. } => "StepFailed",
            SagaEvent::StepRefused { .. } => "StepRefused",
            SagaEvent::CompensationStarted { .. } => "CompensationStarted",
            SagaEvent::SagaCompleted => "SagaCompleted",
            SagaEvent::SagaCompensated => "SagaCompensated",
            SagaEvent::SagaNeedsAttention { .. } => "SagaNeedsAttention",
            SagaEvent::SagaRetried => "SagaRetried",
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn to_payload(&self) -> Value {
        codec::to_payload(self)
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: Value,
    ) -> Result<Self, DecodeError> {
        if schema_version != 1 || !Self::EVENT_TYPES.contains(&event_type) {
            return Err(codec::unknown(event_type, schema_version));
        }
        codec::from_payload(event_type, payload)
    }
}
