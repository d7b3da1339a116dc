//! `sagas` projection apply rate (events/s), next to a bare batched upsert
//! of the same rows in the same run (the physical limit for writing them).
//!
//!     cargo bench -p projections --bench sagas
//!
//! `BENCH_SAGAS` (default 300) sagas of two lines each are decided in memory
//! by the domain's planner (7 in 10 ship after one transient carrier failure,
//! 2 in 10 are compensated for a missing second line, 1 in 10 runs out of
//! carrier attempts) and appended to a fresh database one event per saga per
//! round, so the global order interleaves the streams. The projection applies
//! them in batches of `BENCH_BATCH` (default 500, the worker's default), one
//! transaction per batch. The baseline upserts, per batch, the final row of
//! every saga the batch touches with one multi-row `INSERT ... ON CONFLICT`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::env_or;

use chrono::{DateTime, Utc};
use domain::{
    next_action, AccountId, Action, Aggregate, CountryCode, Currency, CustomerId, FulfilmentSaga,
    Money, OrderId, OrderLine, Quantity, SagaCommand, SagaEvent, SagaOrder, SagaState,
    ShippingAddress, Situation, Sku, Step,
};
use event_store::{
    Checkpoint, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId,
};
use projections::{Projector, Sagas};
use sqlx::PgPool;
use test_support::TestDatabase;
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let sagas = env_or("BENCH_SAGAS", 300);
    let batch = env_or("BENCH_BATCH", 500).max(1);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);

    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let events = seed(&store, sagas).await;
    println!(
        "sagas projection apply: {} events ({sagas} sagas), batches of {batch}, {rounds} rounds",
        events.len()
    );
    sqlx::raw_sql("CREATE TABLE raw_sagas (LIKE read_models.sagas INCLUDING ALL)")
        .execute(&db.pool)
        .await
        .expect("baseline table");

    let projector = Projector::new(Arc::new(Sagas), store.clone());
    let (mut projected, mut raw) = (Vec::new(), Vec::new());
    let mut rows = Vec::new();
    for _ in 0..rounds {
        reset(&db.pool).await;
        let started = Instant::now();
        for chunk in events.chunks(batch) {
            let report = projector.apply_batch(chunk).await.expect("apply");
            assert!(
                !report.one_by_one && report.applied == chunk.len() as u64,
                "{report:?}"
            );
        }
        projected.push(rate(events.len(), started.elapsed()));
        if rows.is_empty() {
            rows = final_rows(&db.pool).await;
            assert_eq!(rows.len(), sagas);
        }

        let started = Instant::now();
        for chunk in events.chunks(batch) {
            raw_upsert(&db.pool, chunk, &rows).await;
        }
        raw.push(rate(events.len(), started.elapsed()));
    }
    let raw_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_sagas")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(raw_rows as usize, sagas);

    let (projected, raw) = (median(projected), median(raw));
    println!("  projection (sagas, apply_batch)      {projected:>9.0} events/s");
    println!("  bare batched upsert of the same rows {raw:>9.0} events/s");
    println!(
        "  ratio projection / bare              {:>9.2}",
        projected / raw
    );
    db.drop().await;
}

/// The events of one saga, decided in memory by the domain's planner.
fn saga_events(order_id: Uuid, kind: usize) -> Vec<SagaEvent> {
    let line = |sku: &str| {
        OrderLine::new(
            Sku::parse(sku).expect("sku"),
            Quantity::new(1).expect("quantity"),
            Money::new(1_000).expect("price"),
        )
    };
    let order = SagaOrder {
        order_id: OrderId::new(order_id),
        customer_id: CustomerId::new(Uuid::now_v7()),
        account_id: AccountId::new(Uuid::now_v7()),
        currency: Currency::parse("EUR").expect("currency"),
        lines: vec![line("A"), line("B")],
        total: Money::new(2_000).expect("total"),
        shipping_address: ShippingAddress::new(
            "Ana".into(),
            "Calle Mayor 1".into(),
            None,
            "Madrid".into(),
            "28013".into(),
            CountryCode::parse("ES").expect("country"),
        )
        .expect("address"),
    };
    let situation = Situation {
        now_ms: 1_000_000,
        cancellation_requested: false,
        max_attempts: 3,
    };
    let mut state = SagaState::default();
    let mut events = Vec::new();
    let mut run = |state: &mut SagaState, command: SagaCommand| {
        let decided = FulfilmentSaga::decide(state, &command).expect("accepted");
        *state = FulfilmentSaga::fold(std::mem::take(state), &decided);
        events.extend(decided);
    };
    run(
        &mut state,
        SagaCommand::Start {
            saga_id: Uuid::now_v7(),
            order,
        },
    );
    loop {
        let command = match next_action(&state, &situation) {
            Action::Attempt { step, attempt } => {
                run(
                    &mut state,
                    SagaCommand::StartStep {
                        step: step.clone(),
                        attempt,
                        deadline_ms: situation.now_ms + 60_000,
                    },
                );
                let fails = step == Step::Ship && (kind == 2 || attempt == 1);
                let refused = kind == 1 && step.sku().is_some_and(|s| s.as_str() == "B");
                if fails {
                    SagaCommand::FailStep {
                        step,
                        attempt,
                        error: domain::step_errors::TIMEOUT.to_owned(),
                        retry_at_ms: 0,
                    }
                } else if refused && matches!(step, Step::ReserveStock { .. }) {
                    SagaCommand::RefuseStep {
                        step,
                        code: "insufficient_stock".to_owned(),
                        error: "refused".to_owned(),
                    }
                } else {
                    SagaCommand::SucceedStep {
                        tracking_number: (step == Step::Ship).then(|| "TRK-1".to_owned()),
                        step,
                    }
                }
            }
            Action::BeginCompensation(reason) => SagaCommand::BeginCompensation { reason },
            Action::Complete => SagaCommand::Complete,
            Action::FinishCompensation => SagaCommand::FinishCompensation,
            Action::NeedsAttention { step, error } => SagaCommand::NeedAttention { step, error },
            Action::Idle | Action::Done => return events,
            other => panic!("the simulated saga never waits: {other:?}"),
        };
        run(&mut state, command);
    }
}

/// Appends every saga's events, one event per saga per round.
async fn seed(store: &EventStore, sagas: usize) -> Vec<RecordedEvent> {
    let streams: Vec<(Uuid, Vec<SagaEvent>)> = (0..sagas)
        .map(|i| {
            let id = Uuid::now_v7();
            let kind = match i % 10 {
                0..=6 => 0,
                7 | 8 => 1,
                _ => 2,
            };
            (id, saga_events(id, kind))
        })
        .collect();
    let total: usize = streams.iter().map(|(_, events)| events.len()).sum();
    let longest = streams.iter().map(|(_, e)| e.len()).max().unwrap_or(0);
    for n in 0..longest {
        for (id, events) in &streams {
            let Some(event) = events.get(n) else {
                continue;
            };
            store
                .append(
                    &StreamId::of::<FulfilmentSaga>(id),
                    ExpectedVersion::Exact(n as u64),
                    &[NewEvent::from_domain(event)],
                    &Metadata::default(),
                )
                .await
                .expect("append");
        }
    }
    // The gap-safe read holds events back while older transactions run.
    test_support::eventually(
        "read_all to return every event",
        Duration::from_secs(60),
        Duration::from_millis(20),
        move || async move {
            let all = store
                .read_all(Checkpoint::START, i64::MAX)
                .await
                .expect("read_all");
            if all.len() >= total {
                Ok(all)
            } else {
                Err(all.len())
            }
        },
    )
    .await
}

async fn reset(pool: &PgPool) {
    sqlx::query(
        "TRUNCATE read_models.sagas, read_models.applied, read_models.projection_status, raw_sagas",
    )
    .execute(pool)
    .await
    .expect("truncate");
}

type FinalRow = (
    Uuid,
    Uuid,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    Uuid,
);

/// Every saga's row as the projection left it.
async fn final_rows(pool: &PgPool) -> Vec<FinalRow> {
    sqlx::query_as(
        "SELECT order_id, saga_id, state, compensation_reason, tracking_number, last_error, \
                attention_step::text, steps::text, version, started_at, updated_at, customer_id \
         FROM read_models.sagas ORDER BY order_id",
    )
    .fetch_all(pool)
    .await
    .expect("rows")
}

/// The final rows of the sagas `events` touch, in one upsert and one
/// transaction.
async fn raw_upsert(pool: &PgPool, events: &[RecordedEvent], rows: &[FinalRow]) {
    let touched: BTreeSet<Uuid> = events
        .iter()
        .map(|e| Uuid::parse_str(e.stream_id.trim_start_matches("saga-")).expect("uuid"))
        .collect();
    let rows: Vec<&FinalRow> = rows.iter().filter(|r| touched.contains(&r.0)).collect();
    let column = |f: fn(&FinalRow) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let optional =
        |f: fn(&FinalRow) -> Option<String>| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO raw_sagas AS s \
            (order_id, saga_id, state, compensation_reason, tracking_number, last_error, \
             attention_step, steps, version, started_at, updated_at, customer_id) \
         SELECT o, sg, st, r, t, e, a::jsonb, steps::jsonb, v, sa, ua, c \
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::bigint[], $10::timestamptz[], $11::timestamptz[], \
                     $12::uuid[]) \
            AS n (o, sg, st, r, t, e, a, steps, v, sa, ua, c) \
         ON CONFLICT (order_id) DO UPDATE SET \
            state = excluded.state, compensation_reason = excluded.compensation_reason, \
            tracking_number = excluded.tracking_number, last_error = excluded.last_error, \
            attention_step = excluded.attention_step, steps = excluded.steps, \
            version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(column(|r| r.2.clone()))
    .bind(optional(|r| r.3.clone()))
    .bind(optional(|r| r.4.clone()))
    .bind(optional(|r| r.5.clone()))
    .bind(optional(|r| r.6.clone()))
    .bind(column(|r| r.7.clone()))
    .bind(rows.iter().map(|r| r.8).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.9).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.10).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.11).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .expect("raw upsert");
    tx.commit().await.expect("commit");
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
