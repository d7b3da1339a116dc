//! The saga's folded state: its status and what it knows of each step.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{SagaOrder, Step};
use crate::order::CancellationReason;

/// Where a saga is: `running`, then `completed`; or, once a step is
/// refused or the customer cancels, `compensating`, then `compensated`.
/// Either live status may stop at `needs_attention` until an operator
/// retries the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// No saga in this stream yet: the initial state.
    #[default]
    NotStarted,
    /// Carrying out the forward steps.
    Running,
    /// Undoing the steps attempted, then cancelling the order.
    Compensating,
    /// The order shipped; nothing happens afterwards.
    Completed,
    /// The order is cancelled and what the saga did is undone; nothing
    /// happens afterwards.
    Compensated,
    /// Stopped until an operator retries it: a step ran out of retries, or
    /// a compensation (or a step whose refusal has no business meaning)
    /// was refused.
    NeedsAttention,
}

impl SagaStatus {
    /// Every status a started saga can have (all but `NotStarted`).
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::NeedsAttention,
    ];

    /// The status in snake case, as serde writes it: `not_started`,
    /// `running`, `compensating`, `completed`, `compensated`,
    /// `needs_attention`.
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

/// The last thing a saga recorded about one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// An attempt was started and has no outcome yet.
    Running,
    /// An attempt succeeded: the step is done.
    Succeeded,
    /// The last attempt failed transiently; another one is due at `retry_at_ms`.
    Failed,
    /// Refused for a business reason.
    Refused,
}

impl StepStatus {
    /// The status in snake case, as serde writes it: `running`,
    /// `succeeded`, `failed`, `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Refused => "refused",
        }
    }
}

/// One step as the saga has seen it so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step.
    pub step: Step,
    /// Its last outcome, or `Running` while an attempt has none.
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
    /// The code of the last failure or refusal (free text in a saga
    /// recorded before codes: see [`codes::error_code`](super::codes::error_code)).
    pub error: Option<String>,
}

impl StepRecord {
    /// Attempts made since the last operator retry.
    pub fn attempts_in_budget(&self) -> u32 {
        self.attempts.saturating_sub(self.attempts_before_retry)
    }
}

/// A saga as its events leave it: what [`next_action`](super::next_action)
/// plans from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SagaState {
    /// Where the saga is.
    pub status: SagaStatus,
    /// Its own id; `None` until started.
    pub saga_id: Option<Uuid>,
    /// Its order; `None` until started.
    pub order: Option<SagaOrder>,
    /// In the order each step was first attempted.
    pub steps: Vec<StepRecord>,
    /// Set once compensation began.
    pub compensation_reason: Option<CancellationReason>,
    /// Why the saga needs attention, while it does: the stopping step and
    /// the code of its failure or refusal.
    pub attention: Option<(Step, String)>,
    /// How many times an operator retried the saga; part of the idempotency
    /// keys, so a retried step may act again where its refusal was stored.
    pub retries: u32,
    /// The carrier's tracking number, once `Ship` succeeded.
    pub tracking_number: Option<String>,
}

impl SagaState {
    /// What the saga knows of `step`; `None` if it was never attempted.
    pub fn record(&self, step: &Step) -> Option<&StepRecord> {
        self.steps.iter().find(|r| &r.step == step)
    }

    pub(super) fn record_mut(&mut self, step: &Step) -> Option<&mut StepRecord> {
        self.steps.iter_mut().find(|r| &r.step == step)
    }

    /// Whether `step` is done.
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
