//! What a step on this database asks of its aggregate, decided on the
//! state its cache remembers (or on a fresh load), for a transaction that
//! appends it (`atomic`).
//!
//! The rule is [`event_store::Repository::execute_from`]'s: a decision on
//! a remembered state is proven current by the append at its version (a
//! conflict sends the step back to a fresh load); a refusal or a no-op
//! proves nothing, so it is decided again on a fresh load.

use domain::{
    step_errors, AccountCommand, Aggregate, Amount, BankAccount, DomainError, Inventory,
    InventoryCommand, Order, OrderCommand, OrderStatus, SagaState, Step,
};
use event_store::{Loaded, Metadata, NewEvent, StreamId, StreamTurn};

use super::steps::{reached, StepResult};
use super::{Inner, Orchestrator, Writer};

/// An aggregate the saga's steps write, with its cache in the orchestrator.
pub(super) trait Target: Aggregate + Sized + 'static {
    fn writer(inner: &Inner) -> &Writer<Self>;
    fn remembered(loaded: Loaded<Self>) -> Remembered;
    fn of(remembered: &Remembered) -> Option<&Loaded<Self>>;
}

/// A state of one of the saga's aggregates, to decide on or to remember.
#[derive(Debug, Clone)]
pub(super) enum Remembered {
    Order(Loaded<Order>),
    Account(Loaded<BankAccount>),
    Item(Loaded<Inventory>),
}

impl Remembered {
    /// The appended events' last position, once the append is made.
    pub(super) fn set_position(&mut self, position: i64) {
        match self {
            Remembered::Order(loaded) => loaded.position = Some(position),
            Remembered::Account(loaded) => loaded.position = Some(position),
            Remembered::Item(loaded) => loaded.position = Some(position),
        }
    }
}

impl Target for Order {
    fn writer(inner: &Inner) -> &Writer<Self> {
        &inner.orders
    }
    fn remembered(loaded: Loaded<Self>) -> Remembered {
        Remembered::Order(loaded)
    }
    fn of(remembered: &Remembered) -> Option<&Loaded<Self>> {
        match remembered {
            Remembered::Order(loaded) => Some(loaded),
            _ => None,
        }
    }
}

impl Target for BankAccount {
    fn writer(inner: &Inner) -> &Writer<Self> {
        &inner.accounts
    }
    fn remembered(loaded: Loaded<Self>) -> Remembered {
        Remembered::Account(loaded)
    }
    fn of(remembered: &Remembered) -> Option<&Loaded<Self>> {
        match remembered {
            Remembered::Account(loaded) => Some(loaded),
            _ => None,
        }
    }
}

impl Target for Inventory {
    fn writer(inner: &Inner) -> &Writer<Self> {
        &inner.inventory
    }
    fn remembered(loaded: Loaded<Self>) -> Remembered {
        Remembered::Item(loaded)
    }
    fn of(remembered: &Remembered) -> Option<&Loaded<Self>> {
        match remembered {
            Remembered::Item(loaded) => Some(loaded),
            _ => None,
        }
    }
}

/// A state to decide on, and whether it was read just now.
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub(super) state: Remembered,
    /// Read from the stream (or folded from such a read by this batch's
    /// own appends), as opposed to remembered from an earlier command.
    pub(super) fresh: bool,
}

/// An aggregate's turn held by a batch, with the state remembered when it
/// was taken (`None`: to read, or shown stale).
pub(super) struct Held<'a> {
    pub(super) stream: StreamId,
    pub(super) id: String,
    /// The lock its turn is on, in its cache's locks.
    pub(super) stripe: usize,
    pub(super) known: Option<Known>,
    /// `None` when the batch holds the stripe through another aggregate.
    pub(super) _turn: Option<StreamTurn<'a>>,
}

/// Events to append to one aggregate at a version.
#[derive(Debug, Clone)]
pub(super) struct Append {
    pub(super) stream: StreamId,
    pub(super) expected: u64,
    pub(super) events: Vec<NewEvent>,
    pub(super) metadata: Metadata,
}

/// What a step's command came to, decided.
// Returned once per step and taken apart at once: boxing would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Decided {
    /// Done, refused or failed; `append` what it decided (nothing for a
    /// refusal, a no-op or a failure), `after` the aggregate's state once
    /// it is appended (or as decided on, when nothing is).
    Step {
        result: StepResult,
        append: Option<Append>,
        after: Option<(StreamId, String, Known)>,
    },
    /// The aggregate's turn is not free right away (only asked when not
    /// waiting).
    Busy,
    /// A refusal or no-op decided on a state this batch's own appends
    /// derive from a remembered one: settled by the next transaction, on a
    /// fresh load.
    Unsettled,
}

impl Decided {
    const DONE: Decided = Decided::Step {
        result: StepResult::DONE,
        append: None,
        after: None,
    };

    fn transient(code: &'static str, detail: impl ToString) -> Decided {
        Decided::Step {
            result: StepResult::Transient {
                code,
                detail: detail.to_string(),
            },
            append: None,
            after: None,
        }
    }
}

/// Where a batch keeps its aggregates: the turns it holds and the states
/// its prepared steps leave.
pub(super) trait Workspace<'a> {
    /// The state the batch's last step on `stream` leaves, if any.
    fn latest(&self, stream: &StreamId) -> Option<&Known>;
    /// The turn held on `stream`, if any.
    fn held_turn(&mut self, stream: &StreamId) -> Option<&mut Held<'a>>;
    /// Whether the batch holds the turn of a `stream_type` aggregate on
    /// `stripe`.
    fn holds_stripe(&self, stream_type: &str, stripe: usize) -> bool;
    fn hold(&mut self, held: Held<'a>);
    /// The batch had to wait for its first step's turn: other sagas want
    /// that aggregate too.
    fn contended(&mut self);
    /// The saga's start commits with the batch: the saga has done nothing
    /// yet.
    fn starts_the_saga(&self) -> bool;
}

impl Orchestrator {
    /// Decides `step`'s command for a batch: on the state an earlier step
    /// of the batch leaves, or on the state remembered when the batch took
    /// the aggregate's turn, or on a fresh load. The turn is waited for
    /// when `wait`, else taken only if free.
    pub(super) async fn decide_step<'a>(
        &'a self,
        batch: &mut impl Workspace<'a>,
        state: &SagaState,
        step: &Step,
        metadata: &Metadata,
        wait: bool,
    ) -> Decided {
        let Some(order) = state.order.as_ref() else {
            return Decided::transient(step_errors::INTERNAL_ERROR, "saga without an order");
        };
        let order_id = order.order_id;
        let order_key = order_id.to_string();
        let account_key = order.account_id.to_string();
        let on = OnAggregate {
            orchestrator: self,
            metadata: metadata.clone(),
            wait,
        };
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
                on.decide::<Inventory>(batch, sku.as_str(), &command, |_, _| false)
                    .await
            }
            Step::MarkReserved => {
                on.mark(
                    batch,
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
                on.decide::<BankAccount>(batch, &account_key, &command, |_, _| false)
                    .await
            }
            Step::MarkPaid => {
                on.mark(batch, &order_key, OrderCommand::MarkPaid, OrderStatus::Paid)
                    .await
            }
            Step::MarkShipped => {
                let command = OrderCommand::MarkShipped {
                    tracking_number: state.tracking_number.clone().unwrap_or_default(),
                };
                on.mark(batch, &order_key, command, OrderStatus::Shipped)
                    .await
            }
            Step::CommitStock { sku } => {
                let command = InventoryCommand::Commit { order_id };
                on.decide::<Inventory>(batch, sku.as_str(), &command, |_, _| false)
                    .await
            }
            Step::RefundPayment => {
                let command = AccountCommand::Refund { order_id };
                // Nothing was charged (the charge was refused, or never made
                // it): nothing to give back.
                on.decide::<BankAccount>(batch, &account_key, &command, |_, refusal| {
                    matches!(refusal.code(), "charge_not_found" | "account_not_found")
                })
                .await
            }
            Step::ReleaseStock { sku } => {
                let command = InventoryCommand::Release { order_id };
                // No such item: nothing was reserved.
                on.decide::<Inventory>(batch, sku.as_str(), &command, |_, refusal| {
                    refusal.code() == "item_not_found"
                })
                .await
            }
            Step::CancelOrder => {
                let reason = state
                    .compensation_reason
                    .unwrap_or(domain::CancellationReason::CustomerRequest);
                on.decide::<Order>(
                    batch,
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

/// One step's command to its aggregate, for a batch.
struct OnAggregate<'o> {
    orchestrator: &'o Orchestrator,
    /// The command's events' metadata.
    metadata: Metadata,
    wait: bool,
}

impl<'o> OnAggregate<'o> {
    /// Moves the order to `target`; a refusal because it already got there
    /// is done.
    async fn mark(
        &self,
        batch: &mut impl Workspace<'o>,
        id: &str,
        command: OrderCommand,
        target: OrderStatus,
    ) -> Decided {
        self.decide::<Order>(batch, id, &command, |state, _| {
            reached(state.status, target)
        })
        .await
    }

    /// Decides `command` on aggregate `id` (see [`Orchestrator::decide_step`]):
    /// the events to append at the version decided on, or a refusal (done
    /// after all when `settled` says so of the state and the refusal).
    async fn decide<A: Target>(
        &self,
        batch: &mut impl Workspace<'o>,
        id: &str,
        command: &A::Command,
        settled: impl Fn(&A::State, &A::Error) -> bool,
    ) -> Decided {
        let orchestrator: &'o Orchestrator = self.orchestrator;
        let writer = A::writer(&orchestrator.inner);
        let stream = StreamId::of::<A>(id);
        // On the state this batch leaves, if an earlier step wrote it.
        let (mut known, derived) = match batch.latest(&stream) {
            Some(latest) => (Some(latest.clone()), true),
            None => {
                if batch.held_turn(&stream).is_none() {
                    let stripe = writer.stripe(id);
                    let taken = if batch.holds_stripe(A::STREAM_TYPE, stripe) {
                        Some((None, writer.take_in_turn(id)))
                    } else if self.wait {
                        match writer.try_turn_with(id) {
                            Some((turn, remembered)) => Some((Some(turn), remembered)),
                            None => {
                                batch.contended();
                                let (turn, remembered) = writer.turn_with(id).await;
                                Some((Some(turn), remembered))
                            }
                        }
                    } else {
                        writer
                            .try_turn_with(id)
                            .map(|(turn, remembered)| (Some(turn), remembered))
                    };
                    let Some((turn, remembered)) = taken else {
                        return Decided::Busy;
                    };
                    batch.hold(Held {
                        stream: stream.clone(),
                        id: id.to_owned(),
                        stripe,
                        known: remembered.map(|loaded| Known {
                            state: A::remembered(loaded),
                            fresh: false,
                        }),
                        _turn: turn,
                    });
                }
                let held = batch.held_turn(&stream).map(|held| held.known.clone());
                (held.flatten(), false)
            }
        };
        loop {
            let (loaded, fresh) = match known.take() {
                Some(Known { state, fresh }) => match A::of(&state) {
                    Some(loaded) => (loaded.clone(), fresh),
                    None => {
                        return Decided::transient(
                            step_errors::INTERNAL_ERROR,
                            format!("{stream} remembered as another aggregate"),
                        )
                    }
                },
                None => match writer.repository().load(id).await {
                    Ok(loaded) => {
                        if let Some(held) = batch.held_turn(&stream) {
                            held.known = Some(Known {
                                state: A::remembered(loaded.clone()),
                                fresh: true,
                            });
                        }
                        (loaded, true)
                    }
                    Err(error) => return Decided::transient(store_error_code(&error), error),
                },
            };
            // With the past of the order the command needs (a repeat for a
            // finished order changes nothing): the repository recalls it
            // by index. A saga whose start commits with this batch has no
            // past anywhere (every effect of a saga commits with its
            // record in the saga's stream, which is empty; if it was
            // started meanwhile, the batch's append at the stream's version
            // 0 fails, and every decision of the batch with it).
            let decision = if batch.starts_the_saga() {
                A::decide(&loaded.state, command)
            } else {
                match writer.repository().decide(id, &loaded.state, command).await {
                    Ok(decision) => decision,
                    Err(error) => return Decided::transient(store_error_code(&error), error),
                }
            };
            let unchanged = |result: StepResult| Decided::Step {
                result,
                append: None,
                after: Some((
                    stream.clone(),
                    id.to_owned(),
                    Known {
                        state: A::remembered(loaded.clone()),
                        fresh,
                    },
                )),
            };
            return match decision {
                Ok(events) if !events.is_empty() => {
                    let version = loaded.version + events.len() as u64;
                    let after = Loaded::<A> {
                        state: A::fold(loaded.state.clone(), &events),
                        version,
                        position: loaded.position,
                    };
                    Decided::Step {
                        result: StepResult::DONE,
                        append: Some(Append {
                            stream: stream.clone(),
                            expected: loaded.version,
                            events: events.iter().map(NewEvent::from_domain).collect(),
                            metadata: self.metadata.clone(),
                        }),
                        after: Some((
                            stream.clone(),
                            id.to_owned(),
                            Known {
                                state: A::remembered(after),
                                fresh,
                            },
                        )),
                    }
                }
                // Decided on a remembered state: settled on a fresh load
                // (which a state this batch already appended to cannot
                // have before its commit).
                _ if !fresh && derived => Decided::Unsettled,
                _ if !fresh => continue,
                Ok(_) => unchanged(StepResult::DONE),
                Err(refusal) if settled(&loaded.state, &refusal) => unchanged(StepResult::DONE),
                Err(refusal) => unchanged(StepResult::Refused {
                    code: refusal.code().to_owned(),
                    error: refusal.to_string(),
                }),
            };
        }
    }
}

/// The code a store failure is recorded as.
pub(super) fn store_error_code(error: &event_store::Error) -> &'static str {
    match error {
        event_store::Error::Database(_) => step_errors::UNAVAILABLE,
        _ => step_errors::INTERNAL_ERROR,
    }
}
