//! What a step recorded before it is carried out does: the carrier call,
//! or (a step resumed after a crash, recorded by an earlier version that
//! did every step this way) the command it sends to an account, an item or
//! the order under the step's idempotency key, and what it came to. A step
//! run again after a crash gets the record of its first run back instead of
//! acting twice. A step that is a command on this database is otherwise
//! one transaction (`atomic`).

use domain::{
    step_errors, AccountCommand, Aggregate, Amount, DomainError, InventoryCommand, OrderCommand,
    OrderId, OrderStatus, SagaOrder, SagaState, Step,
};
use event_store::{ExecuteError, ExecuteOptions, Executed, IdempotencyKey, Metadata, Outcome};
use serde::{Deserialize, Serialize};

use super::{Orchestrator, Writer, STEP_SCOPE};
use crate::{CarrierError, Shipment};

/// What one attempt of a step came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StepResult {
    Done {
        tracking_number: Option<String>,
    },
    Refused {
        code: String,
        error: String,
    },
    /// A transient failure: its code ([`step_errors`]) is recorded, the
    /// detail only logged.
    Transient {
        code: &'static str,
        detail: String,
    },
}

impl StepResult {
    pub(super) const DONE: StepResult = StepResult::Done {
        tracking_number: None,
    };

    fn transient(code: &'static str, detail: impl Into<String>) -> StepResult {
        StepResult::Transient {
            code,
            detail: detail.into(),
        }
    }
}

/// What a step's command came to, kept under the step's idempotency key:
/// the step run again (after a crash) takes it instead of acting twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum StepRecord {
    Done,
    Refused { code: String, error: String },
}

impl StepRecord {
    fn refused(refusal: &impl DomainError) -> StepRecord {
        StepRecord::Refused {
            code: refusal.code().to_owned(),
            error: refusal.to_string(),
        }
    }
}

impl From<StepRecord> for StepResult {
    fn from(record: StepRecord) -> StepResult {
        match record {
            StepRecord::Done => StepResult::DONE,
            StepRecord::Refused { code, error } => StepResult::Refused { code, error },
        }
    }
}

impl Orchestrator {
    /// Carries out `step`: one command, under the step's idempotency key.
    pub(super) async fn carry_out(
        &self,
        state: &SagaState,
        step: &Step,
        metadata: &Metadata,
    ) -> StepResult {
        let Some(order) = state.order.as_ref() else {
            return StepResult::transient(step_errors::INTERNAL_ERROR, "saga without an order");
        };
        let Some(saga_id) = state.saga_id else {
            return StepResult::transient(step_errors::INTERNAL_ERROR, "saga without an id");
        };
        let order_id = order.order_id;
        // In the saga's own scope (a client's key is in its caller's), and
        // with spaces, which a client's `Idempotency-Key` (visible ASCII)
        // cannot have: no request can take a step's key before the step.
        // (Earlier versions used `saga:{saga_id}:{retries}:{step}`; a step
        // one of them carried out is not repeated after an upgrade, as the
        // aggregates record each order's charge, reservations and marks.)
        let key = format!("saga {saga_id} {} {step}", state.retries);
        let inner = &self.inner;
        let metadata = Metadata {
            causation_id: Some(format!("saga-{order_id}:{step}")),
            actor: Some(STEP_SCOPE.to_owned()),
            // The step's span: what the command causes joins its trace.
            traceparent: event_store::trace::current_traceparent()
                .or_else(|| metadata.traceparent.clone()),
            ..metadata.clone()
        };
        match step {
            Step::ReserveStock { sku } => {
                let Some(line) = order.lines.iter().find(|l| &l.sku == sku) else {
                    return StepResult::transient(
                        step_errors::INTERNAL_ERROR,
                        format!("no line for {sku}"),
                    );
                };
                let command = InventoryCommand::Reserve {
                    order_id,
                    quantity: line.quantity,
                };
                send(&inner.inventory, sku.as_str(), &command, key, &metadata).await
            }
            Step::MarkReserved => {
                self.mark(
                    order_id,
                    OrderCommand::MarkReserved,
                    OrderStatus::Reserved,
                    key,
                    &metadata,
                )
                .await
            }
            Step::ChargePayment => {
                let Ok(amount) = Amount::new(order.total.amount()) else {
                    // A zero total has nothing to charge (the planner skips it).
                    return StepResult::DONE;
                };
                let command = AccountCommand::Charge {
                    order_id,
                    customer_id: order.customer_id,
                    currency: order.currency,
                    amount,
                };
                send(
                    &inner.accounts,
                    &order.account_id.to_string(),
                    &command,
                    key,
                    &metadata,
                )
                .await
            }
            Step::MarkPaid => {
                self.mark(
                    order_id,
                    OrderCommand::MarkPaid,
                    OrderStatus::Paid,
                    key,
                    &metadata,
                )
                .await
            }
            Step::Ship => match inner.carrier.ship(&shipment(state, order)).await {
                Ok(tracking_number) => StepResult::Done {
                    tracking_number: Some(tracking_number),
                },
                Err(error) => carrier_failure(error, "shipment_refused"),
            },
            Step::MarkShipped => {
                let command = OrderCommand::MarkShipped {
                    tracking_number: state.tracking_number.clone().unwrap_or_default(),
                };
                self.mark(order_id, command, OrderStatus::Shipped, key, &metadata)
                    .await
            }
            Step::CommitStock { sku } => {
                let command = InventoryCommand::Commit { order_id };
                send(&inner.inventory, sku.as_str(), &command, key, &metadata).await
            }
            Step::CancelShipment => match inner.carrier.cancel(&shipment(state, order)).await {
                Ok(()) => StepResult::DONE,
                Err(error) => carrier_failure(error, "shipment_not_cancellable"),
            },
            Step::RefundPayment => {
                let command = AccountCommand::Refund { order_id };
                let account = order.account_id.to_string();
                match send(&inner.accounts, &account, &command, key, &metadata).await {
                    // Nothing was charged (the charge was refused, or never
                    // made it): nothing to give back.
                    StepResult::Refused { code, .. }
                        if code == "charge_not_found" || code == "account_not_found" =>
                    {
                        StepResult::DONE
                    }
                    other => other,
                }
            }
            Step::ReleaseStock { sku } => {
                let command = InventoryCommand::Release { order_id };
                match send(&inner.inventory, sku.as_str(), &command, key, &metadata).await {
                    // No such item: nothing was reserved.
                    StepResult::Refused { code, .. } if code == "item_not_found" => {
                        StepResult::DONE
                    }
                    other => other,
                }
            }
            Step::CancelOrder => {
                let reason = state
                    .compensation_reason
                    .unwrap_or(domain::CancellationReason::CustomerRequest);
                let command = OrderCommand::Cancel { reason };
                send(
                    &inner.orders,
                    &order_id.to_string(),
                    &command,
                    key,
                    &metadata,
                )
                .await
            }
        }
    }

    /// Moves the order to `target`; a refusal because it already got there
    /// (an earlier attempt whose outcome was lost) is a success.
    async fn mark(
        &self,
        order_id: OrderId,
        command: OrderCommand,
        target: OrderStatus,
        key: String,
        metadata: &Metadata,
    ) -> StepResult {
        let id = order_id.to_string();
        let result = send(&self.inner.orders, &id, &command, key, metadata).await;
        if !matches!(result, StepResult::Refused { .. }) {
            return result;
        }
        match self.inner.orders.repository().load(&id).await {
            Ok(loaded) if reached(loaded.state.status, target) => StepResult::DONE,
            Ok(_) => result,
            Err(error) => StepResult::transient(step_errors::UNAVAILABLE, error.to_string()),
        }
    }
}

/// What a carrier's failure comes to: a refusal with `refusal_code`, or a
/// transient failure with its own code (unavailable, timed out, circuit
/// open), retried with backoff and never compensated by itself.
fn carrier_failure(error: CarrierError, refusal_code: &str) -> StepResult {
    match error {
        CarrierError::Refused(reason) => StepResult::Refused {
            code: refusal_code.to_owned(),
            error: reason,
        },
        transient => StepResult::transient(
            transient
                .transient_code()
                .unwrap_or(step_errors::CARRIER_UNAVAILABLE),
            transient.to_string(),
        ),
    }
}

/// Sends `command` to aggregate `id` under `key`: a repeat of the same step
/// (after a crash) gets the first answer back and changes nothing.
async fn send<A: Aggregate>(
    writer: &Writer<A>,
    id: &str,
    command: &A::Command,
    key: String,
    metadata: &Metadata,
) -> StepResult {
    let options = ExecuteOptions {
        expected_version: None,
        metadata: metadata.clone(),
        idempotency: Some(IdempotencyKey::new(STEP_SCOPE, key.clone(), key)),
    };
    let record = |result: std::result::Result<&Outcome<A>, &A::Error>| match result {
        Ok(_) => StepRecord::Done,
        Err(refusal) => StepRecord::refused(refusal),
    };
    match writer.execute(id, command, options, record).await {
        Ok(Executed::Done(_)) => StepResult::DONE,
        Ok(Executed::Refused(refusal)) => StepRecord::refused(&refusal).into(),
        Ok(Executed::Replayed(record)) => record.into(),
        Err(error) => StepResult::transient(execute_error_code(&error), error.to_string()),
    }
}

/// The code of a command that could not be carried out.
fn execute_error_code<E>(error: &ExecuteError<E>) -> &'static str {
    match error {
        ExecuteError::ConflictRetriesExhausted { .. } => step_errors::CONCURRENCY_CONFLICT,
        ExecuteError::Store(event_store::Error::Database(_)) => step_errors::UNAVAILABLE,
        _ => step_errors::INTERNAL_ERROR,
    }
}

fn shipment(state: &SagaState, order: &SagaOrder) -> Shipment {
    Shipment {
        key: format!(
            "saga:{}:ship",
            state.saga_id.map(|id| id.to_string()).unwrap_or_default()
        ),
        order_id: order.order_id,
        address: order.shipping_address.clone(),
        lines: order.lines.clone(),
    }
}

/// Whether an order at `status` has got to `target` (or past it).
pub(super) fn reached(status: OrderStatus, target: OrderStatus) -> bool {
    use OrderStatus as S;
    match target {
        S::Reserved => matches!(status, S::Reserved | S::Paid | S::Shipped),
        S::Paid => matches!(status, S::Paid | S::Shipped),
        other => status == other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The JSON of a step's record, which migration 9 also gave the step
    /// records stored before it: a step done or refused before an upgrade
    /// is replayed after it, not done again.
    #[test]
    fn a_step_record_is_kept_as_its_outcome() {
        let cases = [
            (StepRecord::Done, json!({"outcome": "done"})),
            (
                StepRecord::Refused {
                    code: "insufficient_stock".to_owned(),
                    error: "only 1 left".to_owned(),
                },
                json!({"outcome": "refused", "code": "insufficient_stock", "error": "only 1 left"}),
            ),
        ];
        for (record, stored) in cases {
            assert_eq!(serde_json::to_value(&record).expect("serialise"), stored);
            assert_eq!(
                serde_json::from_value::<StepRecord>(stored).expect("deserialise"),
                record
            );
        }
        assert_eq!(StepResult::from(StepRecord::Done), StepResult::DONE);
        assert_eq!(
            StepResult::from(StepRecord::Refused {
                code: "c".to_owned(),
                error: "e".to_owned()
            }),
            StepResult::Refused {
                code: "c".to_owned(),
                error: "e".to_owned()
            }
        );
    }
}
