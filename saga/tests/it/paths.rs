//! Every path of the saga, end to end: commands over HTTP, the relay and
//! Kafka, the orchestrator, and the aggregates' own streams to check money
//! and stock afterwards.

use std::sync::Arc;

use domain::{
    AccountCommand, Amount, BankAccount, CancellationReason, OrderStatus, SagaStatus, Step,
    StepStatus,
};
use event_store::{ExecuteOptions, IdempotencyKey, Repository};
use reqwest::StatusCode;
use saga::SagaConfig;
use serde_json::json;

use test_support::world::{fast_config, hold_before, World};

fn count(events: &[String], event_type: &str) -> usize {
    events.iter().filter(|e| e.as_str() == event_type).count()
}

#[tokio::test]
async fn a_placed_order_is_reserved_charged_shipped_and_committed() {
    let world = World::running(fast_config()).await;
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    world.item("B", 5, 500).await;
    let order = world
        .place(account, &[("A", 2, 1_000), ("B", 1, 500)], "ES")
        .await;

    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert!(saga.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    let state = world.order(order).await;
    assert_eq!(state.status, OrderStatus::Shipped);
    let tracking = state.tracking_number.expect("tracking number");
    assert!(tracking.starts_with("SIM-"), "{tracking}");
    assert_eq!(world.balance_of(account.0).await, 100_000 - 2_500);
    let a = world.stock("A").await;
    assert_eq!((a.on_hand, a.reserved), (3, 0));
    let b = world.stock("B").await;
    assert_eq!((b.on_hand, b.reserved), (4, 0));
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 1);
    assert_eq!(
        world.event_types(&format!("order-{order}")).await,
        ["OrderPlaced", "OrderReserved", "OrderPaid", "OrderShipped"]
    );
    assert_eq!(world.metrics.counts(), (1, 1, 0, 0));
    // The steps on the database commit together: the start with the steps
    // before the carrier and the carrier's attempt, then the carrier's
    // outcome with the steps after it (each step with its own record).
    let transactions: Vec<Vec<String>> = sqlx::query_scalar(
        "SELECT array_agg(event_type ORDER BY version) FROM event_store.events \
         WHERE stream_id = $1 GROUP BY transaction_id ORDER BY min(version)",
    )
    .bind(format!("saga-{order}"))
    .fetch_all(&world.db.pool)
    .await
    .expect("saga transactions");
    let started: Vec<usize> = transactions
        .iter()
        .map(|events| count(events, "StepStarted"))
        .collect();
    assert_eq!(started, [6, 3], "{transactions:?}");
    assert_eq!(
        transactions[0].first().map(String::as_str),
        Some("SagaStarted"),
        "{transactions:?}"
    );
    assert_eq!(
        transactions
            .last()
            .and_then(|events| events.last())
            .map(String::as_str),
        Some("SagaCompleted"),
        "{transactions:?}"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_whose_orders_list_two_skus_in_opposite_orders_all_finish() {
    // Each saga holds the turn of its first line's item while it takes its
    // second's: taken only when free, never waited for, so two sagas with
    // the lines the other way round never wait for each other (a wait
    // would show as a step timing out, recorded as failed). Deadlines
    // generous: a loaded machine is slow, not deadlocked.
    let mut world = World::new(SagaConfig {
        step_timeout_ms: 10_000,
        lease_ms: 10_000,
        ..fast_config()
    })
    .await;
    world.item("A", 100, 100).await;
    world.item("B", 100, 100).await;
    let account = world.account(1_000_000).await;
    let orders = futures::future::join_all((0..20).map(|i| {
        let lines: &[(&str, i64, i64)] = if i % 2 == 0 {
            &[("A", 1, 100), ("B", 1, 100)]
        } else {
            &[("B", 1, 100), ("A", 1, 100)]
        };
        world.place(account, lines, "ES")
    }))
    .await;
    // Every saga due at once.
    world.start_saga(None);
    for order in &orders {
        let saga = world.finished(*order).await;
        assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
        let saga_events = world.event_types(&format!("saga-{order}")).await;
        assert_eq!(count(&saga_events, "StepFailed"), 0, "{saga_events:?}");
    }
    for sku in ["A", "B"] {
        let item = world.stock(sku).await;
        assert_eq!((item.on_hand, item.reserved), (80, 0), "{sku}");
    }
    assert_eq!(world.balance_of(account.0).await, 1_000_000 - 20 * 200);
    world.stop().await;
}

#[tokio::test]
async fn out_of_stock_on_the_second_of_three_lines_releases_the_first() {
    let world = World::running(fast_config()).await;
    let account = world.account(100_000).await;
    world.item("A", 5, 100).await;
    world.item("B", 1, 100).await;
    world.item("C", 5, 100).await;
    let order = world
        .place(
            account,
            &[("A", 1, 100), ("B", 2, 100), ("C", 1, 100)],
            "ES",
        )
        .await;

    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(
        saga.compensation_reason,
        Some(CancellationReason::OutOfStock)
    );
    let state = world.order(order).await;
    assert_eq!(state.status, OrderStatus::Cancelled);
    assert_eq!(
        state.cancellation_reason,
        Some(CancellationReason::OutOfStock)
    );
    assert_eq!(
        world.event_types("inventory-A").await,
        ["ItemCreated", "StockReserved", "ReservationReleased"]
    );
    assert_eq!(world.event_types("inventory-B").await, ["ItemCreated"]);
    assert_eq!(
        world.event_types("inventory-C").await,
        ["ItemCreated"],
        "the line after the refused one is never reserved"
    );
    for sku in ["A", "B", "C"] {
        assert_eq!(world.stock(sku).await.reserved, 0, "{sku}");
    }
    assert_eq!(world.balance_of(account.0).await, 100_000);
    world.stop().await;
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock_and_cancels() {
    let world = World::running(fast_config()).await;
    let account = world.account(100).await;
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 2, 1_000)], "ES").await;

    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    let state = world.order(order).await;
    assert_eq!(
        state.cancellation_reason,
        Some(CancellationReason::PaymentDeclined)
    );
    let a = world.stock("A").await;
    assert_eq!((a.on_hand, a.reserved), (5, 0));
    assert_eq!(world.balance_of(account.0).await, 100);
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 0);
    world.stop().await;
}

#[tokio::test]
async fn an_order_for_another_customers_account_is_declined() {
    let world = World::running(fast_config()).await;
    let (account, _owner) = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    let stranger = uuid::Uuid::now_v7();
    let order = world
        .place((account, stranger), &[("A", 1, 1_000)], "ES")
        .await;

    world.finished(order).await;
    assert_eq!(
        world.order(order).await.cancellation_reason,
        Some(CancellationReason::PaymentDeclined)
    );
    assert_eq!(world.balance_of(account).await, 100_000);
    world.stop().await;
}

#[tokio::test]
async fn a_carrier_refusal_refunds_the_charge_and_releases_the_stock() {
    let world = World::running(fast_config()).await;
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 2, 1_000)], "XX").await;

    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(
        world.order(order).await.cancellation_reason,
        Some(CancellationReason::ShippingFailed)
    );
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 1);
    assert_eq!(count(&account_events, "ChargeRefunded"), 1);
    assert_eq!(world.balance_of(account.0).await, 100_000);
    let a = world.stock("A").await;
    assert_eq!((a.on_hand, a.reserved), (5, 0));
    let names: Vec<&str> = saga.steps.iter().map(|s| s.step.name()).collect();
    assert_eq!(
        names[names.len() - 4..],
        [
            "cancel_shipment",
            "refund_payment",
            "release_stock",
            "cancel_order"
        ],
        "compensations run in reverse"
    );
    world.stop().await;
}

/// Cancels `order` while its saga stands still before step `name`, then lets
/// it go on.
async fn cancel_before(step: &'static str) -> (World, uuid::Uuid, (uuid::Uuid, uuid::Uuid)) {
    let mut world = World::new(fast_config()).await;
    let (hook, release, reached) = hold_before(step);
    world.start_saga(Some(hook));
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 2, 1_000)], "ES").await;
    tokio::time::timeout(std::time::Duration::from_secs(30), reached.notified())
        .await
        .expect("the saga reached the step");
    let (status, body) = world.cancel(order).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    release.send(()).expect("saga waiting");
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    let state = world.order(order).await;
    assert_eq!(state.status, OrderStatus::Cancelled);
    assert_eq!(
        state.cancellation_reason,
        Some(CancellationReason::CustomerRequest)
    );
    assert_eq!(world.balance_of(account.0).await, 100_000);
    let a = world.stock("A").await;
    assert_eq!((a.on_hand, a.reserved), (5, 0));
    (world, order, account)
}

#[tokio::test]
async fn a_cancellation_before_reservation_reserves_nothing() {
    let (world, _, _) = cancel_before("reserve_stock").await;
    assert_eq!(world.event_types("inventory-A").await, ["ItemCreated"]);
    world.stop().await;
}

#[tokio::test]
async fn a_cancellation_after_reservation_releases_and_charges_nothing() {
    let (world, _, account) = cancel_before("charge_payment").await;
    assert_eq!(
        world.event_types("inventory-A").await,
        ["ItemCreated", "StockReserved", "ReservationReleased"]
    );
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 0);
    world.stop().await;
}

#[tokio::test]
async fn a_cancellation_after_payment_refunds_and_releases() {
    let (world, order, account) = cancel_before("ship").await;
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 1);
    assert_eq!(count(&account_events, "ChargeRefunded"), 1);
    let saga = world.saga(order).await;
    assert!(
        !saga.attempted(&Step::Ship),
        "the carrier was never asked to ship"
    );
    world.stop().await;
}

#[tokio::test]
async fn a_cancellation_after_shipping_is_refused_and_changes_nothing() {
    let world = World::running(fast_config()).await;
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 1, 1_000)], "ES").await;
    world.finished(order).await;
    let before = world.event_types(&format!("order-{order}")).await;

    let (status, body) = world.cancel(order).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "order_not_cancellable");
    assert_eq!(world.event_types(&format!("order-{order}")).await, before);
    assert_eq!(world.order(order).await.status, OrderStatus::Shipped);
    world.stop().await;
}

#[tokio::test]
async fn the_same_order_placed_delivered_many_times_starts_one_saga() {
    let world = World::running(fast_config()).await;
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 1, 1_000)], "ES").await;
    world.finished(order).await;

    // Deliver the OrderPlaced again, three times, through Kafka...
    let placed: Vec<event_store::RecordedEvent> = world
        .store
        .read_stream(&event_store::StreamId::new("order", order), 1)
        .await
        .expect("order stream")
        .into_iter()
        .take(1)
        .collect();
    let publisher = kafka::EventPublisher::new(&world.kafka, std::time::Duration::from_secs(10))
        .expect("publisher");
    for _ in 0..3 {
        publisher.publish(&placed).await.expect("republished");
    }
    // ...and straight to the orchestrator, concurrently.
    let orchestrator = world.orchestrator(None);
    let domain::OrderEvent::OrderPlaced { .. } = placed[0].decode().expect("decodes") else {
        panic!("not an OrderPlaced");
    };
    let saga_order = world.saga(order).await.order.expect("order");
    let starts = futures::future::join_all(
        (0..10).map(|_| orchestrator.start(saga_order.clone(), event_store::Metadata::default())),
    )
    .await;
    assert!(starts.iter().all(|s| matches!(s, Ok(false))), "{starts:?}");

    // The republished events start nothing (the trigger reads the event
    // store, not Kafka); the queue empties once the saga is let go.
    world
        .queue_drained(std::time::Duration::from_secs(20))
        .await;
    let saga_events = world.event_types(&format!("saga-{order}")).await;
    assert_eq!(count(&saga_events, "SagaStarted"), 1);
    assert_eq!(count(&saga_events, "SagaCompleted"), 1);
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 1);
    assert_eq!(world.stock("A").await.on_hand, 4);
    world.stop().await;
}

#[tokio::test]
async fn transient_carrier_failures_are_retried_and_the_order_still_ships() {
    let world = World::running(fast_config()).await;
    world.carrier.controls().fail_next(2);
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 1, 1_000)], "ES").await;

    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    let ship = saga.record(&Step::Ship).expect("ship step");
    assert_eq!(ship.attempts, 3);
    assert_eq!(world.order(order).await.status, OrderStatus::Shipped);
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 1);
    assert_eq!(count(&account_events, "ChargeRefunded"), 0);
    world.stop().await;
}

#[tokio::test]
async fn a_carrier_that_always_times_out_needs_attention_then_an_operator_retry_ships() {
    // Deadlines long enough that no other step misses one on a loaded
    // machine: only the hanging carrier does.
    let world = World::running(SagaConfig {
        step_timeout_ms: 1_000,
        max_attempts: 3,
        ..fast_config()
    })
    .await;
    let controls = world.carrier.controls();
    controls.set_hang(true);
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 1, 1_000)], "ES").await;

    let saga = world
        .wait_saga(order, |s| s.status == SagaStatus::NeedsAttention)
        .await;
    let (stuck, error) = saga.attention.clone().expect("why");
    assert_eq!(stuck, Step::Ship);
    assert_eq!(error, "timeout");
    // Timeouts never compensate by themselves: the charge stands.
    assert_eq!(world.order(order).await.status, OrderStatus::Paid);
    assert_eq!(world.balance_of(account.0).await, 99_000);
    assert_eq!(world.metrics.counts().3, 1);

    // Retrying while the carrier still hangs is allowed; once it works, the
    // order ships.
    controls.set_hang(false);
    let resumed = saga::retry(&world.store, domain::OrderId::new(order))
        .await
        .expect("retried");
    assert_eq!(resumed, SagaStatus::Running);
    let again = saga::retry(&world.store, domain::OrderId::new(order)).await;
    assert!(
        matches!(again, Err(saga::Error::NotRetryable { .. })),
        "{again:?}"
    );
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(world.order(order).await.status, OrderStatus::Shipped);
    assert_eq!(world.balance_of(account.0).await, 99_000);
    let _ = Arc::clone(&controls);
    world.stop().await;
}

#[tokio::test]
async fn a_refund_to_an_account_closed_meanwhile_needs_attention() {
    let mut world = World::new(fast_config()).await;
    let (hook, release, reached) = hold_before("ship");
    world.start_saga(Some(hook));
    let account = world.account(1_000).await;
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 1, 1_000)], "ES").await;
    tokio::time::timeout(std::time::Duration::from_secs(30), reached.notified())
        .await
        .expect("the saga reached the step");
    // Charged 1000 of 1000: the account is empty, and its owner closes it.
    assert_eq!(world.balance_of(account.0).await, 0);
    let (status, body) = world
        .post(
            &format!("/accounts/{}/close", account.0),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = world.cancel(order).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    release.send(()).expect("saga waiting");

    let saga = world
        .wait_saga(order, |s| s.status == SagaStatus::NeedsAttention)
        .await;
    let (step, error) = saga.attention.expect("why");
    assert_eq!(step, Step::RefundPayment);
    assert!(error.contains("account_closed"), "{error}");
    // The money is not lost: the charge stands, recorded, for an operator.
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 1);
    assert_eq!(count(&account_events, "ChargeRefunded"), 0);
    assert_ne!(world.order(order).await.status, OrderStatus::Shipped);
    world.stop().await;
}

#[tokio::test]
async fn two_orchestrators_share_the_sagas_and_each_step_happens_once() {
    // Thirty sagas on one hot SKU: on a loaded machine a step can take
    // seconds, and this test is about sharing, not about deadlines, so
    // attempts and deadlines are generous (a timed-out attempt is still a
    // recorded failure and is counted below).
    let mut world = World::new(SagaConfig {
        step_timeout_ms: 10_000,
        lease_ms: 10_000,
        max_attempts: 20,
        ..fast_config()
    })
    .await;
    world.start_saga(None);
    world.start_saga(None);
    let account = world.account(1_000_000).await;
    world.item("A", 1_000, 100).await;
    let orders =
        futures::future::join_all((0..30).map(|_| world.place(account, &[("A", 1, 100)], "ES")))
            .await;
    for order in &orders {
        let saga = world.finished(*order).await;
        assert_eq!(saga.status, SagaStatus::Completed);
        let saga_events = world.event_types(&format!("saga-{order}")).await;
        assert_eq!(count(&saga_events, "SagaStarted"), 1);
        assert_eq!(count(&saga_events, "SagaCompleted"), 1);
        // Every attempt but the first of a step follows a recorded failure
        // (here: conflicts on the one hot SKU): a saga was never driven by
        // both at once.
        assert_eq!(
            count(&saga_events, "StepStarted"),
            7 + count(&saga_events, "StepFailed"),
            "{saga_events:?}"
        );
    }
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 30);
    assert_eq!(world.balance_of(account.0).await, 1_000_000 - 30 * 100);
    let a = world.stock("A").await;
    assert_eq!((a.on_hand, a.reserved), (970, 0));
    world.stop().await;
}

#[tokio::test]
async fn a_database_refusing_writes_is_retried_and_never_compensated() {
    let world = World::running(SagaConfig {
        max_attempts: 1_000,
        ..fast_config()
    })
    .await;
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    // The accounts' events cannot be written for a while: every charge
    // fails (as if that part of the database were down).
    sqlx::query(
        "ALTER TABLE event_store.events ADD CONSTRAINT outage \
         CHECK (stream_type <> 'account') NOT VALID",
    )
    .execute(&world.db.pool)
    .await
    .expect("outage");
    let order = world.place(account, &[("A", 1, 1_000)], "ES").await;
    let saga = world
        .wait_saga(order, |s| {
            s.record(&Step::ChargePayment)
                .is_some_and(|r| r.attempts >= 3)
        })
        .await;
    assert_eq!(saga.status, SagaStatus::Running, "{saga:#?}");
    assert_eq!(world.order(order).await.status, OrderStatus::Reserved);
    // The saga records the failure's code; the driver's message (the
    // violated constraint) is only logged.
    let charge = saga.record(&Step::ChargePayment).expect("charge attempted");
    assert_eq!(charge.error.as_deref(), Some("unavailable"), "{saga:#?}");

    sqlx::query("ALTER TABLE event_store.events DROP CONSTRAINT outage")
        .execute(&world.db.pool)
        .await
        .expect("recovery");
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed);
    assert_eq!(world.order(order).await.status, OrderStatus::Shipped);
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 1);
    assert_eq!(world.balance_of(account.0).await, 99_000);
    world.stop().await;
}

#[tokio::test]
async fn a_compensation_that_fails_transiently_is_retried_until_it_succeeds() {
    let mut world = World::new(SagaConfig {
        max_attempts: 1_000,
        ..fast_config()
    })
    .await;
    let (hook, release, reached) = hold_before("refund_payment");
    world.start_saga(Some(hook));
    let account = world.account(100_000).await;
    world.item("A", 5, 1_000).await;
    // Shipping to XX is refused: the charge must be refunded.
    let order = world.place(account, &[("A", 1, 1_000)], "XX").await;
    tokio::time::timeout(std::time::Duration::from_secs(30), reached.notified())
        .await
        .expect("the saga reached the refund");
    // Now the accounts' events cannot be written: every refund fails.
    sqlx::query(
        "ALTER TABLE event_store.events ADD CONSTRAINT outage \
         CHECK (stream_type <> 'account') NOT VALID",
    )
    .execute(&world.db.pool)
    .await
    .expect("outage");
    release.send(()).expect("saga waiting");
    let saga = world
        .wait_saga(order, |s| {
            s.record(&Step::RefundPayment)
                .is_some_and(|r| r.attempts >= 3)
        })
        .await;
    assert_eq!(saga.status, SagaStatus::Compensating, "{saga:#?}");
    assert_eq!(world.balance_of(account.0).await, 99_000);

    sqlx::query("ALTER TABLE event_store.events DROP CONSTRAINT outage")
        .execute(&world.db.pool)
        .await
        .expect("recovery");
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Compensated);
    assert_eq!(
        world.order(order).await.cancellation_reason,
        Some(CancellationReason::ShippingFailed)
    );
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 1);
    assert_eq!(count(&account_events, "ChargeRefunded"), 1);
    assert_eq!(world.balance_of(account.0).await, 100_000);
    assert_eq!(world.stock("A").await.reserved, 0);
    world.stop().await;
}

/// A world whose saga waits before charging; the order and its saga id.
async fn held_before_the_charge(
    world: &mut World,
    account: (uuid::Uuid, uuid::Uuid),
) -> (uuid::Uuid, uuid::Uuid, tokio::sync::oneshot::Sender<()>) {
    let (hook, release, reached) = hold_before("charge_payment");
    world.start_saga(Some(hook));
    world.item("A", 5, 1_000).await;
    let order = world.place(account, &[("A", 2, 1_000)], "ES").await;
    tokio::time::timeout(std::time::Duration::from_secs(30), reached.notified())
        .await
        .expect("the saga reached the charge");
    let saga_id = world.saga(order).await.saga_id.expect("saga id");
    (order, saga_id, release)
}

#[tokio::test]
async fn no_client_request_can_take_a_saga_steps_idempotency_key() {
    let mut world = World::new(fast_config()).await;
    let account = world.account(100_000).await;
    let (order, saga_id, release) = held_before_the_charge(&mut world, account).await;
    let deposits = format!("/accounts/{}/deposits", account.0);

    // The step's key has spaces, which an Idempotency-Key cannot have.
    let key = format!("saga {saga_id} 0 {}", Step::ChargePayment);
    let (status, body) = world
        .post_with_key(&deposits, json!({"amount": 1}), &key)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The key of earlier versions is a client's key like any other now:
    // taken first, it neither blocks the charge nor stands in for it.
    let legacy = format!("saga:{saga_id}:0:{}", Step::ChargePayment);
    let (status, body) = world
        .post_with_key(&deposits, json!({"amount": 1}), &legacy)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    release.send(()).expect("saga waiting");
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    let events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&events, "AccountCharged"), 1, "{events:?}");
    assert_eq!(world.balance_of(account.0).await, 100_000 + 1 - 2_000);
    world.stop().await;
}

#[tokio::test]
async fn a_step_done_under_an_earlier_versions_key_is_not_done_again() {
    let mut world = World::new(fast_config()).await;
    let account = world.account(100_000).await;
    let (order, saga_id, release) = held_before_the_charge(&mut world, account).await;
    let placed = world.order(order).await;

    // What an orchestrator of an earlier version did just before it was
    // stopped for the upgrade: the charge, under that version's key. The new
    // key differs; the account's record of the order's charge keeps the
    // step from charging twice.
    let legacy = format!("saga:{saga_id}:0:{}", Step::ChargePayment);
    let options = ExecuteOptions {
        idempotency: Some(IdempotencyKey {
            scope: saga::STEP_SCOPE.to_owned(),
            key: legacy.clone(),
            fingerprint: legacy,
        }),
        ..ExecuteOptions::default()
    };
    Repository::<BankAccount>::new(world.store.clone())
        .execute(
            &account.0.to_string(),
            &AccountCommand::Charge {
                order_id: domain::OrderId::new(order),
                customer_id: domain::CustomerId::new(account.1),
                currency: placed.currency.expect("currency"),
                amount: Amount::new(2_000).expect("amount"),
            },
            options,
            // As migration 9 keeps what that version stored.
            |_| json!({"status": 200, "body": {"outcome": "done"}}),
        )
        .await
        .expect("charged");

    release.send(()).expect("saga waiting");
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    let events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&events, "AccountCharged"), 1, "{events:?}");
    assert_eq!(world.balance_of(account.0).await, 100_000 - 2_000);
    world.stop().await;
}
