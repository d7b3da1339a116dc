//! Kills `purser saga` (SIGKILL, a real process kill) in the middle of a
//! step, starts it again, and checks that the saga finishes with exactly
//! one effect per step: one charge, one refund where due, exact stock. A
//! step on the database is killed inside its one transaction, after its
//! appends and before the commit; a carrier step between the call and the
//! record of its outcome, and between the record of its attempt and the
//! call.
//!
//! The orchestrator is told where to stand still by `PURSER_SAGA_PAUSE_AFTER`
//! or `PURSER_SAGA_PAUSE_BEFORE` (it only stops there and says so on
//! stderr); the kill is the test's.

use std::process::Stdio;
use std::time::Duration;

use domain::{
    AccountId, BankAccount, Currency, CustomerId, FulfilmentSaga, Inventory, InventoryCommand,
    LineToPlace, Order, OrderCommand, OrderId, OrderStatus, Price, SagaState, SagaStatus,
    StepStatus,
};
use event_store::{EventStore, Repository};
use test_support::fixtures::{address, price_of, quantity_of, sku_of};
use test_support::{eventually, Harness, TestDatabase};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BALANCE: i64 = 100_000;
const STOCK: i64 = 5;
const QUANTITY: i64 = 2;
const PRICE: i64 = 1_000;

/// Every item's catalog price.
fn price() -> Price {
    price_of(PRICE, "EUR")
}

struct Setup {
    db: TestDatabase,
    store: EventStore,
    account: Uuid,
    order: Uuid,
    relay: CancellationToken,
}

async fn setup(country: &str) -> Setup {
    let kafka = test_support::kafka::topics("purser-crash").await;
    let h = Harness::new().await;
    let (account, customer) = h.open_account("EUR").await;
    h.deposit(account, BALANCE).await;
    for sku in ["A", "B"] {
        h.exec::<Inventory>(
            sku,
            InventoryCommand::Create {
                sku: sku_of(sku),
                name: format!("Item {sku}"),
                quantity: quantity_of(STOCK),
                price: price(),
            },
        )
        .await;
    }
    let order = Uuid::now_v7();
    // At the catalog's price, as the Command API would have looked it up.
    let line = |sku: &str| LineToPlace::priced(sku_of(sku), quantity_of(QUANTITY), price());
    h.order(
        order,
        OrderCommand::Place {
            order_id: OrderId::new(order),
            customer_id: CustomerId::new(customer),
            account_id: AccountId::new(account),
            currency: Currency::EUR,
            lines: vec![line("A"), line("B")],
            shipping_address: address(country),
        },
    )
    .await;
    let Harness { db, store } = h;

    let relay = CancellationToken::new();
    let publisher = kafka::Relay::new(store.clone(), kafka.clone()).expect("relay");
    tokio::spawn(publisher.run(relay.clone()));
    Setup {
        db,
        store,
        account,
        order,
        relay,
    }
}

/// Where the orchestrator stands still: the variable and the step.
#[derive(Debug, Clone, Copy)]
enum Pause<'a> {
    /// `PURSER_SAGA_PAUSE_AFTER`: a step on the database in its
    /// transaction before the commit, a carrier step after the call.
    After(&'a str),
    /// `PURSER_SAGA_PAUSE_BEFORE`: a carrier step recorded, not called.
    Before(&'a str),
}

impl<'a> Pause<'a> {
    fn variable(self) -> &'static str {
        match self {
            Pause::After(_) => saga::PAUSE_AFTER_ENV,
            Pause::Before(_) => saga::PAUSE_BEFORE_ENV,
        }
    }

    fn step(self) -> &'a str {
        match self {
            Pause::After(step) | Pause::Before(step) => step,
        }
    }

    /// What the orchestrator says on stderr when it stands still there.
    fn marker(self) -> String {
        match self {
            Pause::After(step) => format!("paused after {step}"),
            Pause::Before(step) => format!("paused before {step}"),
        }
    }
}

/// `purser saga` on the test's database; stderr piped. No broker: the saga
/// needs none (the relay publishes for the read models only).
fn orchestrator(setup: &Setup, pause: Option<Pause<'_>>) -> Child {
    orchestrator_with_metrics(setup, pause, "127.0.0.1:0")
}

fn orchestrator_with_metrics(setup: &Setup, pause: Option<Pause<'_>>, metrics: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_purser"));
    command
        .args(["saga", "--database-url", &setup.db.url])
        .args(["--saga-lease-ms", "500", "--saga-step-timeout-ms", "2000"])
        .args(["--saga-poll-ms", "50", "--saga-backoff-ms", "50"])
        .args(["--admin-addr", metrics])
        .env("RUST_LOG", "warn")
        .env_remove(saga::PAUSE_AFTER_ENV)
        .env_remove(saga::PAUSE_BEFORE_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(pause) = pause {
        command.env(pause.variable(), pause.step());
    }
    command.spawn().expect("purser saga starts")
}

/// Reads the child's stderr until it says it paused there.
async fn wait_for_pause(child: &mut Child, pause: Pause<'_>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let marker = pause.marker();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("stderr") {
            if line.contains(pause.variable()) && line.contains(&marker) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "purser saga never {marker}");
    // Keep draining, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

async fn saga_of(setup: &Setup) -> SagaState {
    Repository::<FulfilmentSaga>::new(setup.store.clone())
        .load(&setup.order.to_string())
        .await
        .expect("saga")
        .state
}

async fn count(setup: &Setup, stream: &str, event_type: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM event_store.events WHERE stream_id = $1 AND event_type = $2",
    )
    .bind(stream)
    .bind(event_type)
    .fetch_one(&setup.db.pool)
    .await
    .expect("count")
}

/// Events in `stream`, of any type.
async fn count_all(setup: &Setup, stream: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_store.events WHERE stream_id = $1")
        .bind(stream)
        .fetch_one(&setup.db.pool)
        .await
        .expect("count")
}

async fn wait_until_over(setup: &Setup) -> SagaState {
    eventually(
        "the restarted orchestrator to finish the saga",
        Duration::from_secs(60),
        Duration::from_millis(50),
        move || async move {
            let state = saga_of(setup).await;
            if state.status.is_terminal() || state.status == SagaStatus::NeedsAttention {
                Ok(state)
            } else {
                Err(state)
            }
        },
    )
    .await
}

/// The steps that call the carrier: recorded before they are carried out.
fn leaves_the_database(step: &str) -> bool {
    matches!(step, "ship" | "cancel_shipment")
}

/// The carrier step whose outcome commits with `step`'s transaction, if
/// `step` follows one: the carrier's outcome is recorded with the steps on
/// the database after it, so while they stand still it is still open (and
/// after a restart the carrier is called again, under the same key).
fn after_the_carrier(step: &str) -> Option<&'static str> {
    match step {
        "mark_shipped" | "commit_stock" => Some("ship"),
        "refund_payment" | "release_stock" | "cancel_order" => Some("cancel_shipment"),
        _ => None,
    }
}

/// The steps of the saga's first transaction (every step on the database
/// before the carrier is one batch): standing still in any of them, none
/// of it is visible.
fn in_the_first_batch(step: &str) -> bool {
    matches!(
        step,
        "reserve_stock" | "mark_reserved" | "charge_payment" | "mark_paid"
    )
}

/// Places an order (to `country`), kills the orchestrator standing still at
/// `pause`, restarts it, and checks the outcome.
async fn killed_at(pause: Pause<'_>, country: &str) {
    let setup = setup(country).await;
    let step = pause.step();
    let mut first = orchestrator(&setup, Some(pause));
    wait_for_pause(&mut first, pause).await;

    let paused = saga_of(&setup).await;
    let open: Vec<String> = paused
        .steps
        .iter()
        .filter(|r| r.status == StepStatus::Running)
        .map(|r| r.step.to_string())
        .collect();
    if leaves_the_database(step) {
        // Standing still before or after the call: the step is started,
        // not finished, in the saga's stream.
        assert_eq!(open.len(), 1, "one step in flight: {open:?}");
        assert!(open[0].starts_with(step), "{open:?}");
    } else {
        // Standing still inside the step's transaction: nothing of the step
        // is visible, neither in the saga's stream nor its command's
        // effect.
        match after_the_carrier(step) {
            Some(carrier) => assert!(
                open.iter().all(|s| s == carrier),
                "at most {carrier} in flight: {open:?}"
            ),
            None => assert!(open.is_empty(), "no step in flight: {open:?}"),
        }
        let seen: Vec<String> = paused.steps.iter().map(|r| r.step.to_string()).collect();
        assert!(
            !seen.iter().any(|s| s.starts_with(step)),
            "{step} not recorded yet: {seen:?}"
        );
        let account_stream = format!("account-{}", setup.account);
        if step == "charge_payment" {
            assert_eq!(count(&setup, &account_stream, "AccountCharged").await, 0);
        }
        if step == "refund_payment" {
            assert_eq!(count(&setup, &account_stream, "ChargeRefunded").await, 0);
        }
        if in_the_first_batch(step) {
            assert!(seen.is_empty(), "nothing of the first batch: {seen:?}");
            assert_eq!(count(&setup, "inventory-A", "StockReserved").await, 0);
        }
    }

    first.kill().await.expect("SIGKILL");
    restart_and_check(setup, country).await;
}

/// Starts the orchestrator again, lets it finish the saga, and checks that
/// every step took effect once: one reservation per line, one charge (and
/// one refund to `XX`, where the carrier refuses), exact money and stock.
async fn restart_and_check(setup: Setup, country: &str) {
    let saga = restart(&setup).await;
    check_exactly_once(setup, country, saga).await;
}

/// Starts the orchestrator again and lets it finish the saga.
async fn restart(setup: &Setup) -> SagaState {
    let mut second = orchestrator(setup, None);
    let saga = wait_until_over(setup).await;
    second.kill().await.expect("stopped");
    setup.relay.cancel();
    saga
}

/// Checks that every step of `saga` took effect once (see
/// [`restart_and_check`]), and drops the database.
async fn check_exactly_once(setup: Setup, country: &str, saga: SagaState) {
    let account_stream = format!("account-{}", setup.account);
    let charges = count(&setup, &account_stream, "AccountCharged").await;
    let refunds = count(&setup, &account_stream, "ChargeRefunded").await;
    let order: domain::OrderState = Repository::<Order>::new(setup.store.clone())
        .load(&setup.order.to_string())
        .await
        .expect("order")
        .state;
    let balance = Repository::<BankAccount>::new(setup.store.clone())
        .load(&setup.account.to_string())
        .await
        .expect("account")
        .state
        .balance
        .amount();
    let total = 2 * QUANTITY * PRICE;
    let mut stock = Vec::new();
    for sku in ["A", "B"] {
        let item = Repository::<Inventory>::new(setup.store.clone())
            .load(sku)
            .await
            .expect("item")
            .state;
        stock.push((item.on_hand, item.reserved));
        assert_eq!(
            count(&setup, &format!("inventory-{sku}"), "StockReserved").await,
            1,
            "{sku} reserved once"
        );
    }
    let order_stream = format!("order-{}", setup.order);
    if country == "XX" {
        assert_eq!(saga.status, SagaStatus::Compensated, "{saga:#?}");
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!((charges, refunds), (1, 1), "one charge, one refund");
        assert_eq!(balance, BALANCE);
        assert_eq!(stock, [(STOCK as u64, 0), (STOCK as u64, 0)]);
        assert_eq!(count(&setup, &order_stream, "OrderShipped").await, 0);
    } else {
        assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
        assert_eq!(order.status, OrderStatus::Shipped);
        assert_eq!((charges, refunds), (1, 0), "one charge, no refund");
        assert_eq!(balance, BALANCE - total);
        let left = (STOCK - QUANTITY) as u64;
        assert_eq!(stock, [(left, 0), (left, 0)]);
        assert_eq!(count(&setup, &order_stream, "OrderShipped").await, 1);
    }
    assert_eq!(
        count(&setup, &format!("saga-{}", setup.order), "SagaStarted").await,
        1
    );
    setup.db.drop().await;
}

/// The saga's start, the reservations of both lines, the order's mark and
/// the charge are one transaction: killed standing still in it, after the
/// charge, nothing of any of them is visible (not even the start), and
/// after the restart each happens once.
#[tokio::test]
async fn killed_inside_a_batch_of_reservations_and_the_charge() {
    let setup = setup("ES").await;
    let pause = Pause::After("charge_payment");
    let mut first = orchestrator(&setup, Some(pause));
    wait_for_pause(&mut first, pause).await;

    let saga_stream = format!("saga-{}", setup.order);
    let order_stream = format!("order-{}", setup.order);
    let account_stream = format!("account-{}", setup.account);
    assert_eq!(count(&setup, &saga_stream, "SagaStarted").await, 0);
    assert_eq!(count(&setup, &saga_stream, "StepStarted").await, 0);
    for sku in ["A", "B"] {
        let stream = format!("inventory-{sku}");
        assert_eq!(count(&setup, &stream, "StockReserved").await, 0, "{sku}");
    }
    assert_eq!(count(&setup, &order_stream, "OrderReserved").await, 0);
    assert_eq!(count(&setup, &account_stream, "AccountCharged").await, 0);

    first.kill().await.expect("SIGKILL");
    restart_and_check(setup, "ES").await;
}

macro_rules! crash_tests {
    ($($name:ident: $pause:ident $step:literal to $country:literal;)*) => {$(
        #[tokio::test]
        async fn $name() {
            killed_at(Pause::$pause($step), $country).await;
        }
    )*};
}

crash_tests! {
    killed_after_reserve_stock: After "reserve_stock" to "ES";
    killed_after_mark_reserved: After "mark_reserved" to "ES";
    killed_after_charge_payment: After "charge_payment" to "ES";
    killed_after_mark_paid: After "mark_paid" to "ES";
    killed_after_ship: After "ship" to "ES";
    killed_after_mark_shipped: After "mark_shipped" to "ES";
    killed_after_commit_stock: After "commit_stock" to "ES";
    killed_after_cancel_shipment: After "cancel_shipment" to "XX";
    killed_after_refund_payment: After "refund_payment" to "XX";
    killed_after_release_stock: After "release_stock" to "XX";
    killed_after_cancel_order: After "cancel_order" to "XX";
    killed_before_ship: Before "ship" to "ES";
    killed_before_cancel_shipment: Before "cancel_shipment" to "XX";
}

/// The trigger killed in the middle of its step: it has read the order's
/// `OrderPlaced` and written the order's `saga.due` row, but not recorded
/// its checkpoint (its transaction is open, holding the trigger's lock),
/// while a second orchestrator waits for that lock. The second one reads
/// the same events again and starts each saga once.
#[tokio::test]
async fn killed_in_the_trigger_before_its_checkpoint() {
    let setup = setup("ES").await;
    let mut first = orchestrator(&setup, Some(Pause::After(saga::PAUSE_IN_TRIGGER)));
    wait_for_pause(&mut first, Pause::After(saga::PAUSE_IN_TRIGGER)).await;
    let mut second = orchestrator(&setup, None);

    // Nothing of the paused step is visible.
    assert_eq!(saga_of(&setup).await.status, SagaStatus::NotStarted);
    let due: i64 = sqlx::query_scalar("SELECT count(*) FROM saga.due")
        .fetch_one(&setup.db.pool)
        .await
        .expect("due");
    assert_eq!(due, 0);

    first.kill().await.expect("SIGKILL");
    let saga = wait_until_over(&setup).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    assert_eq!(
        count(&setup, &format!("saga-{}", setup.order), "SagaStarted").await,
        1
    );
    let account_stream = format!("account-{}", setup.account);
    assert_eq!(count(&setup, &account_stream, "AccountCharged").await, 1);
    for sku in ["A", "B"] {
        assert_eq!(
            count(&setup, &format!("inventory-{sku}"), "StockReserved").await,
            1,
            "{sku} reserved once"
        );
    }
    // The checkpoint moves past the order (once no transaction older than
    // its own is in flight on the server): nothing of it is read again.
    let setup_ref = &setup;
    eventually(
        "the trigger's checkpoint to pass the order",
        Duration::from_secs(30),
        Duration::from_millis(50),
        move || async move {
            let (passed,): (bool,) = sqlx::query_as(
                "SELECT (t.transaction_id, t.position) >= (e.transaction_id, e.position) \
                 FROM saga.trigger AS t, event_store.events AS e \
                 WHERE e.stream_id = $1 AND e.version = 1",
            )
            .bind(format!("order-{}", setup_ref.order))
            .fetch_one(&setup_ref.db.pool)
            .await
            .expect("checkpoint");
            passed.then_some(()).ok_or("not yet")
        },
    )
    .await;
    second.kill().await.expect("stopped");
    setup.relay.cancel();
    setup.db.drop().await;
}

/// Killed between the trigger's hand-over and the drive: the trigger has
/// leased the new saga to its own orchestrator and committed, and handed it
/// over in this process; the run loop stands still before driving it. The
/// lease is all that is left of it: nobody may take the saga before it runs
/// out, and once it has, another orchestrator claims the saga and finishes
/// it, each step once.
#[tokio::test]
async fn killed_between_the_hand_over_and_the_drive() {
    let setup = setup("ES").await;
    let pause = Pause::After(saga::PAUSE_AFTER_HAND_OVER);
    let mut first = orchestrator(&setup, Some(pause));
    wait_for_pause(&mut first, pause).await;

    // The lease committed, and nothing else: no saga, no effect.
    let (owner, lease_until, leased): (Option<Uuid>, String, bool) = sqlx::query_as(
        "SELECT lease_owner, lease_until::text, lease_until > now() \
         FROM saga.due WHERE order_id = $1",
    )
    .bind(setup.order)
    .fetch_one(&setup.db.pool)
    .await
    .expect("the saga's due row");
    assert!(
        owner.is_some() && leased,
        "leased to the first orchestrator"
    );
    let saga_stream = format!("saga-{}", setup.order);
    assert_eq!(
        count_all(&setup, &saga_stream).await,
        0,
        "nothing of the saga"
    );
    assert_eq!(saga_of(&setup).await.status, SagaStatus::NotStarted);
    for sku in ["A", "B"] {
        let stream = format!("inventory-{sku}");
        assert_eq!(count(&setup, &stream, "StockReserved").await, 0, "{sku}");
    }
    let account_stream = format!("account-{}", setup.account);
    assert_eq!(count(&setup, &account_stream, "AccountCharged").await, 0);

    first.kill().await.expect("SIGKILL");
    let saga = restart(&setup).await;

    // Taken over once the dead one's lease had run out, not before.
    let (started_at, after): (String, bool) = sqlx::query_as(
        "SELECT recorded_at::text, recorded_at > $2::timestamptz \
         FROM event_store.events WHERE stream_id = $1 AND version = 1",
    )
    .bind(&saga_stream)
    .bind(&lease_until)
    .fetch_one(&setup.db.pool)
    .await
    .expect("the saga's start");
    assert!(
        after,
        "started at {started_at}, within the dead orchestrator's lease (to {lease_until})"
    );
    check_exactly_once(setup, "ES", saga).await;
}

#[tokio::test]
async fn the_orchestrator_serves_its_metrics() {
    let setup = setup("ES").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("address")
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut child = orchestrator_with_metrics(&setup, None, &address);
    let saga = wait_until_over(&setup).await;
    assert_eq!(saga.status, SagaStatus::Completed);

    let client = &reqwest::Client::new();
    let address = &address;
    let text = eventually(
        "the completed saga in the orchestrator's metrics",
        Duration::from_secs(20),
        Duration::from_millis(50),
        move || async move {
            let response = client
                .get(format!("http://{address}/metrics"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let text = response.text().await.expect("body");
            if text.contains("purser_sagas_completed_total 1") {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    assert!(text.contains("purser_sagas_started_total 1"), "{text}");
    assert!(
        text.contains("purser_saga_step_duration_seconds_count{step=\"charge_payment\",outcome=\"succeeded\"} 1"),
        "{text}"
    );
    child.kill().await.expect("stopped");
    setup.relay.cancel();
    setup.db.drop().await;
}

#[tokio::test]
async fn a_step_deadline_survives_a_restart() {
    let setup = setup("ES").await;
    // The carrier never answers: the first orchestrator is killed while
    // its shipment hangs, well before the attempt's deadline (4 s).
    let mut hanging = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_purser"));
        command
            .args(["saga", "--database-url", &setup.db.url])
            .args(["--saga-lease-ms", "500", "--saga-step-timeout-ms", "4000"])
            .args(["--admin-addr", "127.0.0.1:0", "--carrier-hang"])
            .env("RUST_LOG", "warn")
            .env_remove(saga::PAUSE_AFTER_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command.spawn().expect("purser saga starts")
    };
    let setup_ref = &setup;
    eventually(
        "the shipment to start",
        Duration::from_secs(60),
        Duration::from_millis(50),
        move || async move {
            let saga = saga_of(setup_ref).await;
            let shipping = saga
                .record(&domain::Step::Ship)
                .is_some_and(|r| r.status == StepStatus::Running);
            if shipping {
                Ok(())
            } else {
                Err(saga)
            }
        },
    )
    .await;
    hanging.kill().await.expect("SIGKILL");

    // The restarted one takes the saga over once the dead one's lease ran
    // out, finds the attempt past its persisted deadline, records the
    // timeout and ships again (the carrier works now).
    let mut second = orchestrator(&setup, None);
    let saga = wait_until_over(&setup).await;
    second.kill().await.expect("stopped");
    setup.relay.cancel();
    assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    let ship = saga.record(&domain::Step::Ship).expect("ship");
    assert_eq!(
        ship.attempts, 2,
        "the hung attempt timed out, a second one shipped"
    );
    let failures: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'error' FROM event_store.events \
         WHERE stream_id = $1 AND event_type = 'StepFailed'",
    )
    .bind(format!("saga-{}", setup.order))
    .fetch_all(&setup.db.pool)
    .await
    .expect("failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    // The failure's code, never a message.
    assert_eq!(failures, ["timeout"]);
    setup.db.drop().await;
}
