//! Every endpoint through the router (no socket), over read models built by
//! the real projectors.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use domain::{BankAccount, Order, OrderCommand};
use query_api::pagination::encode_cursor;
use query_api::{AppState, Progress};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use test_support::router::{assert_problem, send};
use test_support::Harness;

#[tokio::test]
async fn get_account_answers_the_read_model_404_or_400() {
    let h = Harness::new().await;
    let customer = Uuid::now_v7();
    let account = h.open_account_of(customer, "EUR").await;
    h.deposit(account, 10_000).await;
    h.project_all().await;

    let response = h.get(&format!("/accounts/{account}")).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let body = &response.json;
    assert_eq!(body["account_id"], account.to_string());
    assert_eq!(body["customer_id"], customer.to_string());
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["balance"], 10_000);
    assert_eq!(body["status"], "open");
    assert_eq!(body["version"], 2);
    assert!(body["updated_at"].is_string());
    assert!(response.headers.contains_key("x-request-id"));

    assert_problem(
        &h.get(&format!("/accounts/{}", Uuid::now_v7())).await,
        404,
        "not_found",
    );
    assert_problem(&h.get("/accounts/not-a-uuid").await, 400, "invalid_id");
    assert_problem(
        &h.get(&format!("/accounts/{account}?min_version=x")).await,
        400,
        "invalid_query",
    );
    assert_problem(
        &h.get(&format!("/accounts/{account}?bogus=1")).await,
        400,
        "invalid_query",
    );
    assert_problem(
        &h.get(&format!("/accounts/{account}?min_version=1&wait_ms=10001"))
            .await,
        400,
        "invalid_query",
    );
    h.drop().await;
}

#[tokio::test]
async fn the_request_id_is_echoed_and_unknown_routes_are_problems() {
    let h = Harness::new().await;
    let request = Request::get("/health/live")
        .header("x-request-id", "req-42")
        .body(Body::empty())
        .unwrap();
    let response = send(h.state(Duration::from_millis(50)), request).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers.get("x-request-id").unwrap(), "req-42");

    assert_problem(&h.get("/nothing/here").await, 404, "not_found");
    let post = Request::post("/accounts/x").body(Body::empty()).unwrap();
    assert_problem(
        &send(h.state(Duration::from_millis(50)), post).await,
        405,
        "method_not_allowed",
    );
    h.drop().await;
}

#[tokio::test]
async fn transactions_are_paged_with_an_opaque_cursor() {
    let h = Harness::new().await;
    let account = h.open_account_of(Uuid::now_v7(), "EUR").await;
    for amount in 1..=5 {
        h.deposit(account, amount * 100).await;
    }
    h.project_all().await;

    let mut seqs = Vec::new();
    let mut uri = format!("/accounts/{account}/transactions?limit=2");
    let mut pages = 0;
    loop {
        let page = h.get(&uri).await;
        assert_eq!(page.status, 200, "{}", page.text);
        pages += 1;
        for item in page.json["items"].as_array().unwrap() {
            assert_eq!(item["kind"], "deposit");
            assert!(item["order_id"].is_null());
            assert!(item["at"].is_string());
            seqs.push((
                item["seq"].as_i64().unwrap(),
                item["amount"].as_i64().unwrap(),
                item["balance_after"].as_i64().unwrap(),
            ));
        }
        match page.json["next"].as_str() {
            Some(next) => uri = format!("/accounts/{account}/transactions?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seqs,
        vec![
            (2, 100, 100),
            (3, 200, 300),
            (4, 300, 600),
            (5, 400, 1000),
            (6, 500, 1500)
        ]
    );

    let all = h.get(&format!("/accounts/{account}/transactions")).await;
    assert_eq!(all.json["items"].as_array().unwrap().len(), 5);
    assert!(all.json["next"].is_null());

    for bad in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=ten",
        "after=zz",
        "after=abc",
        "after=6869",
    ] {
        assert_problem(
            &h.get(&format!("/accounts/{account}/transactions?{bad}"))
                .await,
            400,
            if bad.starts_with("after") {
                "invalid_cursor"
            } else {
                "invalid_query"
            },
        );
    }
    assert_problem(
        &h.get(&format!("/accounts/{}/transactions", Uuid::now_v7()))
            .await,
        404,
        "not_found",
    );
    h.drop().await;
}

#[tokio::test]
async fn inventory_items_and_their_list() {
    let h = Harness::new().await;
    for (sku, quantity) in [("KB-2", 4), ("LAPTOP-15", 10), ("MOUSE-1", 3)] {
        h.create_item(sku, quantity).await;
    }
    h.project_all().await;

    let item = h.get("/inventory/LAPTOP-15").await;
    assert_eq!(item.status, 200, "{}", item.text);
    assert_eq!(
        item.json,
        serde_json::json!({"sku": "LAPTOP-15", "name": "Item LAPTOP-15", "on_hand": 10, "reserved": 0, "available": 10,
                           "unit_price": 99_999, "currency": "EUR", "version": 1})
    );
    assert_problem(&h.get("/inventory/NOPE-1").await, 404, "not_found");
    assert_problem(&h.get("/inventory/lower-case").await, 400, "invalid_id");

    let first = h.get("/inventory?limit=2").await;
    let skus: Vec<&str> = first.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, vec!["KB-2", "LAPTOP-15"]);
    let next = first.json["next"].as_str().unwrap();
    let second = h.get(&format!("/inventory?limit=2&after={next}")).await;
    let skus: Vec<&str> = second.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, vec!["MOUSE-1"]);
    assert!(second.json["next"].is_null());
    // A cursor that decodes to something that is not a SKU.
    assert_problem(
        &h.get(&format!("/inventory?after={}", encode_cursor("not a sku")))
            .await,
        400,
        "invalid_cursor",
    );
    h.drop().await;
}

#[tokio::test]
async fn orders_with_lines_filters_and_pages() {
    let h = Harness::new().await;
    let (ana, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let account = Uuid::now_v7();
    let o1 = h.place_order(ana, account).await;
    let o2 = h.place_order(bob, account).await;
    let o3 = h.place_order(ana, account).await;
    h.exec::<Order>(&o3.to_string(), OrderCommand::MarkReserved)
        .await;
    h.project_all().await;

    let order = h.get(&format!("/orders/{o1}")).await;
    assert_eq!(order.status, 200, "{}", order.text);
    let body = &order.json;
    assert_eq!(body["order_id"], o1.to_string());
    assert_eq!(body["customer_id"], ana.to_string());
    assert_eq!(body["account_id"], account.to_string());
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["status"], "placed");
    assert_eq!(body["total"], 102_999);
    assert!(body["cancellation_reason"].is_null() && body["tracking_number"].is_null());
    assert_eq!(body["version"], 1);
    assert!(body["placed_at"].is_string() && body["updated_at"].is_string());
    assert_eq!(
        body["lines"],
        serde_json::json!([
            {"sku": "LAPTOP-15", "quantity": 1, "unit_price": 99_999},
            {"sku": "MOUSE-1", "quantity": 2, "unit_price": 1_500}
        ])
    );

    let ids = |r: &test_support::router::Response| -> Vec<String> {
        r.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = h.get("/orders").await;
    assert_eq!(
        ids(&all),
        vec![o1.to_string(), o2.to_string(), o3.to_string()]
    );
    assert_eq!(all.json["items"][0]["lines"].as_array().unwrap().len(), 2);
    let anas = h.get(&format!("/orders?customer_id={ana}")).await;
    assert_eq!(ids(&anas), vec![o1.to_string(), o3.to_string()]);
    let reserved = h
        .get(&format!("/orders?customer_id={ana}&status=reserved"))
        .await;
    assert_eq!(ids(&reserved), vec![o3.to_string()]);
    let page1 = h.get("/orders?limit=1").await;
    let page2 = h
        .get(&format!(
            "/orders?limit=1&after={}",
            page1.json["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(ids(&page2), vec![o2.to_string()]);

    assert_problem(&h.get("/orders?status=lost").await, 400, "invalid_query");
    assert_problem(
        &h.get("/orders?customer_id=ana").await,
        400,
        "invalid_query",
    );
    assert_problem(&h.get("/orders?after=00").await, 400, "invalid_cursor");
    assert_problem(
        &h.get(&format!("/orders/{}", Uuid::now_v7())).await,
        404,
        "not_found",
    );
    assert_problem(&h.get("/orders/123").await, 400, "invalid_id");
    h.drop().await;
}

#[tokio::test]
async fn min_version_times_out_with_503_and_retry_after() {
    let h = Harness::new().await;
    let account = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.project_all().await;
    h.deposit(account, 5).await; // version 2, not projected

    let response = h
        .get(&format!("/accounts/{account}?min_version=2&wait_ms=100"))
        .await;
    assert_problem(&response, 503, "min_version_timeout");
    assert_eq!(response.headers.get("retry-after").unwrap(), "1");
    // An entity not projected at all is waited for too, not a 404.
    let missing = h
        .get(&format!(
            "/orders/{}?min_version=1&wait_ms=50",
            Uuid::now_v7()
        ))
        .await;
    assert_problem(&missing, 503, "min_version_timeout");
    // Already reached: answers at once.
    let reached = h.get(&format!("/accounts/{account}?min_version=1")).await;
    assert_eq!(reached.status, 200);
    h.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_waits_wake_on_the_projection_notification() {
    let h = Harness::new().await;
    let account = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.project_all().await;
    let version = h.deposit(account, 700).await;

    // The poll fallback is far longer than the wait: only the LISTEN
    // wake-up can answer in time.
    let progress = Progress::new(Duration::from_secs(60));
    let shutdown = CancellationToken::new();
    let listener = progress.spawn_listener(h.db.pool.clone(), shutdown.clone());
    let state = AppState::new(h.db.pool.clone(), progress);
    let uri = format!("/accounts/{account}?min_version={version}&wait_ms=10000");
    let request = tokio::spawn({
        let state = state.clone();
        async move { send(state, Request::get(uri).body(Body::empty()).unwrap()).await }
    });
    // Apply only once the listener is LISTENing and the request waits.
    let (pool, progress, request_ref) = (&h.db.pool, &state.progress, &request);
    test_support::eventually(
        "the request to wait",
        Duration::from_secs(10),
        Duration::from_millis(10),
        move || async move {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            if listening > 0 && progress.waiters("accounts") > 0 {
                return Ok(());
            }
            assert!(
                !request_ref.is_finished(),
                "answered before the event was applied"
            );
            Err(listening)
        },
    )
    .await;
    h.projector_named("accounts")
        .apply_batch(
            &h.store
                .read_stream(&event_store::StreamId::of::<BankAccount>(account), 2)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    let response = request.await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.json["balance"], 700);
    assert_eq!(response.json["version"], version);
    shutdown.cancel();
    listener.await.unwrap();
    h.drop().await;
}

#[tokio::test]
async fn projections_report_checkpoint_head_lag_and_parked_streams() {
    let h = Harness::new().await;
    let a = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.deposit(a, 10).await;
    h.create_item("LAPTOP-15", 1).await;
    h.project_all().await;
    h.deposit(a, 20).await;
    h.deposit(a, 30).await;

    let response = h.get("/projections").await;
    assert_eq!(response.status, 200, "{}", response.text);
    let list = response.json.as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["accounts", "inventory", "orders", "sagas"]);
    let accounts = &list[0];
    assert_eq!(accounts["lag_events"], 2);
    assert_eq!(accounts["status"], "catching_up");
    assert!(accounts["head"].as_i64().unwrap() > accounts["checkpoint"].as_i64().unwrap());
    assert_eq!(list[1]["lag_events"], 0);
    assert_eq!(list[1]["status"], "up_to_date");
    assert_eq!(list[1]["checkpoint"], list[1]["head"]);
    assert_eq!(
        list[2],
        serde_json::json!({"name": "orders", "checkpoint": 0, "head": 0, "lag_events": 0, "status": "up_to_date", "parked_streams": 0, "events_applied": 0, "rebuild": null, "rebuild_requested": null})
    );

    // A poison event parks its stream: degraded.
    sqlx::query(
        "INSERT INTO event_store.events (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         VALUES ($1, 'account', $2, 5, 'MoneyDeposited', 1, '{\"amount\": -1}')",
    )
    .bind(Uuid::now_v7())
    .bind(format!("account-{a}"))
    .execute(&h.db.pool)
    .await
    .unwrap();
    h.project_all().await;
    let after = h.get("/projections").await;
    let accounts = &after.json[0];
    assert_eq!(accounts["status"], "degraded");
    assert_eq!(accounts["parked_streams"], 1);
    // Versions 3 and 4 were applied; the poison (5) waits.
    assert_eq!(accounts["lag_events"], 1);
    h.drop().await;
}

#[tokio::test]
async fn projections_show_a_rebuild_running_or_interrupted() {
    let h = Harness::new().await;
    let a = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.deposit(a, 10).await;
    h.project_all().await;
    // A rebuild interrupted at once: its shadow and its row are there.
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let interrupted = projections::rebuild::rebuild(
        std::sync::Arc::new(projections::Accounts),
        &h.store,
        &projections::rebuild::RebuildOptions::default(),
        &cancelled,
        &mut |_| {},
    )
    .await;
    assert!(
        matches!(interrupted, Err(projections::Error::Interrupted { .. })),
        "{interrupted:?}"
    );
    let list = h.get("/projections").await.json;
    let rebuild = &list[0]["rebuild"];
    assert_eq!(
        (
            &rebuild["running"],
            &rebuild["phase"],
            &rebuild["events_done"]
        ),
        (
            &serde_json::json!(false),
            &serde_json::json!("replay"),
            &serde_json::json!(0)
        ),
        "{list}"
    );
    assert!(rebuild["started_at"].is_string(), "{rebuild}");
    assert_eq!(list[1]["rebuild"], serde_json::Value::Null);

    // Running: some process holds the projection's rebuild lock.
    let mut holder = h.db.pool.acquire().await.unwrap().detach();
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtext('purser.projection.rebuild'), hashtext('accounts'))",
    )
    .fetch_one(&mut holder)
    .await
    .unwrap();
    assert!(locked);
    assert_eq!(
        h.get("/projections").await.json[0]["rebuild"]["running"],
        true
    );
    let metrics = h.get("/metrics").await.text;
    assert!(
        metrics.contains("purser_projection_rebuild_running{projection=\"accounts\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("purser_projection_rebuild_running{projection=\"inventory\"} 0"),
        "{metrics}"
    );
    sqlx::Connection::close(holder).await.unwrap();
    h.drop().await;
}

#[tokio::test]
async fn metrics_health_and_openapi() {
    let h = Harness::new().await;
    let a = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.deposit(a, 10).await;
    h.project_all().await;

    let metrics = h.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    for line in [
        "purser_projection_lag_events{projection=\"accounts\"} 0",
        "purser_projection_events_applied_total{projection=\"accounts\"} 2",
        "purser_projection_parked_streams{projection=\"orders\"} 0",
        "# TYPE purser_projection_events_applied counter",
        "# HELP purser_projection_lag_events Events of the projection's stream types in the event store not yet applied.",
    ] {
        assert!(
            metrics.text.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            metrics.text
        );
    }

    assert_eq!(h.get("/health/live").await.status, 200);
    // No worker consumes yet: not ready, whatever the database says.
    let waiting = h.get("/health/ready").await;
    assert_eq!(waiting.status, 503, "{}", waiting.json);
    assert_eq!(waiting.json["checks"]["database"], "ok");
    assert_eq!(waiting.json["checks"]["projections"]["orders"], "no_worker");
    // Each projection has a member consuming since the head it has applied.
    for projection in projections::all() {
        projections::readiness::joined(&h.db.pool, projection.as_ref(), Uuid::now_v7())
            .await
            .unwrap();
    }
    let ready = h.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.json);
    assert_eq!(ready.json["checks"]["database"], "ok");
    assert_eq!(ready.json["checks"]["projections"]["accounts"], "ok");
    // A database nobody listens at.
    let dead = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let response = send(
        AppState::new(dead, Progress::new(Duration::from_millis(50))),
        Request::get("/health/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_problem(&response, 503, "service_unavailable");
    assert_eq!(response.json["checks"]["database"], "unreachable");
    assert!(response.headers.contains_key("retry-after"));

    let doc = h.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.json["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/accounts/{id}",
        "/accounts/{id}/transactions",
        "/inventory",
        "/inventory/{sku}",
        "/orders",
        "/orders/{id}",
        "/projections",
        "/health/live",
        "/health/ready",
        "/metrics",
    ] {
        assert!(doc.json["paths"][path]["get"].is_object(), "{path} missing");
    }
    h.drop().await;
}

/// Over HTTP, a real database error (the read model's table is gone) is a
/// 500 whose body names no SQL, table or driver: a generic detail and the
/// request id the cause was logged under, in the body and in
/// `x-request-id`.
#[tokio::test]
async fn a_database_error_is_a_500_that_leaks_nothing_and_names_the_request() {
    let h = Harness::new().await;
    let account = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.project_all().await;
    let mut pipeline = test_support::pipeline::Pipeline::new();
    let client = pipeline.query_api(&h.db.pool).await;
    sqlx::raw_sql("ALTER TABLE read_models.accounts RENAME TO accounts_hidden_from_the_api")
        .execute(&h.db.pool)
        .await
        .expect("rename");

    let response = client
        .http
        .get(client.url(&format!("/accounts/{account}")))
        .header("x-request-id", "leak-check-500")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["x-request-id"], "leak-check-500");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: serde_json::Value = response.json().await.expect("json");
    assert_eq!(problem["code"], "internal_error");
    assert_eq!(problem["request_id"], "leak-check-500");
    let text = problem.to_string();
    for leak in [
        "accounts",
        "read_models",
        "relation",
        "does not exist",
        "SELECT",
        "sqlx",
        "database",
        "42P01",
    ] {
        assert!(!text.contains(leak), "{leak:?} leaks: {text}");
    }
    pipeline.stop().await;
    h.drop().await;
}
