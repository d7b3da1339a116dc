//! What operators install names only metrics that exist: `purser serve`
//! with a little traffic (an item, an account, a deposit, an order that
//! ships, a 404, reads), then every metric named by the alerting rules
//! (`deploy/prometheus/alerts.yaml`) and the dashboard
//! (`deploy/grafana/purser.json`) has a sample in the process's `/metrics`,
//! which the admin listener (no token) and both APIs (operator token) serve
//! whole; and the pool's acquire histogram has samples (sqlx's acquire
//! events reach it).

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use test_support::{eventually, TestDatabase};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::serve::{addresses_logged, keys, serve_on, token, wait_ready};
use crate::DEADLINE;

/// The metric names a file mentions: every word of lowercase letters,
/// digits and `_` that starts with one of Purser's prefixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|word| {
            ["purser_", "command_api_", "query_api_"]
                .iter()
                .any(|prefix| word.starts_with(prefix))
        })
        .map(str::to_owned)
        .collect()
}

/// The names with at least one sample in an exposition, and the name of
/// each histogram with one (a text may name the family, not a series).
fn sampled(exposition: &str) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let histograms: Vec<String> = names
        .iter()
        .filter_map(|name| name.strip_suffix("_bucket"))
        .map(str::to_owned)
        .collect();
    names.extend(histograms);
    names
}

fn installed() -> BTreeSet<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut names = BTreeSet::new();
    for file in [
        "deploy/prometheus/alerts.yaml",
        "deploy/grafana/purser.json",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect(file);
        let found = metric_names(&text);
        assert!(!found.is_empty(), "{file} names no metric");
        names.extend(found);
    }
    names
}

#[test]
fn the_rules_and_the_dashboard_name_metrics() {
    let names = installed();
    for name in [
        "purser_projection_lag_events",
        "purser_projection_parked_streams",
        "purser_sagas",
        "purser_relay_events_behind",
        "command_api_http_requests_total",
        "query_api_http_requests_total",
    ] {
        assert!(names.contains(name), "{name} not in {names:?}");
    }
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_name_is_served() {
    let db = TestDatabase::create_unmigrated().await;
    let kafka = test_support::kafka::isolated("metrics");
    let keys = keys();
    let mut child = serve_on(&db, true, keys.path(), &kafka);
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let [command_api, query_api, admin] = addresses_logged(
        &mut lines,
        [
            "command API listening",
            "query API listening",
            "admin listening",
        ],
    )
    .await;
    let drained = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    wait_ready(&http, &format!("http://{command_api}/health/ready")).await;
    wait_ready(&http, &format!("http://{query_api}/health/ready")).await;

    // A little traffic: every labelled series the rules use gets made.
    let operator = token(keys.path(), &auth::Subject::Operator("ops".to_owned()));
    let customer_id = uuid::Uuid::now_v7();
    let customer = token(keys.path(), &auth::Subject::Customer(customer_id));
    let post = |path: &str, token: &str, body: Value| {
        http.post(format!("http://{command_api}{path}"))
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };
    let created = post(
        "/inventory",
        &operator,
        json!({"sku": "METRICS-1", "name": "m", "quantity": 5, "unit_price": 250, "currency": "EUR"}),
    )
    .await
    .expect("create an item");
    assert_eq!(created.status(), StatusCode::CREATED);
    let opened: Value = post("/accounts", &customer, json!({"currency": "EUR"}))
        .await
        .expect("open an account")
        .json()
        .await
        .expect("opened");
    let account = opened["account_id"]
        .as_str()
        .expect("account_id")
        .to_owned();
    let deposited = post(
        &format!("/accounts/{account}/deposits"),
        &customer,
        json!({"amount": 1000}),
    )
    .await
    .expect("deposit");
    assert_eq!(deposited.status(), StatusCode::OK);
    let placed: Value = post(
        "/orders",
        &customer,
        json!({
            "account_id": account,
            "currency": "EUR",
            "lines": [{"sku": "METRICS-1", "quantity": 2}],
            "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                                 "postal_code": "28013", "country": "ES"}
        }),
    )
    .await
    .expect("place an order")
    .json()
    .await
    .expect("placed");
    let order = placed["order_id"].as_str().expect("order_id").to_owned();
    let missing = http
        .get(format!(
            "http://{query_api}/orders/{}",
            uuid::Uuid::now_v7()
        ))
        .bearer_auth(&customer)
        .send()
        .await
        .expect("read a missing order");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let http = &http;
    let (query_api, customer) = (&query_api, &customer);
    eventually(
        "the order to ship",
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let read: Value = http
                .get(format!("http://{query_api}/orders/{order}"))
                .bearer_auth(customer)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            (read["status"] == "shipped").then_some(()).ok_or(read)
        },
    )
    .await;

    // The admin listener serves the whole registry without a token, once
    // the workers have applied a batch and the saga has run its steps.
    let wanted = installed();
    let admin = &admin;
    let wanted_ref = &wanted;
    let exposition = eventually(
        "every installed metric in /metrics",
        DEADLINE,
        Duration::from_millis(200),
        || async move {
            let text = http
                .get(format!("http://{admin}/metrics"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let served = sampled(&text);
            let missing: Vec<&String> = wanted_ref.difference(&served).collect();
            if missing.is_empty() {
                Ok(text)
            } else {
                Err(format!("missing {missing:?} in\n{text}"))
            }
        },
    )
    .await;
    assert!(
        exposition.contains("purser_sagas_completed_total 1"),
        "{exposition}"
    );
    assert!(exposition.contains(
        "command_api_http_requests_total{method=\"POST\",route=\"/orders\",status=\"202\"} 1"
    ));
    assert!(exposition.contains("purser_relay_active 1"), "{exposition}");
    // Every acquire of the process's pool is timed: sqlx's acquire events
    // reach the histogram (they are its only source).
    let acquires: f64 = exposition
        .lines()
        .find_map(|line| line.strip_prefix("purser_db_pool_acquire_seconds_count "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no purser_db_pool_acquire_seconds_count in\n{exposition}"));
    assert!(acquires > 0.0, "no acquire timed in\n{exposition}");

    // Both APIs serve the same registry, to operators only.
    let command_api = &command_api;
    for base in [command_api, query_api] {
        let url = format!("http://{base}/metrics");
        let forbidden = http
            .get(&url)
            .bearer_auth(customer)
            .send()
            .await
            .expect("metrics");
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN, "{url}");
        let served = http
            .get(&url)
            .bearer_auth(&operator)
            .send()
            .await
            .expect("metrics");
        assert_eq!(served.status(), StatusCode::OK, "{url}");
        assert!(served.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        let text = served.text().await.expect("text");
        let served = sampled(&text);
        let missing: Vec<&String> = wanted.difference(&served).collect();
        assert!(missing.is_empty(), "{url}: missing {missing:?}");
    }

    let pid = child.id().expect("running").to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    let _ = tokio::time::timeout(DEADLINE, child.wait()).await;
    drained.abort();
    db.drop().await;
}
