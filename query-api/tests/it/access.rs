//! Who may read what (the API guide's access table, query side): a customer reads
//! only its own accounts, ledgers and orders (another's is exactly a
//! missing one, `min_version` waits included), lists only its own orders;
//! operators read anything; the operator-only routes are 403 to customers;
//! no token is 401; bad tokens are 401 `invalid_token`.

use axum::body::Body;
use axum::http::Request;
use service::auth::Access;
use uuid::Uuid;

use test_support::router::{assert_problem, send_with, Response};
use test_support::tokens::{generous, Keys};
use test_support::Harness;

async fn get(h: &Harness, access: &Access, uri: &str, token: Option<&str>) -> Response {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let state = h.state(std::time::Duration::from_millis(20));
    send_with(state, access.clone(), request.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn customers_read_only_their_own_and_operators_read_anything() {
    let h = Harness::new().await;
    let keys = Keys::new();
    let access = keys.access(generous());
    let (ana, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let account = h.open_account_of(ana, "EUR").await;
    h.deposit(account, 500).await;
    h.create_item("LAPTOP-15", 5).await;
    let order = h.place_order(ana, account).await;
    h.project_all().await;
    let (ana_t, bob_t, op_t) = (
        keys.customer(ana),
        keys.customer(bob),
        keys.operator("olga"),
    );

    for uri in [
        format!("/accounts/{account}"),
        format!("/accounts/{account}/transactions"),
        format!("/orders/{order}"),
    ] {
        assert_eq!(
            get(&h, &access, &uri, Some(&ana_t)).await.status,
            200,
            "owner {uri}"
        );
        assert_eq!(
            get(&h, &access, &uri, Some(&op_t)).await.status,
            200,
            "operator {uri}"
        );
        let denied = get(&h, &access, &uri, None).await;
        assert_problem(&denied, 401, "unauthenticated");
        assert!(denied.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        // Another customer's is exactly a missing one: same status and body.
        let missing_uri = uri
            .replace(&account.to_string(), &Uuid::now_v7().to_string())
            .replace(&order.to_string(), &Uuid::now_v7().to_string());
        let others = get(&h, &access, &uri, Some(&bob_t)).await;
        let missing = get(&h, &access, &missing_uri, Some(&bob_t)).await;
        assert_problem(&others, 404, "not_found");
        assert_eq!(others.status, missing.status, "{uri}");
        assert_eq!(
            others.json["code"], missing.json["code"],
            "{uri}: {} vs {}",
            others.text, missing.text
        );
        // With a min_version wait too: it times out like a missing one.
        let waited = get(
            &h,
            &access,
            &format!("{uri}?min_version=1&wait_ms=100"),
            Some(&bob_t),
        )
        .await;
        assert_problem(&waited, 503, "min_version_timeout");
    }
    let not_owner = get(&h, &access, &format!("/accounts/{account}"), Some(&bob_t)).await;
    assert!(
        !not_owner.text.contains(&ana.to_string()),
        "{}",
        not_owner.text
    );

    // Lists: a customer sees its own orders only; another's filter is 403.
    let own = get(&h, &access, "/orders", Some(&ana_t)).await;
    assert_eq!(
        own.json["items"].as_array().unwrap().len(),
        1,
        "{}",
        own.text
    );
    let none = get(&h, &access, "/orders", Some(&bob_t)).await;
    assert_eq!(
        none.json["items"].as_array().unwrap().len(),
        0,
        "{}",
        none.text
    );
    let filtered = get(
        &h,
        &access,
        &format!("/orders?customer_id={ana}"),
        Some(&ana_t),
    )
    .await;
    assert_eq!(filtered.json["items"].as_array().unwrap().len(), 1);
    let spying = get(
        &h,
        &access,
        &format!("/orders?customer_id={ana}"),
        Some(&bob_t),
    )
    .await;
    assert_problem(&spying, 403, "forbidden");
    let all = get(
        &h,
        &access,
        &format!("/orders?customer_id={ana}"),
        Some(&op_t),
    )
    .await;
    assert_eq!(all.json["items"].as_array().unwrap().len(), 1);

    // Inventory: both roles.
    for token in [&ana_t, &op_t] {
        assert_eq!(
            get(&h, &access, "/inventory", Some(token)).await.status,
            200
        );
        assert_eq!(
            get(&h, &access, "/inventory/LAPTOP-15", Some(token))
                .await
                .status,
            200
        );
    }
    // Operator only: 403 to a customer, before the query is looked at.
    for uri in [
        "/sagas",
        "/projections",
        "/metrics",
        "/sagas?state=nonsense",
    ] {
        assert_problem(&get(&h, &access, uri, Some(&ana_t)).await, 403, "forbidden");
        assert_problem(&get(&h, &access, uri, None).await, 401, "unauthenticated");
    }
    for uri in ["/sagas", "/projections", "/metrics"] {
        assert_eq!(
            get(&h, &access, uri, Some(&op_t)).await.status,
            200,
            "{uri}"
        );
    }
    // A saga of another customer's order is a missing one.
    let saga = get(&h, &access, &format!("/sagas/{order}"), Some(&bob_t)).await;
    assert_problem(&saga, 404, "not_found");
    // Open routes.
    assert_eq!(get(&h, &access, "/health/live", None).await.status, 200);
    let document = get(&h, &access, "/openapi.json", None).await;
    assert_eq!(document.status, 200);
    let operation = &document.json["paths"]["/accounts/{id}"]["get"];
    assert_eq!(operation["security"], serde_json::json!([{"bearer": []}]));
    assert!(operation["responses"]["401"].is_object());
    assert_eq!(
        document.json["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    h.drop().await;
}

#[tokio::test]
async fn bad_tokens_are_401_invalid_token() {
    let h = Harness::new().await;
    let keys = Keys::new();
    let access = keys.access(generous());
    for (what, token) in keys.bad_tokens() {
        let response = get(&h, &access, "/inventory", Some(&token)).await;
        assert_problem(&response, 401, "invalid_token");
        assert!(
            response.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}"
        );
    }
    h.drop().await;
}

/// A saga's owner is its own row's `customer_id` (the order's customer, from
/// `SagaStarted`): its customer reads it even before the orders read model
/// has the order, another customer gets exactly what a missing saga gets,
/// operators read it.
#[tokio::test]
async fn a_saga_is_read_by_its_orders_customer_from_its_own_row() {
    use test_support::saga_sim::{run_saga, saga_order, StepOutcome};

    let h = Harness::new().await;
    let keys = Keys::new();
    let access = keys.access(generous());
    let order = Uuid::now_v7();
    let placed = saga_order(order, &["A"]);
    let ana = placed.customer_id.as_uuid();
    run_saga(&h.store, placed, |_, _| StepOutcome::Succeed).await;
    // Only the sagas projection: there is no order stream at all.
    h.projector(projections::Sagas)
        .apply_batch(&h.all_events().await)
        .await
        .expect("apply");
    let owner: Uuid =
        sqlx::query_scalar("SELECT customer_id FROM read_models.sagas WHERE order_id = $1")
            .bind(order)
            .fetch_one(&h.db.pool)
            .await
            .expect("the saga's row");
    assert_eq!(owner, ana);

    let uri = format!("/sagas/{order}");
    let own = get(&h, &access, &uri, Some(&keys.customer(ana))).await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(own.json["order_id"], order.to_string());
    let operator = get(&h, &access, &uri, Some(&keys.operator("olga"))).await;
    assert_eq!(operator.status, 200, "{}", operator.text);

    let bob = keys.customer(Uuid::now_v7());
    let others = get(&h, &access, &uri, Some(&bob)).await;
    let missing = get(
        &h,
        &access,
        &format!("/sagas/{}", Uuid::now_v7()),
        Some(&bob),
    )
    .await;
    assert_problem(&others, 404, "not_found");
    assert_eq!(
        (others.status, &others.json["code"], &others.json["title"]),
        (
            missing.status,
            &missing.json["code"],
            &missing.json["title"]
        )
    );
    let waited = get(
        &h,
        &access,
        &format!("{uri}?min_version=1&wait_ms=100"),
        Some(&bob),
    )
    .await;
    assert_problem(&waited, 503, "min_version_timeout");
    assert_problem(&get(&h, &access, &uri, None).await, 401, "unauthenticated");

    // The owner column is indexed.
    let indexed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'read_models' \
         AND tablename = 'sagas' AND indexdef LIKE '%(customer_id%')",
    )
    .fetch_one(&h.db.pool)
    .await
    .expect("indexes");
    assert!(indexed);
    h.drop().await;
}

/// The API guide's order of checks on the query side too: credentials (401), role
/// (403), then a body over 64 KiB (413), then existence (404).
#[tokio::test]
async fn a_body_over_the_limit_is_413_only_after_credentials_and_role() {
    let h = Harness::new().await;
    let keys = Keys::new();
    let access = keys.access(generous());
    let huge = vec![b' '; 64 * 1024 + 1];
    let send = |uri: &str, token: Option<String>| {
        let mut request = Request::get(uri).header("content-length", huge.len());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        send_with(
            h.state(std::time::Duration::from_millis(20)),
            access.clone(),
            request.body(Body::from(huge.clone())).unwrap(),
        )
    };
    let customer = keys.customer(Uuid::now_v7());
    let missing = format!("/accounts/{}", Uuid::now_v7());
    assert_problem(&send(&missing, None).await, 401, "unauthenticated");
    assert_problem(
        &send(&missing, Some("garbage".to_owned())).await,
        401,
        "invalid_token",
    );
    assert_problem(
        &send("/sagas", Some(customer.clone())).await,
        403,
        "forbidden",
    );
    assert_problem(
        &send(&missing, Some(customer.clone())).await,
        413,
        "payload_too_large",
    );
    assert_problem(
        &send("/sagas", Some(keys.operator("olga"))).await,
        413,
        "payload_too_large",
    );
    // Within the limit: the request goes on (a missing account is 404).
    let fine = send_with(
        h.state(std::time::Duration::from_millis(20)),
        access.clone(),
        Request::get(&missing)
            .header("authorization", format!("Bearer {customer}"))
            .header("content-length", 10)
            .body(Body::from(vec![b' '; 10]))
            .unwrap(),
    )
    .await;
    assert_problem(&fine, 404, "not_found");
    h.drop().await;
}

/// Each protected operation of the document names its roles
/// (`x-purser-roles`), and the server enforces exactly those: a token
/// without one of them is 403 `forbidden`, a token with one is not.
#[tokio::test]
async fn the_document_names_the_roles_the_server_enforces() {
    let h = Harness::new().await;
    let keys = Keys::new();
    let access = keys.access(generous());
    let customer = keys.customer(Uuid::now_v7());
    let operator = keys.operator("olga");
    let document = get(&h, &access, "/openapi.json", None).await;
    let mut checked = 0;
    for (path, item) in document.json["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("operations") {
            if operation["security"].is_null() {
                continue;
            }
            assert_eq!(method, "get", "{path}");
            let roles = operation["x-purser-roles"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} names no roles"));
            let uri = path
                .replace("{id}", &Uuid::now_v7().to_string())
                .replace("{order_id}", &Uuid::now_v7().to_string())
                .replace("{sku}", "NO-SUCH-SKU");
            for (role, token) in [("customer", &customer), ("operator", &operator)] {
                let status = get(&h, &access, &uri, Some(token)).await.status;
                let allowed = roles.iter().any(|r| r == role);
                assert_eq!(
                    status == 403,
                    !allowed,
                    "{method} {path} as {role}: {status}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} checked");
    h.drop().await;
}

/// A `min_version` no stream can reach (past `i64`) is a bad request, not a
/// wait; the largest possible one is waited for (and times out here).
#[tokio::test]
async fn min_version_past_any_version_is_400() {
    let h = Harness::new().await;
    let keys = Keys::new();
    let access = keys.access(generous());
    let operator = keys.operator("olga");
    let id = Uuid::now_v7();
    for uri in [
        format!("/accounts/{id}?min_version=9223372036854775808"),
        format!("/accounts/{id}?min_version=18446744073709551616"),
        format!("/orders/{id}?min_version=9223372036854775808&wait_ms=10"),
        format!("/sagas/{id}?min_version=9223372036854775808"),
        "/inventory/NO-SUCH-SKU?min_version=9223372036854775808".to_owned(),
        format!("/accounts/{id}/transactions?min_version=9223372036854775808"),
    ] {
        let response = get(&h, &access, &uri, Some(&operator)).await;
        assert_problem(&response, 400, "invalid_query");
    }
    let response = get(
        &h,
        &access,
        &format!("/accounts/{id}?min_version=9223372036854775807&wait_ms=0"),
        Some(&operator),
    )
    .await;
    assert_problem(&response, 503, "min_version_timeout");
    h.drop().await;
}
