//! The saga's planner run against the real account, inventory and order
//! deciders in memory, with random stock, balances, carrier answers,
//! transient failures, customer cancellations and crashes (an outcome that
//! is never recorded). Whatever happens, the saga ends, and money and stock
//! come out exact.

use std::collections::BTreeMap;

use domain::{
    decide_recalling, next_action, AccountCommand, AccountEvent, AccountId, AccountState, Action,
    Aggregate, Amount, BankAccount, CancellationReason, Currency, CustomerId, DomainError,
    FulfilmentSaga, Inventory, InventoryCommand, InventoryEvent, InventoryState, LineToPlace,
    Order, OrderCommand, OrderEvent, OrderState, OrderStatus, Price, Quantity, ReservationEnd,
    SagaCommand, SagaOrder, SagaState, SagaStatus, Situation, Sku, Step, UnitPrice,
};
use proptest::prelude::*;

use super::saga_id;
use crate::order::{address, line, order_id};
use crate::strategies::proptest_config;
use test_support::decider::{assert_round_trips, assert_state_round_trips};

/// One random world the saga runs in.
#[derive(Debug, Clone)]
struct Scenario {
    /// (stock, ordered quantity) per line.
    lines: Vec<(i64, i64)>,
    unit_price: i64,
    balance: i64,
    ship_to_xx: bool,
    /// Per attempt, in order: does it fail transiently? (cycled)
    transient: Vec<bool>,
    /// Per attempt, in order: is its outcome lost to a crash? (cycled)
    crash: Vec<bool>,
    /// The customer asks to cancel before this planner step, if any.
    cancel_at: Option<usize>,
    max_attempts: u32,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec((0..4i64, 1..3i64), 1..4),
        1..500i64,
        0..3_000i64,
        prop::bool::weighted(0.15),
        prop::collection::vec(prop::bool::weighted(0.2), 1..8),
        prop::collection::vec(prop::bool::weighted(0.15), 1..8),
        prop::option::weighted(0.3, 0..30usize),
        1..4u32,
    )
        .prop_map(
            |(
                lines,
                unit_price,
                balance,
                ship_to_xx,
                transient,
                crash,
                cancel_at,
                max_attempts,
            )| {
                Scenario {
                    lines,
                    unit_price,
                    balance,
                    ship_to_xx,
                    transient,
                    crash,
                    cancel_at,
                    max_attempts,
                }
            },
        )
}

/// The aggregates the saga talks to, and the idempotency records of its keys.
struct World {
    order: OrderState,
    order_log: Vec<OrderEvent>,
    account: AccountState,
    account_log: Vec<AccountEvent>,
    items: BTreeMap<Sku, InventoryState>,
    item_logs: BTreeMap<Sku, Vec<InventoryEvent>>,
    answers: BTreeMap<String, Result<(), String>>,
    shipments: u32,
    cancelled_shipments: u32,
}

/// Runs `command` once per key, like the event store's idempotency records,
/// deciding as the repository does (recalling from the stream's `log`).
fn once<A: Aggregate>(
    answers: &mut BTreeMap<String, Result<(), String>>,
    state: &mut A::State,
    log: &mut Vec<A::Event>,
    key: String,
    command: &A::Command,
) -> Result<(), String> {
    if let Some(answer) = answers.get(&key) {
        return answer.clone();
    }
    let answer = match decide_recalling::<A>(state, log, command) {
        Ok(events) => {
            *state = A::fold(state.clone(), &events);
            log.extend(events);
            Ok(())
        }
        Err(refusal) => Err(refusal.code().to_owned()),
    };
    answers.insert(key, answer.clone());
    answer
}

enum Outcome {
    Done(Option<String>),
    Refused(String),
}

impl World {
    fn execute(&mut self, saga: &SagaState, step: &Step) -> Outcome {
        let order = saga.order.as_ref().expect("order");
        let key = format!("{}:{}:{step}", saga.saga_id.expect("id"), saga.retries);
        let order_id = order.order_id;
        let answers = &mut self.answers;
        let result = match step {
            Step::ReserveStock { sku } => {
                let quantity = order
                    .lines
                    .iter()
                    .find(|l| &l.sku == sku)
                    .expect("line")
                    .quantity;
                let item = self.items.get_mut(sku).expect("item");
                let log = self.item_logs.entry(sku.clone()).or_default();
                once::<Inventory>(
                    answers,
                    item,
                    log,
                    key,
                    &InventoryCommand::Reserve { order_id, quantity },
                )
            }
            Step::CommitStock { sku } => {
                let item = self.items.get_mut(sku).expect("item");
                let log = self.item_logs.entry(sku.clone()).or_default();
                once::<Inventory>(
                    answers,
                    item,
                    log,
                    key,
                    &InventoryCommand::Commit { order_id },
                )
            }
            Step::ReleaseStock { sku } => {
                let item = self.items.get_mut(sku).expect("item");
                let log = self.item_logs.entry(sku.clone()).or_default();
                once::<Inventory>(
                    answers,
                    item,
                    log,
                    key,
                    &InventoryCommand::Release { order_id },
                )
            }
            Step::ChargePayment => once::<BankAccount>(
                answers,
                &mut self.account,
                &mut self.account_log,
                key,
                &AccountCommand::Charge {
                    order_id,
                    customer_id: order.customer_id,
                    currency: order.currency,
                    amount: Amount::new(order.total.amount()).expect("positive total"),
                },
            ),
            Step::RefundPayment => {
                match once::<BankAccount>(
                    answers,
                    &mut self.account,
                    &mut self.account_log,
                    key,
                    &AccountCommand::Refund { order_id },
                ) {
                    Err(code) if code == "charge_not_found" => Ok(()),
                    other => other,
                }
            }
            Step::MarkReserved => once::<Order>(
                answers,
                &mut self.order,
                &mut self.order_log,
                key,
                &OrderCommand::MarkReserved,
            ),
            Step::MarkPaid => once::<Order>(
                answers,
                &mut self.order,
                &mut self.order_log,
                key,
                &OrderCommand::MarkPaid,
            ),
            Step::MarkShipped => {
                let tracking_number = saga.tracking_number.clone().expect("shipped first");
                once::<Order>(
                    answers,
                    &mut self.order,
                    &mut self.order_log,
                    key,
                    &OrderCommand::MarkShipped { tracking_number },
                )
            }
            Step::CancelOrder => {
                let reason = saga.compensation_reason.expect("compensating");
                once::<Order>(
                    answers,
                    &mut self.order,
                    &mut self.order_log,
                    key,
                    &OrderCommand::Cancel { reason },
                )
            }
            Step::Ship => {
                if order.shipping_address.country().as_str() == "XX" {
                    Err("shipment_refused".to_owned())
                } else {
                    self.shipments += 1;
                    return Outcome::Done(Some("SIM-1".to_owned()));
                }
            }
            Step::CancelShipment => {
                self.cancelled_shipments += 1;
                Ok(())
            }
        };
        match result {
            Ok(()) => Outcome::Done(None),
            Err(code) => Outcome::Refused(code),
        }
    }
}

fn record(saga: &mut SagaState, command: SagaCommand) {
    let events = FulfilmentSaga::decide(saga, &command)
        .unwrap_or_else(|e| panic!("{command:?} refused in {:?}: {e}", saga.status));
    for event in &events {
        assert_round_trips(event);
    }
    *saga = FulfilmentSaga::fold(saga.clone(), &events);
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn a_saga_always_ends_with_money_and_stock_exact(s in scenario()) {
        let customer_id = CustomerId::new(uuid::Uuid::from_u128(0xC1));
        let account_id = AccountId::new(uuid::Uuid::from_u128(0xA1));
        let skus: Vec<Sku> = (0..s.lines.len()).map(|i| Sku::parse(&format!("S{i}")).expect("sku")).collect();
        let lines: Vec<_> = s.lines.iter().zip(&skus)
            .map(|(&(_, quantity), sku)| line(sku.as_str(), quantity, s.unit_price))
            .collect();
        let mut world = World {
            order: OrderState::default(),
            order_log: Vec::new(),
            account: AccountState::default(),
            account_log: Vec::new(),
            items: BTreeMap::new(),
            item_logs: BTreeMap::new(),
            answers: BTreeMap::new(),
            shipments: 0,
            cancelled_shipments: 0,
        };
        world.account = BankAccount::fold(AccountState::default(), &BankAccount::decide(&world.account, &AccountCommand::Open {
            account_id, customer_id, currency: Currency::EUR,
        }).expect("open"));
        if s.balance > 0 {
            let events = BankAccount::decide(&world.account, &AccountCommand::Deposit { amount: Amount::new(s.balance).expect("amount") }).expect("deposit");
            world.account = BankAccount::fold(world.account.clone(), &events);
        }
        for (&(stock, _), sku) in s.lines.iter().zip(&skus) {
            let mut item = Inventory::fold(InventoryState::default(), &Inventory::decide(&InventoryState::default(), &InventoryCommand::Create {
                sku: sku.clone(), name: "x".into(), quantity: Quantity::new(1).expect("one"),
                price: Price::new(UnitPrice::new(s.unit_price).expect("price"), Currency::EUR),
            }).expect("create"));
            // Created with 1, then brought to `stock` (0 means: reserved away by someone else).
            if stock > 1 {
                item = Inventory::fold(item.clone(), &Inventory::decide(&item, &InventoryCommand::Restock { quantity: Quantity::new(stock - 1).expect("q") }).expect("restock"));
            }
            if stock == 0 {
                item = Inventory::fold(item.clone(), &Inventory::decide(&item, &InventoryCommand::Reserve {
                    order_id: domain::OrderId::new(uuid::Uuid::from_u128(0xFFFF)), quantity: Quantity::new(1).expect("q"),
                }).expect("reserve"));
            }
            world.items.insert(sku.clone(), item);
        }
        let initial_items = world.items.clone();
        let country = if s.ship_to_xx { "XX" } else { "ES" };
        // The order takes its prices from the catalog: the items as created.
        let to_place = s.lines.iter().zip(&skus).map(|(&(_, quantity), sku)| LineToPlace {
            sku: sku.clone(),
            quantity: Quantity::new(quantity).expect("q"),
            expected_price: None,
            catalog: world.items[sku].catalog_price(),
        }).collect();
        let placed = Order::decide(&world.order, &OrderCommand::Place {
            order_id: order_id(), customer_id, account_id, currency: Currency::EUR,
            lines: to_place, shipping_address: address(country),
        }).expect("place");
        world.order = Order::fold(OrderState::default(), &placed);
        prop_assert_eq!(&world.order.lines, &lines, "the order is at the catalog's prices");
        let saga_order = SagaOrder {
            order_id: order_id(), customer_id, account_id, currency: Currency::EUR,
            lines: lines.clone(), total: world.order.total, shipping_address: address(country),
        };
        let mut saga = SagaState::default();
        record(&mut saga, SagaCommand::Start { saga_id: saga_id(), order: saga_order.clone() });

        let mut now_ms = 0i64;
        let mut attempts = 0usize;
        let mut transient_failures = 0u32;
        let mut finished = false;
        for planned in 0..500usize {
            if s.cancel_at == Some(planned) {
                let requested = Order::decide(&world.order, &OrderCommand::RequestCancellation { reason: "no".into() });
                if let Ok(events) = requested {
                    world.order = Order::fold(world.order.clone(), &events);
                }
            }
            let situation = Situation {
                now_ms,
                cancellation_requested: world.order.cancellation_requested.is_some(),
                max_attempts: s.max_attempts,
            };
            let action = next_action(&saga, &situation);
            match action {
                Action::Done | Action::Idle => { finished = true; break; }
                Action::Wait { until_ms } => { prop_assert!(until_ms > now_ms); now_ms = until_ms; }
                Action::BeginCompensation(reason) => record(&mut saga, SagaCommand::BeginCompensation { reason }),
                Action::Complete => record(&mut saga, SagaCommand::Complete),
                Action::FinishCompensation => record(&mut saga, SagaCommand::FinishCompensation),
                Action::NeedsAttention { step, error } => record(&mut saga, SagaCommand::NeedAttention { step, error }),
                Action::TimedOut { step, attempt } => {
                    transient_failures += 1;
                    record(&mut saga, SagaCommand::FailStep {
                        step, attempt, error: "deadline".into(), retry_at_ms: now_ms + 10,
                    });
                }
                Action::Attempt { step, attempt } => {
                    record(&mut saga, SagaCommand::StartStep { step: step.clone(), attempt, deadline_ms: now_ms + 100 });
                    run(&mut world, &mut saga, &s, step, attempt, &mut attempts, &mut transient_failures, &mut now_ms);
                }
                Action::Resume { step, attempt, .. } => {
                    run(&mut world, &mut saga, &s, step, attempt, &mut attempts, &mut transient_failures, &mut now_ms);
                }
            }
            now_ms += 1;
        }
        prop_assert!(finished, "the saga did not end: {saga:#?}");
        assert_state_round_trips::<FulfilmentSaga>(&saga);

        // Exact money: the balance moved by what was charged and not refunded.
        let charges = BankAccount::recall(world.account.clone(), &world.account_log).charges;
        let kept: i64 = charges.values().filter(|c| !c.refunded).map(|c| c.amount.amount()).sum();
        prop_assert_eq!(world.account.balance.amount(), s.balance - kept);
        // Exact stock: nothing of this order stays reserved once it is over,
        // and on hand only drops by what shipped.
        let order_key = order_id();
        let committed_here = |sku: &Sku| {
            let log = world.item_logs.get(sku).map(Vec::as_slice).unwrap_or_default();
            Inventory::recall(world.items[sku].clone(), log).ended.get(&order_key)
                == Some(&ReservationEnd::Committed)
        };
        for (sku, item) in &world.items {
            let before = &initial_items[sku];
            let committed = if committed_here(sku) {
                u64::from(lines.iter().find(|l| &l.sku == sku).expect("line").quantity)
            } else { 0 };
            prop_assert_eq!(item.on_hand + committed, before.on_hand, "{}", sku);
            if saga.status.is_terminal() {
                prop_assert!(!item.reservations.contains_key(&order_key), "{} still reserved: {:#?}", sku, saga);
            }
        }
        match saga.status {
            SagaStatus::Completed => {
                prop_assert_eq!(world.order.status, OrderStatus::Shipped);
                prop_assert!(!s.ship_to_xx);
                prop_assert_eq!(kept, world.order.total.amount());
                for sku in &skus {
                    prop_assert!(committed_here(sku));
                }
            }
            SagaStatus::Compensated => {
                prop_assert_eq!(world.order.status, OrderStatus::Cancelled);
                prop_assert_eq!(world.order.cancellation_reason, saga.compensation_reason);
                prop_assert_eq!(kept, 0);
                prop_assert!(world.cancelled_shipments >= u32::from(world.shipments > 0));
                let reason = saga.compensation_reason.expect("reason");
                let shortage = s.lines.iter().any(|&(stock, quantity)| stock < quantity);
                match reason {
                    CancellationReason::OutOfStock => prop_assert!(shortage),
                    CancellationReason::PaymentDeclined => prop_assert!(world.order.total.amount() > s.balance),
                    CancellationReason::ShippingFailed => prop_assert!(s.ship_to_xx),
                    CancellationReason::CustomerRequest => prop_assert!(s.cancel_at.is_some()),
                }
            }
            SagaStatus::NeedsAttention => {
                // Only a spent retry budget stops a saga here.
                prop_assert!(transient_failures >= s.max_attempts, "{saga:#?}");
            }
            other => prop_assert!(false, "saga ended {other}"),
        }
    }
}

/// One attempt of `step`: transient failure, or the command and then (unless
/// a crash loses it) its recorded outcome.
#[allow(clippy::too_many_arguments)]
fn run(
    world: &mut World,
    saga: &mut SagaState,
    s: &Scenario,
    step: Step,
    attempt: u32,
    attempts: &mut usize,
    transient_failures: &mut u32,
    now_ms: &mut i64,
) {
    let n = *attempts;
    *attempts += 1;
    if s.transient[n % s.transient.len()] {
        *transient_failures += 1;
        record(
            saga,
            SagaCommand::FailStep {
                step,
                attempt,
                error: "database unavailable".into(),
                retry_at_ms: *now_ms + 5,
            },
        );
        return;
    }
    let outcome = world.execute(saga, &step);
    if s.crash[n % s.crash.len()] {
        // The orchestrator died before recording: sometimes its restart
        // comes after the deadline.
        if n % 2 == 0 {
            *now_ms += 200;
        }
        return;
    }
    match outcome {
        Outcome::Done(tracking_number) => record(
            saga,
            SagaCommand::SucceedStep {
                step,
                tracking_number,
            },
        ),
        Outcome::Refused(code) => {
            let error = format!("refused: {code}");
            record(saga, SagaCommand::RefuseStep { step, code, error });
        }
    }
}
