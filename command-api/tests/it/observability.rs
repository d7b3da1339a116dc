//! Request ids, correlation ids, health, metrics and the OpenAPI document.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode as AxumStatus};
use command_api::{router, AppState, Config};
use event_store::EventStore;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem};

#[tokio::test]
async fn request_ids_are_echoed_or_made_and_become_correlation_ids() {
    let app = TestApp::spawn().await;
    let account = app.open_account(0).await;

    let response = app
        .post(&format!("/accounts/{account}/deposits"))
        .header("x-request-id", "client-chosen-id-42")
        .header("Idempotency-Key", "deposit-42")
        .json(&json!({"amount": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-id-42");
    assert_eq!(response.status(), StatusCode::OK);

    let metadata: Value = sqlx::query_scalar(
        "SELECT metadata FROM event_store.events WHERE event_type = 'MoneyDeposited'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(metadata["correlation_id"], "client-chosen-id-42");
    assert_eq!(metadata["causation_id"], "deposit-42");
    // The caller's `sub`: without authentication, `insecure-no-auth`.
    assert_eq!(metadata["actor"], "insecure-no-auth");

    // Without one, the server makes a uuid v7, on errors too.
    for response in [
        app.post_json(
            "/accounts",
            &json!({"customer_id": Uuid::now_v7(), "currency": "EUR"}),
        )
        .await,
        app.post_json("/accounts", &json!({"nope": 1})).await,
        app.get("/nowhere").await,
        app.get("/health/live").await,
    ] {
        let id: Uuid = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .parse()
            .expect("a uuid request id");
        assert_eq!(id.get_version_num(), 7);
    }
    let opened: Value = sqlx::query_scalar(
        "SELECT metadata FROM event_store.events ORDER BY position DESC LIMIT 1",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(opened["correlation_id"]
        .as_str()
        .unwrap()
        .parse::<Uuid>()
        .is_ok());
    assert!(opened["causation_id"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let app = TestApp::spawn().await;
    let live = assert_json(app.get("/health/live").await, StatusCode::OK).await;
    assert_eq!(live["status"], "ok");
    let ready = assert_json(app.get("/health/ready").await, StatusCode::OK).await;
    assert_eq!(ready["checks"]["database"], "ok");

    let account = app.open_account(100).await;
    let refused = app
        .post_json(
            &format!("/accounts/{account}/withdrawals"),
            &json!({"amount": 1000}),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    for _ in 0..2 {
        let response = app
            .post(&format!("/accounts/{account}/deposits"))
            .header("Idempotency-Key", "metrics-replay")
            .json(&json!({"amount": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let response = app.get("/metrics").await;
    assert!(response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let metrics = response.text().await.unwrap();
    for line in [
        "command_api_http_requests_total{method=\"POST\",route=\"/accounts\",status=\"201\"} 1",
        "command_api_http_requests_total{method=\"POST\",route=\"/accounts/{id}/deposits\",status=\"200\"} 3",
        "command_api_http_requests_total{method=\"POST\",route=\"/accounts/{id}/withdrawals\",status=\"422\"} 1",
        "command_api_http_request_duration_seconds_count{method=\"POST\",route=\"/accounts/{id}/deposits\"} 3",
        "command_api_events_appended_total{stream_type=\"account\"} 3",
        "command_api_idempotent_replays_total 1",
        "# TYPE command_api_http_request_duration_seconds histogram",
        "# TYPE command_api_concurrency_conflicts counter",
        "command_api_concurrency_conflicts_total{outcome=\"exhausted\"} 0",
        "# EOF",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }

    let document = assert_json(app.get("/openapi.json").await, StatusCode::OK).await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/accounts",
        "/accounts/{id}/deposits",
        "/accounts/{id}/withdrawals",
        "/accounts/{id}/close",
        "/inventory",
        "/inventory/{sku}/restock",
        "/inventory/{sku}/price",
        "/orders",
        "/orders/{id}/cancel",
        "/sagas/{order_id}/retry",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(document["paths"][path].is_object(), "{path} undocumented");
    }
    let withdraw = &document["paths"]["/accounts/{id}/withdrawals"]["post"];
    assert!(withdraw["responses"]["422"].is_object());
    assert!(withdraw["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
    assert!(document["components"]["schemas"]["Problem"].is_object());
    app.stop().await;
}

/// Handler-level: the router without a socket, over a database that is not
/// there. Readiness names the failed check; a command is a 503 that leaks
/// nothing.
#[tokio::test]
async fn a_database_that_is_down_is_503_naming_the_check() {
    test_support::init_tracing();
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nowhere")
        .unwrap();
    let app = router(
        AppState::new(EventStore::new(pool), &Config::default()),
        service::auth::Access::insecure(),
    );

    let response = app
        .clone()
        .oneshot(Request::get("/health/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), AxumStatus::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(response.headers().contains_key("x-request-id"));
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["code"], "service_unavailable");
    assert_eq!(problem["checks"]["database"], "failed");
    assert!(problem["detail"].as_str().unwrap().contains("database"));

    let response = app
        .oneshot(
            Request::post(format!("/accounts/{}/deposits", Uuid::now_v7()))
                .header("content-type", "application/json")
                .body(Body::from(r#"{"amount": 1}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), AxumStatus::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("127.0.0.1"), "leaks the address: {text}");
    assert!(
        !text.to_lowercase().contains("connection refused"),
        "leaks the cause: {text}"
    );
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(problem["code"], "service_unavailable");
}

/// Handler-level: validation happens before any I/O.
#[tokio::test]
async fn validation_needs_no_database() {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://postgres@127.0.0.1:1/nowhere")
        .unwrap();
    let app = router(
        AppState::new(EventStore::new(pool), &Config::default()),
        service::auth::Access::insecure(),
    );
    let response = app
        .oneshot(
            Request::post("/accounts")
                .header("content-type", "application/json")
                .header("x-request-id", "abc")
                .body(Body::from(r#"{"customer_id": "nope", "currency": "EUR"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), AxumStatus::BAD_REQUEST);
    assert_eq!(response.headers()["x-request-id"], "abc");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

/// A request that outlives the timeout gets 503 with `Retry-After`, and
/// what it had started is rolled back: the retry with its key executes (it
/// is no replay) and appends the only deposit.
#[tokio::test]
async fn a_request_over_the_timeout_is_503_and_leaves_nothing() {
    let app = TestApp::spawn_with(|config| config.request_timeout_ms = 1_000).await;
    let account = app.open_account(0).await;
    // Another transaction holds the stream's next version (2), uncommitted:
    // the command's append waits on it.
    let mut blocker = app.db.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO event_store.events (event_id, stream_type, stream_id, version, event_type, \
         schema_version, payload) VALUES ($1, 'account', $2, 2, 'MoneyDeposited', 1, \
         '{\"amount\": 1, \"balance_after\": 1}')",
    )
    .bind(Uuid::now_v7())
    .bind(format!("account-{account}"))
    .execute(&mut *blocker)
    .await
    .unwrap();

    let deposit = || {
        app.post(&format!("/accounts/{account}/deposits"))
            .header("Idempotency-Key", "slow-1")
            .json(&json!({"amount": 5}))
            .send()
    };
    let response = deposit().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "timeout").await;
    blocker.rollback().await.unwrap();

    let retry = deposit().await.unwrap();
    assert!(retry.headers().get("idempotent-replayed").is_none());
    let answer = assert_json(retry, StatusCode::OK).await;
    assert_eq!(answer["version"], 2);
    assert_eq!(app.event_count().await, 2);
    let (state, _) = app.account(account).await;
    assert_eq!(state.balance.amount(), 5);
    app.stop().await;
}

/// Over HTTP, a real database error (a trigger that fails every append with
/// a message full of internals) is a 500 whose body has none of them: a
/// generic detail and the request id the cause was logged under, in the
/// body and in `x-request-id`. Nothing is appended.
#[tokio::test]
async fn a_database_error_is_a_500_that_leaks_nothing_and_names_the_request() {
    let app = TestApp::spawn().await;
    let account = app.open_account(0).await;
    sqlx::raw_sql(
        "CREATE FUNCTION event_store.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'internal: SELECT secret FROM event_store.events WHERE password = %', \
         'hunter2'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON event_store.events \
         FOR EACH ROW EXECUTE FUNCTION event_store.refuse()",
    )
    .execute(&app.db.pool)
    .await
    .expect("trigger");
    let before = app.event_count().await;

    let response = app
        .post(&format!("/accounts/{account}/deposits"))
        .header("x-request-id", "leak-check-500")
        .json(&json!({"amount": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "leak-check-500");
    let problem = assert_problem(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    assert_eq!(problem["request_id"], "leak-check-500");
    let text = problem.to_string();
    for leak in [
        "hunter2",
        "secret",
        "SELECT",
        "event_store",
        "trigger",
        "sqlx",
        "database",
        "P0001",
    ] {
        assert!(!text.contains(leak), "{leak:?} leaks: {text}");
    }
    // A request without an id of its own gets a fresh one, in both places.
    let response = app
        .post(&format!("/accounts/{account}/deposits"))
        .json(&json!({"amount": 5}))
        .send()
        .await
        .unwrap();
    let header = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let problem = assert_problem(
        response,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
    )
    .await;
    assert_eq!(problem["request_id"], header.as_str());
    assert_eq!(app.event_count().await, before);
    app.stop().await;
}
