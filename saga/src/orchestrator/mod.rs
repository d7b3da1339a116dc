//! Drives sagas: claims due ones from the queue and carries out what
//! [`domain::next_action`] says, recording every attempt and outcome in the
//! saga's stream.
//!
//! - this module: the [`Orchestrator`] and how it records in a saga's
//!   stream (start, attempts, outcomes) and reads it back;
//! - `drive`: the driver loop (claim due sagas, drive each one step by
//!   step, record each step's outcome);
//! - `atomic`: a step that is a command on this database, in one
//!   transaction with its record in the saga's stream (design decision 11),
//!   and with the steps on this database that follow it;
//! - `commands`: what each of those steps asks of its aggregate, decided
//!   on the state the aggregate's cache remembers;
//! - `steps`: what each step does when it is recorded before it is carried
//!   out (the carrier's, and a step resumed after a crash), the command it
//!   sends under the step's idempotency key, and the record kept of it;
//! - `retry`: an operator's retry of a saga that needs attention.

use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use domain::{
    next_action, Action, Aggregate, BankAccount, FulfilmentSaga, Inventory, Order, OrderEvent,
    OrderId, SagaCommand, SagaEvent, SagaOrder, SagaState, SagaStatus, Situation, Step,
};
use event_store::{
    EventStore, ExecuteError, ExecuteOptions, Executed, Loaded, Metadata, Repository, StreamId,
    DEFAULT_CACHE_SIZE,
};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use crate::{Carrier, Claimed, Error, Queue, Result, SagaConfig, SagaMetrics};

mod atomic;
mod commands;
mod drive;
mod retry;
mod steps;
mod writer;

pub use drive::Drive;
pub use retry::retry;
use writer::Writer;

/// The idempotency scope of the saga's steps (a client's keys are in the
/// scope of its caller's `sub`), and the `actor` its events record.
pub const STEP_SCOPE: &str = "saga";

/// Set to a step name (`charge_payment`, `ship`, ...), the orchestrator stops
/// still, for ever, right after that step was carried out and before it is
/// committed or recorded (a step on this database: inside its transaction,
/// after its appends, before the commit; a carrier step: after the call,
/// before its outcome is recorded), and says so on stderr. For crash tests,
/// which then kill the process.
pub const PAUSE_AFTER_ENV: &str = "PURSER_SAGA_PAUSE_AFTER";

/// The value of [`PAUSE_AFTER_ENV`] that stops the run loop for ever once
/// the trigger has handed it a saga it leased in its own transaction, and
/// before the saga is driven (its lease committed, nothing else), for crash
/// tests.
pub const PAUSE_AFTER_HAND_OVER: &str = "hand_over";

/// Set to a carrier step's name (`ship`, `cancel_shipment`), the
/// orchestrator stops still, for ever, once that step's attempt is recorded
/// and before the carrier is called, and says so on stderr. For crash tests.
pub const PAUSE_BEFORE_ENV: &str = "PURSER_SAGA_PAUSE_BEFORE";

/// Called before each attempt of a step is recorded, with every step before
/// it committed; answering `true` means "I held the saga up: look at it
/// again" (it is planned anew). For tests and demos that need a saga to
/// stand still at a given step. An orchestrator with a hook commits each
/// step on its own (no batch holds aggregates while a hook holds it up).
pub type BeforeStep = Arc<dyn Fn(&Step) -> BoxFuture<'static, bool> + Send + Sync>;

/// Re-decisions after a version conflict for the saga's commands to accounts
/// and items, which many sagas write to at once.
const COMMAND_RETRIES: u32 = 20;

/// Orders remembered by one orchestrator: many more than it drives at once.
const ORDERS_REMEMBERED: usize = 4 * 1024;

/// The span of one attempt of a step, when tracing is on: a trace of its
/// own, linked to the order's (the request that placed it).
pub(super) fn step_span(current: &Current, step: &Step, attempt: u32) -> tracing::Span {
    if !event_store::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "saga step",
        order_id = %current.order_id,
        step = step.name(),
        attempt,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some(order) = &current.metadata.traceparent {
        event_store::trace::add_link(&span, order);
    }
    event_store::trace::record_ids(&span);
    span
}

/// A saga as this orchestrator knows it: read from its stream, then
/// followed by what the orchestrator appended itself.
#[derive(Debug, Clone)]
pub(super) struct Current {
    order_id: OrderId,
    state: SagaState,
    /// The stream's version, as committed: `state` is `unsaved` past it.
    version: u64,
    /// Of the saga's first event (the correlation id of the request that
    /// placed the order).
    metadata: Metadata,
    /// The saga's start, decided and not appended yet: it commits with the
    /// first batch of steps, at `version` (0), or alone before anything
    /// else is recorded ([`Orchestrator::save_start`]).
    unsaved: Vec<SagaEvent>,
}

impl Current {
    /// A saga whose stream is at `version` with `state`, nothing unsaved.
    fn saved(order_id: OrderId, state: SagaState, version: u64, metadata: Metadata) -> Current {
        Current {
            order_id,
            state,
            version,
            metadata,
            unsaved: Vec::new(),
        }
    }

    /// A saga nobody started (its stream is empty), as its stream reads.
    fn not_started(order_id: OrderId) -> Current {
        Current::saved(order_id, FulfilmentSaga::initial(), 0, Metadata::default())
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
    orders: Writer<Order>,
    accounts: Writer<BankAccount>,
    inventory: Writer<Inventory>,
    carrier: Arc<dyn Carrier>,
    queue: Queue,
    config: SagaConfig,
    metrics: Arc<SagaMetrics>,
    wake: Notify,
    /// Sagas claimed and not yet driven to their end, or handed over and
    /// not yet taken: at most `config.concurrency`.
    in_hand: AtomicUsize,
    /// To the run loop, while it runs: sagas the trigger claimed for it.
    hand_off: Mutex<Option<mpsc::UnboundedSender<Claimed>>>,
    pause_after: Option<String>,
    pause_before: Option<String>,
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
    /// An orchestrator on `store`, shipping through `carrier`. Cheap to clone: clones share everything.
    pub fn new(
        store: EventStore,
        carrier: Arc<dyn Carrier>,
        config: SagaConfig,
        metrics: Arc<SagaMetrics>,
    ) -> Self {
        let pause = |name: &str| std::env::var(name).ok().filter(|s| !s.is_empty());
        let every = config.snapshot_every;
        Orchestrator {
            inner: Arc::new(Inner {
                sagas: Repository::new(store.clone()).with_snapshots(every),
                orders: Writer::new(
                    Repository::new(store.clone()).with_snapshots(every),
                    // The orders being driven (the cancellation check reads
                    // the one its steps left); a finished one is soon
                    // forgotten.
                    ORDERS_REMEMBERED,
                    metrics.caches(),
                ),
                accounts: Writer::new(
                    contended(&store, every, &metrics),
                    DEFAULT_CACHE_SIZE,
                    metrics.caches(),
                ),
                inventory: Writer::new(
                    contended(&store, every, &metrics),
                    DEFAULT_CACHE_SIZE,
                    metrics.caches(),
                ),
                queue: Queue::new(store.pool().clone()),
                store,
                carrier,
                config,
                metrics,
                wake: Notify::new(),
                in_hand: AtomicUsize::new(0),
                hand_off: Mutex::new(None),
                pause_after: pause(PAUSE_AFTER_ENV),
                pause_before: pause(PAUSE_BEFORE_ENV),
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

    /// The work queue (`saga.due`) it claims sagas from.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<SagaMetrics> {
        &self.inner.metrics
    }

    /// Its configuration.
    pub fn config(&self) -> &SagaConfig {
        &self.inner.config
    }

    /// The event store it records sagas in and sends commands through.
    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// Tells the driver loop that sagas were made due (by the trigger,
    /// which wrote their `saga.due` rows itself): it claims at once instead
    /// of at its next poll.
    pub(crate) fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// Room for up to `want` more sagas in this process's run loop,
    /// taken: how many it has room for (none when it is not running or
    /// full). What is not used is given back ([`Orchestrator::give_back`]).
    pub(crate) fn reserve(&self, want: usize) -> usize {
        if self.lock_hand_off().is_none() {
            return 0;
        }
        self.take_room(want)
    }

    fn take_room(&self, want: usize) -> usize {
        let most = self.inner.config.concurrency as usize;
        let before = self
            .inner
            .in_hand
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some(used + want.min(most.saturating_sub(used)))
            })
            .unwrap_or(most);
        want.min(most.saturating_sub(before))
    }

    /// Room left in the run loop now (none taken).
    fn room_left(&self) -> usize {
        let most = self.inner.config.concurrency as usize;
        most.saturating_sub(self.inner.in_hand.load(Ordering::SeqCst))
    }

    /// Takes room for `sagas` claimed, whatever is left.
    fn take_room_anyway(&self, sagas: usize) {
        self.inner.in_hand.fetch_add(sagas, Ordering::SeqCst);
    }

    /// Gives back room taken and not used (or a saga driven to its end).
    pub(crate) fn give_back(&self, room: usize) {
        if room > 0 {
            self.inner.in_hand.fetch_sub(room, Ordering::SeqCst);
        }
    }

    /// Hands sagas the trigger claimed (with room reserved for each) to
    /// the run loop, which drives them at once: they are new, their
    /// streams empty when they were claimed. Those it cannot take (it
    /// stopped meanwhile) keep their lease until it runs out.
    pub(crate) fn hand_over(&self, claimed: Vec<Claimed>) {
        let hand_off = self.lock_hand_off();
        for claimed in claimed {
            let taken = hand_off
                .as_ref()
                .is_some_and(|hand_off| hand_off.send(claimed).is_ok());
            if !taken {
                self.give_back(1);
            }
        }
    }

    fn lock_hand_off(&self) -> std::sync::MutexGuard<'_, Option<mpsc::UnboundedSender<Claimed>>> {
        self.inner
            .hand_off
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
                actor: Some(STEP_SCOPE.to_owned()),
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

    /// Records `command` in the saga's stream, decided on `current` (read
    /// again when the stream moved on). The saga after it, or `None` when
    /// the saga refused it (it moved meanwhile).
    async fn record_on(&self, current: &Current, command: SagaCommand) -> Result<Option<Current>> {
        debug_assert!(current.unsaved.is_empty(), "the start saved first");
        let order_id = current.order_id;
        let known = Loaded {
            state: current.state.clone(),
            version: current.version,
            position: None,
        };
        let options = ExecuteOptions {
            metadata: Metadata {
                actor: Some(STEP_SCOPE.to_owned()),
                ..current.metadata.clone()
            },
            ..ExecuteOptions::default()
        };
        match self
            .inner
            .sagas
            .execute_from(
                Some(known),
                &order_id.to_string(),
                &command,
                options,
                |_| (),
            )
            .await
        {
            Ok(Executed::Done(outcome)) if !outcome.events.is_empty() => Ok(Some(Current::saved(
                order_id,
                outcome.state,
                outcome.version,
                current.metadata.clone(),
            ))),
            Ok(Executed::Done(_)) => Ok(None),
            Ok(Executed::Refused(refusal)) => {
                tracing::warn!(%order_id, ?command, %refusal, "saga refused a record; looking again");
                Ok(None)
            }
            Ok(Executed::Replayed(())) => Ok(None),
            Err(ExecuteError::Store(error)) => Err(error.into()),
            Err(error) => Err(Error::Saga {
                order_id,
                message: error.to_string(),
            }),
        }
    }

    /// The saga as its stream has it, with the metadata of its first event
    /// (the correlation id of the request that placed the order).
    async fn load(&self, order_id: OrderId) -> Result<Current> {
        let stream = StreamId::of::<FulfilmentSaga>(order_id);
        let recorded = self.inner.store.read_stream(&stream, 1).await?;
        let metadata = recorded
            .first()
            .map(|e| e.metadata.clone())
            .unwrap_or_default();
        let mut state = FulfilmentSaga::initial();
        let mut version = 0;
        for event in &recorded {
            state = FulfilmentSaga::evolve(state, &event.decode()?);
            version = event.version;
        }
        Ok(Current::saved(order_id, state, version, metadata))
    }

    /// Starts the saga `current` (not started yet) from its order's
    /// `OrderPlaced` in the store (never from a message: design decision
    /// 10), while driving it (the caller holds its `saga.due` row).
    async fn start_from_order(&self, current: &Current) -> Result<Start> {
        let order_id = current.order_id;
        let stream = StreamId::of::<Order>(order_id);
        let recorded = self.inner.store.read_stream(&stream, 1).await?;
        let Some(first) = recorded.first() else {
            return Ok(Start::NoOrder);
        };
        let Some(order) = saga_order(&first.decode()?) else {
            return Ok(Start::NoOrder);
        };
        // The whole stream is at hand: the order's first steps decide on it.
        let mut loaded = Loaded::<Order> {
            state: Order::initial(),
            version: 0,
            position: None,
        };
        for event in &recorded {
            loaded.state = Order::evolve(loaded.state, &event.decode()?);
            loaded.version = event.version;
            loaded.position = Some(event.position);
        }
        self.inner.orders.remember(&order_id.to_string(), loaded);
        let not_started = Current {
            metadata: Metadata {
                causation_id: Some(first.event_id.to_string()),
                ..first.metadata.clone()
            },
            ..current.clone()
        };
        let command = SagaCommand::Start {
            saga_id: Uuid::now_v7(),
            order,
        };
        if self.inner.before_step.is_none() {
            // Its first steps on this database commit with it (one
            // transaction fewer): decided now, appended by their batch.
            if let Ok(events) = FulfilmentSaga::decide(&not_started.state, &command) {
                let started = Current {
                    state: FulfilmentSaga::fold(not_started.state.clone(), &events),
                    unsaved: events,
                    ..not_started.clone()
                };
                if self.joins_a_batch(&started).await? {
                    return Ok(Start::Started(Box::new(started)));
                }
            }
        }
        let Some(started) = self.record_on(&not_started, command).await? else {
            return Ok(Start::Moved);
        };
        self.started(order_id);
        Ok(Start::Started(Box::new(started)))
    }

    /// Whether what `current` (just started, unsaved) does next is a step
    /// on this database, whose batch can commit the start with it.
    async fn joins_a_batch(&self, current: &Current) -> Result<bool> {
        let cancellation_requested = self.cancellation_requested(current.order_id).await?;
        let action = next_action(
            &current.state,
            &Situation {
                now_ms: chrono::Utc::now().timestamp_millis(),
                cancellation_requested,
                max_attempts: self.inner.config.max_attempts,
            },
        );
        Ok(current.state.status == SagaStatus::Running
            && matches!(action, Action::Attempt { step, .. } if !atomic::leaves_the_database(&step)))
    }

    /// Appends the start `current` holds unsaved, alone (before anything
    /// but a batch of steps is recorded). `None` when the saga was started
    /// meanwhile (another orchestrator).
    async fn save_start(&self, current: &Current) -> Result<Option<Current>> {
        self.append_saga_alone(current, &[]).await
    }

    /// Counts and logs a start that committed.
    fn started(&self, order_id: OrderId) {
        self.inner.metrics.started();
        tracing::info!(%order_id, "saga started");
    }
}

/// How starting a saga from its order went.
enum Start {
    /// The saga, started.
    Started(Box<Current>),
    /// Started meanwhile by another orchestrator: look again.
    Moved,
    /// There is no such order.
    NoOrder,
}

/// A repository for an aggregate many sagas write at once (an item, an
/// account): generous retries, and each conflict counted.
fn contended<A: Aggregate>(
    store: &EventStore,
    snapshot_every: u64,
    metrics: &Arc<SagaMetrics>,
) -> Repository<A> {
    let metrics = Arc::clone(metrics);
    Repository::new(store.clone())
        .with_max_retries(COMMAND_RETRIES)
        .with_snapshots(snapshot_every)
        .on_retry(move || metrics.conflict_retried())
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
