//! The projector over a real database, fed with events appended through the
//! real event store (no Kafka).

use domain::{
    AccountCommand, BankAccount, CancellationReason, CustomerId, InventoryCommand, OrderCommand,
};
use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};
use projections::{Accounts, BatchReport, Inventory, Orders};
use uuid::Uuid;

use test_support::fixtures::{amount_of, currency_of, order_id, place, quantity_of};
use test_support::Harness;

#[tokio::test]
async fn accounts_projection_builds_the_account_and_its_ledger() {
    let h = Harness::new().await;
    let (account, customer) = h.open_account("USD").await;
    h.deposit(account, 10_000).await;
    h.withdraw(account, 2_500).await.expect("withdraw");
    let order = Uuid::now_v7();
    h.exec::<BankAccount>(
        &account.to_string(),
        AccountCommand::Charge {
            order_id: order_id(order),
            customer_id: CustomerId::new(customer),
            currency: currency_of("USD"),
            amount: amount_of(1_000),
        },
    )
    .await;
    h.exec::<BankAccount>(
        &account.to_string(),
        AccountCommand::Refund {
            order_id: order_id(order),
        },
    )
    .await;

    let report = h
        .projector(Accounts)
        .apply_batch(&h.all_events().await)
        .await
        .unwrap();
    assert_eq!(report.applied, 5);

    let (customer_id, currency, balance, status, version): (Uuid, String, i64, String, i64) =
        sqlx::query_as(
            "SELECT customer_id, currency, balance, status, version FROM read_models.accounts WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(
        (
            customer_id,
            currency.as_str(),
            balance,
            status.as_str(),
            version
        ),
        (customer, "USD", 7_500, "open", 5)
    );

    let ledger: Vec<(i64, String, i64, i64, Option<Uuid>)> = sqlx::query_as(
        "SELECT seq, kind, amount, balance_after, order_id FROM read_models.account_transactions \
         WHERE account_id = $1 ORDER BY seq",
    )
    .bind(account)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        ledger,
        vec![
            (2, "deposit".to_owned(), 10_000, 10_000, None),
            (3, "withdrawal".to_owned(), 2_500, 7_500, None),
            (4, "charge".to_owned(), 1_000, 6_500, Some(order)),
            (5, "refund".to_owned(), 1_000, 7_500, Some(order)),
        ]
    );

    // Emptied and closed.
    h.withdraw(account, 7_500).await.expect("withdraw all");
    h.exec::<BankAccount>(&account.to_string(), AccountCommand::Close)
        .await;
    h.projector(Accounts)
        .apply_batch(&h.all_events().await)
        .await
        .unwrap();
    let (balance, status, version): (i64, String, i64) = sqlx::query_as(
        "SELECT balance, status, version FROM read_models.accounts WHERE account_id = $1",
    )
    .bind(account)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!((balance, status.as_str(), version), (0, "closed", 7));

    let (applied, events_applied): (i64, i64) = sqlx::query_as(
        "SELECT a.version, s.events_applied FROM read_models.applied a \
         JOIN read_models.projection_status s USING (projection) \
         WHERE a.projection = 'accounts' AND a.stream_id = $1",
    )
    .bind(format!("account-{account}"))
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!((applied, events_applied), (7, 7));
    h.drop().await;
}

#[tokio::test]
async fn inventory_projection_tracks_on_hand_and_reserved() {
    let h = Harness::new().await;
    h.create_item("LAPTOP-15", 10).await;
    h.create_item("MOUSE-1", 3).await;
    let (o1, o2) = (order_id(Uuid::now_v7()), order_id(Uuid::now_v7()));
    h.inventory(
        "LAPTOP-15",
        InventoryCommand::Restock {
            quantity: quantity_of(5),
        },
    )
    .await
    .unwrap();
    h.inventory(
        "LAPTOP-15",
        InventoryCommand::Reserve {
            order_id: o1,
            quantity: quantity_of(4),
        },
    )
    .await
    .unwrap();
    h.inventory(
        "LAPTOP-15",
        InventoryCommand::Reserve {
            order_id: o2,
            quantity: quantity_of(2),
        },
    )
    .await
    .unwrap();
    h.inventory("LAPTOP-15", InventoryCommand::Commit { order_id: o1 })
        .await
        .unwrap();
    h.inventory("LAPTOP-15", InventoryCommand::Release { order_id: o2 })
        .await
        .unwrap();
    h.inventory(
        "MOUSE-1",
        InventoryCommand::Reserve {
            order_id: o2,
            quantity: quantity_of(3),
        },
    )
    .await
    .unwrap();

    // Accounts ignores inventory events; inventory applies them.
    let events = h.all_events().await;
    assert_eq!(
        h.projector(Accounts).apply_batch(&events).await.unwrap(),
        BatchReport::default()
    );
    let report = h.projector(Inventory).apply_batch(&events).await.unwrap();
    assert_eq!(report.applied, 8);

    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT sku, name, on_hand, reserved, version FROM read_models.inventory ORDER BY sku",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "LAPTOP-15".to_owned(),
                "Item LAPTOP-15".to_owned(),
                11,
                0,
                6
            ),
            ("MOUSE-1".to_owned(), "Item MOUSE-1".to_owned(), 3, 3, 2),
        ]
    );
    h.drop().await;
}

/// order_id, status, total, cancellation_reason, tracking_number, version
type OrderRow = (Uuid, String, i64, Option<String>, Option<String>, i64);

#[tokio::test]
async fn orders_projection_tracks_status_and_lines() {
    let h = Harness::new().await;
    let (customer, account) = (Uuid::now_v7(), Uuid::now_v7());
    let shipped = Uuid::now_v7();
    h.order(shipped, place(shipped, customer, account)).await;
    h.order(shipped, OrderCommand::MarkReserved).await;
    h.order(shipped, OrderCommand::MarkPaid).await;
    h.order(
        shipped,
        OrderCommand::MarkShipped {
            tracking_number: "TRK-1".into(),
        },
    )
    .await;
    let cancelled = Uuid::now_v7();
    h.order(cancelled, place(cancelled, customer, account))
        .await;
    h.order(
        cancelled,
        OrderCommand::RequestCancellation {
            reason: "changed my mind".into(),
        },
    )
    .await;
    h.order(
        cancelled,
        OrderCommand::Cancel {
            reason: CancellationReason::CustomerRequest,
        },
    )
    .await;

    let report = h
        .projector(Orders)
        .apply_batch(&h.all_events().await)
        .await
        .unwrap();
    assert_eq!(report.applied, 7);

    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT order_id, status, total, cancellation_reason, tracking_number, version \
         FROM read_models.orders ORDER BY order_id",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                shipped,
                "shipped".to_owned(),
                102_999,
                None,
                Some("TRK-1".to_owned()),
                4
            ),
            (
                cancelled,
                "cancelled".to_owned(),
                102_999,
                Some("customer_request".to_owned()),
                None,
                3
            ),
        ]
    );
    let lines: Vec<(i32, String, i64, i64)> = sqlx::query_as(
        "SELECT line_no, sku, quantity, unit_price FROM read_models.order_lines WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(shipped)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        lines,
        vec![
            (1, "LAPTOP-15".to_owned(), 1, 99_999),
            (2, "MOUSE-1".to_owned(), 2, 1_500)
        ]
    );
    h.drop().await;
}

#[tokio::test]
async fn the_same_events_delivered_twice_change_nothing() {
    let h = Harness::new().await;
    for _ in 0..3 {
        let (account, _) = h.open_account("EUR").await;
        h.deposit(account, 500).await;
        h.deposit(account, 700).await;
    }
    let events = h.all_events().await;
    let projector = h.projector(Accounts);
    let first = projector.apply_batch(&events).await.unwrap();
    assert_eq!((first.applied, first.duplicates), (9, 0));
    let once = h.snapshot().await;

    // Redelivered whole, and duplicated within one batch.
    let again = projector.apply_batch(&events).await.unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 9));
    let doubled: Vec<RecordedEvent> = events.iter().chain(events.iter()).cloned().collect();
    let twice = projector.apply_batch(&doubled).await.unwrap();
    assert_eq!((twice.applied, twice.duplicates), (0, 18));
    assert_eq!(h.snapshot().await, once);

    // A fresh database fed the duplicates in one batch converges to the same rows.
    let h2 = Harness::new().await;
    let report = h2.projector(Accounts).apply_batch(&doubled).await.unwrap();
    // Each stream's events are applied once; the second copies are duplicates.
    assert_eq!(report.applied, 9);
    assert_eq!(h2.snapshot().await, once);
    h2.drop().await;
    h.drop().await;
}

#[tokio::test]
async fn a_gap_is_filled_from_the_event_store_never_applied_out_of_order() {
    let h = Harness::new().await;
    let (account, _) = h.open_account("EUR").await;
    h.deposit(account, 100).await;
    h.deposit(account, 200).await;
    h.withdraw(account, 50).await.unwrap();
    let events = h.all_events().await;
    let projector = h.projector(Accounts);

    // Only version 1, then only version 4 arrives: 2 and 3 come from the store.
    projector.apply_batch(&events[..1]).await.unwrap();
    let report = projector.apply_batch(&events[3..]).await.unwrap();
    assert_eq!((report.applied, report.gap_filled), (3, 2));
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM read_models.account_transactions ORDER BY seq")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(seqs, vec![2, 3, 4]);
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM read_models.accounts")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(balance, 250);

    // Events in reverse order within one batch are applied in version order.
    let h2 = Harness::new().await;
    let reversed: Vec<RecordedEvent> = events.iter().rev().cloned().collect();
    let report = h2.projector(Accounts).apply_batch(&reversed).await.unwrap();
    assert_eq!((report.applied, report.gap_filled), (4, 0));
    assert_eq!(h2.snapshot().await, h.snapshot().await);
    h2.drop().await;
    h.drop().await;
}

/// Appends an event the decoder rejects (a `MoneyDeposited` without amount).
async fn append_poison(store: &EventStore, account: Uuid, version: u64) {
    let poison = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "MoneyDeposited".to_owned(),
        schema_version: 1,
        payload: serde_json::json!({ "amount": "lots" }),
    };
    store
        .append(
            &StreamId::new("account", account),
            ExpectedVersion::Exact(version),
            &[poison],
            &Metadata::default(),
        )
        .await
        .expect("append poison");
}

#[tokio::test]
async fn a_poison_event_parks_only_its_stream_until_it_is_unparked() {
    let h = Harness::new().await;
    let (bad, _) = h.open_account("EUR").await;
    let (good, _) = h.open_account("EUR").await;
    h.deposit(bad, 100).await;
    append_poison(&h.store, bad, 2).await;
    let bad_stream = format!("account-{bad}");
    let events = h.all_events().await;
    let projector = h.projector(Accounts).with_max_attempts(3);

    let report = projector.apply_batch(&events).await.unwrap();
    assert_eq!(report.parked, vec![bad_stream.clone()]);
    assert_eq!(report.applied, 3, "{report:?}"); // bad: opened + deposit; good: opened

    let parked: (i64, i32, String) = sqlx::query_as(
        "SELECT version, attempts, error FROM read_models.parked WHERE projection = 'accounts' AND stream_id = $1",
    )
    .bind(&bad_stream)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!((parked.0, parked.1), (3, 3));
    assert!(parked.2.contains("decode"), "{}", parked.2);

    // Other streams flow; later events of the parked stream wait.
    h.deposit(good, 40).await;
    // The poison is at version 3; the account's next event would be 4, but
    // the decider cannot load the stream either, so append a raw valid one.
    let later = NewEvent::from_domain(&domain::AccountEvent::MoneyDeposited {
        amount: amount_of(4),
        balance_after: domain::Money::new(105).unwrap(),
    });
    h.store
        .append(
            &StreamId::new("account", bad),
            ExpectedVersion::Exact(3),
            &[later],
            &Metadata::default(),
        )
        .await
        .unwrap();
    let all = h.all_events().await;
    let report = projector.apply_batch(&all).await.unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(report.waiting, 2, "{report:?}");
    let balances: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT account_id, balance, version FROM read_models.accounts ORDER BY account_id",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(balances, vec![(bad, 100, 2), (good, 40, 2)]);

    // Fixing the stored payload (an operator's upcaster, say) and unparking
    // applies the waiting events from the event store.
    sqlx::query("UPDATE event_store.events SET payload = $2 WHERE stream_id = $1 AND version = 3")
        .bind(&bad_stream)
        .bind(serde_json::json!({ "amount": 1, "balance_after": 101 }))
        .execute(&h.db.pool)
        .await
        .unwrap();
    // The stream is now 100 -> 101 -> 105.
    let report = projector.unpark(&bad_stream).await.unwrap();
    assert_eq!((report.applied, report.parked.len()), (2, 0));
    let (balance, version): (i64, i64) =
        sqlx::query_as("SELECT balance, version FROM read_models.accounts WHERE account_id = $1")
            .bind(bad)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!((balance, version), (105, 4));
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM read_models.parked")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0);
    h.drop().await;
}

#[tokio::test]
async fn set_based_and_event_by_event_application_leave_the_same_rows() {
    let h = Harness::new().await;
    let (account, customer) = h.open_account("EUR").await;
    h.deposit(account, 5_000).await;
    h.withdraw(account, 1_000).await.unwrap();
    let charged = Uuid::now_v7();
    h.exec::<BankAccount>(
        &account.to_string(),
        AccountCommand::Charge {
            order_id: order_id(charged),
            customer_id: CustomerId::new(customer),
            currency: currency_of("EUR"),
            amount: amount_of(700),
        },
    )
    .await;
    h.exec::<BankAccount>(
        &account.to_string(),
        AccountCommand::Refund {
            order_id: order_id(charged),
        },
    )
    .await;
    let (closed, _) = h.open_account("USD").await;
    h.exec::<BankAccount>(&closed.to_string(), AccountCommand::Close)
        .await;
    h.create_item("LAPTOP-15", 10).await;
    let o = order_id(Uuid::now_v7());
    h.inventory(
        "LAPTOP-15",
        InventoryCommand::Reserve {
            order_id: o,
            quantity: quantity_of(3),
        },
    )
    .await
    .unwrap();
    h.inventory(
        "LAPTOP-15",
        InventoryCommand::Restock {
            quantity: quantity_of(2),
        },
    )
    .await
    .unwrap();
    h.inventory("LAPTOP-15", InventoryCommand::Commit { order_id: o })
        .await
        .unwrap();
    let shipped = Uuid::now_v7();
    h.order(shipped, place(shipped, customer, account)).await;
    h.order(shipped, OrderCommand::MarkReserved).await;
    h.order(shipped, OrderCommand::MarkPaid).await;
    h.order(
        shipped,
        OrderCommand::MarkShipped {
            tracking_number: "TRK-9".into(),
        },
    )
    .await;
    let cancelled = Uuid::now_v7();
    h.order(cancelled, place(cancelled, customer, account))
        .await;
    h.order(
        cancelled,
        OrderCommand::RequestCancellation {
            reason: "no".into(),
        },
    )
    .await;
    h.order(
        cancelled,
        OrderCommand::Cancel {
            reason: CancellationReason::CustomerRequest,
        },
    )
    .await;

    let events = h.all_events().await;
    let projections: Vec<std::sync::Arc<dyn projections::Projection>> = projections::all();
    for projection in &projections {
        let report = projections::Projector::new(projection.clone(), h.store.clone())
            .apply_batch(&events)
            .await
            .unwrap();
        assert!(!report.one_by_one, "{report:?}");
    }
    let read_models = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .filter(|r| !r.starts_with("applied ") && !r.starts_with("read_models.parked"))
            .collect()
    };
    let set_based = read_models(h.snapshot().await);
    assert!(set_based.len() > 10, "{set_based:?}");

    sqlx::query(
        "TRUNCATE read_models.account_transactions, read_models.accounts, read_models.inventory, \
         read_models.order_lines, read_models.orders",
    )
    .execute(&h.db.pool)
    .await
    .unwrap();
    let mut tx = h.db.pool.begin().await.unwrap();
    // Projections name their tables unqualified; the caller picks the schema.
    sqlx::query("SET LOCAL search_path = read_models")
        .execute(&mut *tx)
        .await
        .unwrap();
    for event in &events {
        for projection in &projections {
            if projection
                .stream_types()
                .contains(&event.stream_type.as_str())
            {
                projection.apply(&mut tx, event).await.unwrap();
            }
        }
    }
    tx.commit().await.unwrap();
    assert_eq!(read_models(h.snapshot().await), set_based);
    h.drop().await;
}
