//! `POST /sagas/{order_id}/retry`: sagas driven by the domain's planner
//! through the real repository, retried over HTTP.

use domain::{FulfilmentSaga, SagaStatus, Step};
use reqwest::header::ETAG;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem};
use test_support::saga_sim::{run_saga, saga_order, StepOutcome};

use crate::callers::{SecuredApp, Who};

const REPLAYED: &str = "idempotent-replayed";

/// A saga that needs attention: the carrier always times out.
async fn stuck(app: &TestApp) -> (Uuid, u64) {
    let order = Uuid::now_v7();
    let version = run_saga(
        &app.store(),
        saga_order(order, &["A"]),
        |step, _| match step {
            Step::Ship => StepOutcome::Fail,
            _ => StepOutcome::Succeed,
        },
    )
    .await;
    (order, version)
}

#[tokio::test]
async fn retry_resumes_a_saga_that_needs_attention_once_per_key() {
    let app = SecuredApp::spawn().await;
    let olga = Who::operator("olga");
    let (order, version) = stuck(&app).await;
    let stream = format!("saga-{order}");
    let path = format!("/sagas/{order}/retry");
    let retry = || {
        app.post_as(&olga, &path)
            .header("Idempotency-Key", "retry-1")
            .json(&json!({}))
            .send()
    };

    let response = retry().await.expect("request sent");
    assert_eq!(
        response.headers().get(ETAG).unwrap(),
        &format!("\"{}\"", version + 1)
    );
    assert!(response.headers().get(REPLAYED).is_none());
    let body = assert_json(response, StatusCode::ACCEPTED).await;
    assert_eq!(body["order_id"], order.to_string());
    assert!(Uuid::parse_str(body["saga_id"].as_str().unwrap()).is_ok());
    assert_eq!(body["state"], "running");
    assert_eq!(body["version"], version + 1);
    assert!(body["position"].as_i64().unwrap() > 0);

    // The same key again: the stored answer, nothing appended.
    let again = retry().await.expect("request sent");
    assert_eq!(again.headers().get(REPLAYED).unwrap(), "true");
    assert_eq!(assert_json(again, StatusCode::ACCEPTED).await, body);
    assert_eq!(app.count_of(&stream, "SagaRetried").await, 1);
    // Recorded as the operator's, by name.
    let retried = app
        .store()
        .read_stream(&event_store::StreamId::new("saga", order.to_string()), 1)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event_type == "SagaRetried")
        .expect("SagaRetried");
    assert_eq!(retried.metadata.actor.as_deref(), Some("olga"));
    assert_eq!(
        retried.metadata.causation_id.as_deref(),
        Some("retry-1"),
        "the idempotency key is still the cause"
    );
    let loaded = event_store::Repository::<FulfilmentSaga>::new(app.store())
        .load(&order.to_string())
        .await
        .unwrap();
    assert_eq!(
        (loaded.state.status, loaded.version),
        (SagaStatus::Running, version + 1)
    );

    // Without the key, a second retry finds the saga running.
    let response = app.send(&olga, &path, &json!({})).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "saga_not_retryable",
    )
    .await;
    assert_eq!(app.count_of(&stream, "SagaRetried").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn retry_refuses_unknown_and_healthy_sagas_and_bad_requests() {
    let app = TestApp::spawn().await;
    let unknown = Uuid::now_v7();
    let response = app
        .post_json(&format!("/sagas/{unknown}/retry"), &json!({}))
        .await;
    assert_problem(response, StatusCode::NOT_FOUND, "saga_not_found").await;

    let done = Uuid::now_v7();
    run_saga(&app.store(), saga_order(done, &["A"]), |_, _| {
        StepOutcome::Succeed
    })
    .await;
    let before = app.event_count().await;
    let response = app
        .post(&format!("/sagas/{done}/retry"))
        .header("Idempotency-Key", "retry-done")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "saga_not_retryable",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("completed"),
        "{problem}"
    );
    assert_eq!(app.event_count().await, before, "nothing appended");

    let response = app
        .post_json(&format!("/sagas/{done}/retry"), &json!({"step": "ship"}))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    let response = app.post_json("/sagas/123/retry", &json!({})).await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_id").await;
    app.stop().await;
}

#[tokio::test]
async fn a_compensation_that_needs_attention_is_retried_into_compensating() {
    let app = TestApp::spawn().await;
    let order = Uuid::now_v7();
    // The second line is out of stock; releasing the first is refused.
    let version = run_saga(
        &app.store(),
        saga_order(order, &["A", "B"]),
        |step, _| match step {
            Step::ReserveStock { sku } if sku.as_str() == "B" => {
                StepOutcome::Refuse("insufficient_stock")
            }
            Step::ReleaseStock { sku } if sku.as_str() == "A" => StepOutcome::Refuse("broken"),
            _ => StepOutcome::Succeed,
        },
    )
    .await;
    let response = app
        .post_json(&format!("/sagas/{order}/retry"), &json!({}))
        .await;
    let body: Value = assert_json(response, StatusCode::ACCEPTED).await;
    assert_eq!(body["state"], "compensating");
    assert_eq!(body["version"], version + 1);
    app.stop().await;
}
