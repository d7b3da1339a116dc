//! A step that is a command on this database, in one transaction
//! (design decision 11): the command's events and the step's record in the
//! saga's stream (`StepStarted` and its outcome) commit together or not at
//! all. No idempotency key is needed: the saga's stream, appended at the
//! version the step was planned on, lets exactly one orchestrator's
//! transaction commit, and a crash before the commit leaves nothing of the
//! step behind, so it is simply planned again.
//!
//! A refusal commits the step's record alone; a transient failure (the
//! database refusing the command's events, every re-decision losing its
//! race, the step's deadline) commits `StepStarted` and `StepFailed`
//! alone, so the attempt counts and its retry time is persisted.

use std::time::{Duration, Instant};
use tracing::Instrument as _;

use chrono::Utc;
use domain::{
    step_errors, AccountCommand, Aggregate, Amount, DomainError, FulfilmentSaga, InventoryCommand,
    OrderCommand, OrderStatus, SagaCommand, SagaEvent, SagaState, Step,
};
use event_store::{Appends, ExpectedVersion, Metadata, NewEvent, Repository, StreamId};

use super::steps::{reached, StepResult};
use super::{Current, Orchestrator, COMMAND_RETRIES, STEP_SCOPE};
use crate::Result;

/// The events a step's command decided on its aggregate's state, and what
/// they come to for the saga.
struct Decided {
    /// `None`: nothing to append (refused, or already done).
    append: Option<(StreamId, u64, Vec<NewEvent>)>,
    result: StepResult,
}

impl Decided {
    const DONE: Decided = Decided {
        append: None,
        result: StepResult::DONE,
    };

    fn transient(code: &'static str, detail: impl ToString) -> Decided {
        Decided {
            append: None,
            result: StepResult::Transient {
                code,
                detail: detail.to_string(),
            },
        }
    }
}

/// Whether `step` leaves the database (the carrier): only those keep the
/// record-before-act protocol.
pub(super) fn leaves_the_database(step: &Step) -> bool {
    matches!(step, Step::Ship | Step::CancelShipment)
}

impl Orchestrator {
    /// Attempt `attempt` of `step` (a command on this database) in one
    /// transaction, within the step's deadline. `None` when the saga moved
    /// meanwhile (another orchestrator recorded something first): nothing
    /// of this attempt committed.
    pub(super) async fn step_in_one_transaction(
        &self,
        current: &Current,
        step: Step,
        attempt: u32,
        deadline_ms: i64,
    ) -> Result<Option<Current>> {
        let span = super::step_span(current, &step, attempt);
        self.step_in_one_transaction_traced(current, step, attempt, deadline_ms)
            .instrument(span)
            .await
    }

    async fn step_in_one_transaction_traced(
        &self,
        current: &Current,
        step: Step,
        attempt: u32,
        deadline_ms: i64,
    ) -> Result<Option<Current>> {
        let started = Instant::now();
        let start = SagaCommand::StartStep {
            step: step.clone(),
            attempt,
            deadline_ms,
        };
        let Some(step_started) = decide_saga(&current.state, &start) else {
            return Ok(None);
        };
        let running = FulfilmentSaga::fold(current.state.clone(), &step_started);
        let left = u64::try_from(deadline_ms - Utc::now().timestamp_millis()).unwrap_or(0);
        // The step's aggregate's turn in this process, until the commit:
        // the sagas of one hot item queue here instead of colliding on its
        // version (across processes, the version check stays the guard).
        let _turn = tokio::time::timeout(Duration::from_millis(left), self.turn(current, &step))
            .await
            .ok()
            .flatten();
        let attempted = tokio::time::timeout(
            Duration::from_millis(left),
            self.prepare_step(current, &running, &step, &step_started),
        )
        .await;
        let (code, detail) = match attempted {
            Ok(Ok(Prepared::Step {
                appends,
                next,
                result,
            })) => {
                self.pause_if_asked(current.order_id, &step).await;
                match appends.commit().await {
                    Ok(()) => {
                        self.count_outcome(&step, &result, started.elapsed());
                        return Ok(Some(*next));
                    }
                    // Committed or not: the saga's stream tells (the record
                    // of the failure below conflicts if it did).
                    Err(error) => (store_error_code(&error), error.to_string()),
                }
            }
            Ok(Ok(Prepared::LostRace)) => return Ok(None),
            Ok(Ok(Prepared::Failed { code, detail })) => (code, detail),
            Ok(Err(error)) => (step_errors::UNAVAILABLE, error.to_string()),
            Err(_elapsed) => (
                step_errors::TIMEOUT,
                format!(
                    "no answer before the step's deadline ({} ms)",
                    self.inner.config.step_timeout_ms
                ),
            ),
        };
        // Nothing of the command committed: the attempt is recorded as
        // failed, with its retry time.
        // The detail (a driver's message...) stays in the log; the saga
        // records the code, which is what the API shows.
        let retry = self.inner.config.backoff(attempt);
        tracing::warn!(%step, attempt, code, error = %detail, ?retry, "step failed; retrying");
        let result = StepResult::Transient { code, detail };
        let failed = SagaCommand::FailStep {
            step: step.clone(),
            attempt,
            error: code.to_owned(),
            retry_at_ms: Utc::now().timestamp_millis() + super::drive::millis(retry),
        };
        let Some(step_failed) = decide_saga(&running, &failed) else {
            return Ok(None);
        };
        let mut events = step_started;
        events.extend(step_failed);
        let Some(next) = self.append_saga_alone(current, &events).await? else {
            return Ok(None);
        };
        self.count_outcome(&step, &result, started.elapsed());
        Ok(Some(next))
    }

    /// Decides the step's command on a fresh load of its aggregate, then
    /// appends its events and the saga's in one transaction, left open for
    /// the caller to commit; decides again when the aggregate moved
    /// meanwhile (at most [`COMMAND_RETRIES`] times).
    async fn prepare_step(
        &self,
        current: &Current,
        running: &SagaState,
        step: &Step,
        step_started: &[SagaEvent],
    ) -> Result<Prepared> {
        let saga_stream = StreamId::of::<FulfilmentSaga>(current.order_id);
        let saga_metadata = Metadata {
            actor: Some(STEP_SCOPE.to_owned()),
            ..current.metadata.clone()
        };
        let command_metadata = Metadata {
            causation_id: Some(format!("saga-{}:{step}", current.order_id)),
            // The step's span: what the command causes joins its trace.
            traceparent: event_store::trace::current_traceparent()
                .or_else(|| saga_metadata.traceparent.clone()),
            ..saga_metadata.clone()
        };
        for _ in 0..=COMMAND_RETRIES {
            let decided = self.decide_step(&current.state, step).await;
            let outcome = match &decided.result {
                StepResult::Done { tracking_number } => SagaCommand::SucceedStep {
                    step: step.clone(),
                    tracking_number: tracking_number.clone(),
                },
                StepResult::Refused { code, error } => SagaCommand::RefuseStep {
                    step: step.clone(),
                    code: code.clone(),
                    error: error.clone(),
                },
                StepResult::Transient { code, detail } => {
                    return Ok(Prepared::Failed {
                        code,
                        detail: detail.clone(),
                    })
                }
            };
            let Some(step_ended) = decide_saga(running, &outcome) else {
                return Ok(Prepared::LostRace);
            };
            let mut saga_events: Vec<SagaEvent> = step_started.to_vec();
            saga_events.extend(step_ended.iter().cloned());
            let new_saga_events: Vec<NewEvent> =
                saga_events.iter().map(NewEvent::from_domain).collect();

            let mut appends = self.inner.store.begin().await?;
            if let Some((stream, version, events)) = &decided.append {
                match appends
                    .append(
                        stream,
                        ExpectedVersion::Exact(*version),
                        events,
                        &command_metadata,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(event_store::Error::Conflict { .. }) => {
                        tracing::debug!(%step, "the step's aggregate moved; deciding again");
                        self.inner.metrics.conflict_retried();
                        continue;
                    }
                    Err(error) => {
                        return Ok(Prepared::Failed {
                            code: store_error_code(&error),
                            detail: error.to_string(),
                        })
                    }
                }
            }
            match appends
                .append(
                    &saga_stream,
                    ExpectedVersion::Exact(current.version),
                    &new_saga_events,
                    &saga_metadata,
                )
                .await
            {
                Ok(_) => {}
                Err(event_store::Error::Conflict { .. }) => return Ok(Prepared::LostRace),
                Err(error) => {
                    return Ok(Prepared::Failed {
                        code: store_error_code(&error),
                        detail: error.to_string(),
                    })
                }
            }
            let next = Current {
                order_id: current.order_id,
                state: FulfilmentSaga::fold(running.clone(), &step_ended),
                version: current.version + saga_events.len() as u64,
                metadata: current.metadata.clone(),
            };
            return Ok(Prepared::Step {
                appends,
                next: Box::new(next),
                result: decided.result,
            });
        }
        Ok(Prepared::Failed {
            code: step_errors::CONCURRENCY_CONFLICT,
            detail: format!(
                "the step's aggregate moved {} times in a row",
                COMMAND_RETRIES + 1
            ),
        })
    }

    /// Appends `events` to the saga's stream alone. `None` when it moved.
    pub(super) async fn append_saga_alone(
        &self,
        current: &Current,
        events: &[SagaEvent],
    ) -> Result<Option<Current>> {
        let metadata = Metadata {
            actor: Some(STEP_SCOPE.to_owned()),
            ..current.metadata.clone()
        };
        let new_events: Vec<NewEvent> = events.iter().map(NewEvent::from_domain).collect();
        match self
            .inner
            .store
            .append(
                &StreamId::of::<FulfilmentSaga>(current.order_id),
                ExpectedVersion::Exact(current.version),
                &new_events,
                &metadata,
            )
            .await
        {
            Ok(appended) => Ok(Some(Current {
                order_id: current.order_id,
                state: FulfilmentSaga::fold(current.state.clone(), events),
                version: appended.version,
                metadata: current.metadata.clone(),
            })),
            Err(event_store::Error::Conflict { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    fn count_outcome(&self, step: &Step, result: &StepResult, latency: Duration) {
        let metrics = &self.inner.metrics;
        match result {
            StepResult::Done { .. } => {
                metrics.step(step.name(), "succeeded", latency);
                tracing::debug!(%step, ?latency, "step succeeded");
            }
            StepResult::Refused { code, error } => {
                metrics.step(step.name(), "refused", latency);
                tracing::info!(%step, %code, %error, "step refused");
                if step.is_compensation() || step.refusal_reason().is_none() {
                    metrics.needs_attention();
                }
            }
            StepResult::Transient { .. } => metrics.step(step.name(), "failed", latency),
        }
    }

    /// Waits for the turn of `step`'s aggregate among this process's
    /// commands to it (`None`: the step has no aggregate here).
    async fn turn(&self, current: &Current, step: &Step) -> Option<Box<dyn Send + '_>> {
        let order = current.state.order.as_ref()?;
        let inner = &self.inner;
        Some(match step {
            Step::ReserveStock { sku } | Step::CommitStock { sku } | Step::ReleaseStock { sku } => {
                Box::new(inner.inventory.turn(sku.as_str()).await)
            }
            Step::ChargePayment | Step::RefundPayment => {
                Box::new(inner.accounts.turn(&order.account_id.to_string()).await)
            }
            Step::MarkReserved | Step::MarkPaid | Step::MarkShipped | Step::CancelOrder => {
                Box::new(inner.orders.turn(&order.order_id.to_string()).await)
            }
            Step::Ship | Step::CancelShipment => return None,
        })
    }

    /// What `step`'s command decides on its aggregate as it is now.
    async fn decide_step(&self, state: &SagaState, step: &Step) -> Decided {
        let Some(order) = state.order.as_ref() else {
            return Decided::transient(step_errors::INTERNAL_ERROR, "saga without an order");
        };
        let order_id = order.order_id;
        let inner = &self.inner;
        let order_key = order_id.to_string();
        match step {
            Step::ReserveStock { sku } => {
                let Some(line) = order.lines.iter().find(|l| &l.sku == sku) else {
                    return Decided::transient(
                        step_errors::INTERNAL_ERROR,
                        format!("no line for {sku}"),
                    );
                };
                let command = InventoryCommand::Reserve {
                    order_id,
                    quantity: line.quantity,
                };
                decide(
                    inner.inventory.repository(),
                    sku.as_str(),
                    &command,
                    |_, _| false,
                )
                .await
            }
            Step::MarkReserved => {
                mark(
                    inner.orders.repository(),
                    &order_key,
                    OrderCommand::MarkReserved,
                    OrderStatus::Reserved,
                )
                .await
            }
            Step::ChargePayment => {
                let Ok(amount) = Amount::new(order.total.amount()) else {
                    // A zero total has nothing to charge.
                    return Decided::DONE;
                };
                let command = AccountCommand::Charge {
                    order_id,
                    customer_id: order.customer_id,
                    currency: order.currency,
                    amount,
                };
                decide(
                    inner.accounts.repository(),
                    &order.account_id.to_string(),
                    &command,
                    |_, _| false,
                )
                .await
            }
            Step::MarkPaid => {
                mark(
                    inner.orders.repository(),
                    &order_key,
                    OrderCommand::MarkPaid,
                    OrderStatus::Paid,
                )
                .await
            }
            Step::MarkShipped => {
                let command = OrderCommand::MarkShipped {
                    tracking_number: state.tracking_number.clone().unwrap_or_default(),
                };
                mark(
                    inner.orders.repository(),
                    &order_key,
                    command,
                    OrderStatus::Shipped,
                )
                .await
            }
            Step::CommitStock { sku } => {
                let command = InventoryCommand::Commit { order_id };
                decide(
                    inner.inventory.repository(),
                    sku.as_str(),
                    &command,
                    |_, _| false,
                )
                .await
            }
            Step::RefundPayment => {
                let command = AccountCommand::Refund { order_id };
                // Nothing was charged (the charge was refused, or never made
                // it): nothing to give back.
                decide(
                    inner.accounts.repository(),
                    &order.account_id.to_string(),
                    &command,
                    |_, refusal| matches!(refusal.code(), "charge_not_found" | "account_not_found"),
                )
                .await
            }
            Step::ReleaseStock { sku } => {
                let command = InventoryCommand::Release { order_id };
                // No such item: nothing was reserved.
                decide(
                    inner.inventory.repository(),
                    sku.as_str(),
                    &command,
                    |_, refusal| refusal.code() == "item_not_found",
                )
                .await
            }
            Step::CancelOrder => {
                let reason = state
                    .compensation_reason
                    .unwrap_or(domain::CancellationReason::CustomerRequest);
                decide(
                    inner.orders.repository(),
                    &order_key,
                    &OrderCommand::Cancel { reason },
                    |_, _| false,
                )
                .await
            }
            Step::Ship | Step::CancelShipment => Decided::transient(
                step_errors::INTERNAL_ERROR,
                format!("{step} leaves the database"),
            ),
        }
    }
}

/// How one attempt's transaction was prepared.
enum Prepared {
    /// Every append made, to commit: the saga after the commit, and what
    /// the step came to.
    Step {
        appends: Appends,
        next: Box<Current>,
        result: StepResult,
    },
    /// The saga moved meanwhile: nothing committed.
    LostRace,
    /// Nothing committed; the attempt failed (the code is recorded, the
    /// detail only logged).
    Failed { code: &'static str, detail: String },
}

/// The saga's events for `command` on `state`; `None` when it refuses (the
/// saga is not where the step was planned: it moved).
fn decide_saga(state: &SagaState, command: &SagaCommand) -> Option<Vec<SagaEvent>> {
    match FulfilmentSaga::decide(state, command) {
        Ok(events) if !events.is_empty() => Some(events),
        Ok(_) => None,
        Err(refusal) => {
            tracing::warn!(?command, %refusal, "saga refused a record; looking again");
            None
        }
    }
}

/// Moves the order to `target`; a refusal because it already got there is
/// done.
async fn mark(
    orders: &Repository<domain::Order>,
    id: &str,
    command: OrderCommand,
    target: OrderStatus,
) -> Decided {
    decide(orders, id, &command, |state, _| {
        reached(state.status, target)
    })
    .await
}

/// Loads aggregate `id` and decides `command` on it: the events to append
/// at its version, or a refusal (done after all when `settled` says so of
/// the state and the refusal).
async fn decide<A: Aggregate>(
    repository: &Repository<A>,
    id: &str,
    command: &A::Command,
    settled: impl Fn(&A::State, &A::Error) -> bool,
) -> Decided {
    let loaded = match repository.load(id).await {
        Ok(loaded) => loaded,
        Err(error) => return Decided::transient(store_error_code(&error), error),
    };
    // With the past of the order the command needs (a repeat for a
    // finished order changes nothing): the repository recalls it by index.
    let decision = match repository.decide(id, &loaded.state, command).await {
        Ok(decision) => decision,
        Err(error) => return Decided::transient(store_error_code(&error), error),
    };
    match decision {
        Ok(events) if events.is_empty() => Decided::DONE,
        Ok(events) => Decided {
            append: Some((
                StreamId::of::<A>(id),
                loaded.version,
                events.iter().map(NewEvent::from_domain).collect(),
            )),
            result: StepResult::DONE,
        },
        Err(refusal) if settled(&loaded.state, &refusal) => Decided::DONE,
        Err(refusal) => Decided {
            append: None,
            result: StepResult::Refused {
                code: refusal.code().to_owned(),
                error: refusal.to_string(),
            },
        },
    }
}

/// The code a store failure is recorded as.
fn store_error_code(error: &event_store::Error) -> &'static str {
    match error {
        event_store::Error::Database(_) => step_errors::UNAVAILABLE,
        _ => step_errors::INTERNAL_ERROR,
    }
}
