//! The operator console's side of the Query API: the page and its assets
//! (open, nothing from another origin), what the page reads besides the
//! other endpoints (`GET /sagas/counts`, `GET /projections/{name}/parked`,
//! a requested rebuild in `GET /projections`), and the live feed
//! (`GET /console/events`, operators only) fed by the LISTEN connection.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use domain::Step;
use event_store::{ExpectedVersion, Metadata, NewEvent, StreamId};
use futures::StreamExt;
use serde_json::json;
use service::auth::Access;
use test_support::router::{assert_problem, send_with, Response};
use test_support::saga_sim::{run_saga, saga_order, StepOutcome};
use test_support::tokens::{generous, Keys};
use test_support::Harness;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

async fn get(h: &Harness, access: &Access, uri: &str, token: Option<&str>) -> Response {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let state = h.state(Duration::from_millis(20));
    send_with(state, access.clone(), request.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn the_page_and_its_assets_are_open_and_load_nothing_from_elsewhere() {
    let h = Harness::new().await;
    let access = Keys::new().access(generous());
    for (uri, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let response = get(&h, &access, uri, None).await;
        assert_eq!(response.status, 200, "{uri}");
        let content_type = response.headers["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{uri}: {content_type}");
        let policy = response.headers["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        assert!(
            !response.text.contains("https://"),
            "{uri} names another origin"
        );
    }
    let page = get(&h, &access, "/console", None).await;
    assert!(page.text.contains("<title>Purser console</title>"));
    // The document says so: the page is open, its feed is the operators'.
    let document = get(&h, &access, "/openapi.json", None).await;
    let paths = &document.json["paths"];
    assert!(paths["/console"]["get"]["security"].is_null());
    assert_eq!(
        paths["/console/events"]["get"]["security"],
        json!([{"bearer": []}])
    );
    assert!(paths["/console/events"]["get"]["responses"]["403"].is_object());
    h.drop().await;
}

#[tokio::test]
async fn saga_counts_parked_streams_and_requested_rebuilds_are_for_operators() {
    let h = Harness::new().await;
    let keys = Keys::new();
    let access = keys.access(generous());
    let (operator, customer) = (keys.operator("olga"), keys.customer(Uuid::now_v7()));
    // One saga that needs attention, one completed.
    run_saga(
        &h.store,
        saga_order(Uuid::now_v7(), &["A"]),
        |step, _| match step {
            Step::Ship => StepOutcome::Fail,
            _ => StepOutcome::Succeed,
        },
    )
    .await;
    run_saga(&h.store, saga_order(Uuid::now_v7(), &["A"]), |_, _| {
        StepOutcome::Succeed
    })
    .await;
    // An account whose stream a poison event parks.
    let (account, _) = h.open_account("EUR").await;
    h.store
        .append(
            &StreamId::new("account", account),
            ExpectedVersion::Exact(1),
            &[NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "MoneyDeposited".to_owned(),
                schema_version: 1,
                payload: json!({ "amount": "lots" }),
            }],
            &Metadata::default(),
        )
        .await
        .unwrap();
    let events = h.all_events().await;
    for projection in projections::all() {
        projections::Projector::new(projection, h.store.clone())
            .with_max_attempts(1)
            .apply_batch(&events)
            .await
            .unwrap();
    }

    let counts = get(&h, &access, "/sagas/counts", Some(&operator)).await;
    assert_eq!(counts.status, 200, "{}", counts.text);
    assert_eq!(
        counts.json,
        json!({"running": 0, "compensating": 0, "completed": 1, "compensated": 0, "needs_attention": 1})
    );
    let parked = get(&h, &access, "/projections/accounts/parked", Some(&operator)).await;
    assert_eq!(parked.status, 200, "{}", parked.text);
    assert_eq!(parked.json["total"], 1);
    let item = &parked.json["items"][0];
    assert_eq!(item["stream_id"], format!("account-{account}"));
    assert_eq!(item["version"], 2);
    assert_eq!(item["attempts"], 1);
    assert!(
        item["error"].as_str().unwrap().contains("MoneyDeposited"),
        "{item}"
    );
    let none = get(
        &h,
        &access,
        "/projections/orders/parked?limit=1",
        Some(&operator),
    )
    .await;
    assert_eq!(none.json, json!({"items": [], "total": 0}));
    assert_problem(
        &get(&h, &access, "/projections/nope/parked", Some(&operator)).await,
        404,
        "not_found",
    );
    assert_problem(
        &get(
            &h,
            &access,
            "/projections/accounts/parked?limit=0",
            Some(&operator),
        )
        .await,
        400,
        "invalid_query",
    );

    // A requested rebuild shows in /projections until a worker ran it.
    projections::requests::request_rebuild(&h.db.pool, "orders", "olga", "req-1")
        .await
        .unwrap();
    let listed = get(&h, &access, "/projections", Some(&operator)).await;
    let orders = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "orders")
        .unwrap();
    assert_eq!(orders["rebuild_requested"]["requested_by"], "olga");
    assert!(orders["rebuild_requested"]["started_at"].is_null());
    assert!(orders["rebuild"].is_null());
    let accounts = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "accounts")
        .unwrap();
    assert!(accounts["rebuild_requested"].is_null());

    for uri in [
        "/sagas/counts",
        "/projections/accounts/parked",
        "/console/events",
    ] {
        assert_problem(
            &get(&h, &access, uri, Some(&customer)).await,
            403,
            "forbidden",
        );
        assert_problem(&get(&h, &access, uri, None).await, 401, "unauthenticated");
    }
    h.drop().await;
}

/// The next server-sent event of `body` (its text, without the trailing
/// blank line), skipping comments.
async fn next_event(body: &mut axum::body::BodyDataStream, buffer: &mut String) -> String {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let event = event.trim_end().to_owned();
            if event.lines().all(|line| line.starts_with(':')) {
                continue;
            }
            return event;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("an event within 30 s")
            .expect("the stream goes on")
            .expect("a chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_live_feed_names_the_projections_that_move_and_ends_with_the_server() {
    let h = Harness::new().await;
    let keys = Keys::new();
    let mut state = h.state(Duration::from_millis(20));
    let closing = CancellationToken::new();
    state.closing = closing.clone();
    let listening = CancellationToken::new();
    let listener = state
        .progress
        .spawn_listener(h.db.pool.clone(), listening.clone());
    let response = query_api::router(state, keys.access(generous()))
        .oneshot(
            Request::get("/console/events")
                .header("authorization", format!("Bearer {}", keys.operator("olga")))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let mut body = response.into_body().into_data_stream();
    let mut buffer = String::new();
    assert_eq!(
        next_event(&mut body, &mut buffer).await,
        "event: ready\ndata: {}"
    );

    // A projection's batch (as its worker notifies it), then a rebuild's
    // progress: each named. Sent until heard: the listener may still be
    // connecting (and then announces every projection once).
    for (notify, expected) in [
        (
            "SELECT pg_notify('purser_projection', 'accounts' || chr(10) || 'account-1')",
            "event: change\ndata: {\"projections\":[\"accounts\"]}",
        ),
        (
            "SELECT pg_notify('purser_projection_progress', 'sagas')",
            "event: change\ndata: {\"projections\":[\"sagas\"]}",
        ),
    ] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            sqlx::query(notify).execute(&h.db.pool).await.unwrap();
            let heard = tokio::time::timeout(
                Duration::from_millis(500),
                next_event(&mut body, &mut buffer),
            )
            .await;
            if heard.as_deref() == Ok(expected) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{expected} not heard within 30 s (last: {heard:?})"
            );
        }
    }

    // The server stops: the stream ends.
    closing.cancel();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ends when the server stops");
    listening.cancel();
    listener.await.unwrap();
    h.drop().await;
}
