//! Identity and access over HTTP (API.md, "Identity and access"): real
//! tokens from a real JWKS, the role of every route, bad tokens, and the
//! abuse limits. Every refusal appends nothing.

use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem};
use test_support::tokens::{assert_unauthorized, generous, Keys, RateLimitConfig};
use test_support::wait_until;

fn bearer(request: RequestBuilder, token: Option<&str>) -> RequestBuilder {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
    bearer(app.post(path), token)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// A refusal appends nothing.
async fn refused(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: &Value,
    status: StatusCode,
    code: &str,
) {
    let before = app.event_count().await;
    let response = post(app, path, token, body).await;
    if status == StatusCode::UNAUTHORIZED {
        assert_unauthorized(response, code, path).await;
    } else {
        assert_problem(response, status, code).await;
    }
    assert_eq!(app.event_count().await, before, "{path} appended");
}

fn order(account_id: Uuid, customer_id: Option<Uuid>) -> Value {
    let mut body = json!({
        "account_id": account_id,
        "currency": "EUR",
        "lines": [{"sku": "LAPTOP-15", "quantity": 1}],
        "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                             "postal_code": "28013", "country": "ES"}
    });
    if let Some(customer_id) = customer_id {
        body["customer_id"] = json!(customer_id);
    }
    body
}

#[tokio::test]
async fn every_command_route_checks_the_callers_role() {
    let keys = Keys::new();
    let app = TestApp::spawn_with_access(keys.access(generous())).await;
    let (ana, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let ana_token = keys.customer(ana);
    let operator = keys.operator("olga");
    let ana_t = Some(ana_token.as_str());
    let op_t = Some(operator.as_str());

    // Inventory and prices: operators only; role before shape.
    let item = json!({"sku": "LAPTOP-15", "name": "Laptop", "quantity": 3,
                      "unit_price": 1000, "currency": "EUR"});
    refused(
        &app,
        "/inventory",
        ana_t,
        &item,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        "/inventory",
        ana_t,
        &json!({"nonsense": true}),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        "/inventory",
        None,
        &item,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    assert_json(
        post(&app, "/inventory", op_t, &item).await,
        StatusCode::CREATED,
    )
    .await;
    for (action, body) in [
        ("restock", json!({"quantity": 2})),
        ("price", json!({"unit_price": 1200})),
    ] {
        let path = format!("/inventory/LAPTOP-15/{action}");
        refused(
            &app,
            &path,
            ana_t,
            &body,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        refused(
            &app,
            &path,
            None,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        )
        .await;
        assert_json(post(&app, &path, op_t, &body).await, StatusCode::OK).await;
    }

    // POST /accounts: a customer opens its own (customer_id defaults to
    // the caller); another customer's id and an operator are 403.
    let opened = assert_json(
        post(&app, "/accounts", ana_t, &json!({"currency": "EUR"})).await,
        StatusCode::CREATED,
    )
    .await;
    let account: Uuid = opened["account_id"].as_str().unwrap().parse().unwrap();
    let (state, _) = app.account(account).await;
    assert_eq!(
        state.customer_id.map(|c| c.as_uuid()),
        Some(ana),
        "opened for the caller"
    );
    let explicit = json!({"currency": "EUR", "customer_id": ana});
    assert_json(
        post(&app, "/accounts", ana_t, &explicit).await,
        StatusCode::CREATED,
    )
    .await;
    let others = json!({"currency": "EUR", "customer_id": bob});
    refused(
        &app,
        "/accounts",
        ana_t,
        &others,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        "/accounts",
        op_t,
        &explicit,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        "/accounts",
        None,
        &explicit,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;

    // Deposits, withdrawals, close: the customer's, 403 to an operator.
    for (action, body) in [
        ("deposits", json!({"amount": 500})),
        ("withdrawals", json!({"amount": 500})),
        ("close", json!({})),
    ] {
        let path = format!("/accounts/{account}/{action}");
        refused(&app, &path, op_t, &body, StatusCode::FORBIDDEN, "forbidden").await;
        refused(
            &app,
            &path,
            None,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        )
        .await;
        assert_json(post(&app, &path, ana_t, &body).await, StatusCode::OK).await;
    }

    // Role before shape: an operator's malformed deposit is 403, not 400.
    refused(
        &app,
        "/accounts/not-a-uuid/deposits",
        op_t,
        &json!({"amount": "lots"}),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // POST /orders: the customer's own; another customer's id 403; an
    // operator 403.
    let placed = assert_json(
        post(&app, "/orders", ana_t, &order(account, None)).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let order_id = placed["order_id"].as_str().unwrap().to_owned();
    refused(
        &app,
        "/orders",
        ana_t,
        &order(account, Some(bob)),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        "/orders",
        op_t,
        &order(account, Some(ana)),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        "/orders",
        None,
        &order(account, Some(ana)),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;

    // POST /orders/{id}/cancel: the customer's own, an operator any.
    let cancel = format!("/orders/{order_id}/cancel");
    let reason = json!({"reason": "changed my mind"});
    refused(
        &app,
        &cancel,
        None,
        &reason,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    assert_json(
        post(&app, &cancel, ana_t, &reason).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_json(
        post(&app, &cancel, op_t, &reason).await,
        StatusCode::ACCEPTED,
    )
    .await;

    // Saga retry: operators only (this order's saga never started: 404
    // shows the operator got past the role check).
    let retry = format!("/sagas/{order_id}/retry");
    refused(
        &app,
        &retry,
        ana_t,
        &json!({}),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        &retry,
        None,
        &json!({}),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    refused(
        &app,
        &retry,
        op_t,
        &json!({}),
        StatusCode::NOT_FOUND,
        "saga_not_found",
    )
    .await;

    // GET /metrics: operators only; health and the document are open.
    let get = |path: &str, token: Option<&str>| bearer(app.client.get(app.url(path)), token).send();
    assert_eq!(
        get("/metrics", op_t).await.unwrap().status(),
        StatusCode::OK
    );
    assert_problem(
        get("/metrics", ana_t).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_unauthorized(
        get("/metrics", None).await.unwrap(),
        "unauthenticated",
        "/metrics",
    )
    .await;
    assert_eq!(
        get("/health/live", None).await.unwrap().status(),
        StatusCode::OK
    );
    let document = assert_json(get("/openapi.json", None).await.unwrap(), StatusCode::OK).await;
    assert_bearer_documented(&document, "/accounts", "post");
    app.stop().await;
}

/// The document declares the bearer scheme, and the operation requires it
/// and lists 401, 403 and 429; health does not.
pub fn assert_bearer_documented(document: &Value, path: &str, method: &str) {
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    assert_eq!(scheme["bearerFormat"], "JWT", "{scheme}");
    let operation = &document["paths"][path][method];
    assert_eq!(
        operation["security"],
        json!([{"bearer": []}]),
        "{operation}"
    );
    for status in ["401", "403", "429"] {
        assert!(
            operation["responses"][status].is_object(),
            "{path} lacks {status}"
        );
    }
    assert!(document["paths"]["/health/live"]["get"]["security"].is_null());
}

#[tokio::test]
async fn bad_tokens_are_401_invalid_token_and_append_nothing() {
    let keys = Keys::new();
    let app = TestApp::spawn_with_access(keys.access(generous())).await;
    let item =
        json!({"sku": "PEN", "name": "Pen", "quantity": 3, "unit_price": 150, "currency": "EUR"});
    for (what, token) in keys.bad_tokens() {
        let before = app.event_count().await;
        let response = post(&app, "/inventory", Some(&token), &item).await;
        assert_unauthorized(response, "invalid_token", what).await;
        assert_eq!(app.event_count().await, before, "{what} appended");
    }
    // A header that is not UTF-8, and one that is not a bearer token.
    let raw = app
        .post("/inventory")
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        )
        .json(&item)
        .send()
        .await
        .unwrap();
    assert_unauthorized(raw, "invalid_token", "non-UTF-8").await;
    let basic = app
        .post("/inventory")
        .basic_auth("olga", Some("pw"))
        .json(&item)
        .send()
        .await
        .unwrap();
    assert_unauthorized(basic, "invalid_token", "basic").await;
    // The same claims, properly signed, get in.
    let good = keys.sign(&keys.claims("olga", &["operator"]));
    assert_json(
        post(&app, "/inventory", Some(&good), &item).await,
        StatusCode::CREATED,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_caller_past_its_burst_waits_and_others_are_not_affected() {
    let keys = Keys::new();
    let limits = RateLimitConfig {
        per_second: 2,
        burst: 3,
    };
    let app = TestApp::spawn_with_access(keys.access(limits)).await;
    let (greedy, modest) = (keys.operator("greedy"), keys.operator("modest"));
    let metrics = |token: &str| {
        app.client
            .get(app.url("/metrics"))
            .bearer_auth(token)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(metrics(&greedy).await.unwrap().status(), StatusCode::OK);
    }
    let limited = metrics(&greedy).await.unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(metrics(&modest).await.unwrap().status(), StatusCode::OK);
    // Served again once its bucket refills.
    wait_until(
        "the greedy caller is served again",
        Duration::from_secs(5),
        || async { metrics(&greedy).await.unwrap().status() == StatusCode::OK },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn failed_authentication_is_limited_per_client_address() {
    let keys = Keys::new();
    let app = TestApp::spawn_with_access(keys.access(generous())).await;
    // 40 a burst, 20 a second: 120 bad requests at once cannot all be 401.
    let attempts = (0..120).map(|_| {
        app.client
            .get(app.url("/metrics"))
            .bearer_auth("garbage")
            .send()
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|response| response.unwrap().status())
        .collect();
    let unauthorized = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(unauthorized + limited, 120, "{statuses:?}");
    assert!(
        (40..100).contains(&unauthorized),
        "{unauthorized} answered 401"
    );
    // A valid token from the same address is still served.
    let operator = keys.operator("olga");
    let served = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    app.stop().await;
}
