//! The operator's loop, with every real component: an order placed over the
//! Command API, the relay, the saga orchestrator with a carrier that hangs,
//! the projection workers and the Query API. The saga shows up in
//! `/sagas?state=needs_attention`; once the carrier works, a retry over
//! `POST /sagas/{order_id}/retry` reaches the orchestrator through Kafka and
//! the order ships, as `/sagas/{order_id}` and `/metrics` then say.

use std::time::Duration;

use saga::{SagaConfig, SimulatedCarrier};
use serde_json::{json, Value};
use test_support::http::Client;
use test_support::pipeline::Pipeline;
use test_support::Harness;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

/// POSTs to the Command API; the status and the JSON body.
async fn post(commands: &Client, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let (status, body) = commands.post(path, &body, key).await;
    (status.as_u16(), body)
}

/// GETs `path` until `done` holds for its body.
async fn wait_for(client: &Client, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    client.get_until(path, DEADLINE, done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_a_stuck_saga_and_retries_it_over_http() {
    let h = Harness::new().await;
    let kafka = test_support::kafka::topics("query-api-test").await;
    let mut pipeline = Pipeline::new();
    let commands = pipeline.command_api(&h.db.pool).await;
    pipeline.relay(&h.store, &kafka);
    let carrier = SimulatedCarrier::default();
    let controls = carrier.controls();
    controls.set_hang(true);
    // Deadlines long enough that on a loaded machine only the hanging
    // carrier misses one.
    let saga_config = SagaConfig {
        step_timeout_ms: 1_000,
        max_attempts: 3,
        backoff_ms: 20,
        backoff_max_ms: 200,
        lease_ms: 2_000,
        poll_ms: 50,
        ..SagaConfig::default()
    };
    pipeline.saga(&h.store, saga_config, carrier);
    pipeline.workers(&h.store, &kafka, None);
    let client = pipeline.query_api(&h.db.pool).await;

    // A customer with money, a SKU in stock, an order.
    let customer = Uuid::now_v7();
    let (status, body) = post(
        &commands,
        "/accounts",
        json!({"customer_id": customer, "currency": "EUR"}),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let account = body["account_id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &commands,
        &format!("/accounts/{account}/deposits"),
        json!({"amount": 10_000}),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &commands,
        "/inventory",
        json!({"sku": "A", "name": "Item A", "quantity": 5, "unit_price": 1_000, "currency": "EUR"}),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = post(
        &commands,
        "/orders",
        json!({
            "customer_id": customer, "account_id": account, "currency": "EUR",
            "lines": [{"sku": "A", "quantity": 1, "unit_price": 1_000}],
            "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                                 "postal_code": "28013", "country": "ES"}
        }),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let order = body["order_id"].as_str().unwrap().to_owned();

    // The carrier hangs: the saga runs out of attempts and needs attention.
    let stuck = wait_for(&client, "/sagas?state=needs_attention", |page| {
        page["items"][0]["order_id"] == order.as_str()
    })
    .await;
    let saga = &stuck["items"][0];
    let ship = saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ship")
        .expect("a ship step");
    assert_eq!(ship["status"], "failed", "{saga}");
    assert_eq!(ship["attempts"], 3, "{saga}");
    assert!(ship["finished_at"].is_null());
    // The code of the last failure, never its message.
    assert_eq!(saga["error"], "timeout", "{saga}");
    assert_eq!(ship["error"], "timeout", "{saga}");
    let metrics = client.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l == "purser_sagas{state=\"needs_attention\"} 1"),
        "{metrics}"
    );

    // The carrier works again; the operator retries, twice with one key.
    controls.set_hang(false);
    let retry = format!("/sagas/{order}/retry");
    let (status, first) = post(&commands, &retry, json!({}), Some("op-1")).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["state"], "running");
    let (status, again) = post(&commands, &retry, json!({}), Some("op-1")).await;
    assert_eq!((status, &again), (202, &first));
    let version = first["version"].as_u64().unwrap();
    let saga = client
        .get(&format!(
            "/sagas/{order}?min_version={version}&wait_ms=10000"
        ))
        .await;
    assert_ne!(saga["state"], "needs_attention", "{saga}");

    let done = wait_for(&client, &format!("/sagas/{order}"), |saga| {
        saga["state"] == "completed"
    })
    .await;
    let ship = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ship")
        .unwrap();
    assert_eq!(ship["status"], "succeeded", "{done}");
    assert_eq!(ship["attempts"], 4, "{done}");
    assert!(done["tracking_number"].is_string(), "{done}");
    let retried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_store.events WHERE stream_id = $1 AND event_type = 'SagaRetried'",
    )
    .bind(format!("saga-{order}"))
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(retried, 1);
    let order_view = wait_for(&client, &format!("/orders/{order}"), |o| {
        o["status"] == "shipped"
    })
    .await;
    assert_eq!(order_view["tracking_number"], done["tracking_number"]);
    let (status, refused) = post(&commands, &retry, json!({}), None).await;
    assert_eq!(
        (status, &refused["code"]),
        (422, &json!("saga_not_retryable"))
    );

    pipeline.stop().await;
    h.drop().await;
}
