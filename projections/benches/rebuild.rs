//! Rebuild rate of each projection (events/s), next to a raw batched INSERT
//! of the same read-model rows in the same run.
//!
//!     cargo bench -p projections --bench rebuild
//!
//! For each projection (`BENCH_PROJECTIONS`, comma separated, default all),
//! in a fresh database of its own: `BENCH_EVENTS` (default 1 000 000) events
//! of its stream type are written straight into the event store with one
//! `COPY` (streams interleaved round by round, as concurrent commands leave
//! them); `projections::rebuild::rebuild` then replays them into the shadow
//! schema and swaps it in, exactly as `purser projections rebuild` does, in
//! windows of `BENCH_BATCH` events (default 100 000, the CLI's default). The
//! baseline reads back the rows the rebuild produced and inserts them into
//! copies of the tables (same columns, checks and indexes), `BENCH_BATCH`
//! rows per multi-row `INSERT ... SELECT FROM unnest(...)`, one transaction
//! per batch.
//!
//! `read s` is the time the same events take to read alone (the rebuild's
//! reader, no apply), the floor of a rebuild. The ratio is raw time /
//! rebuild time: the share of the speed of writing the finished read model
//! outright that the rebuild reaches, replaying the whole history to get
//! there.

use std::time::{Duration, Instant};
use test_support::env_or;

use domain::{
    AccountEvent, AccountId, Amount, CountryCode, Currency, CustomerId, InventoryEvent, Money,
    OrderEvent, OrderId, OrderLine, Price, Quantity, SagaEvent, SagaOrder, ShippingAddress, Sku,
    Step, UnitPrice,
};
use event_store::{EventStore, NewEvent};
use projections::rebuild::{RebuildOptions, RebuildReport};
use projections::Projection;
use sqlx::PgPool;
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let events = env_or("BENCH_EVENTS", 1_000_000);
    let batch = env_or("BENCH_BATCH", projections::rebuild::DEFAULT_BATCH_SIZE).max(1);
    let selected: Vec<String> = std::env::var("BENCH_PROJECTIONS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    println!("projection rebuild: {events} events per projection, batches of {batch}");
    println!(
        "  {:<10} {:>9} {:>8} {:>10} {:>12} {:>7} | {:>9} {:>10} {:>14} | {:>5}",
        "projection",
        "events",
        "streams",
        "rebuild s",
        "events/s",
        "read s",
        "rows",
        "raw s",
        "raw rows/s",
        "ratio"
    );
    for projection in projections::all() {
        let name = projection.name();
        if !selected.is_empty() && !selected.iter().any(|s| s == name) {
            continue;
        }
        let Some(generator) = generator(name) else {
            println!("  {name:<10} (no generator for this projection's events)");
            continue;
        };
        let db = TestDatabase::create().await;
        let store = EventStore::new(db.pool.clone());
        let started = Instant::now();
        let (written, streams) =
            seed(&db.pool, projection.stream_types()[0], generator, events).await;
        eprintln!(
            "  {name}: {written} events seeded in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let options = RebuildOptions {
            batch_size: batch,
            ..RebuildOptions::default()
        };
        let started = Instant::now();
        let report: RebuildReport = projections::rebuild::rebuild(
            projection.clone(),
            &store,
            &options,
            &CancellationToken::new(),
            &mut |_| {},
        )
        .await
        .expect("rebuild");
        let rebuild_time = started.elapsed();
        assert_eq!(report.events, written as u64, "{name}: {report:?}");
        assert_eq!(report.parked, 0, "{name}: events parked");

        let read_time = read_only(&store, projection.stream_types(), batch).await;
        let (rows, raw_time) = raw_insert(&db.pool, projection.as_ref(), batch).await;
        println!(
            "  {name:<10} {written:>9} {streams:>8} {:>10.1} {:>12.0} {:>7.1} | {rows:>9} {:>10.1} {:>14.0} | {:>5.2}",
            rebuild_time.as_secs_f64(),
            written as f64 / rebuild_time.as_secs_f64(),
            read_time.as_secs_f64(),
            raw_time.as_secs_f64(),
            rows as f64 / raw_time.as_secs_f64(),
            raw_time.as_secs_f64() / rebuild_time.as_secs_f64(),
        );
        db.drop().await;
    }
}

/// The events of stream number `stream`, in version order.
type Generator = fn(usize) -> Vec<NewEvent>;

fn generator(projection: &str) -> Option<Generator> {
    match projection {
        "accounts" => Some(account_events),
        "inventory" => Some(inventory_events),
        "orders" => Some(order_events),
        "sagas" => Some(saga_events),
        _ => None,
    }
}

/// A stream's id (without its type) from its number.
fn stream_key(stream_type: &str, stream: usize) -> String {
    match stream_type {
        "inventory" => format!("SKU-{stream}"),
        _ => {
            Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | stream as u128).to_string()
        }
    }
}

fn uuid_of(stream: usize) -> Uuid {
    Uuid::parse_str(&stream_key("account", stream)).expect("uuid")
}

/// An open, then nine deposits and withdrawals.
fn account_events(stream: usize) -> Vec<NewEvent> {
    let mut events: Vec<NewEvent> = vec![NewEvent::from_domain(&AccountEvent::AccountOpened {
        account_id: AccountId::new(uuid_of(stream)),
        customer_id: CustomerId::new(Uuid::from_u128(stream as u128)),
        currency: Currency::parse("EUR").expect("currency"),
    })];
    let mut balance = 0;
    for n in 1..10 {
        let event = if n % 3 == 0 {
            balance -= 50;
            AccountEvent::MoneyWithdrawn {
                amount: Amount::new(50).expect("amount"),
                balance_after: Money::new(balance).expect("money"),
            }
        } else {
            balance += 100;
            AccountEvent::MoneyDeposited {
                amount: Amount::new(100).expect("amount"),
                balance_after: Money::new(balance).expect("money"),
            }
        };
        events.push(NewEvent::from_domain(&event));
    }
    events
}

/// Created, reserved, restocked, shipped (the reservation committed).
fn inventory_events(stream: usize) -> Vec<NewEvent> {
    let order = OrderId::new(Uuid::from_u128(stream as u128));
    let q = |n| Quantity::new(n).expect("quantity");
    vec![
        NewEvent::from_domain(&InventoryEvent::ItemCreated {
            sku: Sku::parse(&stream_key("inventory", stream)).expect("sku"),
            name: format!("Item {stream}"),
            quantity: q(10),
            price: Some(Price::new(
                UnitPrice::new(1_000).expect("price"),
                Currency::EUR,
            )),
        }),
        NewEvent::from_domain(&InventoryEvent::StockReserved {
            order_id: order,
            quantity: q(2),
        }),
        NewEvent::from_domain(&InventoryEvent::ItemRestocked { quantity: q(5) }),
        NewEvent::from_domain(&InventoryEvent::ReservationCommitted {
            order_id: order,
            quantity: q(2),
        }),
    ]
}

fn order_of(stream: usize) -> SagaOrder {
    SagaOrder {
        order_id: OrderId::new(uuid_of(stream)),
        customer_id: CustomerId::new(Uuid::from_u128(stream as u128)),
        account_id: AccountId::new(Uuid::from_u128(stream as u128 + 1)),
        currency: Currency::parse("EUR").expect("currency"),
        lines: vec![
            OrderLine::new(
                Sku::parse("LAPTOP-15").expect("sku"),
                Quantity::new(1).expect("quantity"),
                Money::new(99_999).expect("price"),
            ),
            OrderLine::new(
                Sku::parse("MOUSE-1").expect("sku"),
                Quantity::new(2).expect("quantity"),
                Money::new(1_500).expect("price"),
            ),
        ],
        total: Money::new(102_999).expect("total"),
        shipping_address: ShippingAddress::new(
            "Ana".into(),
            "Calle Mayor 1".into(),
            None,
            "Madrid".into(),
            "28013".into(),
            CountryCode::parse("ES").expect("country"),
        )
        .expect("address"),
    }
}

/// Placed (two lines), reserved, paid, shipped.
fn order_events(stream: usize) -> Vec<NewEvent> {
    let o = order_of(stream);
    vec![
        NewEvent::from_domain(&OrderEvent::OrderPlaced {
            order_id: o.order_id,
            customer_id: o.customer_id,
            account_id: o.account_id,
            currency: o.currency,
            lines: o.lines,
            total: o.total,
            shipping_address: o.shipping_address,
        }),
        NewEvent::from_domain(&OrderEvent::OrderReserved),
        NewEvent::from_domain(&OrderEvent::OrderPaid),
        NewEvent::from_domain(&OrderEvent::OrderShipped {
            tracking_number: format!("TRK-{stream}"),
        }),
    ]
}

/// A saga that goes through: started, each forward step started and
/// succeeded, completed.
fn saga_events(stream: usize) -> Vec<NewEvent> {
    let order = order_of(stream);
    let steps = order.forward_steps();
    let mut events: Vec<NewEvent> = vec![NewEvent::from_domain(&SagaEvent::SagaStarted {
        saga_id: Uuid::from_u128(stream as u128 + 7),
        order,
    })];
    for step in steps {
        let tracking_number = matches!(step, Step::Ship).then(|| format!("TRK-{stream}"));
        events.push(NewEvent::from_domain(&SagaEvent::StepStarted {
            step: step.clone(),
            attempt: 1,
            deadline_ms: 1_000_000,
        }));
        events.push(NewEvent::from_domain(&SagaEvent::StepSucceeded {
            step,
            tracking_number,
        }));
    }
    events.push(NewEvent::from_domain(&SagaEvent::SagaCompleted));
    events
}

/// Writes about `target` events (whole streams) with one `COPY`, round by
/// round: every stream's first event, then every stream's second... Returns
/// (events, streams).
async fn seed(
    pool: &PgPool,
    stream_type: &str,
    generate: Generator,
    target: usize,
) -> (usize, usize) {
    let per_stream = generate(0).len();
    let streams = target.div_ceil(per_stream);
    let mut conn = pool.acquire().await.expect("connection");
    let mut copy = conn
        .copy_in_raw(
            "COPY event_store.events \
                (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
             FROM STDIN WITH (FORMAT csv)",
        )
        .await
        .expect("copy");
    // Generated a chunk of streams at a time, interleaved within the chunk.
    const CHUNK: usize = 20_000;
    let mut written = 0;
    let mut buffer = String::new();
    for first in (0..streams).step_by(CHUNK) {
        let chunk: Vec<(String, Vec<NewEvent>)> = (first..(first + CHUNK).min(streams))
            .map(|s| {
                (
                    format!("{stream_type}-{}", stream_key(stream_type, s)),
                    generate(s),
                )
            })
            .collect();
        for version in 0..per_stream {
            for (stream_id, events) in &chunk {
                let event = &events[version];
                let payload = event.payload.to_string().replace('"', "\"\"");
                buffer.push_str(&format!(
                    "{},{stream_type},{stream_id},{},{},{},\"{payload}\"\n",
                    event.event_id,
                    version + 1,
                    event.event_type,
                    event.schema_version,
                ));
                written += 1;
            }
            if buffer.len() > 4 << 20 {
                copy.send(buffer.as_bytes()).await.expect("copy send");
                buffer.clear();
            }
        }
    }
    copy.send(buffer.as_bytes()).await.expect("copy send");
    copy.finish().await.expect("copy finish");
    sqlx::query("ANALYZE event_store.events")
        .execute(pool)
        .await
        .expect("analyze");
    (written, streams)
}

/// How long reading the events alone takes (the rebuild's reader, no apply).
async fn read_only(store: &EventStore, types: &[&str], batch: usize) -> Duration {
    let started = Instant::now();
    let mut after = event_store::Checkpoint::START;
    loop {
        let events = store
            .read_all_of_types(after, types, batch as i64)
            .await
            .expect("read");
        match events.last() {
            Some(last) => after = last.checkpoint(),
            None => return started.elapsed(),
        }
    }
}

/// Reads back every row of the projection's tables and inserts them into
/// copies, `batch` rows per INSERT and transaction. Returns (rows, time).
async fn raw_insert(pool: &PgPool, projection: &dyn Projection, batch: usize) -> (usize, Duration) {
    let mut tables = Vec::new();
    for table in projection.tables() {
        let raw = format!("raw_{}", table.name);
        sqlx::query(&format!(
            "CREATE TABLE public.{raw} (LIKE read_models.{} INCLUDING ALL)",
            table.name
        ))
        .execute(pool)
        .await
        .expect("raw table");
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT t::text FROM read_models.{} AS t",
            table.name
        ))
        .fetch_all(pool)
        .await
        .expect("rows");
        tables.push((raw, rows));
    }
    let total = tables.iter().map(|(_, rows)| rows.len()).sum();
    let started = Instant::now();
    for (raw, rows) in &tables {
        let sql = format!(
            "INSERT INTO public.{raw} SELECT (r::public.{raw}).* FROM unnest($1::text[]) AS r"
        );
        for chunk in rows.chunks(batch) {
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query(&sql)
                .bind(chunk)
                .execute(&mut *tx)
                .await
                .expect("raw insert");
            tx.commit().await.expect("commit");
        }
    }
    (total, started.elapsed())
}
