//! Identity and access over HTTP (the API guide, "Identity and access"): real
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

/// Sends bad tokens as the client `forwarded` names (`X-Forwarded-For`, a
/// new value each time from `forwarded(i)`) until one is 429; how many it
/// took, or `None` if none was within `tries`.
async fn bad_until_limited(
    app: &TestApp,
    tries: usize,
    forwarded: impl Fn(usize) -> String,
) -> Option<usize> {
    for i in 0..tries {
        let response = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth("garbage")
            .header("x-forwarded-for", forwarded(i))
            .send()
            .await
            .expect("request sent");
        match response.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => return Some(i),
            other => panic!("{other} for a bad token"),
        }
    }
    None
}

async fn bad_status(app: &TestApp, header: (&str, &str)) -> StatusCode {
    app.client
        .get(app.url("/metrics"))
        .bearer_auth("garbage")
        .header(header.0, header.1)
        .send()
        .await
        .expect("request sent")
        .status()
}

/// Behind the gateway every connection comes from the gateway. With it
/// trusted (`PURSER_TRUSTED_PROXIES`), failed authentication is limited per
/// client address it forwards: one client over the limit leaves the others
/// alone, and what a client writes on the left of `X-Forwarded-For` does not
/// get it a fresh bucket. Without it, the headers are ignored: every request
/// of the peer shares one bucket, whatever it claims.
#[tokio::test]
async fn failed_authentication_behind_a_trusted_proxy_is_limited_per_forwarded_client() {
    let keys = Keys::new();
    let limited = || {
        keys.access(generous())
            .with_failed_authentication_limit(auth::KeyedLimiter::new(1, 3))
    };
    let gateway: auth::ProxyNet = "127.0.0.1".parse().unwrap();

    let app = TestApp::spawn_with_access(
        limited().with_trusted_proxies(auth::TrustedProxies::new([gateway])),
    )
    .await;
    // Client 203.0.113.7 claims a new origin on the left each time: still
    // one client, limited after its burst of 3.
    let spent = bad_until_limited(&app, 20, |i| format!("198.51.100.{i}, 203.0.113.7")).await;
    assert!(
        spent.is_some_and(|n| n >= 3),
        "the client was limited after {spent:?}"
    );
    // Other clients behind the same gateway are not.
    assert_eq!(
        bad_status(&app, ("x-forwarded-for", "203.0.113.8")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        bad_status(&app, ("x-real-ip", "203.0.113.9")).await,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;

    let app = TestApp::spawn_with_access(limited()).await;
    // Not trusted: a different client address each time changes nothing.
    let spent = bad_until_limited(&app, 20, |i| format!("203.0.113.{i}")).await;
    assert!(
        spent.is_some_and(|n| n >= 3),
        "the peer was limited after {spent:?}"
    );
    app.stop().await;
}

/// The API guide's order of checks: credentials (401), then role (403), then shape
/// (413 for a body over 64 KiB), then existence and ownership (404). Each
/// refusal appends nothing.
#[tokio::test]
async fn a_body_over_the_limit_is_413_only_after_credentials_and_role() {
    let keys = Keys::new();
    let app = TestApp::spawn_with_access(keys.access(generous())).await;
    let ana = Uuid::now_v7();
    let ana_token = keys.customer(ana);
    let bob_token = keys.customer(Uuid::now_v7());
    let operator = keys.operator("olga");
    let opened = post(
        &app,
        "/accounts",
        Some(&ana_token),
        &json!({"currency": "EUR"}),
    )
    .await;
    let account = assert_json(opened, StatusCode::CREATED).await["account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let huge = vec![b' '; 64 * 1024 + 1];
    let send = |path: String, token: Option<String>| {
        let mut request = app
            .post(&path)
            .header("content-type", "application/json")
            .body(huge.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let before = app.event_count().await;
    let deposit = format!("/accounts/{account}/deposits");

    // No token, a bad one: 401 whatever the body.
    assert_unauthorized(
        send(deposit.clone(), None).await.unwrap(),
        "unauthenticated",
        "no token",
    )
    .await;
    assert_unauthorized(
        send(deposit.clone(), Some("garbage".to_owned()))
            .await
            .unwrap(),
        "invalid_token",
        "bad token",
    )
    .await;
    // A role that may not: 403 whatever the body.
    assert_problem(
        send(deposit.clone(), Some(operator.clone())).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_problem(
        send("/inventory".to_owned(), Some(ana_token.clone()))
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // Then the shape: 413, before existence and ownership (another
    // customer's account, a missing one).
    for (path, token) in [
        (deposit.clone(), &ana_token),
        (deposit.clone(), &bob_token),
        (format!("/accounts/{}/deposits", Uuid::now_v7()), &ana_token),
        ("/inventory".to_owned(), &operator),
    ] {
        assert_problem(
            send(path.clone(), Some(token.clone())).await.unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        )
        .await;
    }
    assert_eq!(app.event_count().await, before, "a refusal appended");
    app.stop().await;
}

/// Each protected operation of the document names its roles
/// (`x-purser-roles`), and the server enforces exactly those: a token
/// without one of them is 403 `forbidden` (before the request is looked
/// at), a token with one is not.
#[tokio::test]
async fn the_document_names_the_roles_the_server_enforces() {
    let keys = Keys::new();
    let app = TestApp::spawn_with_access(keys.access(generous())).await;
    let customer = keys.customer(Uuid::now_v7());
    let operator = keys.operator("olga");
    let document = assert_json(app.get("/openapi.json").await, StatusCode::OK).await;
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            if operation["security"].is_null() {
                continue;
            }
            let roles = operation["x-purser-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} names no roles"));
            let url = path
                .replace("{id}", &Uuid::now_v7().to_string())
                .replace("{order_id}", &Uuid::now_v7().to_string())
                .replace("{sku}", "NO-SUCH-SKU");
            for (role, token) in [("customer", &customer), ("operator", &operator)] {
                let request = match method.as_str() {
                    "post" => app.post(&url).json(&json!({})),
                    "get" => reqwest::Client::new().get(app.url(&url)),
                    other => panic!("{other} {path}: no such method here"),
                };
                let status = request
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request sent")
                    .status();
                let allowed = roles.iter().any(|r| r == role);
                assert_eq!(
                    status == StatusCode::FORBIDDEN,
                    !allowed,
                    "{method} {path} as {role}: {status}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} checked");
    app.stop().await;
}
