//! `/sagas` and the saga gauges of `/metrics`: sagas driven by the domain's
//! planner through the real repository; read models built by the real
//! projector (handler tests) or by a projection worker fed by the relay
//! through the broker at `KAFKA_BROKERS` (end to end).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::Step;
use kafka::Relay;
use projections::{Outcome, Sagas, Worker, WorkerConfig};

use serde_json::Value;
use test_support::eventually;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use test_support::pipeline::Pipeline;
use test_support::router::assert_problem;
use test_support::saga_sim::{run_saga, saga_order, StepOutcome};
use test_support::Harness;

/// A saga that ships, after one transient carrier failure.
async fn shipped(h: &Harness, skus: &[&str]) -> (Uuid, u64) {
    let order = Uuid::now_v7();
    let version = run_saga(&h.store, saga_order(order, skus), |step, attempt| {
        match (step, attempt) {
            (Step::Ship, 1) => StepOutcome::Fail,
            _ => StepOutcome::Succeed,
        }
    })
    .await;
    (order, version)
}

/// A saga compensated because its second line is out of stock.
async fn compensated(h: &Harness) -> (Uuid, u64) {
    let order = Uuid::now_v7();
    let version = run_saga(
        &h.store,
        saga_order(order, &["A", "B"]),
        |step, _| match step {
            Step::ReserveStock { sku } if sku.as_str() == "B" => {
                StepOutcome::Refuse("insufficient_stock")
            }
            _ => StepOutcome::Succeed,
        },
    )
    .await;
    (order, version)
}

/// A saga that needs attention: the carrier always times out.
async fn stuck(h: &Harness) -> (Uuid, u64) {
    let order = Uuid::now_v7();
    let version = run_saga(&h.store, saga_order(order, &["A"]), |step, _| match step {
        Step::Ship => StepOutcome::Fail,
        _ => StepOutcome::Succeed,
    })
    .await;
    (order, version)
}

fn order_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|s| s["order_id"].as_str().unwrap().to_owned())
        .collect()
}

fn step_names(saga: &Value) -> Vec<String> {
    saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| match s["sku"].as_str() {
            Some(sku) => format!("{}:{sku}", s["name"].as_str().unwrap()),
            None => s["name"].as_str().unwrap().to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn get_saga_answers_its_steps_404_400_and_waits_for_min_version() {
    let h = Harness::new().await;
    let (order, version) = shipped(&h, &["A"]).await;
    let response = h
        .get(&format!("/sagas/{order}?min_version=1&wait_ms=50"))
        .await;
    assert_problem(&response, 503, "min_version_timeout");
    h.project_all().await;

    let response = h
        .get(&format!("/sagas/{order}?min_version={version}"))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let saga = &response.json;
    assert_eq!(saga["order_id"], order.to_string());
    assert!(Uuid::parse_str(saga["saga_id"].as_str().unwrap()).is_ok());
    assert_eq!(saga["state"], "completed");
    assert_eq!(saga["version"], version);
    assert_eq!(saga["tracking_number"], format!("TRK-{order}"));
    assert!(saga["compensation_reason"].is_null());
    assert!(saga["started_at"].is_string() && saga["updated_at"].is_string());
    assert_eq!(
        step_names(saga),
        vec![
            "reserve_stock:A",
            "mark_reserved",
            "charge_payment",
            "mark_paid",
            "ship",
            "mark_shipped",
            "commit_stock:A"
        ]
    );
    let ship = &saga["steps"][4];
    assert_eq!(ship["status"], "succeeded");
    assert_eq!(ship["attempts"], 2);
    assert_eq!(ship["error"], "timeout");
    assert!(ship["started_at"].is_string() && ship["finished_at"].is_string());
    let first = &saga["steps"][0];
    assert_eq!(
        (&first["status"], &first["attempts"], &first["error"]),
        (&Value::from("succeeded"), &Value::from(1), &Value::Null)
    );

    let newer = h
        .get(&format!(
            "/sagas/{order}?min_version={}&wait_ms=50",
            version + 1
        ))
        .await;
    assert_problem(&newer, 503, "min_version_timeout");
    assert_problem(
        &h.get(&format!("/sagas/{}", Uuid::now_v7())).await,
        404,
        "not_found",
    );
    assert_problem(&h.get("/sagas/123").await, 400, "invalid_id");
    assert_problem(
        &h.get(&format!("/sagas/{order}?min_versions=1")).await,
        400,
        "invalid_query",
    );
    h.drop().await;
}

#[tokio::test]
async fn sagas_are_listed_by_state_and_paged_and_counted_in_metrics() {
    let h = Harness::new().await;
    let (s1, _) = shipped(&h, &["A"]).await;
    let (c1, _) = compensated(&h).await;
    let (s2, _) = shipped(&h, &["A", "B"]).await;
    let (n1, _) = stuck(&h).await;
    let (s3, _) = shipped(&h, &["C"]).await;
    h.project_all().await;

    let all = h.get("/sagas").await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(
        order_ids(&all.json),
        [s1, c1, s2, n1, s3].map(|id| id.to_string())
    );
    assert!(all.json["next"].is_null());

    let page1 = h.get("/sagas?state=completed&limit=2").await;
    assert_eq!(order_ids(&page1.json), [s1, s2].map(|id| id.to_string()));
    let next = page1.json["next"].as_str().expect("a next page");
    let page2 = h
        .get(&format!("/sagas?state=completed&limit=2&after={next}"))
        .await;
    assert_eq!(order_ids(&page2.json), [s3.to_string()]);
    assert!(page2.json["next"].is_null());

    let attention = h.get("/sagas?state=needs_attention").await;
    assert_eq!(order_ids(&attention.json), [n1.to_string()]);
    let saga = &attention.json["items"][0];
    assert_eq!(saga["error"], "timeout");
    let ship = saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ship")
        .unwrap();
    assert_eq!(
        (&ship["status"], &ship["attempts"], &ship["finished_at"]),
        (&Value::from("failed"), &Value::from(3), &Value::Null)
    );
    let undone = h.get("/sagas?state=compensated").await;
    let saga = &undone.json["items"][0];
    assert_eq!(saga["compensation_reason"], "out_of_stock");
    assert_eq!(
        step_names(saga),
        vec![
            "reserve_stock:A",
            "reserve_stock:B",
            "release_stock:B",
            "release_stock:A",
            "cancel_order"
        ]
    );
    assert_eq!(saga["steps"][1]["status"], "refused");
    assert_eq!(saga["steps"][1]["error"], "insufficient_stock");
    let running = h.get("/sagas?state=running").await;
    assert_eq!(order_ids(&running.json), Vec::<String>::new());

    assert_problem(&h.get("/sagas?state=lost").await, 400, "invalid_query");
    assert_problem(&h.get("/sagas?limit=0").await, 400, "invalid_query");
    assert_problem(&h.get("/sagas?limit=501").await, 400, "invalid_query");
    assert_problem(&h.get("/sagas?after=00").await, 400, "invalid_cursor");
    assert_problem(&h.get("/sagas?status=running").await, 400, "invalid_query");

    let metrics = h.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    for line in [
        "# TYPE purser_sagas gauge",
        "purser_sagas{state=\"running\"} 0",
        "purser_sagas{state=\"compensating\"} 0",
        "purser_sagas{state=\"completed\"} 3",
        "purser_sagas{state=\"compensated\"} 1",
        "purser_sagas{state=\"needs_attention\"} 1",
        "purser_projection_lag_events{projection=\"sagas\"} 0",
    ] {
        assert!(
            metrics.text.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            metrics.text
        );
    }
    let doc = h.get("/openapi.json").await;
    for path in ["/sagas", "/sagas/{order_id}"] {
        assert!(doc.json["paths"][path]["get"].is_object(), "{path} missing");
    }
    h.drop().await;
}

/// Events the sagas worker applied and skipped as duplicates.
#[derive(Default)]
struct Counts {
    applied: AtomicU64,
    duplicates: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_through_the_broker_read_your_writes_and_a_republish_changes_nothing() {
    let h = Harness::new().await;
    let kafka = test_support::kafka::topics("query-api-test").await;
    let shutdown = CancellationToken::new();
    let relay_stop = shutdown.child_token();
    let relay = tokio::spawn(
        Relay::new(h.store.clone(), kafka.clone())
            .expect("relay")
            .run(relay_stop.clone()),
    );

    // The sagas projection worker, stepped in a loop that counts.
    let counts = Arc::new(Counts::default());
    let mut worker = Worker::new(
        Arc::new(Sagas),
        h.store.clone(),
        &kafka,
        WorkerConfig {
            poll_wait: Duration::from_millis(200),
            ..WorkerConfig::default()
        },
    )
    .expect("worker");
    let worker_task = tokio::spawn({
        let (counts, shutdown) = (counts.clone(), shutdown.clone());
        async move {
            while !shutdown.is_cancelled() {
                match worker.process_batch().await {
                    Ok(Outcome::Applied(report)) => {
                        assert!(report.parked.is_empty(), "{report:?}");
                        counts.applied.fetch_add(report.applied, Ordering::SeqCst);
                        counts
                            .duplicates
                            .fetch_add(report.duplicates, Ordering::SeqCst);
                    }
                    Ok(Outcome::Idle) => {}
                    // Retried by the next step (the batch is kept).
                    Err(error) => eprintln!("sagas worker: {error}"),
                }
            }
        }
    });
    let mut pipeline = Pipeline::new();
    let client = pipeline.query_api(&h.db.pool).await;

    let (done, done_version) = shipped(&h, &["A", "B"]).await;
    let (undone, undone_version) = compensated(&h).await;
    let (waiting, waiting_version) = stuck(&h).await;
    // The first read also waits for the consumer group to form.
    let saga = client
        .get(&format!(
            "/sagas/{done}?min_version={done_version}&wait_ms=10000"
        ))
        .await;
    assert_eq!(
        (saga["state"].as_str(), saga["version"].as_u64()),
        (Some("completed"), Some(done_version))
    );
    assert_eq!(saga["steps"].as_array().unwrap().len(), 9);
    let saga = client
        .get(&format!(
            "/sagas/{undone}?min_version={undone_version}&wait_ms=10000"
        ))
        .await;
    assert_eq!(saga["state"], "compensated");
    let saga = client
        .get(&format!(
            "/sagas/{waiting}?min_version={waiting_version}&wait_ms=10000"
        ))
        .await;
    assert_eq!(saga["state"], "needs_attention");

    let page = client.get("/sagas?state=needs_attention").await;
    assert_eq!(order_ids(&page), [waiting.to_string()]);
    let page1 = client.get("/sagas?limit=2").await;
    assert_eq!(order_ids(&page1), [done, undone].map(|id| id.to_string()));
    let page2 = client
        .get(&format!(
            "/sagas?limit=2&after={}",
            page1["next"].as_str().expect("a next page")
        ))
        .await;
    assert_eq!(order_ids(&page2), [waiting.to_string()]);
    let projections = client.get("/projections").await;
    let sagas = projections
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sagas")
        .expect("sagas in /projections");
    assert_eq!(sagas["lag_events"], 0, "{sagas}");
    let metrics = client.get("/metrics").await;
    assert!(metrics
        .as_str()
        .unwrap()
        .lines()
        .any(|l| l == "purser_sagas{state=\"needs_attention\"} 1"));

    // Republish the whole log (a relay that lost its checkpoint): the worker
    // receives every saga event again and changes nothing.
    let saga_events: u64 = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM event_store.events WHERE stream_type = 'saga'",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap() as u64;
    assert_eq!(counts.applied.load(Ordering::SeqCst), saga_events);
    let before = client.get("/sagas?limit=500").await;
    relay_stop.cancel();
    relay.await.unwrap().unwrap();
    h.store
        .save_checkpoint(kafka::CHECKPOINT_NAME, event_store::Checkpoint::START)
        .await
        .unwrap();
    let relay = tokio::spawn(
        Relay::new(h.store.clone(), kafka.clone())
            .expect("relay")
            .run(shutdown.clone()),
    );
    let duplicates = &counts.duplicates;
    eventually(
        "the republished events to arrive",
        Duration::from_secs(60),
        Duration::from_millis(50),
        move || async move {
            match duplicates.load(Ordering::SeqCst) {
                n if n >= saga_events => Ok(()),
                n => Err(format!("{n} of {saga_events}")),
            }
        },
    )
    .await;
    assert_eq!(counts.applied.load(Ordering::SeqCst), saga_events);
    assert_eq!(client.get("/sagas?limit=500").await, before);

    shutdown.cancel();
    pipeline.stop().await;
    worker_task.await.unwrap();
    relay.await.unwrap().unwrap();
    h.drop().await;
}

/// The API guide: a saga step's `error` is a stable code, never an internal
/// message. The orchestrator records codes; a saga recorded before it did
/// (a driver's message, a refusal's figures, "N attempts failed...") is
/// shown by its code too, in `GET /sagas/{id}` and in `GET /sagas`.
#[tokio::test]
async fn a_saga_step_error_is_a_code_never_a_message() {
    const SQL: &str =
        "error returned from database: relation \"event_store.events\" does not exist";
    let h = Harness::new().await;
    // Charged after a database failure, then refused by the carrier.
    let refused = Uuid::now_v7();
    run_saga(
        &h.store,
        saga_order(refused, &["A"]),
        |step, attempt| match (step, attempt) {
            (Step::ChargePayment, 1) => StepOutcome::FailWith(SQL),
            (Step::Ship, _) => {
                StepOutcome::RefuseWith("shipment_refused", "no delivery to country XX")
            }
            _ => StepOutcome::Succeed,
        },
    )
    .await;
    // Out of attempts on the old free text of a database failure.
    let stuck = Uuid::now_v7();
    run_saga(&h.store, saga_order(stuck, &["A"]), |step, _| match step {
        Step::ChargePayment => StepOutcome::FailWith(SQL),
        _ => StepOutcome::Succeed,
    })
    .await;
    // Out of attempts on the carrier, recorded with the code.
    let carrier = Uuid::now_v7();
    run_saga(
        &h.store,
        saga_order(carrier, &["A"]),
        |step, _| match step {
            Step::Ship => StepOutcome::FailWith("carrier_unavailable"),
            _ => StepOutcome::Succeed,
        },
    )
    .await;
    h.project_all().await;

    let error_of = |saga: &Value, name: &str| {
        saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {saga}"))["error"]
            .clone()
    };
    let one = h.get(&format!("/sagas/{refused}")).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json["state"], "compensated");
    assert_eq!(error_of(&one.json, "charge_payment"), "unavailable");
    assert_eq!(error_of(&one.json, "ship"), "shipment_refused");
    assert_eq!(one.json["error"], "shipment_refused");

    let two = h.get(&format!("/sagas/{stuck}")).await;
    assert_eq!(two.json["state"], "needs_attention", "{}", two.text);
    assert_eq!(error_of(&two.json, "charge_payment"), "unavailable");
    assert_eq!(two.json["error"], "unavailable");

    let three = h.get(&format!("/sagas/{carrier}")).await;
    assert_eq!(three.json["state"], "needs_attention", "{}", three.text);
    assert_eq!(error_of(&three.json, "ship"), "carrier_unavailable");
    assert_eq!(three.json["error"], "carrier_unavailable");

    let all = h.get("/sagas").await;
    assert_eq!(
        all.json["items"].as_array().unwrap().len(),
        3,
        "{}",
        all.text
    );
    for text in [&one.text, &two.text, &three.text, &all.text] {
        for leak in ["relation", "database", "XX", "attempts failed", "refused:"] {
            assert!(!text.contains(leak), "{leak:?} leaks in {text}");
        }
    }
    // Every error shown is a code.
    for saga in all.json["items"].as_array().unwrap() {
        let errors = saga["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["error"])
            .chain([&saga["error"]]);
        for error in errors.filter(|e| !e.is_null()) {
            assert!(
                domain::step_errors::is_code(error.as_str().unwrap()),
                "{error} in {saga}"
            );
        }
    }
    h.drop().await;
}
