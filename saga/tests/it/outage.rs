//! The broker stops answering while orders keep coming: on a Tansu of this
//! test's own (the shared one serves every other test), frozen with SIGSTOP
//! and thawed with SIGCONT, so it keeps its topics and offsets as a broker
//! that was only unreachable would.

use std::time::Duration;

use domain::{SagaStatus, StepStatus};

use projections::WorkerConfig;
use test_support::eventually;
use test_support::kafka::PrivateBroker;
use tokio_util::sync::CancellationToken;

use test_support::world::{fast_config, kafka_config_on, World};

/// The read models of the orders, accounts and inventory, as the projection
/// workers (consuming from the broker) build them: `(order status of each
/// order, balance of each account, (on hand, reserved) of A)`.
async fn read_models(
    world: &World,
    orders: &[uuid::Uuid],
    accounts: &[uuid::Uuid],
) -> (Vec<Option<String>>, Vec<Option<i64>>, Option<(i64, i64)>) {
    let pool = &world.db.pool;
    let mut statuses = Vec::new();
    for order in orders {
        statuses.push(
            sqlx::query_scalar("SELECT status FROM read_models.orders WHERE order_id = $1")
                .bind(order)
                .fetch_optional(pool)
                .await
                .expect("orders read model"),
        );
    }
    let mut balances = Vec::new();
    for account in accounts {
        balances.push(
            sqlx::query_scalar("SELECT balance FROM read_models.accounts WHERE account_id = $1")
                .bind(account)
                .fetch_optional(pool)
                .await
                .expect("accounts read model"),
        );
    }
    let stock =
        sqlx::query_as("SELECT on_hand, reserved FROM read_models.inventory WHERE sku = 'A'")
            .fetch_optional(pool)
            .await
            .expect("inventory read model");
    (statuses, balances, stock)
}

/// Design decision 10: the saga acts on the log, not on the broker. Orders
/// placed while the broker is frozen start their sagas from the event store
/// and ship during the freeze (before issue 13 they waited for the broker:
/// their sagas started from Kafka); only the read models, which Kafka feeds,
/// wait for the thaw, and then catch up.
#[tokio::test]
async fn a_frozen_broker_stalls_no_saga_and_loses_no_money_or_stock() {
    let broker = PrivateBroker::start().await;
    let mut world = World::on(fast_config(), kafka_config_on(broker.address.clone())).await;
    world.start_saga(None);
    let projecting = CancellationToken::new();
    let workers = tokio::spawn({
        let (store, kafka, shutdown) =
            (world.store.clone(), world.kafka.clone(), projecting.clone());
        async move {
            let config = WorkerConfig {
                poll_wait: Duration::from_millis(200),
                ..WorkerConfig::default()
            };
            let names = ["orders", "accounts", "inventory"].map(String::from);
            projections::run_workers(&names, store, &kafka, config, shutdown).await
        }
    });
    // A slow carrier: the first orders are still being shipped at the freeze.
    world
        .carrier
        .controls()
        .set_delay(Duration::from_millis(800));
    world.item("A", 100, 1_000).await;
    let accounts = [world.account(10_000).await, world.account(10_000).await];

    let mut in_flight = Vec::new();
    for n in 0..4 {
        in_flight.push(world.place(accounts[n % 2], &[("A", 2, 1_000)], "ES").await);
    }
    for order in &in_flight {
        world
            .wait_saga(*order, |s| {
                s.steps
                    .iter()
                    .any(|step| step.step.name() == "reserve_stock")
            })
            .await;
    }

    broker.freeze();
    // The Command API needs only PostgreSQL: prices change and orders are
    // still accepted.
    world.price("A", 500).await;
    let mut placed_in_freeze = Vec::new();
    for n in 0..4 {
        placed_in_freeze.push(world.place(accounts[n % 2], &[("A", 3, 500)], "ES").await);
    }
    // Sagas already started run on the database alone and finish.
    for order in &in_flight {
        let saga = world.finished(*order).await;
        assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    }
    // The new orders do not wait for the broker either: their sagas start
    // from the event store and ship while it is still frozen.
    for order in &placed_in_freeze {
        let saga = world.finished(*order).await;
        assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
        assert!(saga.steps.iter().all(|s| s.status == StepStatus::Succeeded));
        assert_eq!(
            world.event_types(&format!("order-{order}")).await,
            ["OrderPlaced", "OrderReserved", "OrderPaid", "OrderShipped"]
        );
    }
    // Still frozen: nothing of those orders reached the read models.
    let (statuses, _, _) = read_models(&world, &placed_in_freeze, &[]).await;
    assert!(
        statuses.iter().all(|s| s.as_deref() != Some("shipped")),
        "{statuses:?}"
    );

    broker.thaw();
    // Every order charged once and its stock taken once.
    for (account, _) in accounts {
        let events = world.event_types(&format!("account-{account}")).await;
        let charges = events.iter().filter(|e| *e == "AccountCharged").count();
        assert_eq!(charges, 4, "{events:?}");
        assert_eq!(
            world.balance_of(account).await,
            10_000 - 2 * 2_000 - 2 * 1_500
        );
    }
    let stock = world.stock("A").await;
    assert_eq!((stock.on_hand, stock.reserved), (100 - 4 * 2 - 4 * 3, 0));
    for order in in_flight.iter().chain(&placed_in_freeze) {
        assert_eq!(
            world.event_types(&format!("order-{order}")).await,
            ["OrderPlaced", "OrderReserved", "OrderPaid", "OrderShipped"]
        );
    }

    // The read models catch up once the broker answers again.
    let orders: Vec<uuid::Uuid> = in_flight.iter().chain(&placed_in_freeze).copied().collect();
    let account_ids = accounts.map(|(account, _)| account);
    let world_ref = &world;
    let (orders_ref, accounts_ref) = (&orders, &account_ids);
    let expected = (
        vec![Some("shipped".to_owned()); orders.len()],
        vec![Some(10_000 - 2 * 2_000 - 2 * 1_500); 2],
        Some((100 - 4 * 2 - 4 * 3, 0)),
    );
    let expected = &expected;
    // The first delivery absorbs the consumers' reconnection and rejoin.
    eventually(
        "the read models to catch up after the thaw",
        Duration::from_secs(90),
        Duration::from_millis(100),
        move || async move {
            let seen = read_models(world_ref, orders_ref, accounts_ref).await;
            if &seen == expected {
                Ok(())
            } else {
                Err(seen)
            }
        },
    )
    .await;

    projecting.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), workers).await;
    world.stop().await;
    drop(broker);
}
