//! The saga's policy: what the orchestrator should do next.

use super::{codes, SagaState, SagaStatus, Step, StepStatus};
use crate::order::CancellationReason;

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
        /// The step to attempt.
        step: Step,
        /// The attempt's number: 1, or one more than the attempts so far.
        attempt: u32,
    },
    /// The attempt in progress has no recorded outcome (the orchestrator
    /// stopped while it ran) and its deadline has not passed: act again
    /// under the same idempotency key, within the persisted deadline.
    Resume {
        /// The step in progress.
        step: Step,
        /// The attempt in progress.
        attempt: u32,
        /// Its persisted deadline, in milliseconds since the Unix epoch.
        deadline_ms: i64,
    },
    /// The attempt in progress passed its persisted deadline.
    TimedOut {
        /// The step in progress.
        step: Step,
        /// The attempt that timed out: record it as failed (`timeout`).
        attempt: u32,
    },
    /// Nothing to do before `until_ms`.
    Wait {
        /// When the failed step's next attempt is due, in milliseconds
        /// since the Unix epoch.
        until_ms: i64,
    },
    /// The customer asked to cancel before the order was marked shipped:
    /// record `BeginCompensation` with this reason
    /// ([`CancellationReason::CustomerRequest`]).
    BeginCompensation(CancellationReason),
    /// Every forward step succeeded: record `Complete`.
    Complete,
    /// Every compensation succeeded: record `FinishCompensation`.
    FinishCompensation,
    /// The step ran out of retries: `error` is the code of its last
    /// failure ([`codes`](super::codes)).
    NeedsAttention {
        /// The step that ran out of retries.
        step: Step,
        /// The code of its last failure.
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
                // The code of the last failure (the detail was logged when
                // it happened).
                Action::NeedsAttention {
                    step: step.clone(),
                    error: codes::error_code(
                        step.name(),
                        record.error.as_deref().unwrap_or(codes::INTERNAL_ERROR),
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
                error: codes::error_code(
                    step.name(),
                    record.error.as_deref().unwrap_or(codes::INTERNAL_ERROR),
                ),
            },
            StepStatus::Running | StepStatus::Succeeded => unreachable!("handled above"),
        },
    }
}
