//! The saga as a decider: the commands that record what the orchestrator
//! did, and how its events fold.

use uuid::Uuid;

use super::{
    FulfilmentSaga, SagaEvent, SagaOrder, SagaState, SagaStatus, Step, StepRecord, StepStatus,
};
use crate::order::CancellationReason;
use crate::{Aggregate, DomainError, ErrorKind};

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
