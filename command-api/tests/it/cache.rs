//! The aggregate cache: bounded, visible in `/metrics`, and correct across
//! several Command API processes on one database.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;

use test_support::command_api::{Server, TestApp};

/// The value of the metric line that starts with `name` (labels included).
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn metrics_of(server: &Server) -> String {
    let response = server.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("metrics text")
}

const HITS: &str = "command_api_aggregate_cache_hits_total{stream_type=\"account\"}";
const MISSES: &str = "command_api_aggregate_cache_misses_total{stream_type=\"account\"}";
const EVICTIONS: &str = "command_api_aggregate_cache_evictions_total{stream_type=\"account\"}";
const ENTRIES: &str = "command_api_aggregate_cache_entries{stream_type=\"account\"}";
const CAPACITY: &str = "command_api_aggregate_cache_capacity{stream_type=\"account\"}";

#[tokio::test]
async fn the_cache_keeps_its_bound_and_shows_its_hits_in_metrics() {
    let app = TestApp::spawn_with(|config| config.aggregate_cache_size = 5).await;
    // Each: opened (a miss: a new stream), then a deposit decided on the
    // state the opening left (a hit).
    let mut accounts = Vec::new();
    for _ in 0..8 {
        accounts.push(app.open_account(100).await);
    }
    let metrics = metrics_of(&app.server).await;
    assert_eq!(metric(&metrics, CAPACITY), 5);
    assert_eq!(metric(&metrics, ENTRIES), 5, "the bound holds");
    assert_eq!(metric(&metrics, MISSES), 8);
    assert_eq!(metric(&metrics, HITS), 8);
    assert_eq!(metric(&metrics, EVICTIONS), 3);

    // The first account was forgotten (least recently used): read again,
    // and right; the last one is remembered.
    for account in [accounts[0], accounts[7]] {
        let response = app
            .post_json(
                &format!("/accounts/{account}/deposits"),
                &json!({"amount": 50}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let (state, version) = app.account(account).await;
        assert_eq!((state.balance.amount(), version), (150, 3));
    }
    let metrics = metrics_of(&app.server).await;
    assert_eq!(metric(&metrics, ENTRIES), 5);
    assert_eq!(metric(&metrics, MISSES), 9);
    assert_eq!(metric(&metrics, HITS), 9);
    assert_eq!(metric(&metrics, EVICTIONS), 4);
    app.stop().await;
}

/// Two Command API processes' worth (two servers, two pools) on one
/// database, both caching the account: each learns of the other's writes by
/// the conflict of an append at a remembered version, and re-reads.
#[tokio::test]
async fn two_instances_with_caches_never_overdraw() {
    let app = TestApp::spawn_with(|config| config.max_retries = 20).await;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&app.db.url)
        .await
        .expect("second pool");
    let second = Server::start(pool, |config| config.max_retries = 20).await;
    // Version 2 remembered by the first; the second withdraws (version 3),
    // so the first's cache is stale before the race starts.
    let account = app.open_account(1_000).await;
    let path = format!("/accounts/{account}/withdrawals");
    let warm = second.post_json(&path, &json!({"amount": 100})).await;
    assert_eq!(warm.status(), StatusCode::OK);

    let servers = [&app.server, &second];
    let answers = join_all((0..50).map(|i| {
        let server = servers[i % 2];
        let path = path.clone();
        async move {
            let response = server.post_json(&path, &json!({"amount": 100})).await;
            let status = response.status();
            let body: Value = response.json().await.expect("JSON body");
            (status, body)
        }
    }))
    .await;

    let mut versions = Vec::new();
    for (status, body) in &answers {
        match *status {
            StatusCode::OK => versions.push(body["version"].as_u64().expect("version")),
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(body["code"], "insufficient_funds", "{body}");
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    versions.sort_unstable();
    assert_eq!(versions, (4..=12).collect::<Vec<_>>(), "{answers:?}");
    let (state, version) = app.account(account).await;
    assert_eq!(state.balance.amount(), 0);
    assert_eq!(version, 12);
    assert_eq!(
        app.count_of(&format!("account-{account}"), "MoneyWithdrawn")
            .await,
        10
    );
    // The cache was on and used on both sides.
    for server in servers {
        let metrics = metrics_of(server).await;
        assert!(metric(&metrics, HITS) > 0, "{metrics}");
    }
    second.stop().await;
    app.stop().await;
}

/// A new order's stream is not read: its id was made just now, so it is
/// decided on the initial state, and the append at version 0 proves it.
#[tokio::test]
async fn a_new_order_is_decided_without_reading_its_stream() {
    let app = TestApp::spawn().await;
    app.create_item_at("A", 5, 1_000, "EUR").await;
    let before = metrics_of(&app.server).await;
    let body = test_support::http::order_body(json!([
        {"sku": "A", "quantity": 1, "unit_price": 1_000}
    ]));
    let response = app.post_json("/orders", &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.expect("JSON body");
    let order = answer["order_id"].as_str().expect("order id").to_owned();
    let metrics = metrics_of(&app.server).await;
    const ORDER_HITS: &str = "command_api_aggregate_cache_hits_total{stream_type=\"order\"}";
    const ORDER_MISSES: &str = "command_api_aggregate_cache_misses_total{stream_type=\"order\"}";
    let of = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0, |value| value.parse::<u64>().expect("a count"))
    };
    // Orders are not remembered (the cache of orders holds none), and the
    // new one was not looked up in it either: no miss, no read.
    assert_eq!(of(&metrics, ORDER_MISSES), of(&before, ORDER_MISSES));
    assert_eq!(of(&metrics, ORDER_HITS), of(&before, ORDER_HITS));
    assert_eq!(
        app.count_of(&format!("order-{order}"), "OrderPlaced").await,
        1
    );
    app.stop().await;
}
