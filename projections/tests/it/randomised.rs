//! A randomised workload (many accounts and SKUs, concurrent commands), fed
//! to the projectors in random batches with duplicates, reordering and lost
//! deliveries; the read models must equal what the streams fold to.

use std::sync::Arc;

use domain::{
    AccountCommand, BankAccount, CustomerId, Inventory as InventoryAggregate, InventoryCommand,
};
use event_store::{RecordedEvent, Repository};
use std::time::Duration;

use projections::{Accounts, Inventory, Projection, Worker, WorkerConfig};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use test_support::fixtures::{amount_of, currency_of, order_id, quantity_of};
use test_support::pipeline::Pipeline;
use test_support::Harness;

const ACCOUNTS: usize = 12;
const SKUS: usize = 4;
const TASKS: u64 = 6;
const COMMANDS_PER_TASK: usize = 40;

/// The workload's accounts `(account, customer)` and SKUs.
pub(crate) struct Workload {
    pub(crate) accounts: Arc<Vec<(Uuid, Uuid)>>,
    pub(crate) skus: Arc<Vec<String>>,
}

/// Opens the accounts, creates the SKUs, then runs random commands from
/// concurrent tasks (refusals included).
pub(crate) async fn run_workload(h: &Arc<Harness>, seed: u64) -> Workload {
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(h.open_account("EUR").await);
    }
    let skus: Vec<String> = (0..SKUS).map(|i| format!("SKU-{i}")).collect();
    for sku in &skus {
        h.create_item(sku, 50).await;
    }
    let accounts = Arc::new(accounts);
    let skus = Arc::new(skus);

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (h, accounts, skus) = (h.clone(), accounts.clone(), skus.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(task));
            let mut orders: Vec<Uuid> = Vec::new();
            for _ in 0..COMMANDS_PER_TASK {
                let (account, customer) = accounts[rng.random_range(0..accounts.len())];
                let id = account.to_string();
                let amount = amount_of(rng.random_range(1..=2_000));
                let sku = &skus[rng.random_range(0..skus.len())];
                // Refusals (insufficient funds or stock...) are part of the workload.
                let _ = match rng.random_range(0..8) {
                    0..=2 => {
                        h.try_exec::<BankAccount>(&id, AccountCommand::Deposit { amount })
                            .await
                    }
                    3 => {
                        h.try_exec::<BankAccount>(&id, AccountCommand::Withdraw { amount })
                            .await
                    }
                    4 => {
                        let order = Uuid::now_v7();
                        orders.push(order);
                        h.try_exec::<BankAccount>(
                            &id,
                            AccountCommand::Charge {
                                order_id: order_id(order),
                                customer_id: CustomerId::new(customer),
                                currency: currency_of("EUR"),
                                amount,
                            },
                        )
                        .await
                    }
                    5 => match orders.choose(&mut rng) {
                        Some(order) => {
                            h.try_exec::<BankAccount>(
                                &id,
                                AccountCommand::Refund {
                                    order_id: order_id(*order),
                                },
                            )
                            .await
                        }
                        None => Ok(0),
                    },
                    6 => {
                        let order = Uuid::now_v7();
                        orders.push(order);
                        let quantity = quantity_of(rng.random_range(1..=5));
                        h.inventory(
                            sku,
                            InventoryCommand::Reserve {
                                order_id: order_id(order),
                                quantity,
                            },
                        )
                        .await
                    }
                    _ => {
                        let order = orders
                            .choose(&mut rng)
                            .copied()
                            .unwrap_or_else(Uuid::now_v7);
                        let command = match rng.random_range(0..4) {
                            0 => InventoryCommand::Release {
                                order_id: order_id(order),
                            },
                            1 => InventoryCommand::Commit {
                                order_id: order_id(order),
                            },
                            2 => InventoryCommand::SetPrice {
                                unit_price: domain::UnitPrice::new(rng.random_range(1..=5_000))
                                    .expect("positive price"),
                                currency: None,
                            },
                            _ => InventoryCommand::Restock {
                                quantity: quantity_of(rng.random_range(1..=10)),
                            },
                        };
                        h.inventory(sku, command).await
                    }
                };
            }
        }));
    }
    for task in tasks {
        task.await.expect("workload task");
    }

    Workload { accounts, skus }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_equal_the_folded_streams_after_a_random_workload() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let h = Arc::new(Harness::new().await);
    let workload = run_workload(&h, seed).await;

    // Deliver the log in random batches: shuffled within a batch, some events
    // duplicated, some lost (a later event of the stream fills the gap from
    // the store); then everything once more, as a consumer restarting from
    // the beginning would.
    let events = h.all_events().await;
    let mut rng = StdRng::seed_from_u64(seed);
    let accounts_projector = h.projector(Accounts);
    let inventory_projector = h.projector(Inventory);
    let mut rest: &[RecordedEvent] = &events;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(40));
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut batch: Vec<RecordedEvent> = chunk
            .iter()
            .filter(|_| rng.random_range(0..10) != 0)
            .cloned()
            .collect();
        let duplicates: Vec<RecordedEvent> = chunk
            .iter()
            .filter(|_| rng.random_range(0..5) == 0)
            .cloned()
            .collect();
        batch.extend(duplicates);
        batch.shuffle(&mut rng);
        accounts_projector.apply_batch(&batch).await.unwrap();
        inventory_projector.apply_batch(&batch).await.unwrap();
    }
    accounts_projector.apply_batch(&events).await.unwrap();
    inventory_projector.apply_batch(&events).await.unwrap();

    check_against_streams(&h, &workload, seed).await;
    if let Ok(h) = Arc::try_unwrap(h) {
        h.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kafka_the_read_models_equal_the_folded_streams() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let h = Arc::new(Harness::new().await);
    let kafka = test_support::kafka::topics("projections-random").await;
    // The relay and two workers per projection run while the commands do.
    let mut pipeline = Pipeline::new();
    pipeline.relay(&h.store, &kafka);
    let config = WorkerConfig {
        batch_size: 50,
        poll_wait: Duration::from_millis(200),
        ..WorkerConfig::default()
    };
    for projection in [
        Arc::new(Accounts) as Arc<dyn Projection>,
        Arc::new(Inventory),
    ] {
        for _ in 0..2 {
            let worker =
                Worker::new(projection.clone(), h.store.clone(), &kafka, config.clone()).unwrap();
            let token = pipeline.shutdown.clone();
            pipeline.spawn("worker", worker.run(token));
        }
    }
    let workload = run_workload(&h, seed).await;

    // Wait until every event of both projections' streams is applied.
    h.caught_up(
        &[Accounts::NAME, Inventory::NAME],
        &format!("every event applied (seed {seed})"),
        Duration::from_secs(90),
    )
    .await;
    pipeline.stop().await;
    check_against_streams(&h, &workload, seed).await;
    if let Ok(h) = Arc::try_unwrap(h) {
        h.drop().await;
    }
}

/// Every account's balance and version equal its folded stream; every
/// ledger sums to its balance; every inventory row equals its folded stream.
pub(crate) async fn check_against_streams(h: &Harness, workload: &Workload, seed: u64) {
    let Workload { accounts, skus } = workload;
    // Every account's balance and version equal its folded stream; every
    // ledger sums to its balance and ends at it.
    let repository = Repository::<BankAccount>::new(h.store.clone());
    for (account, _) in accounts.iter() {
        let loaded = repository.load(&account.to_string()).await.unwrap();
        let (balance, version): (i64, i64) = sqlx::query_as(
            "SELECT balance, version FROM read_models.accounts WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        assert_eq!(
            balance,
            loaded.state.balance.amount(),
            "balance of {account} (seed {seed})"
        );
        assert_eq!(
            version as u64, loaded.version,
            "version of {account} (seed {seed})"
        );
        let (sum, last): (i64, Option<i64>) = sqlx::query_as(
            "SELECT coalesce(sum(CASE WHEN kind IN ('deposit', 'refund') THEN amount ELSE -amount END), 0)::bigint, \
                    (SELECT balance_after FROM read_models.account_transactions \
                     WHERE account_id = $1 ORDER BY seq DESC LIMIT 1) \
             FROM read_models.account_transactions WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        assert_eq!(sum, balance, "ledger sum of {account} (seed {seed})");
        assert_eq!(
            last.unwrap_or(0),
            balance,
            "last balance_after of {account} (seed {seed})"
        );
    }

    // Every inventory row equals its folded stream.
    let repository = Repository::<InventoryAggregate>::new(h.store.clone());
    for sku in skus.iter() {
        let loaded = repository.load(sku).await.unwrap();
        let (on_hand, reserved, version, unit_price, currency): (
            i64,
            i64,
            i64,
            Option<i64>,
            Option<String>,
        ) = sqlx::query_as(
            "SELECT on_hand, reserved, version, unit_price, currency \
             FROM read_models.inventory WHERE sku = $1",
        )
        .bind(sku)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
        assert_eq!(
            (on_hand as u64, reserved as u64, version as u64),
            (loaded.state.on_hand, loaded.state.reserved, loaded.version),
            "inventory {sku} (seed {seed})"
        );
        let price = loaded.state.price.expect("created with a price");
        assert_eq!(
            (unit_price, currency),
            (
                Some(price.unit_price.amount()),
                Some(price.currency.to_string())
            ),
            "price of {sku} (seed {seed})"
        );
    }
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM read_models.parked")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);
}
