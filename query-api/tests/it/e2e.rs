//! End to end: commands appended through the repository, published by the
//! relay to the broker at `KAFKA_BROKERS`, applied by the projection workers,
//! read over HTTP with `min_version` giving read-your-writes.

use std::time::Duration;

use domain::{
    AccountCommand, Amount, BankAccount, Inventory, InventoryCommand, Order, OrderCommand, OrderId,
    Quantity,
};
use test_support::pipeline::Pipeline;
use test_support::{eventually, Harness};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_become_visible_through_every_read_endpoint() {
    let h = Harness::new().await;
    let kafka = test_support::kafka::topics("query-api-test").await;
    let mut pipeline = Pipeline::new();
    pipeline.relay(&h.store, &kafka);
    pipeline.workers(&h.store, &kafka, None);
    let client = pipeline.query_api(&h.db.pool).await;
    // The first reads also wait for the consumer groups to form: allow it.
    let wait = "wait_ms=10000";

    // Accounts.
    let customer = Uuid::now_v7();
    let account = h.open_account_of(customer, "EUR").await;
    let version = h.deposit(account, 10_000).await;
    let body = client
        .get(&format!("/accounts/{account}?min_version={version}&{wait}"))
        .await;
    assert_eq!(
        (body["balance"].as_i64(), body["version"].as_u64()),
        (Some(10_000), Some(version))
    );
    let version = h
        .exec::<BankAccount>(
            &account.to_string(),
            AccountCommand::Withdraw {
                amount: Amount::new(2_500).unwrap(),
            },
        )
        .await;
    let body = client
        .get(&format!("/accounts/{account}?min_version={version}&{wait}"))
        .await;
    assert_eq!(body["balance"], 7_500);
    let ledger = client
        .get(&format!(
            "/accounts/{account}/transactions?min_version={version}&{wait}"
        ))
        .await;
    let kinds: Vec<&str> = ledger["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["deposit", "withdrawal"]);

    // Inventory.
    h.create_item("LAPTOP-15", 10).await;
    let version = h
        .exec::<Inventory>(
            "LAPTOP-15",
            InventoryCommand::Restock {
                quantity: Quantity::new(5).unwrap(),
            },
        )
        .await;
    let item = client
        .get(&format!(
            "/inventory/LAPTOP-15?min_version={version}&{wait}"
        ))
        .await;
    assert_eq!(
        (item["on_hand"].as_i64(), item["available"].as_i64()),
        (Some(15), Some(15))
    );
    let version = h
        .exec::<Inventory>(
            "LAPTOP-15",
            InventoryCommand::Reserve {
                order_id: OrderId::new(Uuid::now_v7()),
                quantity: Quantity::new(3).unwrap(),
            },
        )
        .await;
    let item = client
        .get(&format!(
            "/inventory/LAPTOP-15?min_version={version}&{wait}"
        ))
        .await;
    assert_eq!(
        (item["reserved"].as_i64(), item["available"].as_i64()),
        (Some(3), Some(12))
    );
    let list = client.get("/inventory?limit=10").await;
    assert_eq!(list["items"][0]["sku"], "LAPTOP-15");

    // Orders.
    let order = h.place_order(customer, account).await;
    let version = h
        .exec::<Order>(&order.to_string(), OrderCommand::MarkReserved)
        .await;
    let body = client
        .get(&format!("/orders/{order}?min_version={version}&{wait}"))
        .await;
    assert_eq!(body["status"], "reserved");
    assert_eq!(body["lines"].as_array().unwrap().len(), 2);
    let mine = client
        .get(&format!("/orders?customer_id={customer}&status=reserved"))
        .await;
    assert_eq!(mine["items"][0]["order_id"], order.to_string());

    // Progress, metrics, health, the document.
    let client_ref = &client;
    eventually(
        "the projections to catch up",
        Duration::from_secs(30),
        Duration::from_millis(100),
        move || async move {
            let list = client_ref.get("/projections").await;
            let caught_up = list
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["lag_events"] == 0 && p["status"] == "up_to_date");
            if caught_up {
                Ok(())
            } else {
                Err(list)
            }
        },
    )
    .await;
    let metrics = client.get("/metrics").await;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains("purser_projection_lag_events{projection=\"accounts\"} 0"));
    client.get("/health/live").await;
    // Ready once every projection has a worker that caught up: the sagas
    // worker, with no saga events to apply here, may still be joining its
    // consumer group when the other three have caught up.
    let ready = client.url("/health/ready");
    eventually(
        "the Query API to answer ready",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let request = client_ref.http.get(&ready).send();
            async move {
                let response = request.await.map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status == 200 {
                    Ok(())
                } else {
                    Err(format!("{status}: {body}"))
                }
            }
        },
    )
    .await;
    client.get("/health/ready").await;
    let doc = client.get("/openapi.json").await;
    assert!(doc["paths"]["/orders/{id}"].is_object());

    pipeline.stop().await;
    h.drop().await;
}
