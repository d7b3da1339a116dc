//! The `sagas` projection: sagas driven by the domain's planner through the
//! real repository, applied by the real projector.

use domain::{FulfilmentSaga, SagaCommand, SagaEvent, Step};
use event_store::{ExpectedVersion, Metadata, NewEvent, StreamId};
use projections::{Projection, Sagas};
use serde_json::Value;
use uuid::Uuid;

use test_support::saga_sim::{
    resume_saga, run_saga, saga_exec, saga_order, StepOutcome, MAX_ATTEMPTS,
};
use test_support::Harness;

/// Three sagas: one shipped after a transient carrier failure, one
/// compensated after the second of three lines was out of stock, one that
/// needs attention because the carrier keeps timing out.
pub(crate) async fn three_sagas(h: &Harness) -> (Uuid, Uuid, Uuid) {
    let shipped = Uuid::now_v7();
    run_saga(
        &h.store,
        saga_order(shipped, &["A", "B"]),
        |step, attempt| match (step, attempt) {
            (Step::Ship, 1) => StepOutcome::Fail,
            _ => StepOutcome::Succeed,
        },
    )
    .await;
    let compensated = Uuid::now_v7();
    run_saga(
        &h.store,
        saga_order(compensated, &["A", "B", "C"]),
        |step, _| match step {
            Step::ReserveStock { sku } if sku.as_str() == "B" => {
                StepOutcome::Refuse("insufficient_stock")
            }
            _ => StepOutcome::Succeed,
        },
    )
    .await;
    let stuck = Uuid::now_v7();
    run_saga(&h.store, saga_order(stuck, &["A"]), |step, _| match step {
        Step::Ship => StepOutcome::Fail,
        _ => StepOutcome::Succeed,
    })
    .await;
    (shipped, compensated, stuck)
}

/// A saga's row as JSON (steps included).
async fn saga_row(h: &Harness, order_id: Uuid) -> Value {
    sqlx::query_scalar("SELECT to_jsonb(s) FROM read_models.sagas AS s WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&h.db.pool)
        .await
        .expect("saga row")
}

/// Every saga row and the applied versions, as text.
async fn snapshot(h: &Harness) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT t FROM (SELECT s::text AS t, order_id::text AS k FROM read_models.sagas AS s \
                        UNION ALL \
                        SELECT a::text, stream_id FROM read_models.applied AS a \
                        WHERE projection = 'sagas') AS rows ORDER BY k, t",
    )
    .fetch_all(&h.db.pool)
    .await
    .expect("snapshot")
}

fn steps(row: &Value) -> Vec<(String, String, u64)> {
    row["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            let name = match s["sku"].as_str() {
                Some(sku) => format!("{}:{sku}", s["name"].as_str().unwrap()),
                None => s["name"].as_str().unwrap().to_owned(),
            };
            (
                name,
                s["status"].as_str().unwrap().to_owned(),
                s["attempts"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn step<'a>(row: &'a Value, name: &str) -> &'a Value {
    row["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {row}"))
}

/// A timestamp of a row (Postgres' or chrono's RFC 3339).
fn at(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp"))
        .unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn owned(steps: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    steps
        .iter()
        .map(|(n, s, a)| ((*n).to_owned(), (*s).to_owned(), *a))
        .collect()
}

#[tokio::test]
async fn sagas_projection_records_each_step_with_its_attempts_times_and_errors() {
    let h = Harness::new().await;
    let (shipped, compensated, stuck) = three_sagas(&h).await;
    let report = h
        .projector(Sagas)
        .apply_batch(&h.all_events().await)
        .await
        .unwrap();
    assert!(!report.one_by_one && report.parked.is_empty(), "{report:?}");

    let row = saga_row(&h, shipped).await;
    assert_eq!(row["state"], "completed");
    assert_eq!(row["tracking_number"], format!("TRK-{shipped}"));
    assert_eq!(
        steps(&row),
        owned(&[
            ("reserve_stock:A", "succeeded", 1),
            ("reserve_stock:B", "succeeded", 1),
            ("mark_reserved", "succeeded", 1),
            ("charge_payment", "succeeded", 1),
            ("mark_paid", "succeeded", 1),
            ("ship", "succeeded", 2),
            ("mark_shipped", "succeeded", 1),
            ("commit_stock:A", "succeeded", 1),
            ("commit_stock:B", "succeeded", 1),
        ])
    );
    let ship = step(&row, "ship");
    assert_eq!(ship["error"], "timeout", "the last failure is kept");
    assert!(at(&ship["started_at"]) < at(&ship["finished_at"]));
    let version: i64 =
        sqlx::query_scalar("SELECT max(version) FROM event_store.events WHERE stream_id = $1")
            .bind(format!("saga-{shipped}"))
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(row["version"], version);
    assert!(at(&row["started_at"]) < at(&row["updated_at"]));

    let row = saga_row(&h, compensated).await;
    assert_eq!(row["state"], "compensated");
    assert_eq!(row["compensation_reason"], "out_of_stock");
    assert_eq!(
        steps(&row),
        owned(&[
            ("reserve_stock:A", "succeeded", 1),
            ("reserve_stock:B", "refused", 1),
            ("release_stock:B", "succeeded", 1),
            ("release_stock:A", "succeeded", 1),
            ("cancel_order", "succeeded", 1),
        ])
    );
    let refused = &row["steps"][1];
    assert_eq!(refused["error"], "insufficient_stock");
    assert!(refused["finished_at"].is_string());
    assert_eq!(row["last_error"], "insufficient_stock");

    let row = saga_row(&h, stuck).await;
    assert_eq!(row["state"], "needs_attention");
    let ship = step(&row, "ship");
    assert_eq!(
        (&ship["status"], &ship["attempts"], &ship["finished_at"]),
        (
            &Value::from("failed"),
            &Value::from(MAX_ATTEMPTS),
            &Value::Null
        )
    );
    assert_eq!(row["last_error"], "timeout");
    assert_eq!(row["attention_step"], serde_json::json!({"name": "ship"}));

    // An operator retries; the carrier works again.
    saga_exec(&h.store, stuck, SagaCommand::Retry).await;
    let projector = h.projector(Sagas);
    projector.apply_batch(&h.all_events().await).await.unwrap();
    let row = saga_row(&h, stuck).await;
    assert_eq!(row["state"], "running");
    assert_eq!(row["attention_step"], Value::Null);
    resume_saga(&h.store, stuck, |_, _| StepOutcome::Succeed).await;
    projector.apply_batch(&h.all_events().await).await.unwrap();
    let row = saga_row(&h, stuck).await;
    assert_eq!(row["state"], "completed");
    let ship = step(&row, "ship");
    assert_eq!(
        (&ship["status"], &ship["attempts"]),
        (&Value::from("succeeded"), &Value::from(MAX_ATTEMPTS + 1))
    );
    h.drop().await;
}

#[tokio::test]
async fn sagas_set_based_event_by_event_and_redelivered_leave_the_same_rows() {
    let h = Harness::new().await;
    three_sagas(&h).await;
    let events = h.all_events().await;
    let projector = h.projector(Sagas);
    let first = projector.apply_batch(&events).await.unwrap();
    assert!(!first.one_by_one, "{first:?}");
    let saga_events = events.iter().filter(|e| e.stream_type == "saga").count() as u64;
    assert_eq!((first.applied, first.duplicates), (saga_events, 0));
    let once = snapshot(&h).await;
    assert_eq!(once.len(), 6, "{once:?}");

    // Redelivered: nothing applied, nothing changed.
    let again = projector.apply_batch(&events).await.unwrap();
    assert_eq!((again.applied, again.duplicates), (0, saga_events));
    assert_eq!(snapshot(&h).await, once);

    // Event by event, each its own transaction, gives the same rows.
    sqlx::query("TRUNCATE read_models.sagas")
        .execute(&h.db.pool)
        .await
        .unwrap();
    for event in events.iter().filter(|e| e.stream_type == "saga") {
        let mut tx = h.db.pool.begin().await.unwrap();
        // Projections name their tables unqualified; the caller picks the schema.
        sqlx::query("SET LOCAL search_path = read_models")
            .execute(&mut *tx)
            .await
            .unwrap();
        Sagas.apply(&mut tx, event).await.unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(snapshot(&h).await, once);
    h.drop().await;
}

#[tokio::test]
async fn a_saga_event_before_its_start_parks_only_that_saga() {
    let h = Harness::new().await;
    let orphan = Uuid::now_v7();
    let event = SagaEvent::StepStarted {
        step: Step::MarkReserved,
        attempt: 1,
        deadline_ms: 0,
    };
    h.store
        .append(
            &StreamId::of::<FulfilmentSaga>(orphan),
            ExpectedVersion::NoStream,
            &[NewEvent::from_domain(&event)],
            &Metadata::default(),
        )
        .await
        .unwrap();
    let fine = Uuid::now_v7();
    run_saga(&h.store, saga_order(fine, &["A"]), |_, _| {
        StepOutcome::Succeed
    })
    .await;
    let report = h
        .projector(Sagas)
        .apply_batch(&h.all_events().await)
        .await
        .unwrap();
    assert_eq!(report.parked, vec![format!("saga-{orphan}")]);
    assert_eq!(saga_row(&h, fine).await["state"], "completed");
    let orphans: i64 =
        sqlx::query_scalar("SELECT count(*) FROM read_models.sagas WHERE order_id = $1")
            .bind(orphan)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(orphans, 0);
    h.drop().await;
}
