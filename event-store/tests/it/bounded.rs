//! Aggregates whose state does not grow with history, end to end through
//! the repository and a real PostgreSQL: an item keeps its open
//! reservations and an account none of its charges; the past a repeated
//! command needs (a reserve, commit or release for an order already
//! finished, as a crash between a saga step and its record repeats it; a
//! charge or refund again) is recalled by index (`read_stream_of_order`),
//! and changes nothing. Snapshots are versioned with the state's schema and
//! never change a decision.

use std::collections::{BTreeMap, BTreeSet};

use domain::{
    AccountCommand, Aggregate, BankAccount, DomainError, Inventory, InventoryCommand,
    InventoryState, OrderId,
};
use event_store::{EventStore, ExecuteOptions, Executed, Repository, StreamId};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use test_support::decider::Expect;
use test_support::fixtures::{amount_of, catalog_price, currency_of, quantity_of, sku_of};
use test_support::TestDatabase;
use uuid::Uuid;

/// Few cases: each runs tens of commands against the database.
fn config() -> Config {
    Config {
        cases: 24,
        ..Config::default()
    }
}

fn order(n: u8) -> OrderId {
    OrderId::new(Uuid::from_u128(
        0x0191_0000_0000_7000_8000_0000_0000_0000 + u128::from(n),
    ))
}

/// One command through `repository`, classified as the models classify.
async fn run<A: Aggregate>(repository: &Repository<A>, id: &str, command: &A::Command) -> Expect {
    match repository
        .execute(id, command, ExecuteOptions::default(), |_| ())
        .await
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
    {
        Executed::Done(outcome) if outcome.events.is_empty() => Expect::Nothing,
        Executed::Done(_) => Expect::Accepted,
        Executed::Refused(refusal) => Expect::Refused(refusal.code()),
        Executed::Replayed(()) => panic!("no key was sent"),
    }
}

/// What an item should do, with every order it ever served in plain sets.
#[derive(Debug, Default)]
struct ItemModel {
    on_hand: i64,
    open: BTreeMap<OrderId, i64>,
    seen: BTreeSet<OrderId>,
    committed: BTreeSet<OrderId>,
}

impl ItemModel {
    fn step(&mut self, command: &InventoryCommand) -> Expect {
        match command {
            InventoryCommand::Reserve { order_id, quantity } => {
                if self.seen.contains(order_id) {
                    return Expect::Nothing;
                }
                let quantity = i64::from(quantity.get());
                if self.on_hand - self.open.values().sum::<i64>() < quantity {
                    return Expect::Refused("insufficient_stock");
                }
                self.seen.insert(*order_id);
                self.open.insert(*order_id, quantity);
            }
            InventoryCommand::Release { order_id } => {
                if self.open.remove(order_id).is_none() {
                    return Expect::Nothing;
                }
            }
            InventoryCommand::Commit { order_id } => match self.open.remove(order_id) {
                Some(quantity) => {
                    self.on_hand -= quantity;
                    self.committed.insert(*order_id);
                }
                None if self.committed.contains(order_id) => return Expect::Nothing,
                None => return Expect::Refused("reservation_not_found"),
            },
            other => panic!("not generated: {other:?}"),
        }
        Expect::Accepted
    }
}

/// Reserves, releases and commits for a handful of orders, so that each is
/// repeated before, during and after its reservation ends.
fn item_commands() -> impl Strategy<Value = Vec<InventoryCommand>> {
    let one = (0..5u8, 0..3u8, 1..=4i64).prop_map(|(n, kind, quantity)| match kind {
        0 => InventoryCommand::Reserve {
            order_id: order(n),
            quantity: quantity_of(quantity),
        },
        1 => InventoryCommand::Release { order_id: order(n) },
        _ => InventoryCommand::Commit { order_id: order(n) },
    });
    prop::collection::vec(one, 1..40)
}

fn create(stock: i64) -> InventoryCommand {
    InventoryCommand::Create {
        sku: sku_of("FLASH-1"),
        name: "Flash".to_owned(),
        quantity: quantity_of(stock),
        price: catalog_price("FLASH-1"),
    }
}

/// Checks one case: every command answers as the model says, on a stream
/// loaded from snapshots every `every` events, and the state loaded from the
/// snapshot is the state folded from zero after every command.
async fn item_case(store: &EventStore, every: u64, commands: &[InventoryCommand]) {
    let id = format!("FLASH-{}", Uuid::now_v7().simple());
    let snapshotting = Repository::<Inventory>::new(store.clone()).with_snapshots(every);
    let plain = Repository::<Inventory>::new(store.clone());
    let mut model = ItemModel {
        on_hand: 12,
        ..ItemModel::default()
    };
    assert_eq!(run(&snapshotting, &id, &create(12)).await, Expect::Accepted);
    for command in commands {
        let expected = model.step(command);
        assert_eq!(
            run(&snapshotting, &id, command).await,
            expected,
            "{command:?} (snapshots every {every})"
        );
        let from_snapshot = snapshotting.load(&id).await.expect("load");
        let from_zero = plain.load(&id).await.expect("fold");
        assert_eq!(from_snapshot.state, from_zero.state, "after {command:?}");
        assert_eq!(from_snapshot.version, from_zero.version);
        assert_eq!(from_snapshot.position, from_zero.position);
    }
    let state = plain.load(&id).await.expect("fold").state;
    let open: BTreeMap<OrderId, i64> = state
        .reservations
        .iter()
        .map(|(order, quantity)| (*order, i64::from(quantity.get())))
        .collect();
    assert_eq!(open, model.open);
    assert_eq!(i64::try_from(state.on_hand).expect("fits"), model.on_hand);
    // Nothing but the open reservations.
    assert!(state.ended.is_empty());
}

#[test]
fn repeats_for_finished_orders_change_nothing_and_snapshots_change_no_decision() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDatabase::create());
    let store = EventStore::new(db.pool.clone());
    let mut runner = TestRunner::new(config());
    let strategy = (
        prop::sample::select(vec![0u64, 1, 2, 3, 7]),
        item_commands(),
    );
    let result = runner.run(&strategy, |(every, commands)| {
        runtime.block_on(item_case(&store, every, &commands));
        Ok(())
    });
    runtime.block_on(db.drop());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// What an account should do with charges and refunds.
#[derive(Debug, Default)]
struct AccountModel {
    balance: i64,
    charges: BTreeMap<OrderId, (i64, bool)>,
}

impl AccountModel {
    fn step(&mut self, command: &AccountCommand) -> Expect {
        match command {
            AccountCommand::Charge {
                order_id, amount, ..
            } => {
                if self.charges.contains_key(order_id) {
                    return Expect::Nothing;
                }
                if self.balance < amount.amount() {
                    return Expect::Refused("insufficient_funds");
                }
                self.balance -= amount.amount();
                self.charges.insert(*order_id, (amount.amount(), false));
            }
            AccountCommand::Refund { order_id } => {
                let Some((amount, refunded)) = self.charges.get_mut(order_id) else {
                    return Expect::Refused("charge_not_found");
                };
                if *refunded {
                    return Expect::Nothing;
                }
                *refunded = true;
                self.balance += *amount;
            }
            other => panic!("not generated: {other:?}"),
        }
        Expect::Accepted
    }
}

#[test]
fn charges_and_refunds_repeated_change_nothing() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = runtime.block_on(TestDatabase::create());
    let store = EventStore::new(db.pool.clone());
    let customer = Uuid::now_v7();
    let mut runner = TestRunner::new(config());
    let one = (0..5u8, any::<bool>(), 1..=40i64);
    let strategy = (
        prop::sample::select(vec![0u64, 1, 2, 5]),
        prop::collection::vec(one, 1..30),
    );
    let result = runner.run(&strategy, |(every, ops)| {
        runtime.block_on(async {
            let repository = Repository::<BankAccount>::new(store.clone()).with_snapshots(every);
            let account = Uuid::now_v7();
            let id = account.to_string();
            let open = AccountCommand::Open {
                account_id: domain::AccountId::new(account),
                customer_id: domain::CustomerId::new(customer),
                currency: currency_of("EUR"),
            };
            assert_eq!(run(&repository, &id, &open).await, Expect::Accepted);
            let deposit = AccountCommand::Deposit {
                amount: amount_of(100),
            };
            assert_eq!(run(&repository, &id, &deposit).await, Expect::Accepted);
            let mut model = AccountModel {
                balance: 100,
                ..AccountModel::default()
            };
            for (n, charge, amount) in ops {
                let command = if charge {
                    AccountCommand::Charge {
                        order_id: order(n),
                        customer_id: domain::CustomerId::new(customer),
                        currency: currency_of("EUR"),
                        amount: amount_of(amount),
                    }
                } else {
                    AccountCommand::Refund { order_id: order(n) }
                };
                let expected = model.step(&command);
                assert_eq!(
                    run(&repository, &id, &command).await,
                    expected,
                    "{command:?}"
                );
            }
            let state = repository.load(&id).await.expect("load").state;
            assert_eq!(state.balance.amount(), model.balance);
            assert!(state.charges.is_empty(), "the state keeps no charge");
        });
        Ok(())
    });
    runtime.block_on(db.drop());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[tokio::test]
async fn a_snapshot_of_an_older_state_schema_is_ignored_and_rewritten() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let repository = Repository::<Inventory>::new(store.clone()).with_snapshots(3);
    let id = format!("OLD-{}", Uuid::now_v7().simple());
    let stream = StreamId::of::<Inventory>(&id);
    assert_eq!(run(&repository, &id, &create(10)).await, Expect::Accepted);
    for n in 0..4 {
        let reserve = InventoryCommand::Reserve {
            order_id: order(n),
            quantity: quantity_of(1),
        };
        assert_eq!(run(&repository, &id, &reserve).await, Expect::Accepted);
        let commit = InventoryCommand::Commit { order_id: order(n) };
        assert_eq!(run(&repository, &id, &commit).await, Expect::Accepted);
    }
    // Version 9 now, a snapshot at 6. Replace it with one as schema 1 wrote
    // it (every committed order kept), at the head, with numbers that
    // decode but are wrong: were it used, they would show.
    sqlx::query(
        "UPDATE event_store.snapshots SET version = 9, state_schema = 1, state = $2 \
         WHERE stream_id = $1",
    )
    .bind(stream.as_str())
    .bind(json!({
        "exists": true, "sku": "FLASH-1", "name": "Flash", "price": null,
        "on_hand": 1000, "reserved": 0, "reservations": {},
        "committed": [order(0), order(1), order(2), order(3)], "released": []
    }))
    .execute(&db.pool)
    .await
    .expect("old snapshot");
    let stale: InventoryState = serde_json::from_value(
        sqlx::query_scalar("SELECT state FROM event_store.snapshots WHERE stream_id = $1")
            .bind(stream.as_str())
            .fetch_one(&db.pool)
            .await
            .expect("snapshot"),
    )
    .expect("an older state still decodes: only its schema tells it apart");
    assert_eq!(stale.on_hand, 1000);

    let loaded = repository.load(&id).await.expect("load");
    let folded = Repository::<Inventory>::new(store.clone())
        .load(&id)
        .await
        .expect("fold");
    assert_eq!(loaded.state, folded.state, "the old snapshot was ignored");
    assert_eq!(loaded.state.on_hand, 6);
    assert_eq!(loaded.version, 9);

    let (version, schema, on_hand): (i64, i32, i64) = sqlx::query_as(
        "SELECT version, state_schema, (state->>'on_hand')::bigint \
         FROM event_store.snapshots WHERE stream_id = $1",
    )
    .bind(stream.as_str())
    .fetch_one(&db.pool)
    .await
    .expect("snapshot");
    assert_eq!(
        (version, schema, on_hand),
        (9, i32::try_from(Inventory::STATE_SCHEMA).expect("fits"), 6),
        "rewritten in the current schema"
    );
    db.drop().await;
}
