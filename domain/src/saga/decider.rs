//! The saga as a decider: the commands that record what the orchestrator
//! did, and how its events fold.

use uuid::Uuid;

use super::{
    FulfilmentSaga, SagaEvent, SagaOrder, SagaState, SagaStatus, Step, StepRecord, StepStatus,
};
use crate::order::CancellationReason;
use crate::{Aggregate, DomainError, ErrorKind};

/// What the orchestrator records in a saga's stream: that the saga
/// started, each attempt of each step before it acts, and each outcome.
/// Times are milliseconds since the Unix epoch, read by the orchestrator
/// (the domain reads no clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaCommand {
    /// Starts the saga of an order. Starting it again appends nothing: one
    /// saga per order.
    Start {
        /// The saga's own id: with the operator retries and the step, it
        /// makes the idempotency key of each step's command.
        saga_id: Uuid,
        /// What the saga needs of its order.
        order: SagaOrder,
    },
    /// Records that an attempt of `step` begins, before it acts.
    /// `invalid_transition` if the step succeeded already or an attempt of
    /// it is running (that one is resumed or timed out first).
    StartStep {
        /// The step attempted.
        step: Step,
        /// The attempt's number, from 1.
        attempt: u32,
        /// When the attempt counts as timed out; persisted, so that a
        /// restarted orchestrator honours it.
        deadline_ms: i64,
    },
    /// Records that the running attempt of `step` succeeded
    /// (`step_not_running` if no attempt of it is running).
    SucceedStep {
        /// The step that succeeded.
        step: Step,
        /// For [`Step::Ship`]: the carrier's tracking number.
        tracking_number: Option<String>,
    },
    /// Records a transient failure of the running attempt of `step`
    /// (`step_not_running` if none runs); the next attempt is due at
    /// `retry_at_ms`.
    FailStep {
        /// The step that failed.
        step: Step,
        /// The attempt that failed.
        attempt: u32,
        /// The failure's code ([`step_errors`](crate::step_errors):
        /// `timeout`, `carrier_unavailable`...).
        error: String,
        /// When the next attempt is due.
        retry_at_ms: i64,
    },
    /// A business refusal: a forward step turns the saga to compensation,
    /// a compensation (or a step whose refusal has no business meaning)
    /// needs an operator.
    RefuseStep {
        /// The step refused; an attempt of it must be running.
        step: Step,
        /// The refusing aggregate's or the carrier's code, e.g.
        /// `insufficient_funds`: what the saga shows.
        code: String,
        /// The refusal's message, for operators reading the stream.
        error: String,
    },
    /// Turns a running saga to compensation: the customer asked to cancel.
    /// `invalid_transition` once the order was marked shipped, or if the
    /// saga is not running.
    BeginCompensation {
        /// What the order will be cancelled as.
        reason: CancellationReason,
    },
    /// Ends a running saga whose forward steps all succeeded
    /// (`invalid_transition` otherwise).
    Complete,
    /// Ends a compensating saga whose compensations all succeeded
    /// (`invalid_transition` otherwise).
    FinishCompensation,
    /// Stops the saga until an operator retries it: `step` ran out of
    /// retries.
    NeedAttention {
        /// The step that stopped the saga.
        step: Step,
        /// The code of its last failure.
        error: String,
    },
    /// An operator resumes a saga in `needs_attention`
    /// (`saga_not_retryable` in any other status).
    Retry,
}

/// Why a saga refuses to record a command; nothing is appended. Each
/// variant's doc starts with its [`DomainError::code`]. `NotFound` is of
/// [`ErrorKind::NotFound`], every other of [`ErrorKind::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    /// `saga_not_found`: no saga in this stream (any command but `Start`).
    #[error("saga not found")]
    NotFound,
    /// `invalid_transition`: a command that the saga's status or steps do
    /// not allow (a step started twice, completing with steps left, most
    /// commands on a saga that is over or needs attention).
    #[error("saga is {status}: {command} is not possible")]
    InvalidTransition {
        /// The saga's status.
        status: SagaStatus,
        /// What was asked, in words, e.g. `start a running step`.
        command: &'static str,
    },
    /// `step_not_running`: an outcome for a step with no attempt running.
    #[error("step {step} is not running")]
    StepNotRunning {
        /// The step, as `name` or `name:SKU`.
        step: String,
    },
    /// `saga_not_retryable`: `Retry` of a saga that does not need
    /// attention.
    #[error("saga is {status}, only a saga that needs attention can be retried")]
    NotRetryable {
        /// The saga's status.
        status: SagaStatus,
    },
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
                        error: code.clone(),
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
            SagaEvent::StepRefused { step, code, .. } => {
                if let Some(record) = state.record_mut(step) {
                    record.status = StepStatus::Refused;
                    record.deadline_ms = None;
                    record.retry_at_ms = None;
                    record.error = Some(code.clone());
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
