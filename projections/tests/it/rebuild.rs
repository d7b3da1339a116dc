//! Rebuilding projections from the event store into shadow tables and
//! swapping them in (`projections::rebuild`), and the operations around it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::{AccountCommand, BankAccount, InventoryCommand, OrderCommand};
use event_store::RecordedEvent;
use projections::rebuild::{self, RebuildOptions, RebuildReport};
use projections::{ApplyError, Error, Projection, Projector, Table};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Postgres, Transaction};
use test_support::eventually;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::randomised::{check_against_streams, run_workload, Workload};
use crate::sagas::three_sagas;
use test_support::fixtures::place;
use test_support::fixtures::{amount_of, quantity_of};
use test_support::pipeline::Pipeline;
use test_support::Harness;

const DEADLINE: Duration = Duration::from_secs(90);

/// Places orders on the workload's accounts and moves them on at random.
async fn orders_workload(h: &Harness, workload: &Workload, seed: u64, count: usize) -> Vec<Uuid> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut orders = Vec::new();
    for _ in 0..count {
        let (account, customer) = workload.accounts[rng.random_range(0..workload.accounts.len())];
        let order = Uuid::now_v7();
        h.order(order, place(order, customer, account)).await;
        let steps = rng.random_range(0..4);
        if steps >= 1 {
            h.order(order, OrderCommand::MarkReserved).await;
        }
        if steps >= 2 {
            h.order(order, OrderCommand::MarkPaid).await;
        }
        if steps >= 3 {
            h.order(
                order,
                OrderCommand::MarkShipped {
                    tracking_number: format!("TRK-{}", rng.random_range(0..1000)),
                },
            )
            .await;
        }
        orders.push(order);
    }
    orders
}

/// Applies every event of the store through the live projectors (as the
/// workers would), in batches.
async fn project_live(h: &Harness) {
    let events = h.all_events().await;
    for projection in projections::all() {
        let projector = Projector::new(projection, h.store.clone());
        for chunk in events.chunks(50) {
            projector.apply_batch(chunk).await.expect("apply");
        }
    }
}

/// The read models' indexes and constraints, by name and definition.
async fn schema_of(h: &Harness) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'read_models' \
         UNION ALL \
         SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
         FROM pg_constraint WHERE connamespace = 'read_models'::regnamespace \
         ORDER BY 1",
    )
    .fetch_all(&h.db.pool)
    .await
    .expect("schema")
}

/// [`Harness::snapshot`] and the sagas read model.
async fn snapshot_with_sagas(h: &Harness) -> Vec<String> {
    let mut rows = h.snapshot().await;
    let sagas: Vec<String> =
        sqlx::query_scalar("SELECT s::text FROM read_models.sagas AS s ORDER BY order_id")
            .fetch_all(&h.db.pool)
            .await
            .expect("sagas");
    rows.extend(sagas.into_iter().map(|s| format!("read_models.sagas {s}")));
    rows
}

/// The oid of every table of `read_models`, by name.
async fn table_oids(h: &Harness) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT relname::text, oid::int8 FROM pg_class \
         WHERE relnamespace = 'read_models'::regnamespace AND relkind = 'r' ORDER BY 1",
    )
    .fetch_all(&h.db.pool)
    .await
    .expect("oids")
}

async fn rebuild_quietly(
    h: &Harness,
    projection: Arc<dyn Projection>,
    options: &RebuildOptions,
) -> projections::Result<RebuildReport> {
    rebuild::rebuild(
        projection,
        &h.store,
        options,
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
}

async fn rebuild_all(h: &Harness, options: &RebuildOptions) {
    for projection in projections::all() {
        let name = projection.name();
        rebuild_quietly(h, projection, options)
            .await
            .unwrap_or_else(|e| panic!("rebuild of {name}: {e}"));
    }
}

async fn events_of(h: &Harness, types: &[&str]) -> u64 {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_store.events WHERE stream_type = ANY($1)")
            .bind(types)
            .fetch_one(&h.db.pool)
            .await
            .expect("count");
    n as u64
}

async fn leftovers(h: &Harness) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM read_models.rebuilds), \
                (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild\\_%')",
    )
    .fetch_one(&h.db.pool)
    .await
    .expect("leftovers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rebuild_yields_exactly_the_rows_of_the_live_projection() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let h = Arc::new(Harness::new().await);
    let workload = run_workload(&h, seed).await;
    orders_workload(&h, &workload, seed, 15).await;
    three_sagas(&h).await;
    project_live(&h).await;
    let live = snapshot_with_sagas(&h).await;
    let schema = schema_of(&h).await;
    let oids = table_oids(&h).await;
    for table in [
        "accounts",
        "account_transactions",
        "inventory",
        "orders",
        "order_lines",
        "sagas",
    ] {
        let prefix = format!("read_models.{table} ");
        assert!(
            live.iter().any(|row| row.starts_with(&prefix)),
            "no {table} rows (seed {seed})"
        );
    }

    // Small batches: many transactions, streams cut across batches.
    let options = RebuildOptions {
        batch_size: 17,
        ..RebuildOptions::default()
    };
    for projection in projections::all() {
        let expected = events_of(&h, projection.stream_types()).await;
        let name = projection.name();
        let mut reported = 0;
        let report = rebuild::rebuild(
            projection,
            &h.store,
            &options,
            &CancellationToken::new(),
            &mut |p| reported = reported.max(p.events_done),
        )
        .await
        .unwrap_or_else(|e| panic!("rebuild of {name}: {e}"));
        assert_eq!(report.events, expected, "{name}");
        assert_eq!(reported, expected, "{name}: progress reported");
        assert_eq!((report.resumed_from, report.parked), (0, 0), "{name}");
    }
    assert_eq!(snapshot_with_sagas(&h).await, live, "seed {seed}");
    assert_eq!(schema_of(&h).await, schema, "indexes and constraints kept");
    // Every read-model table was swapped for a new one; the bookkeeping
    // tables stayed.
    let swapped: Vec<(String, bool)> = table_oids(&h)
        .await
        .into_iter()
        .zip(&oids)
        .map(|((name, oid), (before_name, before))| {
            assert_eq!(&name, before_name);
            (name, oid != *before)
        })
        .collect();
    let expected_swapped = |name: &str| {
        projections::all()
            .iter()
            .any(|p| p.tables().iter().any(|t| t.name == name))
    };
    for (name, changed) in swapped {
        assert_eq!(changed, expected_swapped(&name), "{name}");
    }
    assert_eq!(leftovers(&h).await, (0, 0));
    // The status is the rebuild's.
    let status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projection, events_applied FROM read_models.projection_status ORDER BY 1",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let mut expected = Vec::new();
    for p in projections::all() {
        expected.push((
            p.name().to_owned(),
            events_of(&h, p.stream_types()).await as i64,
        ));
    }
    expected.sort();
    assert_eq!(status, expected);
    if let Ok(h) = Arc::try_unwrap(h) {
        h.drop().await;
    }
}

/// Commands keep flowing, through the relay, Kafka and the live workers,
/// while every projection is rebuilt; afterwards (the workers caught up) the
/// read models equal a fresh rebuild: nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_commands_flow_ends_equal_to_a_fresh_rebuild() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let h = Arc::new(Harness::new().await);
    let kafka = test_support::kafka::topics("projections-rebuild").await;
    let mut pipeline = Pipeline::new();
    pipeline.relay(&h.store, &kafka);
    pipeline.workers(&h.store, &kafka, Some(50));
    let workload = run_workload(&h, seed).await;
    orders_workload(&h, &workload, seed, 10).await;

    // Commands flow until told to stop, and at least `MIN_AFTER` of them
    // after the rebuilds.
    const MIN_AFTER: u64 = 30;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flow = tokio::spawn({
        let (h, stop, sent) = (h.clone(), stop.clone(), sent.clone());
        let (accounts, skus) = (workload.accounts.clone(), workload.skus.clone());
        async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            while !stop.load(Ordering::SeqCst) {
                let (account, customer) = accounts[rng.random_range(0..accounts.len())];
                let sku = &skus[rng.random_range(0..skus.len())];
                let _ = match rng.random_range(0..5) {
                    0 | 1 => {
                        h.try_exec::<BankAccount>(
                            &account.to_string(),
                            AccountCommand::Deposit {
                                amount: amount_of(rng.random_range(1..=500)),
                            },
                        )
                        .await
                    }
                    2 => {
                        h.try_exec::<BankAccount>(
                            &account.to_string(),
                            AccountCommand::Withdraw {
                                amount: amount_of(rng.random_range(1..=500)),
                            },
                        )
                        .await
                    }
                    3 => {
                        h.inventory(
                            sku,
                            InventoryCommand::Restock {
                                quantity: quantity_of(rng.random_range(1..=5)),
                            },
                        )
                        .await
                    }
                    _ => {
                        let order = Uuid::now_v7();
                        h.order(order, place(order, customer, account)).await;
                        Ok(h.order(order, OrderCommand::MarkReserved).await)
                    }
                };
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    let options = RebuildOptions {
        batch_size: 40,
        ..RebuildOptions::default()
    };
    let before = sent.load(Ordering::SeqCst);
    rebuild_all(&h, &options).await;
    let during = sent.load(Ordering::SeqCst) - before;
    let after_rebuild = sent.load(Ordering::SeqCst);
    let sent_ref = &sent;
    eventually(
        "commands after the rebuilds",
        DEADLINE,
        Duration::from_millis(20),
        move || async move {
            match sent_ref.load(Ordering::SeqCst) {
                n if n >= after_rebuild + MIN_AFTER => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    flow.await.expect("command flow");
    println!("{during} commands during the rebuilds");

    // The live workers apply what came after, on the new tables.
    let every: Vec<&str> = projections::all().iter().map(|p| p.name()).collect();
    h.caught_up(
        &every,
        &format!("every event applied after the rebuild (seed {seed})"),
        DEADLINE,
    )
    .await;
    pipeline.stop().await;
    let after_live = h.snapshot().await;
    check_against_streams(&h, &workload, seed).await;

    rebuild_all(
        &h,
        &RebuildOptions {
            restart: true,
            ..RebuildOptions::default()
        },
    )
    .await;
    assert_eq!(h.snapshot().await, after_live, "seed {seed}");
    if let Ok(h) = Arc::try_unwrap(h) {
        h.drop().await;
    }
}

/// GETs that must answer 200 with the entity, while rebuilds run and swap.
async fn read_everything(
    base: String,
    workload: Arc<Workload>,
    orders: Arc<Vec<Uuid>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let http = reqwest::Client::new();
    let mut requests = 0;
    let mut round = 0usize;
    loop {
        let done = stop.load(Ordering::SeqCst);
        let (account, customer) = workload.accounts[round % workload.accounts.len()];
        let sku = &workload.skus[round % workload.skus.len()];
        let order = orders[round % orders.len()];
        for (path, check) in [
            (format!("/accounts/{account}"), format!("{account}")),
            (
                format!("/accounts/{account}/transactions"),
                "\"items\":[{".to_owned(),
            ),
            (format!("/inventory/{sku}"), format!("\"sku\":\"{sku}\"")),
            ("/inventory".to_owned(), "\"items\":[{".to_owned()),
            (format!("/orders/{order}"), format!("{order}")),
            (
                format!("/orders?customer_id={customer}"),
                "\"items\":[".to_owned(),
            ),
        ] {
            let response = http
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("request");
            let status = response.status();
            let body = response.text().await.expect("body");
            assert_eq!(status, 200, "GET {path}: {body}");
            assert!(body.contains(&check), "GET {path}: {body}");
            requests += 1;
        }
        round += 1;
        if done {
            return requests;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_api_answers_throughout_a_rebuild() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let h = Arc::new(Harness::new().await);
    let workload = run_workload(&h, seed).await;
    for (account, _) in workload.accounts.iter() {
        h.deposit(*account, 1).await; // every ledger has an entry to read
    }
    let orders = orders_workload(&h, &workload, seed, 10).await;
    project_live(&h).await;
    let live = h.snapshot().await;

    let mut pipeline = Pipeline::new();
    let base = pipeline.query_api(&h.db.pool).await.base;
    let stop = Arc::new(AtomicBool::new(false));
    let (workload, orders) = (Arc::new(workload), Arc::new(orders));
    let reader = tokio::spawn(read_everything(
        base,
        workload.clone(),
        orders.clone(),
        stop.clone(),
    ));

    // Throttled, so that reads hit every phase, the swaps included.
    let options = RebuildOptions {
        batch_size: 10,
        max_events_per_second: Some(1_500),
        ..RebuildOptions::default()
    };
    rebuild_all(&h, &options).await;
    stop.store(true, Ordering::SeqCst);
    let requests = reader
        .await
        .expect("every read answered 200 with its entity");
    println!("{requests} requests during the rebuilds");
    assert!(requests >= 12, "{requests}");
    assert_eq!(h.snapshot().await, live);
    pipeline.stop().await;
    if let Ok(h) = Arc::try_unwrap(h) {
        h.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_refuses_a_second_one_and_resumes_where_it_stopped() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let h = Arc::new(Harness::new().await);
    run_workload(&h, seed).await;
    project_live(&h).await;
    let live = h.snapshot().await;
    let total = events_of(&h, &["account"]).await;

    let token = CancellationToken::new();
    let first = tokio::spawn({
        let (h, token) = (h.clone(), token.clone());
        async move {
            // Slow enough to be still running when cancelled, however long
            // the steps in between take on a loaded machine (the throttle's
            // sleep ends at the cancellation).
            let options = RebuildOptions {
                batch_size: 5,
                max_events_per_second: Some(10),
                ..RebuildOptions::default()
            };
            rebuild::rebuild(
                Arc::new(projections::Accounts),
                &h.store,
                &options,
                &token,
                &mut |_| {},
            )
            .await
        }
    });
    let pool = &h.db.pool;
    eventually(
        "the throttled rebuild to be under way",
        DEADLINE,
        Duration::from_millis(10),
        move || async move {
            let done = projections::status::rebuild_state(pool, "accounts")
                .await
                .unwrap()
                .map_or(0, |s| s.events_done);
            if done >= 10 && rebuild::is_running(pool, "accounts").await.unwrap() {
                Ok(())
            } else {
                Err(done)
            }
        },
    )
    .await;
    let second = rebuild_quietly(
        &h,
        Arc::new(projections::Accounts),
        &RebuildOptions::default(),
    )
    .await;
    assert!(
        matches!(second, Err(Error::RebuildRunning(ref n)) if n == "accounts"),
        "{second:?}"
    );
    let reset = projections::operations::reset(&projections::Accounts, &h.store).await;
    assert!(matches!(reset, Err(Error::RebuildRunning(_))), "{reset:?}");
    // Another projection can be rebuilt meanwhile.
    rebuild_quietly(
        &h,
        Arc::new(projections::Inventory),
        &RebuildOptions::default(),
    )
    .await
    .expect("inventory rebuild");

    token.cancel();
    let interrupted = first.await.expect("first rebuild task");
    let Err(Error::Interrupted { events_done, .. }) = interrupted else {
        panic!("expected an interruption, got {interrupted:?}");
    };
    assert!(
        events_done >= 10 && events_done < total,
        "{events_done} of {total}"
    );
    assert!(!rebuild::is_running(&h.db.pool, "accounts").await.unwrap());
    // Until the swap, the Query API's tables are the live ones.
    assert_eq!(h.snapshot().await, live);

    let report = rebuild_quietly(
        &h,
        Arc::new(projections::Accounts),
        &RebuildOptions::default(),
    )
    .await
    .expect("resumed rebuild");
    assert_eq!(report.resumed_from, events_done);
    assert_eq!(report.events, total);
    assert_eq!(h.snapshot().await, live, "seed {seed}");
    assert_eq!(leftovers(&h).await, (0, 0));
    if let Ok(h) = Arc::try_unwrap(h) {
        h.drop().await;
    }
}

#[tokio::test]
async fn rebuilding_one_stream_restores_its_rows_and_leaves_the_others() {
    let h = Harness::new().await;
    let (damaged, _) = h.open_account("EUR").await;
    h.deposit(damaged, 500).await;
    h.deposit(damaged, 250).await;
    let (other, _) = h.open_account("EUR").await;
    h.deposit(other, 100).await;
    project_live(&h).await;
    let live = h.snapshot().await;

    // Damage both accounts' rows and park the first.
    sqlx::raw_sql(&format!(
        "UPDATE read_models.accounts SET balance = 1; \
         DELETE FROM read_models.account_transactions WHERE seq = 2; \
         INSERT INTO read_models.parked (projection, stream_id, version, event_id, error, attempts) \
         VALUES ('accounts', 'account-{damaged}', 3, gen_random_uuid(), 'boom', 3)"
    ))
    .execute(&h.db.pool)
    .await
    .unwrap();
    let report = projections::operations::rebuild_stream(
        Arc::new(projections::Accounts),
        &h.store,
        &format!("account-{damaged}"),
        3,
    )
    .await
    .expect("rebuild one stream");
    assert_eq!(report.applied, 3);
    let rows = h.snapshot().await;
    let of = |rows: &[String], id: Uuid| -> Vec<String> {
        rows.iter()
            .filter(|r| r.contains(&id.to_string()))
            .cloned()
            .collect()
    };
    assert_eq!(of(&rows, damaged), of(&live, damaged));
    assert_ne!(
        of(&rows, other),
        of(&live, other),
        "the other account stays as it was"
    );

    let wrong = projections::operations::rebuild_stream(
        Arc::new(projections::Accounts),
        &h.store,
        "inventory-X",
        3,
    )
    .await;
    assert!(matches!(wrong, Err(Error::InvalidStreamId(_))), "{wrong:?}");
    h.drop().await;
}

#[tokio::test]
async fn reset_empties_one_projection_and_a_rebuild_refills_it() {
    let h = Harness::new().await;
    let (account, _) = h.open_account("EUR").await;
    h.deposit(account, 500).await;
    h.create_item("SKU-1", 5).await;
    project_live(&h).await;
    let live = h.snapshot().await;

    projections::operations::reset(&projections::Accounts, &h.store)
        .await
        .expect("reset");
    let rows = h.snapshot().await;
    assert!(
        rows.iter().all(|r| !r.contains("accounts")),
        "accounts rows left: {rows:?}"
    );
    assert!(rows.iter().any(|r| r.starts_with("read_models.inventory ")));
    rebuild_quietly(
        &h,
        Arc::new(projections::Accounts),
        &RebuildOptions::default(),
    )
    .await
    .expect("rebuild");
    assert_eq!(h.snapshot().await, live);
    h.drop().await;
}

/// The inventory projection, but its batches also touch
/// `read_models.inventory` by name: a rebuild must refuse it.
struct Qualified;

#[async_trait]
impl Projection for Qualified {
    fn name(&self) -> &'static str {
        "inventory"
    }
    fn stream_types(&self) -> &'static [&'static str] {
        projections::Inventory.stream_types()
    }
    fn tables(&self) -> &'static [Table] {
        projections::Inventory.tables()
    }
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        projections::Inventory.apply(tx, event).await
    }
    async fn apply_many(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &[&[&RecordedEvent]],
    ) -> Result<(), ApplyError> {
        sqlx::query("UPDATE read_models.inventory SET name = name")
            .execute(&mut **tx)
            .await?;
        projections::Inventory.apply_many(tx, streams).await
    }
}

#[tokio::test]
async fn a_projection_writing_the_live_tables_by_name_is_refused() {
    let h = Harness::new().await;
    h.create_item("SKU-1", 5).await;
    project_live(&h).await;
    let result = rebuild_quietly(&h, Arc::new(Qualified), &RebuildOptions::default()).await;
    assert!(
        matches!(&result, Err(Error::WritesLiveTables { table, .. }) if table == "inventory"),
        "{result:?}"
    );
    h.drop().await;
}

/// The accounts projection's lag as the Query API reports it.
async fn accounts_lag(h: &Harness) -> i64 {
    projections::status::all(&h.db.pool)
        .await
        .expect("projection views")
        .into_iter()
        .find(|v| v.name == "accounts")
        .expect("accounts view")
        .lag_events
}

#[tokio::test]
async fn after_a_rebuild_replayed_events_are_duplicates_and_later_ones_apply_once() {
    let h = Harness::new().await;
    let (a, _) = h.open_account("EUR").await;
    h.deposit(a, 500).await;
    let (b, _) = h.open_account("EUR").await;
    h.deposit(b, 100).await;
    h.deposit(b, 50).await;
    let accounts: Arc<dyn Projection> = Arc::new(projections::Accounts);
    rebuild_quietly(&h, accounts.clone(), &RebuildOptions::default())
        .await
        .expect("rebuild");
    // The replay is recorded as one checkpoint, not a row per stream.
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_models.applied WHERE projection = 'accounts'",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(rows, 0);
    let (stream_a, stream_b) = (format!("account-{a}"), format!("account-{b}"));
    for (stream, version) in [(&stream_a, 2), (&stream_b, 3)] {
        let applied = projections::applied_version(&h.db.pool, "accounts", stream)
            .await
            .unwrap();
        assert_eq!(applied, version, "{stream}");
    }
    assert_eq!(accounts_lag(&h).await, 0);
    let rebuilt = h.snapshot().await;

    // Kafka redelivers everything: all duplicates, nothing changes.
    let projector = Projector::new(accounts.clone(), h.store.clone());
    let report = projector.apply_batch(&h.all_events().await).await.unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 5), "{report:?}");
    assert_eq!(h.snapshot().await, rebuilt);

    // Later events: a's next one, and b's next two delivered without the
    // first of them (a gap, filled from the store).
    h.deposit(a, 1).await;
    h.deposit(b, 2).await;
    h.deposit(b, 3).await;
    assert_eq!(accounts_lag(&h).await, 3);
    let events = h.all_events().await;
    let later: Vec<&RecordedEvent> = events
        .iter()
        .filter(|e| {
            (e.stream_id == stream_a && e.version == 3)
                || (e.stream_id == stream_b && e.version == 5)
        })
        .collect();
    let report = projector.apply_batch(later.iter().copied()).await.unwrap();
    assert_eq!(
        (report.applied, report.gap_filled, report.duplicates),
        (3, 1, 0),
        "{report:?}"
    );
    // And once more, everything: duplicates.
    let report = projector.apply_batch(&events).await.unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 8), "{report:?}");
    assert_eq!(accounts_lag(&h).await, 0);
    let after = h.snapshot().await;

    // The same rows as a projection built live from nothing.
    projections::operations::reset(accounts.as_ref(), &h.store)
        .await
        .expect("reset");
    assert_eq!(accounts_lag(&h).await, 8);
    project_live(&h).await;
    assert_eq!(h.snapshot().await, after);

    // One stream rebuilt on its own, over a replayed checkpoint: its rows
    // come back whole, its version stays right, and nothing lags.
    rebuild_quietly(&h, accounts.clone(), &RebuildOptions::default())
        .await
        .expect("second rebuild");
    sqlx::query("DELETE FROM read_models.account_transactions WHERE account_id = $1")
        .bind(b)
        .execute(&h.db.pool)
        .await
        .unwrap();
    let report = projections::operations::rebuild_stream(accounts.clone(), &h.store, &stream_b, 3)
        .await
        .expect("rebuild one stream");
    assert_eq!(report.applied, 5);
    assert_eq!(h.snapshot().await, after);
    assert_eq!(accounts_lag(&h).await, 0);
    h.drop().await;
}

#[tokio::test]
async fn an_interrupted_rebuild_from_before_a_migration_asks_for_a_restart() {
    let h = Harness::new().await;
    let (account, _) = h.open_account("EUR").await;
    h.deposit(account, 500).await;
    let accounts: Arc<dyn Projection> = Arc::new(projections::Accounts);
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let interrupted = rebuild::rebuild(
        accounts.clone(),
        &h.store,
        &RebuildOptions::default(),
        &cancelled,
        &mut |_| {},
    )
    .await;
    assert!(
        matches!(interrupted, Err(Error::Interrupted { .. })),
        "{interrupted:?}"
    );
    // As if the shadow had been made before migration 0007 added the column.
    sqlx::query("ALTER TABLE rebuild_accounts.applied DROP COLUMN base")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let resumed = rebuild_quietly(&h, accounts.clone(), &RebuildOptions::default()).await;
    match resumed {
        Err(error @ Error::Unsupported { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains("(applied)") && message.contains("--restart"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let restarted = rebuild_quietly(
        &h,
        accounts,
        &RebuildOptions {
            restart: true,
            ..RebuildOptions::default()
        },
    )
    .await
    .expect("rebuild with --restart");
    assert_eq!(restarted.events, 2);
    h.drop().await;
}

#[tokio::test]
async fn grants_and_owners_of_the_read_model_tables_survive_a_rebuild() {
    let h = Harness::new().await;
    let (account, _) = h.open_account("EUR").await;
    h.deposit(account, 500).await;
    project_live(&h).await;
    // Roles are the server's, not the test database's: names of their own.
    let role = format!("purser_reader_{}", Uuid::now_v7().simple());
    let owner = format!("purser_owner_{}", Uuid::now_v7().simple());
    sqlx::raw_sql(&format!(
        "CREATE ROLE {owner}; \
         ALTER TABLE read_models.account_transactions OWNER TO {owner}; \
         CREATE ROLE {role}; \
         GRANT USAGE ON SCHEMA read_models TO {role}; \
         GRANT SELECT ON read_models.accounts, read_models.account_transactions TO {role}; \
         GRANT UPDATE ON read_models.accounts TO {role} WITH GRANT OPTION"
    ))
    .execute(&h.db.pool)
    .await
    .unwrap();
    let privileges = || async {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT table_name::text, privilege_type::text, is_grantable = 'YES' \
             FROM information_schema.role_table_grants \
             WHERE grantee = $1 ORDER BY 1, 2",
        )
        .bind(&role)
        .fetch_all(&h.db.pool)
        .await
        .unwrap();
        rows
    };
    let before = privileges().await;
    assert_eq!(before.len(), 3, "{before:?}");
    let oids = table_oids(&h).await;

    rebuild_quietly(
        &h,
        Arc::new(projections::Accounts),
        &RebuildOptions::default(),
    )
    .await
    .expect("rebuild");
    assert_ne!(table_oids(&h).await, oids, "the tables were swapped");
    assert_eq!(privileges().await, before);
    let owners: Vec<(String, String)> = sqlx::query_as(
        "SELECT relname::text, pg_get_userbyid(relowner)::text FROM pg_class \
         WHERE oid IN ('read_models.accounts'::regclass, 'read_models.account_transactions'::regclass) \
         ORDER BY 1",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    let me: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(
        owners,
        [
            ("account_transactions".to_owned(), owner.clone()),
            ("accounts".to_owned(), me)
        ]
    );

    // Their privileges and tables are all in this database: then they go.
    sqlx::raw_sql(&format!(
        "REVOKE ALL ON ALL TABLES IN SCHEMA read_models FROM {role}; \
         REVOKE ALL ON SCHEMA read_models FROM {role}; \
         DROP ROLE {role}; \
         REASSIGN OWNED BY {owner} TO CURRENT_USER; \
         DROP OWNED BY {owner}; \
         DROP ROLE {owner}"
    ))
    .execute(&h.db.pool)
    .await
    .unwrap();
    h.drop().await;
}
