//! Every kind of bad input gets 400, 413, 415 or 422 problem+json with its
//! code, and appends nothing.

use reqwest::header::{CONTENT_TYPE, IF_MATCH};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::{assert_problem, order_body};

/// How a bad request is sent.
enum Body {
    Json(Value),
    /// Sent as `application/json`.
    Raw(&'static str),
    /// Sent as `text/plain`.
    Text(&'static str),
}

struct Case {
    name: &'static str,
    path: String,
    body: Body,
    headers: Vec<(&'static str, String)>,
    status: StatusCode,
    code: &'static str,
}

fn case(
    name: &'static str,
    path: &str,
    body: Body,
    status: StatusCode,
    code: &'static str,
) -> Case {
    Case {
        name,
        path: path.to_owned(),
        body,
        headers: Vec::new(),
        status,
        code,
    }
}

fn line(sku: &str, quantity: Value, unit_price: Value) -> Value {
    json!({"sku": sku, "quantity": quantity, "unit_price": unit_price})
}

fn item(sku: &str, name: &str, quantity: i64) -> Value {
    json!({"sku": sku, "name": name, "quantity": quantity, "unit_price": 100, "currency": "EUR"})
}

fn with_address(field: &str, value: Value) -> Value {
    let mut body = order_body(json!([line("A", json!(1), json!(1))]));
    body["shipping_address"][field] = value;
    body
}

#[tokio::test]
async fn bad_inputs_are_refused_and_append_nothing() {
    use Body::{Json, Raw};
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    const UNPROCESSABLE: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

    let app = TestApp::spawn().await;
    let account = app.open_account(1_000).await;
    app.create_item("LAPTOP-15", 5).await;
    app.create_item_at("BIG", 5, i64::MAX, "EUR").await;
    let deposits = format!("/accounts/{account}/deposits");
    let withdrawals = format!("/accounts/{account}/withdrawals");
    let customer = Uuid::now_v7();

    let mut cases = vec![
        // 400: not JSON, wrong shape, invalid ids
        case(
            "malformed json",
            &deposits,
            Raw("{\"amount\": "),
            BAD,
            "malformed_json",
        ),
        case(
            "not an object",
            &deposits,
            Raw("[1, 2]"),
            BAD,
            "invalid_body",
        ),
        case(
            "string amount",
            &deposits,
            Json(json!({"amount": "100"})),
            BAD,
            "invalid_body",
        ),
        case(
            "float amount",
            &deposits,
            Json(json!({"amount": 10.5})),
            BAD,
            "invalid_body",
        ),
        case(
            "null amount",
            &deposits,
            Json(json!({"amount": null})),
            BAD,
            "invalid_body",
        ),
        case(
            "missing amount",
            &deposits,
            Json(json!({})),
            BAD,
            "invalid_body",
        ),
        case(
            "unknown field",
            &deposits,
            Json(json!({"amount": 1, "amout": 1})),
            BAD,
            "invalid_body",
        ),
        case(
            "unknown field on close",
            &format!("/accounts/{account}/close"),
            Json(json!({"force": true})),
            BAD,
            "invalid_body",
        ),
        case(
            "bad path id",
            "/accounts/not-a-uuid/deposits",
            Json(json!({"amount": 1})),
            BAD,
            "invalid_id",
        ),
        case(
            "bad body id",
            "/accounts",
            Json(json!({"customer_id": "42", "currency": "EUR"})),
            BAD,
            "invalid_id",
        ),
        case(
            "bad account id",
            "/accounts",
            Json(json!({"customer_id": customer, "currency": "EUR", "account_id": "x"})),
            BAD,
            "invalid_id",
        ),
        case(
            "bad order id",
            "/orders/1234/cancel",
            Json(json!({})),
            BAD,
            "invalid_id",
        ),
        case(
            "bad sku in path",
            "/inventory/laptop/restock",
            Json(json!({"quantity": 1})),
            BAD,
            "invalid_id",
        ),
        case(
            "lines not a list",
            "/orders",
            Json({
                let mut b = order_body(json!([]));
                b["lines"] = json!("A");
                b
            }),
            BAD,
            "invalid_body",
        ),
        case(
            "missing address",
            "/orders",
            Json({
                let mut b = order_body(json!([line("A", json!(1), json!(1))]));
                b.as_object_mut().unwrap().remove("shipping_address");
                b
            }),
            BAD,
            "invalid_body",
        ),
        case(
            "unknown line field",
            "/orders",
            Json(order_body(
                json!([{"sku": "A", "quantity": 1, "unit_price": 1, "discount": 5}]),
            )),
            BAD,
            "invalid_body",
        ),
        // 422: well-formed values the domain does not accept
        case(
            "zero amount",
            &deposits,
            Json(json!({"amount": 0})),
            UNPROCESSABLE,
            "invalid_amount",
        ),
        case(
            "negative amount",
            &withdrawals,
            Json(json!({"amount": -100})),
            UNPROCESSABLE,
            "invalid_amount",
        ),
        case(
            "amount beyond i64",
            &deposits,
            Raw("{\"amount\": 9223372036854775808}"),
            UNPROCESSABLE,
            "invalid_amount",
        ),
        case(
            "huge amount",
            &deposits,
            Raw("{\"amount\": 100000000000000000000000}"),
            UNPROCESSABLE,
            "invalid_amount",
        ),
        case(
            "bad currency",
            "/accounts",
            Json(json!({"customer_id": customer, "currency": "eur"})),
            UNPROCESSABLE,
            "invalid_currency",
        ),
        case(
            "long currency",
            "/accounts",
            Json(json!({"customer_id": customer, "currency": "EURO"})),
            UNPROCESSABLE,
            "invalid_currency",
        ),
        // A SKU is the item's id: malformed, it is a 400 (the API guide).
        case(
            "bad sku",
            "/inventory",
            Json(item("laptop 15", "Laptop", 1)),
            BAD,
            "invalid_id",
        ),
        case(
            "long sku",
            "/inventory",
            Json(item(&"A".repeat(65), "Laptop", 1)),
            BAD,
            "invalid_id",
        ),
        case(
            "blank name",
            "/inventory",
            Json(item("NEW", "  ", 1)),
            UNPROCESSABLE,
            "invalid_name",
        ),
        case(
            "zero stock",
            "/inventory",
            Json(item("NEW", "New", 0)),
            UNPROCESSABLE,
            "invalid_quantity",
        ),
        case(
            "zero restock",
            "/inventory/LAPTOP-15/restock",
            Json(json!({"quantity": 0})),
            UNPROCESSABLE,
            "invalid_quantity",
        ),
        case(
            "restock beyond range",
            "/inventory/LAPTOP-15/restock",
            Raw("{\"quantity\": 18446744073709551616}"),
            UNPROCESSABLE,
            "invalid_quantity",
        ),
        case(
            "no lines",
            "/orders",
            Json(order_body(json!([]))),
            UNPROCESSABLE,
            "invalid_order",
        ),
        case(
            "101 lines",
            "/orders",
            Json(order_body(json!((0..101)
                .map(|i| line(&format!("S{i}"), json!(1), json!(1)))
                .collect::<Vec<_>>()))),
            UNPROCESSABLE,
            "invalid_order",
        ),
        case(
            "duplicate sku",
            "/orders",
            Json(order_body(json!([
                line("A", json!(1), json!(1)),
                line("A", json!(2), json!(1))
            ]))),
            UNPROCESSABLE,
            "invalid_order",
        ),
        // At the catalog's price of i64::MAX.
        case(
            "total overflows",
            "/orders",
            Json(order_body(json!([line("BIG", json!(2), json!(i64::MAX))]))),
            UNPROCESSABLE,
            "invalid_order",
        ),
        case(
            "zero quantity",
            "/orders",
            Json(order_body(json!([line("A", json!(0), json!(1))]))),
            UNPROCESSABLE,
            "invalid_quantity",
        ),
        case(
            "negative price",
            "/orders",
            Json(order_body(json!([line("A", json!(1), json!(-1))]))),
            UNPROCESSABLE,
            "invalid_amount",
        ),
        case(
            "bad line sku",
            "/orders",
            Json(order_body(json!([line("a", json!(1), json!(1))]))),
            BAD,
            "invalid_id",
        ),
        case(
            "bad country",
            "/orders",
            Json(with_address("country", json!("ESP"))),
            UNPROCESSABLE,
            "invalid_country",
        ),
        case(
            "blank city",
            "/orders",
            Json(with_address("city", json!(""))),
            UNPROCESSABLE,
            "invalid_address",
        ),
        case(
            "order currency",
            "/orders",
            Json({
                let mut b = order_body(json!([line("A", json!(1), json!(1))]));
                b["currency"] = json!("€");
                b
            }),
            UNPROCESSABLE,
            "invalid_currency",
        ),
        case(
            "blank reason",
            &format!("/orders/{}/cancel", Uuid::now_v7()),
            Json(json!({"reason": " "})),
            UNPROCESSABLE,
            "invalid_reason",
        ),
        // 413, 415
        case(
            "body over 64 KiB",
            &deposits,
            Raw(Box::leak(
                format!("{{\"amount\": 1, \"pad\": \"{}\"}}", "x".repeat(65 * 1024))
                    .into_boxed_str(),
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    let mut bad_key = case(
        "long idempotency key",
        &deposits,
        Json(json!({"amount": 1})),
        BAD,
        "invalid_header",
    );
    bad_key.headers.push(("idempotency-key", "k".repeat(256)));
    cases.push(bad_key);
    let mut bad_key = case(
        "idempotency key with a space",
        &deposits,
        Json(json!({"amount": 1})),
        BAD,
        "invalid_header",
    );
    bad_key
        .headers
        .push(("idempotency-key", "two words".to_owned()));
    cases.push(bad_key);
    let mut bad_if_match = case(
        "bad If-Match",
        &deposits,
        Json(json!({"amount": 1})),
        BAD,
        "invalid_header",
    );
    bad_if_match.headers.push(("if-match", "\"v1\"".to_owned()));
    cases.push(bad_if_match);
    cases.push(case(
        "text body",
        &deposits,
        Body::Text("amount=1"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    ));

    let before = app.event_count().await;
    for case in cases {
        let mut request = app.post(&case.path);
        request = match case.body {
            Body::Json(value) => request.json(&value),
            Body::Raw(text) => request.header(CONTENT_TYPE, "application/json").body(text),
            Body::Text(text) => request.header(CONTENT_TYPE, "text/plain").body(text),
        };
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some(test_support::http::PROBLEM_JSON),
            "{}",
            case.name
        );
        let problem: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{}: not JSON: {body}", case.name));
        assert_eq!(problem["code"], case.code, "{}: {problem}", case.name);
        assert_eq!(
            app.event_count().await,
            before,
            "{} appended something",
            case.name
        );
    }
    assert_eq!(app.idempotency_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn errors_have_the_problem_content_type() {
    let app = TestApp::spawn().await;
    let account = app.open_account(0).await;
    let response = app
        .post(&format!("/accounts/{account}/deposits"))
        .json(&json!({"amount": 0}))
        .send()
        .await
        .unwrap();
    let problem =
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_amount").await;
    assert_eq!(problem["type"], "urn:purser:problem:invalid_amount");
    assert_eq!(problem["title"], "Invalid amount");

    // Route-level errors too.
    assert_problem(
        app.get("/nowhere").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let response = app.get("/accounts").await;
    assert!(response.headers().contains_key("allow"), "405 keeps Allow");
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;

    // A body over the limit is 413 (checked where the command reads it).
    let response = app
        .post(&format!("/accounts/{account}/deposits"))
        .header(CONTENT_TYPE, "application/json")
        .body(vec![b' '; 64 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // Exactly 64 KiB is accepted (whitespace around a valid body).
    let mut body = b"{\"amount\": 5}".to_vec();
    body.resize(64 * 1024, b' ');
    let response = app
        .post(&format!("/accounts/{account}/deposits"))
        .header(CONTENT_TYPE, "application/json")
        .header(IF_MATCH, "\"1\"")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await;
}
