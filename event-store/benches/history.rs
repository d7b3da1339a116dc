//! The cost of a command on a long-lived stream next to a fresh one, in the
//! same run: what a hot SKU in a flash sale pays after months of orders.
//!
//! ```text
//! cargo bench -p event-store --bench history
//! # knobs: BENCH_HISTORY (events on the long stream, 100000),
//! #        BENCH_COMMANDS (commands per side per round, 500), BENCH_ROUNDS (4),
//! #        BENCH_SNAPSHOT_EVERY (the Command API's default, 100)
//! ```
//!
//! Two inventory items on a fresh database (on the server at
//! `DATABASE_URL`, dropped at the end): `HOT`, whose stream holds
//! `BENCH_HISTORY` events of orders reserved and committed (appended in
//! batches of 1,000, each decided by the domain as the saga would have), and
//! `FRESH`, created just before. Each round sends `BENCH_COMMANDS` reserve
//! and release pairs to one item, then to the other (alternating which goes
//! first), one command at a time through `Repository::execute` with
//! snapshots every `BENCH_SNAPSHOT_EVERY` events, so every command loads its
//! item from the store (the last snapshot and the events after it), decides
//! and appends: the Command API's path when its in-process state is cold
//! (another instance wrote last, or the item was evicted). The figure: each
//! side's median and p99 latency per command, and the ratio of the medians.

use std::time::{Duration, Instant};

use domain::{Aggregate, Inventory, InventoryCommand, OrderId};
use event_store::{
    EventStore, ExecuteOptions, Executed, ExpectedVersion, Metadata, NewEvent, Repository, StreamId,
};
use test_support::fixtures::{catalog_price, quantity_of, sku_of};
use test_support::{env_or, TestDatabase};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn create(sku: &str) -> InventoryCommand {
    InventoryCommand::Create {
        sku: sku_of(sku),
        name: sku.to_owned(),
        quantity: quantity_of(1_000_000_000),
        price: catalog_price(sku),
    }
}

/// Appends `events` of history to `sku`: orders of one unit reserved and
/// committed, each pair decided by the domain on the folded state.
async fn grow(store: &EventStore, sku: &str, events: u64) -> Result<(), BoxError> {
    let stream = StreamId::of::<Inventory>(sku);
    let mut state = Inventory::initial();
    let mut version = 0u64;
    let mut pending: Vec<NewEvent> = Vec::new();
    let decide = |state: &mut <Inventory as Aggregate>::State,
                  pending: &mut Vec<NewEvent>,
                  command: InventoryCommand| {
        let decided = Inventory::decide(state, &command).expect("history is valid");
        for event in &decided {
            *state = Inventory::evolve(state.clone(), event);
            pending.push(NewEvent::from_domain(event));
        }
    };
    decide(&mut state, &mut pending, create(sku));
    while version + (pending.len() as u64) < events {
        let order_id = OrderId::new(Uuid::now_v7());
        decide(
            &mut state,
            &mut pending,
            InventoryCommand::Reserve {
                order_id,
                quantity: quantity_of(1),
            },
        );
        decide(
            &mut state,
            &mut pending,
            InventoryCommand::Commit { order_id },
        );
        if pending.len() >= 1_000 {
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            store
                .append(&stream, expected, &pending, &Metadata::default())
                .await?;
            version += pending.len() as u64;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        store
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                &pending,
                &Metadata::default(),
            )
            .await?;
    }
    Ok(())
}

/// One command, carried out; its latency.
async fn command(
    items: &Repository<Inventory>,
    sku: &str,
    command: &InventoryCommand,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    match items
        .execute(sku, command, ExecuteOptions::default(), |_| ())
        .await?
    {
        Executed::Done(_) => Ok(started.elapsed()),
        _ => Err(format!("{command:?} on {sku} was not carried out").into()),
    }
}

/// `pairs` reserve-and-release pairs on `sku`, one command at a time.
async fn round(
    items: &Repository<Inventory>,
    sku: &str,
    pairs: u64,
) -> Result<Vec<Duration>, BoxError> {
    let mut latencies = Vec::with_capacity(2 * pairs as usize);
    for _ in 0..pairs {
        let order_id = OrderId::new(Uuid::now_v7());
        let reserve = InventoryCommand::Reserve {
            order_id,
            quantity: quantity_of(1),
        };
        latencies.push(command(items, sku, &reserve).await?);
        latencies.push(command(items, sku, &InventoryCommand::Release { order_id }).await?);
    }
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let history = env_or("BENCH_HISTORY", 100_000u64);
    let pairs = env_or("BENCH_COMMANDS", 500u64) / 2;
    let rounds = env_or("BENCH_ROUNDS", 4u64).max(1);
    let every = env_or("BENCH_SNAPSHOT_EVERY", 100u64);

    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let built = Instant::now();
    grow(&store, "HOT", history).await?;
    let items = Repository::<Inventory>::new(store.clone()).with_snapshots(every);
    // The first command on the long stream folds it whole and snapshots it,
    // as the first command after a deployment would.
    let first = command(
        &items,
        "HOT",
        &InventoryCommand::Restock {
            quantity: quantity_of(1),
        },
    )
    .await?;
    command(&items, "FRESH", &create("FRESH")).await?;
    println!(
        "history: HOT holds {history} events (built in {:.1} s; its first command, \
         which folds them all and snapshots, took {:.1} ms); FRESH is new. \
         {rounds} rounds of {} reserve/release commands per item, alternating, \
         snapshots every {every} events",
        built.elapsed().as_secs_f64(),
        first.as_secs_f64() * 1000.0,
        2 * pairs,
    );

    let (mut hot, mut fresh) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            ["HOT", "FRESH"]
        } else {
            ["FRESH", "HOT"]
        };
        for sku in order {
            let latencies = round(&items, sku, pairs).await?;
            let mut sorted = latencies.clone();
            sorted.sort_unstable();
            println!(
                "  round {r} {sku:<5} p50 {:>6.2} ms  p99 {:>6.2} ms",
                percentile(&sorted, 0.50),
                percentile(&sorted, 0.99)
            );
            if sku == "HOT" {
                hot.extend(latencies);
            } else {
                fresh.extend(latencies);
            }
        }
    }
    hot.sort_unstable();
    fresh.sort_unstable();
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_store.events WHERE stream_id = $1")
            .bind(StreamId::of::<Inventory>("HOT").as_str())
            .fetch_one(&db.pool)
            .await?;
    println!(
        "{:<28} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "commands"
    );
    for (name, sorted) in [
        (format!("HOT ({events} events)"), &hot),
        ("FRESH (baseline)".to_owned(), &fresh),
    ] {
        println!(
            "{name:<28} {:>9.2} {:>9.2} {:>9}",
            percentile(sorted, 0.50),
            percentile(sorted, 0.99),
            sorted.len()
        );
    }
    println!(
        "ratio: HOT/FRESH median latency {:.2}x, p99 {:.2}x",
        percentile(&hot, 0.50) / percentile(&fresh, 0.50),
        percentile(&hot, 0.99) / percentile(&fresh, 0.99)
    );
    db.drop().await;
    Ok(())
}
