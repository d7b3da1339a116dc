//! The order-fulfilment saga, as a decider over its own event stream plus a
//! pure planner.
//!
//! The saga of an order lives in the stream `saga-{order_id}`, so there is at
//! most one per order: starting it again appends nothing. Its events record
//! what the orchestrator did, step by step (each attempt with its persisted
//! deadline, each outcome), which makes a saga's history auditable and lets
//! a restarted orchestrator carry on where a crashed one stopped.
//!
//! [`next_action`] is the whole policy: given the folded state, the clock
//! and whether the customer asked to cancel, it says what to do next. The
//! orchestrator (crate `saga`) carries the action out and records its
//! outcome through [`SagaCommand`]s.
//!
//! Forward steps, in order: reserve every line (one inventory aggregate per
//! SKU), mark the order reserved, charge the account (skipped for a zero
//! total), mark the order paid, ship through the carrier, mark the order
//! shipped, commit every reservation. Once the order is marked shipped there
//! is nothing left to compensate: the customer can no longer cancel it, and
//! committing the reservations is retried until it succeeds.
//!
//! A business refusal of a forward step, or a customer cancellation before
//! the order is marked shipped, turns the saga to compensation, which undoes
//! in reverse every step that was attempted (an attempt whose outcome is
//! unknown may have had its effect): cancel the shipment, refund the charge,
//! release the reservations (last line first), then cancel the order with
//! the reason. Every undo is a no-op where there is nothing to undo.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::codec;
use crate::order::CancellationReason;
use crate::values::{
    AccountId, Currency, CustomerId, Money, OrderId, OrderLine, ShippingAddress, Sku,
};
use crate::{Aggregate, DecodeError, DomainError, DomainEvent, ErrorKind};

/// The order-fulfilment saga. Stream id: `saga-{order_id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FulfilmentSaga;

/// One step of the saga: a command to one aggregate or to the carrier.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Step {
    ReserveStock { sku: Sku },
    MarkReserved,
    ChargePayment,
    MarkPaid,
    Ship,
    MarkShipped,
    CommitStock { sku: Sku },
    // Compensations.
    CancelShipment,
    RefundPayment,
    ReleaseStock { sku: Sku },
    CancelOrder,
}

impl Step {
    /// The step's name, without its SKU.
    pub fn name(&self) -> &'static str {
        match self {
            Step::ReserveStock { .. } => "reserve_stock",
            Step::MarkReserved => "mark_reserved",
            Step::ChargePayment => "charge_payment",
            Step::MarkPaid => "mark_paid",
            Step::Ship => "ship",
            Step::MarkShipped => "mark_shipped",
            Step::CommitStock { .. } => "commit_stock",
            Step::CancelShipment => "cancel_shipment",
            Step::RefundPayment => "refund_payment",
            Step::ReleaseStock { .. } => "release_stock",
            Step::CancelOrder => "cancel_order",
        }
    }

    /// The SKU of a per-line step.
    pub fn sku(&self) -> Option<&Sku> {
        match self {
            Step::ReserveStock { sku } | Step::CommitStock { sku } | Step::ReleaseStock { sku } => {
                Some(sku)
            }
            _ => None,
        }
    }

    /// Whether the step undoes another.
    pub fn is_compensation(&self) -> bool {
        matches!(
            self,
            Step::CancelShipment
                | Step::RefundPayment
                | Step::ReleaseStock { .. }
                | Step::CancelOrder
        )
    }

    /// Why the order is cancelled when this forward step is refused, if a
    /// refusal of it is a business outcome at all.
    pub fn refusal_reason(&self) -> Option<CancellationReason> {
        match self {
            Step::ReserveStock { .. } => Some(CancellationReason::OutOfStock),
            Step::ChargePayment => Some(CancellationReason::PaymentDeclined),
            Step::Ship => Some(CancellationReason::ShippingFailed),
            // The order refuses to be marked shipped only once the customer
            // asked to cancel it.
            Step::MarkShipped => Some(CancellationReason::CustomerRequest),
            _ => None,
        }
    }
}

/// `name` or `name:SKU`: unique within a saga, used in idempotency keys.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sku() {
            Some(sku) => write!(f, "{}:{}", self.name(), sku),
            None => f.write_str(self.name()),
        }
    }
}

/// What the saga knows of its order, copied from `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaOrder {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub account_id: AccountId,
    pub currency: Currency,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub shipping_address: ShippingAddress,
}

impl SagaOrder {
    /// The forward steps of this order, in order.
    pub fn forward_steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self
            .lines
            .iter()
            .map(|line| Step::ReserveStock {
                sku: line.sku.clone(),
            })
            .collect();
        steps.push(Step::MarkReserved);
        if !self.total.is_zero() {
            steps.push(Step::ChargePayment);
        }
        steps.push(Step::MarkPaid);
        steps.push(Step::Ship);
        steps.push(Step::MarkShipped);
        steps.extend(self.lines.iter().map(|line| Step::CommitStock {
            sku: line.sku.clone(),
        }));
        steps
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    #[default]
    NotStarted,
    Running,
    Compensating,
    Completed,
    Compensated,
    NeedsAttention,
}

impl SagaStatus {
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::NeedsAttention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::NotStarted => "not_started",
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::NeedsAttention => "needs_attention",
        }
    }

    /// `completed` and `compensated`: nothing happens afterwards.
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Compensated)
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// An attempt was started and has no outcome yet.
    Running,
    Succeeded,
    /// The last attempt failed transiently; another one is due at `retry_at_ms`.
    Failed,
    /// Refused for a business reason.
    Refused,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum SagaEvent {
    SagaStarted {
        saga_id: Uuid,
        order: SagaOrder,
    },
    /// An attempt of `step` begins; it counts as timed out at `deadline_ms`
    /// (milliseconds since the Unix epoch), even across a restart.
    StepStarted {
        step: Step,
        attempt: u32,
        deadline_ms: i64,
    },
    StepSucceeded {
        step: Step,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracking_number: Option<String>,
    },
    /// A transient failure: retried at `retry_at_ms`, never compensated for
    /// by itself.
    StepFailed {
        step: Step,
        attempt: u32,
        error: String,
        retry_at_ms: i64,
    },
    /// A business refusal, with the refusing aggregate's code.
    StepRefused {
        step: Step,
        code: String,
        error: String,
    },
    CompensationStarted {
        reason: CancellationReason,
    },
    SagaCompleted,
    SagaCompensated,
    /// A step ran out of retries, or a compensation was refused: nothing
    /// happens until an operator retries.
    SagaNeedsAttention {
        step: Step,
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

/// One step as the saga has seen it so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub status: StepStatus,
    /// Attempts started, in all.
    pub attempts: u32,
    /// `attempts` when an operator last retried: the retry budget counts
    /// from here.
    pub attempts_before_retry: u32,
    /// The deadline of the attempt in progress.
    pub deadline_ms: Option<i64>,
    /// When the next attempt is due, after a transient failure.
    pub retry_at_ms: Option<i64>,
    /// The last failure or refusal.
    pub error: Option<String>,
}

impl StepRecord {
    /// Attempts made since the last operator retry.
    pub fn attempts_in_budget(&self) -> u32 {
        self.attempts.saturating_sub(self.attempts_before_retry)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SagaState {
    pub status: SagaStatus,
    pub saga_id: Option<Uuid>,
    pub order: Option<SagaOrder>,
    /// In the order each step was first attempted.
    pub steps: Vec<StepRecord>,
    /// Set once compensation began.
    pub compensation_reason: Option<CancellationReason>,
    /// Why the saga needs attention, while it does.
    pub attention: Option<(Step, String)>,
    /// How many times an operator retried the saga; part of the idempotency
    /// keys, so a retried step may act again where its refusal was stored.
    pub retries: u32,
    pub tracking_number: Option<String>,
}

impl SagaState {
    pub fn record(&self, step: &Step) -> Option<&StepRecord> {
        self.steps.iter().find(|r| &r.step == step)
    }

    fn record_mut(&mut self, step: &Step) -> Option<&mut StepRecord> {
        self.steps.iter_mut().find(|r| &r.step == step)
    }

    pub fn succeeded(&self, step: &Step) -> bool {
        self.record(step)
            .is_some_and(|r| r.status == StepStatus::Succeeded)
    }

    /// Whether `step` was ever attempted (its effect may have happened).
    pub fn attempted(&self, step: &Step) -> bool {
        self.record(step).is_some()
    }

    /// The compensations this saga owes, in the order they run.
    pub fn compensation_steps(&self) -> Vec<Step> {
        let Some(order) = &self.order else {
            return vec![];
        };
        let mut steps = Vec::new();
        if self.attempted(&Step::Ship) {
            steps.push(Step::CancelShipment);
        }
        if self.attempted(&Step::ChargePayment) {
            steps.push(Step::RefundPayment);
        }
        for line in order.lines.iter().rev() {
            let sku = line.sku.clone();
            if self.attempted(&Step::ReserveStock { sku: sku.clone() }) {
                steps.push(Step::ReleaseStock { sku });
            }
        }
        steps.push(Step::CancelOrder);
        steps
    }

    /// The steps of the saga's current direction: forward, or, once
    /// compensation began, the compensations.
    pub fn pending_steps(&self) -> Vec<Step> {
        match &self.order {
            Some(_) if self.compensation_reason.is_some() => self.compensation_steps(),
            Some(order) => order.forward_steps(),
            None => vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaCommand {
    Start {
        saga_id: Uuid,
        order: SagaOrder,
    },
    StartStep {
        step: Step,
        attempt: u32,
        deadline_ms: i64,
    },
    SucceedStep {
        step: Step,
        tracking_number: Option<String>,
    },
    FailStep {
        step: Step,
        attempt: u32,
        error: String,
        retry_at_ms: i64,
    },
    /// A business refusal: a forward step turns the saga to compensation,
    /// a compensation (or a step whose refusal has no business meaning)
    /// needs an operator.
    RefuseStep {
        step: Step,
        code: String,
        error: String,
    },
    BeginCompensation {
        reason: CancellationReason,
    },
    Complete,
    FinishCompensation,
    NeedAttention {
        step: Step,
        error: String,
    },
    /// An operator resumes a saga in `needs_attention`.
    Retry,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    #[error("saga not found")]
    NotFound,
    #[error("saga is {status}: {command} is not possible")]
    InvalidTransition {
        status: SagaStatus,
        command: &'static str,
    },
    #[error("step {step} is not running")]
    StepNotRunning { step: String },
    #[error("saga is {status}, only a saga that needs attention can be retried")]
    NotRetryable { status: SagaStatus },
}

impl DomainError for SagaError {
    fn code(&self) -> &'static str {
        match self {
            SagaError::NotFound => "saga_not_found",
            SagaError::InvalidTransition { .. } => "invalid_transition",
            SagaError::StepNotRunning { .. } => "step_not_running",
            SagaError::NotRetryable { .. } => "saga_not_retryable",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            SagaError::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Rejected,
        }
    }
}

impl Aggregate for FulfilmentSaga {
    const STREAM_TYPE: &'static str = "saga";
    type State = SagaState;
    type Command = SagaCommand;
    type Event = SagaEvent;
    type Error = SagaError;

    fn initial() -> SagaState {
        SagaState::default()
    }

    fn decide(state: &SagaState, command: &SagaCommand) -> Result<Vec<SagaEvent>, SagaError> {
        use SagaCommand as C;
        use SagaStatus as S;
        let status = state.status;
        let invalid = |command: &'static str| SagaError::InvalidTransition { status, command };
        match (status, command) {
            (S::NotStarted, C::Start { saga_id, order }) => Ok(vec![SagaEvent::SagaStarted {
                saga_id: *saga_id,
                order: order.clone(),
            }]),
            // At most one saga per order, however often it is started.
            (_, C::Start { .. }) => Ok(vec![]),
            (S::NotStarted, _) => Err(SagaError::NotFound),

            (S::NeedsAttention, C::Retry) => Ok(vec![SagaEvent::SagaRetried]),
            (_, C::Retry) => Err(SagaError::NotRetryable { status }),

            (S::Completed | S::Compensated | S::NeedsAttention, _) => {
                Err(invalid(command_name(command)))
            }

            (
                _,
                C::StartStep {
                    step,
                    attempt,
                    deadline_ms,
                },
            ) => {
                match state.record(step).map(|r| r.status) {
                    Some(StepStatus::Succeeded) => return Err(invalid("start a succeeded step")),
                    // An attempt in progress is settled (resumed or timed
                    // out) first: two never overlap.
                    Some(StepStatus::Running) => return Err(invalid("start a running step")),
                    _ => {}
                }
                Ok(vec![SagaEvent::StepStarted {
                    step: step.clone(),
                    attempt: *attempt,
                    deadline_ms: *deadline_ms,
                }])
            }
            (
                _,
                C::SucceedStep {
                    step,
                    tracking_number,
                },
            ) => {
                running(state, step)?;
                Ok(vec![SagaEvent::StepSucceeded {
                    step: step.clone(),
                    tracking_number: tracking_number.clone(),
                }])
            }
            (
                _,
                C::FailStep {
                    step,
                    attempt,
                    error,
                    retry_at_ms,
                },
            ) => {
                running(state, step)?;
                Ok(vec![SagaEvent::StepFailed {
                    step: step.clone(),
                    attempt: *attempt,
                    error: error.clone(),
                    retry_at_ms: *retry_at_ms,
                }])
            }
            (_, C::RefuseStep { step, code, error }) => {
                running(state, step)?;
                let refused = SagaEvent::StepRefused {
                    step: step.clone(),
                    code: code.clone(),
                    error: error.clone(),
                };
                let next = match step.refusal_reason() {
                    Some(reason) if status == S::Running && !step.is_compensation() => {
                        SagaEvent::CompensationStarted { reason }
                    }
                    _ => SagaEvent::SagaNeedsAttention {
                        step: step.clone(),
                        error: format!("{code}: {error}"),
                    },
                };
                Ok(vec![refused, next])
            }
            (S::Running, C::BeginCompensation { reason }) => {
                if state.succeeded(&Step::MarkShipped) {
                    return Err(invalid("compensate a shipped order"));
                }
                Ok(vec![SagaEvent::CompensationStarted { reason: *reason }])
            }
            (_, C::BeginCompensation { .. }) => Err(invalid("begin compensation")),
            (S::Running, C::Complete) => {
                if !state.pending_steps().iter().all(|s| state.succeeded(s)) {
                    return Err(invalid("complete with steps left"));
                }
                Ok(vec![SagaEvent::SagaCompleted])
            }
            (_, C::Complete) => Err(invalid("complete")),
            (S::Compensating, C::FinishCompensation) => {
                if !state.pending_steps().iter().all(|s| state.succeeded(s)) {
                    return Err(invalid("finish compensation with steps left"));
                }
                Ok(vec![SagaEvent::SagaCompensated])
            }
            (_, C::FinishCompensation) => Err(invalid("finish compensation")),
            (_, C::NeedAttention { step, error }) => Ok(vec![SagaEvent::SagaNeedsAttention {
                step: step.clone(),
                error: error.clone(),
            }]),
        }
    }

    fn evolve(mut state: SagaState, event: &SagaEvent) -> SagaState {
        match event {
            SagaEvent::SagaStarted { saga_id, order } => {
                state.status = SagaStatus::Running;
                state.saga_id = Some(*saga_id);
                state.order = Some(order.clone());
            }
            SagaEvent::StepStarted {
                step,
                attempt,
                deadline_ms,
            } => {
                let record = match state.record_mut(step) {
                    Some(record) => record,
                    None => {
                        state.steps.push(StepRecord {
                            step: step.clone(),
                            status: StepStatus::Running,
                            attempts: 0,
                            attempts_before_retry: 0,
                            deadline_ms: None,
                            retry_at_ms: None,
                            error: None,
                        });
                        state.steps.last_mut().expect("just pushed")
                    }
                };
                record.status = StepStatus::Running;
                record.attempts = record.attempts.max(*attempt);
                record.deadline_ms = Some(*deadline_ms);
                record.retry_at_ms = None;
            }
            SagaEvent::StepSucceeded {
                step,
                tracking_number,
            } => {
                if let Some(record) = state.record_mut(step) {
                    record.status = StepStatus::Succeeded;
                    record.deadline_ms = None;
                    record.retry_at_ms = None;
                }
                if tracking_number.is_some() {
                    state.tracking_number = tracking_number.clone();
                }
            }
            SagaEvent::StepFailed {
                step,
                error,
                retry_at_ms,
                ..
            } => {
                if let Some(record) = state.record_mut(step) {
                    record.status = StepStatus::Failed;
                    record.deadline_ms = None;
                    record.retry_at_ms = Some(*retry_at_ms);
                    record.error = Some(error.clone());
                }
            }
            SagaEvent::StepRefused { step, code, error } => {
                if let Some(record) = state.record_mut(step) {
                    record.status = StepStatus::Refused;
                    record.deadline_ms = None;
                    record.retry_at_ms = None;
                    record.error = Some(format!("{code}: {error}"));
                }
            }
            SagaEvent::CompensationStarted { reason } => {
                state.status = SagaStatus::Compensating;
                state.compensation_reason = Some(*reason);
            }
            SagaEvent::SagaCompleted => state.status = SagaStatus::Completed,
            SagaEvent::SagaCompensated => state.status = SagaStatus::Compensated,
            SagaEvent::SagaNeedsAttention { step, error } => {
                state.status = SagaStatus::NeedsAttention;
                state.attention = Some((step.clone(), error.clone()));
            }
            SagaEvent::SagaRetried => {
                state.status = if state.compensation_reason.is_some() {
                    SagaStatus::Compensating
                } else {
                    SagaStatus::Running
                };
                state.retries += 1;
                if let Some((step, _)) = state.attention.take() {
                    if let Some(record) = state.record_mut(&step) {
                        record.attempts_before_retry = record.attempts;
                        if record.status == StepStatus::Refused {
                            // Tried again under a new idempotency key.
                            record.status = StepStatus::Failed;
                        }
                        record.retry_at_ms = Some(0);
                    }
                }
            }
        }
        state
    }
}

fn command_name(command: &SagaCommand) -> &'static str {
    match command {
        SagaCommand::Start { .. } => "start",
        SagaCommand::StartStep { .. } => "start a step",
        SagaCommand::SucceedStep { .. } => "record a success",
        SagaCommand::FailStep { .. } => "record a failure",
        SagaCommand::RefuseStep { .. } => "record a refusal",
        SagaCommand::BeginCompensation { .. } => "begin compensation",
        SagaCommand::Complete => "complete",
        SagaCommand::FinishCompensation => "finish compensation",
        SagaCommand::NeedAttention { .. } => "ask for attention",
        SagaCommand::Retry => "retry",
    }
}

fn running(state: &SagaState, step: &Step) -> Result<(), SagaError> {
    match state.record(step) {
        Some(record) if record.status == StepStatus::Running => Ok(()),
        _ => Err(SagaError::StepNotRunning {
            step: step.to_string(),
        }),
    }
}

/// What the planner sees besides the saga's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    /// Milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// The customer asked to cancel the order.
    pub cancellation_requested: bool,
    /// Attempts a step gets (since the last operator retry) before the saga
    /// needs attention.
    pub max_attempts: u32,
}

/// What the orchestrator should do next with a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start attempt `attempt` of `step` (record `StepStarted`, then act).
    Attempt {
        step: Step,
        attempt: u32,
    },
    /// The attempt in progress has no recorded outcome (the orchestrator
    /// stopped while it ran) and its deadline has not passed: act again
    /// under the same idempotency key, within the persisted deadline.
    Resume {
        step: Step,
        attempt: u32,
        deadline_ms: i64,
    },
    /// The attempt in progress passed its persisted deadline.
    TimedOut {
        step: Step,
        attempt: u32,
    },
    /// Nothing to do before `until_ms`.
    Wait {
        until_ms: i64,
    },
    BeginCompensation(CancellationReason),
    Complete,
    FinishCompensation,
    /// The step ran out of retries.
    NeedsAttention {
        step: Step,
        error: String,
    },
    /// Waiting for an operator.
    Idle,
    /// The saga is over (or never started).
    Done,
}

/// The saga's policy: what to do next, given its state and the situation.
pub fn next_action(state: &SagaState, situation: &Situation) -> Action {
    match state.status {
        SagaStatus::NotStarted | SagaStatus::Completed | SagaStatus::Compensated => {
            return Action::Done
        }
        SagaStatus::NeedsAttention => return Action::Idle,
        SagaStatus::Running | SagaStatus::Compensating => {}
    }
    let steps = state.pending_steps();
    let current = steps.iter().find(|step| !state.succeeded(step));
    let record = current.and_then(|step| state.record(step));

    // An attempt in progress is settled before anything else: its effect
    // may have happened.
    if let (Some(step), Some(record)) = (current, record) {
        if record.status == StepStatus::Running {
            let deadline_ms = record.deadline_ms.unwrap_or(i64::MIN);
            if situation.now_ms >= deadline_ms {
                return Action::TimedOut {
                    step: step.clone(),
                    attempt: record.attempts,
                };
            }
            return Action::Resume {
                step: step.clone(),
                attempt: record.attempts,
                deadline_ms,
            };
        }
    }

    if state.status == SagaStatus::Running
        && situation.cancellation_requested
        && !state.succeeded(&Step::MarkShipped)
    {
        return Action::BeginCompensation(CancellationReason::CustomerRequest);
    }

    let Some(step) = current else {
        return match state.status {
            SagaStatus::Compensating => Action::FinishCompensation,
            _ => Action::Complete,
        };
    };
    match record {
        None => Action::Attempt {
            step: step.clone(),
            attempt: 1,
        },
        Some(record) => match record.status {
            StepStatus::Failed if record.attempts_in_budget() >= situation.max_attempts => {
                Action::NeedsAttention {
                    step: step.clone(),
                    error: format!(
                        "{} attempts failed, the last with: {}",
                        record.attempts_in_budget(),
                        record.error.as_deref().unwrap_or("unknown error")
                    ),
                }
            }
            StepStatus::Failed => match record.retry_at_ms {
                Some(until_ms) if until_ms > situation.now_ms => Action::Wait { until_ms },
                _ => Action::Attempt {
                    step: step.clone(),
                    attempt: record.attempts + 1,
                },
            },
            // `RefuseStep` turned the saga to compensation or attention, so
            // a refused step is never current; be safe all the same.
            StepStatus::Refused => Action::NeedsAttention {
                step: step.clone(),
                error: record.error.clone().unwrap_or_else(|| "refused".to_owned()),
            },
            StepStatus::Running | StepStatus::Succeeded => unreachable!("handled above"),
        },
    }
}
