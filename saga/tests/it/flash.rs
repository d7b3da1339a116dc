//! A flash sale: many sagas on one SKU at once. Within one orchestrator the
//! commands to the item queue per stream instead of colliding on its
//! version; stock is never oversold and conflicts stay rare (the
//! orchestrator's metric counts each one retried).

use std::time::Duration;

use domain::{CancellationReason, SagaStatus};
use saga::SagaConfig;
use test_support::eventually;
use test_support::world::{fast_config, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_sagas_on_one_sku_with_stock_for_twenty_ship_twenty_exactly() {
    // Deadlines and attempts generous: this is about contention, and the
    // sagas of one item take turns.
    let mut world = World::new(SagaConfig {
        concurrency: 32,
        step_timeout_ms: 20_000,
        lease_ms: 20_000,
        max_attempts: 8,
        ..fast_config()
    })
    .await;
    world.item("FLASH", 20, 100).await;
    let accounts = futures::future::join_all((0..32).map(|_| world.account(1_000))).await;
    // Every order placed before the orchestrator starts: all 32 sagas are
    // due at once.
    let orders = futures::future::join_all(
        accounts
            .iter()
            .map(|account| world.place(*account, &[("FLASH", 1, 100)], "ES")),
    )
    .await;
    world.start_saga(None);

    let mut shipped = 0;
    let mut out_of_stock = 0;
    for order in &orders {
        let saga = world
            .wait_saga_within(*order, Duration::from_secs(120), |s| s.status.is_terminal())
            .await;
        match (saga.status, saga.compensation_reason) {
            (SagaStatus::Completed, _) => shipped += 1,
            (SagaStatus::Compensated, Some(CancellationReason::OutOfStock)) => out_of_stock += 1,
            other => panic!("saga of {order} ended {other:?}: {saga:#?}"),
        }
    }
    assert_eq!((shipped, out_of_stock), (20, 12));
    let item = world.stock("FLASH").await;
    assert_eq!((item.on_hand, item.reserved), (0, 0), "{item:?}");
    assert!(item.reservations.is_empty());
    let mut charged = 0;
    for account in &accounts {
        charged += 1_000 - world.balance_of(account.0).await;
    }
    assert_eq!(charged, 20 * 100, "money exact");

    // `purser_saga_command_conflicts_retried_total` in `/metrics`.
    let conflicts = world.metrics.conflicts_retried();
    assert!(
        conflicts < 10,
        "{conflicts} conflicts retried: the sagas collided instead of queueing"
    );

    // The orders of finished sagas are not remembered: the next drive of a
    // saga reads its order afresh anyway.
    eventually("finished orders forgotten", DEADLINE, EVERY, || async {
        match orders_remembered(&world.metrics) {
            0 => Ok(()),
            left => Err(left),
        }
    })
    .await;
    world.stop().await;
}

const DEADLINE: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(20);

/// The orders the orchestrator's cache remembers, as its `/metrics` has
/// them (`purser_saga_commands_aggregate_cache_entries{stream_type="order"}`).
fn orders_remembered(metrics: &saga::SagaMetrics) -> i64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text.lines()
        .find(|line| line.contains("aggregate_cache_entries") && line.contains("\"order\""))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}
