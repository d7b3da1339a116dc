//! The trigger takes its facts from the event store (design decision 10):
//! a message on the broker starts nothing, a re-read of the log starts
//! nothing twice, and a transaction left open elsewhere on the server holds
//! back the trigger's checkpoint but not the sagas.

use std::time::Duration;

use domain::SagaStatus;
use event_store::{RecordedEvent, StreamId};
use test_support::eventually;
use uuid::Uuid;

use test_support::world::{fast_config, World};

fn count(events: &[String], event_type: &str) -> usize {
    events.iter().filter(|e| *e == event_type).count()
}

/// The trigger's checkpoint, `(transaction_id, position)`.
async fn checkpoint(world: &World) -> (i64, i64) {
    sqlx::query_as("SELECT transaction_id::text::bigint, position FROM saga.trigger")
        .fetch_one(&world.db.pool)
        .await
        .expect("checkpoint")
}

/// The `OrderPlaced` of `order` as the store holds it.
async fn placed(world: &World, order: Uuid) -> RecordedEvent {
    world
        .store
        .read_stream(&StreamId::new("order", order), 1)
        .await
        .expect("order stream")
        .into_iter()
        .next()
        .expect("OrderPlaced")
}

#[tokio::test]
async fn an_order_placed_forged_on_the_broker_starts_nothing_and_charges_nothing() {
    let world = World::running(fast_config()).await;
    let account = world.account(100_000).await;
    world.item("A", 50, 1_000).await;
    let real = world.place(account, &[("A", 1, 1_000)], "ES").await;
    world.finished(real).await;

    // Anyone who can write to the order topic: a copy of a real
    // `OrderPlaced`, for an order the store has never seen, the same account
    // and a much larger amount, produced straight to Kafka (never appended).
    let forged = Uuid::now_v7();
    let mut event = placed(&world, real).await;
    event.event_id = Uuid::now_v7();
    event.stream_id = format!("order-{forged}");
    event.position += 1_000_000;
    assert!(event.payload.get("order_id").is_some(), "{}", event.payload);
    event.payload["order_id"] = forged.to_string().into();
    for line in event.payload["lines"].as_array_mut().expect("lines") {
        line["quantity"] = 40.into();
    }
    event.payload["total"] = 40_000.into();
    let publisher =
        kafka::EventPublisher::new(&world.kafka, Duration::from_secs(10)).expect("publisher");
    for _ in 0..3 {
        publisher.publish(&[event.clone()]).await.expect("forged");
    }

    // Enough time passed: an order placed after the forgery has shipped.
    let later = world.place(account, &[("A", 2, 1_000)], "ES").await;
    let saga = world.finished(later).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");

    assert_eq!(world.saga(forged).await.status, SagaStatus::NotStarted);
    assert!(world
        .event_types(&format!("saga-{forged}"))
        .await
        .is_empty());
    let due: i64 = sqlx::query_scalar("SELECT count(*) FROM saga.due WHERE order_id = $1")
        .bind(forged)
        .fetch_one(&world.db.pool)
        .await
        .expect("due");
    assert_eq!(due, 0);
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(
        count(&account_events, "AccountCharged"),
        2,
        "{account_events:?}"
    );
    assert_eq!(world.balance_of(account.0).await, 100_000 - 1_000 - 2_000);
    let stock = world.stock("A").await;
    assert_eq!((stock.on_hand, stock.reserved), (47, 0));
    world.stop().await;
}

#[tokio::test]
async fn a_trigger_reading_the_log_again_from_its_start_starts_nothing_twice() {
    let world = World::running(fast_config()).await;
    let account = world.account(100_000).await;
    world.item("A", 10, 1_000).await;
    let orders = [
        world.place(account, &[("A", 1, 1_000)], "ES").await,
        world.place(account, &[("A", 1, 1_000)], "ES").await,
    ];
    for order in orders {
        world.finished(order).await;
    }
    world.queue_drained(Duration::from_secs(20)).await;

    // As if the checkpoint had been lost: the trigger reads both
    // `OrderPlaced` again, until its checkpoint is past them once more.
    sqlx::query("UPDATE saga.trigger SET transaction_id = '0', position = 0")
        .execute(&world.db.pool)
        .await
        .expect("reset");
    let last = placed(&world, orders[1]).await;
    let target = (last.transaction_id as i64, last.position);
    let world_ref = &world;
    eventually(
        "the trigger to read the log again",
        Duration::from_secs(20),
        Duration::from_millis(25),
        move || async move {
            let reached = checkpoint(world_ref).await;
            if reached >= target {
                Ok(())
            } else {
                Err(reached)
            }
        },
    )
    .await;

    // Their sagas exist: nothing was made due, nothing started again.
    let due: i64 = sqlx::query_scalar("SELECT count(*) FROM saga.due")
        .fetch_one(&world.db.pool)
        .await
        .expect("due");
    assert_eq!(due, 0);
    for order in orders {
        let saga_events = world.event_types(&format!("saga-{order}")).await;
        assert_eq!(count(&saga_events, "SagaStarted"), 1);
        assert_eq!(count(&saga_events, "SagaCompleted"), 1);
    }
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 2);
    world.stop().await;
}

#[tokio::test]
async fn a_transaction_left_open_holds_the_checkpoint_back_but_not_the_saga() {
    let world = World::running(fast_config()).await;
    let account = world.account(100_000).await;
    world.item("A", 10, 1_000).await;
    let first = world.place(account, &[("A", 1, 1_000)], "ES").await;
    world.finished(first).await;

    // A transaction with an xid, open: the gap-safe horizon stops at it.
    let mut open = world.db.pool.begin().await.expect("begin");
    let held: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *open)
        .await
        .expect("xid");

    let order = world.place(account, &[("A", 2, 1_000)], "ES").await;
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    let event = placed(&world, order).await;
    assert!(event.transaction_id as i64 > held);
    let (transaction_id, _) = checkpoint(&world).await;
    assert!(transaction_id < held, "{transaction_id} passed {held}");

    open.rollback().await.expect("rollback");
    let world_ref = &world;
    let target = (event.transaction_id as i64, event.position);
    eventually(
        "the checkpoint to pass the order once the horizon moved",
        Duration::from_secs(20),
        Duration::from_millis(25),
        move || async move {
            let reached = checkpoint(world_ref).await;
            if reached >= target {
                Ok(())
            } else {
                Err(reached)
            }
        },
    )
    .await;
    let saga_events = world.event_types(&format!("saga-{order}")).await;
    assert_eq!(count(&saga_events, "SagaStarted"), 1);
    let account_events = world.event_types(&format!("account-{}", account.0)).await;
    assert_eq!(count(&account_events, "AccountCharged"), 2);
    world.stop().await;
}

/// A new saga is leased to the trigger's own orchestrator in the
/// transaction that makes it due, and driven from there: its lease counts
/// from the row's own `due_at` (a claim after it would count from later).
#[tokio::test]
async fn the_trigger_hands_a_new_saga_to_its_orchestrator_in_its_own_transaction() {
    let config = saga::SagaConfig {
        // Not renewed while the saga is held below.
        lease_ms: 20_000,
        ..fast_config()
    };
    let mut world = World::new(config).await;
    let (hook, release, reached) = test_support::world::hold_before("reserve_stock");
    world.start_saga(Some(hook));
    let account = world.account(100_000).await;
    world.item("A", 10, 1_000).await;
    let order = world.place(account, &[("A", 1, 1_000)], "ES").await;
    tokio::time::timeout(Duration::from_secs(30), reached.notified())
        .await
        .expect("the saga reached its first step");

    let (leased, lease): (bool, f64) = sqlx::query_as(
        "SELECT lease_owner IS NOT NULL, \
                extract(epoch FROM lease_until - due_at)::float8 * 1000 \
         FROM saga.due WHERE order_id = $1",
    )
    .bind(order)
    .fetch_one(&world.db.pool)
    .await
    .expect("due row");
    assert!(leased);
    assert_eq!(lease, 20_000.0, "leased when made due");

    release.send(()).expect("saga waiting");
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    world.stop().await;
}
