//! Drives an order-fulfilment saga with the domain's own planner
//! (`next_action`), appending its events through the real repository as the
//! orchestrator would, with each step's outcome chosen by the test.
//! Used by the projections', Query API's and Command API's tests.

use domain::{
    next_action, AccountId, Action, CustomerId, FulfilmentSaga, OrderId, OrderLine, SagaCommand,
    SagaOrder, Situation, Step,
};
use event_store::{EventStore, Repository};
use uuid::Uuid;

use crate::fixtures::{address, currency_of, line, money_of};
use crate::store::execute;

/// What an attempt of a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Succeed,
    /// A transient failure (retried up to the budget, then attention),
    /// recorded with its code as the orchestrator does: `timeout`.
    Fail,
    /// A transient failure recorded with this `error`: a code, or the free
    /// text a saga recorded before codes (to show it is never shown).
    FailWith(&'static str),
    /// A business refusal with this code.
    Refuse(&'static str),
    /// A business refusal with this code and message.
    RefuseWith(&'static str, &'static str),
}

/// Attempts a step gets before the saga needs attention.
pub const MAX_ATTEMPTS: u32 = 3;

/// An order of one unit of each SKU at 1,000 each.
pub fn saga_order(order_id: Uuid, skus: &[&str]) -> SagaOrder {
    let lines: Vec<OrderLine> = skus.iter().map(|sku| line(sku, 1, 1_000)).collect();
    SagaOrder {
        order_id: OrderId::new(order_id),
        customer_id: CustomerId::new(Uuid::now_v7()),
        account_id: AccountId::new(Uuid::now_v7()),
        currency: currency_of("EUR"),
        total: money_of(1_000 * skus.len() as i64),
        lines,
        shipping_address: address("ES"),
    }
}

/// Runs one saga command that must be accepted; returns the stream version.
pub async fn saga_exec(store: &EventStore, order_id: Uuid, command: SagaCommand) -> u64 {
    execute::<FulfilmentSaga>(store, &order_id.to_string(), &command)
        .await
        .unwrap_or_else(|code| panic!("saga {order_id} refused {command:?}: {code}"))
}

/// Starts the saga of `order` and runs it until it is over or waits for an
/// operator; `outcome(step, attempt)` decides each attempt. Returns the
/// saga stream's version.
pub async fn run_saga(
    store: &EventStore,
    order: SagaOrder,
    outcome: impl Fn(&Step, u32) -> StepOutcome,
) -> u64 {
    let order_id = order.order_id.as_uuid();
    saga_exec(
        store,
        order_id,
        SagaCommand::Start {
            saga_id: Uuid::now_v7(),
            order,
        },
    )
    .await;
    resume_saga(store, order_id, outcome).await
}

/// Runs a started saga on until it is over or waits for an operator.
pub async fn resume_saga(
    store: &EventStore,
    order_id: Uuid,
    outcome: impl Fn(&Step, u32) -> StepOutcome,
) -> u64 {
    let repository = Repository::<FulfilmentSaga>::new(store.clone());
    let situation = Situation {
        now_ms: 1_000_000,
        cancellation_requested: false,
        max_attempts: MAX_ATTEMPTS,
    };
    loop {
        let loaded = repository
            .load(&order_id.to_string())
            .await
            .expect("load saga");
        let command = match next_action(&loaded.state, &situation) {
            Action::Attempt { step, attempt } => {
                saga_exec(
                    store,
                    order_id,
                    SagaCommand::StartStep {
                        step: step.clone(),
                        attempt,
                        deadline_ms: situation.now_ms + 60_000,
                    },
                )
                .await;
                match outcome(&step, attempt) {
                    StepOutcome::Succeed => SagaCommand::SucceedStep {
                        tracking_number: (step == Step::Ship).then(|| format!("TRK-{order_id}")),
                        step,
                    },
                    StepOutcome::Fail => SagaCommand::FailStep {
                        step,
                        attempt,
                        error: domain::step_errors::TIMEOUT.to_owned(),
                        retry_at_ms: 0,
                    },
                    StepOutcome::FailWith(error) => SagaCommand::FailStep {
                        step,
                        attempt,
                        error: error.to_owned(),
                        retry_at_ms: 0,
                    },
                    StepOutcome::Refuse(code) => SagaCommand::RefuseStep {
                        step,
                        code: code.to_owned(),
                        error: "refused".to_owned(),
                    },
                    StepOutcome::RefuseWith(code, error) => SagaCommand::RefuseStep {
                        step,
                        code: code.to_owned(),
                        error: error.to_owned(),
                    },
                }
            }
            Action::BeginCompensation(reason) => SagaCommand::BeginCompensation { reason },
            Action::Complete => SagaCommand::Complete,
            Action::FinishCompensation => SagaCommand::FinishCompensation,
            Action::NeedsAttention { step, error } => SagaCommand::NeedAttention { step, error },
            Action::Idle | Action::Done => return loaded.version,
            other => panic!("the simulated saga never waits: {other:?}"),
        };
        saga_exec(store, order_id, command).await;
    }
}
