//! Drives sagas: claims due ones from the queue and carries out what
//! [`domain::next_action`] says, recording every attempt and outcome in the
//! saga's stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::{
    next_action, AccountCommand, Action, Aggregate, Amount, BankAccount, DomainError,
    FulfilmentSaga, Inventory, InventoryCommand, Order, OrderCommand, OrderEvent, OrderId,
    OrderStatus, SagaCommand, SagaOrder, SagaState, SagaStatus, Situation, Step,
};
use event_store::{
    EventStore, ExecuteError, ExecuteOptions, Executed, IdempotencyKey, Metadata, Outcome,
    Repository, StreamId,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Carrier, CarrierError, Claimed, Error, Queue, Result, SagaConfig, SagaMetrics, Shipment,
};

/// Set to a step name (`charge_payment`, `ship`, ...), the orchestrator stops
/// still, for ever, right after that step's command was carried out and
/// before its outcome is recorded, and says so on stderr. For crash tests,
/// which then kill the process.
pub const PAUSE_AFTER_ENV: &str = "PURSER_SAGA_PAUSE_AFTER";

/// Called before each attempt of a step is recorded; answering `true` means
/// "I held the saga up: look at it again" (it is planned anew). For tests
/// and demos that need a saga to stand still at a given step.
pub type BeforeStep = Arc<dyn Fn(&Step) -> BoxFuture<'static, bool> + Send + Sync>;

/// Re-decisions after a version conflict for the saga's commands to accounts
/// and items, which many sagas write to at once.
const COMMAND_RETRIES: u32 = 20;

/// How driving one saga ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// `completed` or `compensated`.
    Finished(SagaStatus),
    /// Stopped for an operator.
    NeedsAttention,
    /// A retry is due then.
    Waiting { until_ms: i64 },
    /// Woken for an order that does not exist.
    NoOrder,
    /// Another orchestrator took the saga over (this one's lease ran out).
    LostLease,
}

/// What one attempt of a step came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StepResult {
    Done { tracking_number: Option<String> },
    Refused { code: String, error: String },
    Transient(String),
}

impl StepResult {
    const DONE: StepResult = StepResult::Done {
        tracking_number: None,
    };
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

/// The saga orchestrator. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    sagas: Repository<FulfilmentSaga>,
    orders: Repository<Order>,
    accounts: Repository<BankAccount>,
    inventory: Repository<Inventory>,
    carrier: Arc<dyn Carrier>,
    queue: Queue,
    config: SagaConfig,
    metrics: Arc<SagaMetrics>,
    wake: Notify,
    pause_after: Option<String>,
    before_step: Option<BeforeStep>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("owner", &self.inner.queue.owner())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Orchestrator {
    pub fn new(
        store: EventStore,
        carrier: Arc<dyn Carrier>,
        config: SagaConfig,
        metrics: Arc<SagaMetrics>,
    ) -> Self {
        let pause_after = std::env::var(PAUSE_AFTER_ENV)
            .ok()
            .filter(|s| !s.is_empty());
        Orchestrator {
            inner: Arc::new(Inner {
                sagas: Repository::new(store.clone()),
                orders: Repository::new(store.clone()),
                accounts: Repository::new(store.clone()).with_max_retries(COMMAND_RETRIES),
                inventory: Repository::new(store.clone()).with_max_retries(COMMAND_RETRIES),
                queue: Queue::new(store.pool().clone()),
                store,
                carrier,
                config,
                metrics,
                wake: Notify::new(),
                pause_after,
                before_step: None,
            }),
        }
    }

    /// Calls `hook` before each step attempt (see [`BeforeStep`]). Only on a
    /// new orchestrator, before it is cloned.
    pub fn with_before_step(mut self, hook: BeforeStep) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("with_before_step before any clone");
        inner.before_step = Some(hook);
        self
    }

    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    pub fn metrics(&self) -> &Arc<SagaMetrics> {
        &self.inner.metrics
    }

    pub fn config(&self) -> &SagaConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// Tells the driver loop that sagas were made due (by the trigger,
    /// which wrote their `saga.due` rows itself): it claims at once instead
    /// of at its next poll.
    pub(crate) fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// Starts the saga of a placed order (at most once per order) and makes
    /// it due. `true` when this call started it.
    #[tracing::instrument(skip_all, fields(order_id = %order.order_id), err)]
    pub async fn start(&self, order: SagaOrder, metadata: Metadata) -> Result<bool> {
        let order_id = order.order_id;
        let started = self.record_start(order, metadata).await?;
        self.wake(order_id).await?;
        Ok(started)
    }

    /// Records the saga's start (refused, `false`, when it has one).
    async fn record_start(&self, order: SagaOrder, metadata: Metadata) -> Result<bool> {
        let order_id = order.order_id;
        let command = SagaCommand::Start {
            saga_id: Uuid::now_v7(),
            order,
        };
        let started = self.record(order_id, command, &metadata).await?;
        if started {
            self.inner.metrics.started();
            tracing::info!(%order_id, "saga started");
        }
        Ok(started)
    }

    /// Makes the saga of `order_id` due now.
    pub async fn wake(&self, order_id: OrderId) -> Result<()> {
        self.inner.queue.wake(order_id).await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Claims due sagas and drives them, at most `concurrency` at a time,
    /// until `shutdown`; the sagas in hand then get a few seconds to finish
    /// their step (one cut short is repaired like a crash).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let config = &self.inner.config;
        let concurrency = config.concurrency as usize;
        let poll = Duration::from_millis(config.poll_ms);
        let mut tasks = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        tracing::info!(owner = %self.inner.queue.owner(), "saga orchestrator started");
        while !shutdown.is_cancelled() {
            let free = concurrency.saturating_sub(tasks.len());
            let mut pause = poll;
            match self
                .inner
                .queue
                .claim(free, config.lease_for_step_ms())
                .await
            {
                Ok(claimed) => {
                    backoff = Duration::from_millis(100);
                    for claimed in claimed {
                        let orchestrator = self.clone();
                        tasks.spawn(async move { orchestrator.drive_logged(claimed).await });
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "cannot claim due sagas; retrying");
                    pause = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "stopping with sagas in the middle of a step"
            );
            tasks.abort_all();
        }
        tracing::info!("saga orchestrator stopped");
        Ok(())
    }

    async fn drive_logged(&self, claimed: Claimed) {
        match self.drive(claimed).await {
            Ok(drive) => tracing::debug!(order_id = %claimed.order_id, ?drive, "saga driven"),
            Err(error) => {
                let retry = self.inner.config.backoff(1);
                tracing::warn!(order_id = %claimed.order_id, %error, ?retry, "cannot drive saga; retrying");
                let due = Utc::now() + retry;
                if let Err(error) = self.inner.queue.reschedule(claimed, due).await {
                    // The lease runs out and the saga is claimed again.
                    tracing::debug!(%error, "cannot reschedule");
                }
            }
        }
    }

    /// Drives one claimed saga as far as it goes now: until it is over,
    /// waits for a retry, or needs an operator.
    #[tracing::instrument(skip_all, fields(order_id = %claimed.order_id), err)]
    pub async fn drive(&self, claimed: Claimed) -> Result<Drive> {
        let order_id = claimed.order_id;
        let config = &self.inner.config;
        let mut lost_races = 0u32;
        loop {
            if !self
                .inner
                .queue
                .renew(order_id, config.lease_for_step_ms())
                .await?
            {
                return Ok(Drive::LostLease);
            }
            let (state, metadata) = self.load(order_id).await?;
            if state.status == SagaStatus::NotStarted {
                // Made due by the trigger (or woken before its start was
                // recorded): start it from the order's own stream.
                if !self.start_from_order(order_id).await? {
                    self.inner.queue.finish(claimed).await?;
                    return Ok(Drive::NoOrder);
                }
                continue;
            }
            let cancellation_requested = state.status == SagaStatus::Running
                && self
                    .inner
                    .orders
                    .load(&order_id.to_string())
                    .await?
                    .state
                    .cancellation_requested
                    .is_some();
            let now_ms = Utc::now().timestamp_millis();
            let action = next_action(
                &state,
                &Situation {
                    now_ms,
                    cancellation_requested,
                    max_attempts: config.max_attempts,
                },
            );
            tracing::debug!(?action, status = %state.status, "next action");
            let recorded = match action {
                Action::Done => {
                    self.inner.queue.finish(claimed).await?;
                    return Ok(Drive::Finished(state.status));
                }
                Action::Idle => {
                    self.inner.queue.finish(claimed).await?;
                    return Ok(Drive::NeedsAttention);
                }
                Action::Wait { until_ms } => {
                    let due = DateTime::from_timestamp_millis(until_ms).unwrap_or_else(Utc::now);
                    self.inner.queue.reschedule(claimed, due).await?;
                    return Ok(Drive::Waiting { until_ms });
                }
                Action::BeginCompensation(reason) => {
                    tracing::info!(%reason, "saga compensating");
                    self.record(
                        order_id,
                        SagaCommand::BeginCompensation { reason },
                        &metadata,
                    )
                    .await?
                }
                Action::Complete => {
                    let done = self
                        .record(order_id, SagaCommand::Complete, &metadata)
                        .await?;
                    if done {
                        self.inner.metrics.completed();
                        tracing::info!("saga completed");
                    }
                    done
                }
                Action::FinishCompensation => {
                    let done = self
                        .record(order_id, SagaCommand::FinishCompensation, &metadata)
                        .await?;
                    if done {
                        self.inner.metrics.compensated();
                        tracing::info!("saga compensated");
                    }
                    done
                }
                Action::NeedsAttention { step, error } => {
                    tracing::error!(%step, %error, "saga needs attention");
                    let done = self
                        .record(
                            order_id,
                            SagaCommand::NeedAttention { step, error },
                            &metadata,
                        )
                        .await?;
                    if done {
                        self.inner.metrics.needs_attention();
                    }
                    done
                }
                Action::TimedOut { step, attempt } => {
                    let retry_at_ms = now_ms + millis(config.backoff(attempt));
                    tracing::warn!(%step, attempt, "step passed its deadline without an outcome");
                    self.record(
                        order_id,
                        SagaCommand::FailStep {
                            step,
                            attempt,
                            error: "no outcome before the step's deadline".to_owned(),
                            retry_at_ms,
                        },
                        &metadata,
                    )
                    .await?
                }
                Action::Attempt { step, attempt } => {
                    if let Some(hook) = &self.inner.before_step {
                        if hook(&step).await {
                            continue;
                        }
                    }
                    let deadline_ms = now_ms + config.step_timeout_ms as i64;
                    let command = SagaCommand::StartStep {
                        step: step.clone(),
                        attempt,
                        deadline_ms,
                    };
                    if self.record(order_id, command, &metadata).await? {
                        self.run_step(order_id, &state, step, attempt, deadline_ms, &metadata)
                            .await?
                    } else {
                        false
                    }
                }
                Action::Resume {
                    step,
                    attempt,
                    deadline_ms,
                } => {
                    tracing::info!(%step, attempt, "resuming a step cut short");
                    self.run_step(order_id, &state, step, attempt, deadline_ms, &metadata)
                        .await?
                }
            };
            if recorded {
                lost_races = 0;
            } else {
                // The saga moved under us (another orchestrator): look again,
                // a few times, then leave it for later.
                lost_races += 1;
                if lost_races >= 3 {
                    let due = Utc::now() + config.backoff(1);
                    self.inner.queue.reschedule(claimed, due).await?;
                    return Ok(Drive::Waiting {
                        until_ms: due.timestamp_millis(),
                    });
                }
            }
        }
    }

    /// One attempt of `step`, within its deadline, and its outcome recorded.
    async fn run_step(
        &self,
        order_id: OrderId,
        state: &SagaState,
        step: Step,
        attempt: u32,
        deadline_ms: i64,
        metadata: &Metadata,
    ) -> Result<bool> {
        let started = Instant::now();
        let left = u64::try_from(deadline_ms - Utc::now().timestamp_millis()).unwrap_or(0);
        let result = match tokio::time::timeout(
            Duration::from_millis(left),
            self.execute(state, &step, metadata),
        )
        .await
        {
            Ok(result) => result,
            Err(_elapsed) => StepResult::Transient(format!(
                "no answer before the step's deadline ({} ms)",
                self.inner.config.step_timeout_ms
            )),
        };
        let latency = started.elapsed();
        self.pause_if_asked(order_id, &step).await;
        let metrics = &self.inner.metrics;
        let command = match result {
            StepResult::Done { tracking_number } => {
                metrics.step(step.name(), "succeeded", latency);
                tracing::debug!(%step, attempt, ?latency, "step succeeded");
                SagaCommand::SucceedStep {
                    step,
                    tracking_number,
                }
            }
            StepResult::Refused { code, error } => {
                metrics.step(step.name(), "refused", latency);
                tracing::info!(%step, attempt, %code, %error, "step refused");
                if step.is_compensation() || step.refusal_reason().is_none() {
                    metrics.needs_attention();
                }
                SagaCommand::RefuseStep { step, code, error }
            }
            StepResult::Transient(error) => {
                metrics.step(step.name(), "failed", latency);
                let retry = self.inner.config.backoff(attempt);
                tracing::warn!(%step, attempt, %error, ?retry, "step failed; retrying");
                SagaCommand::FailStep {
                    step,
                    attempt,
                    error,
                    retry_at_ms: Utc::now().timestamp_millis() + millis(retry),
                }
            }
        };
        self.record(order_id, command, metadata).await
    }

    /// Carries out `step`: one command, under the step's idempotency key.
    async fn execute(&self, state: &SagaState, step: &Step, metadata: &Metadata) -> StepResult {
        let Some(order) = state.order.as_ref() else {
            return StepResult::Transient("saga without an order".to_owned());
        };
        let Some(saga_id) = state.saga_id else {
            return StepResult::Transient("saga without an id".to_owned());
        };
        let order_id = order.order_id;
        // With spaces, which a client's `Idempotency-Key` (visible ASCII)
        // cannot have: no request can take a step's key before the step.
        // (Earlier versions used `saga:{saga_id}:{retries}:{step}`; a step
        // one of them carried out is not repeated after an upgrade, as the
        // aggregates record each order's charge, reservations and marks.)
        let key = format!("saga {saga_id} {} {step}", state.retries);
        let inner = &self.inner;
        let metadata = Metadata {
            causation_id: Some(format!("saga-{order_id}:{step}")),
            actor: Some("saga".to_owned()),
            ..metadata.clone()
        };
        match step {
            Step::ReserveStock { sku } => {
                let Some(line) = order.lines.iter().find(|l| &l.sku == sku) else {
                    return StepResult::Transient(format!("no line for {sku}"));
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
                Err(CarrierError::Refused(reason)) => StepResult::Refused {
                    code: "shipment_refused".to_owned(),
                    error: reason,
                },
                Err(CarrierError::Unavailable(reason)) => StepResult::Transient(reason),
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
                Err(CarrierError::Refused(reason)) => StepResult::Refused {
                    code: "shipment_not_cancellable".to_owned(),
                    error: reason,
                },
                Err(CarrierError::Unavailable(reason)) => StepResult::Transient(reason),
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
        match self.inner.orders.load(&id).await {
            Ok(loaded) if reached(loaded.state.status, target) => StepResult::DONE,
            Ok(_) => result,
            Err(error) => StepResult::Transient(error.to_string()),
        }
    }

    /// Records `command` in the saga's stream. `false` when the saga refused
    /// it (it moved meanwhile).
    async fn record(
        &self,
        order_id: OrderId,
        command: SagaCommand,
        metadata: &Metadata,
    ) -> Result<bool> {
        let options = ExecuteOptions {
            metadata: Metadata {
                actor: Some("saga".to_owned()),
                ..metadata.clone()
            },
            ..ExecuteOptions::default()
        };
        match self
            .inner
            .sagas
            .execute(&order_id.to_string(), &command, options, |_| ())
            .await
        {
            Ok(Executed::Done(outcome)) => Ok(!outcome.events.is_empty()),
            Ok(Executed::Refused(refusal)) => {
                tracing::warn!(%order_id, ?command, %refusal, "saga refused a record; looking again");
                Ok(false)
            }
            Ok(Executed::Replayed(_)) => Ok(true),
            Err(ExecuteError::Store(error)) => Err(error.into()),
            Err(error) => Err(Error::Saga {
                order_id,
                message: error.to_string(),
            }),
        }
    }

    /// The saga's state, and the metadata of its first event (the
    /// correlation id of the request that placed the order).
    async fn load(&self, order_id: OrderId) -> Result<(SagaState, Metadata)> {
        let stream = StreamId::of::<FulfilmentSaga>(order_id);
        let recorded = self.inner.store.read_stream(&stream, 1).await?;
        let metadata = recorded
            .first()
            .map(|e| e.metadata.clone())
            .unwrap_or_default();
        let mut state = FulfilmentSaga::initial();
        for event in &recorded {
            state = FulfilmentSaga::evolve(state, &event.decode()?);
        }
        Ok((state, metadata))
    }

    /// Starts the saga of `order_id` from its `OrderPlaced` in the store
    /// (never from a message: DESIGN.md point 10), while driving it (the
    /// caller holds its `saga.due` row). `false` when there is no such order.
    async fn start_from_order(&self, order_id: OrderId) -> Result<bool> {
        let stream = StreamId::of::<Order>(order_id);
        let recorded = self.inner.store.read_stream(&stream, 1).await?;
        let Some(first) = recorded.first() else {
            return Ok(false);
        };
        let Some(order) = saga_order(&first.decode()?) else {
            return Ok(false);
        };
        let metadata = Metadata {
            causation_id: Some(first.event_id.to_string()),
            ..first.metadata.clone()
        };
        self.record_start(order, metadata).await?;
        Ok(true)
    }

    async fn pause_if_asked(&self, order_id: OrderId, step: &Step) {
        if self.inner.pause_after.as_deref() == Some(step.name()) {
            eprintln!("{PAUSE_AFTER_ENV}: paused after {step} of order {order_id}");
            tracing::warn!(%order_id, %step, "paused ({PAUSE_AFTER_ENV})");
            std::future::pending::<()>().await;
        }
    }
}

/// The saga of a placed order, from its `OrderPlaced`.
pub(crate) fn saga_order(event: &OrderEvent) -> Option<SagaOrder> {
    match event {
        OrderEvent::OrderPlaced {
            order_id,
            customer_id,
            account_id,
            currency,
            lines,
            total,
            shipping_address,
        } => Some(SagaOrder {
            order_id: *order_id,
            customer_id: *customer_id,
            account_id: *account_id,
            currency: *currency,
            lines: lines.clone(),
            total: *total,
            shipping_address: shipping_address.clone(),
        }),
        _ => None,
    }
}

/// An operator's retry of a saga in `needs_attention` (`purser saga retry`):
/// records it and makes the saga due. The orchestrator picks it up.
pub async fn retry(store: &EventStore, order_id: OrderId) -> Result<SagaStatus> {
    let sagas: Repository<FulfilmentSaga> = Repository::new(store.clone());
    let options = ExecuteOptions {
        metadata: Metadata {
            actor: Some("operator".to_owned()),
            ..Metadata::default()
        },
        ..ExecuteOptions::default()
    };
    let outcome = match sagas
        .execute(&order_id.to_string(), &SagaCommand::Retry, options, |_| ())
        .await
    {
        Ok(Executed::Done(outcome)) => outcome,
        Ok(Executed::Refused(domain::SagaError::NotFound)) => {
            return Err(Error::OrderNotFound(order_id))
        }
        Ok(Executed::Refused(refusal)) => {
            let state = sagas.load(&order_id.to_string()).await?.state.status;
            tracing::debug!(%refusal, "retry refused");
            return Err(Error::NotRetryable {
                order_id,
                state: state.to_string(),
            });
        }
        Ok(Executed::Replayed(_)) => unreachable!("no idempotency key"),
        Err(ExecuteError::Store(error)) => return Err(error.into()),
        Err(error) => {
            return Err(Error::Saga {
                order_id,
                message: error.to_string(),
            })
        }
    };
    Queue::new(store.pool().clone()).wake(order_id).await?;
    Ok(outcome.state.status)
}

/// Sends `command` to aggregate `id` under `key`: a repeat of the same step
/// (after a crash) gets the first answer back and changes nothing.
async fn send<A: Aggregate>(
    repository: &Repository<A>,
    id: &str,
    command: &A::Command,
    key: String,
    metadata: &Metadata,
) -> StepResult {
    let options = ExecuteOptions {
        expected_version: None,
        metadata: metadata.clone(),
        idempotency: Some(IdempotencyKey::new(key.clone(), key)),
    };
    let record = |result: std::result::Result<&Outcome<A>, &A::Error>| match result {
        Ok(_) => StepRecord::Done,
        Err(refusal) => StepRecord::refused(refusal),
    };
    match repository.execute(id, command, options, record).await {
        Ok(Executed::Done(_)) => StepResult::DONE,
        Ok(Executed::Refused(refusal)) => StepRecord::refused(&refusal).into(),
        Ok(Executed::Replayed(record)) => record.into(),
        Err(error) => StepResult::Transient(error.to_string()),
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
fn reached(status: OrderStatus, target: OrderStatus) -> bool {
    use OrderStatus as S;
    match target {
        S::Reserved => matches!(status, S::Reserved | S::Paid | S::Shipped),
        S::Paid => matches!(status, S::Paid | S::Shipped),
        other => status == other,
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
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
