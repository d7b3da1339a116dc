//! Races: concurrent commands on one aggregate never overdraw, never lose a
//! write, and `If-Match` pins a version.

use std::sync::Arc;

use domain::{Inventory, InventoryCommand, InventoryError, OrderId, Quantity};
use event_store::{ExecuteError, ExecuteOptions, Executed, Repository};
use futures::future::join_all;
use reqwest::header::{ETAG, IF_MATCH};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use test_support::command_api::{Server, TestApp};
use test_support::http::{assert_json, assert_problem};

/// Sends `count` withdrawals of `amount` at once through `servers` (round
/// robin); returns (status, code) of each answer.
async fn withdraw_concurrently(
    servers: &[&Server],
    account: Uuid,
    count: usize,
    amount: i64,
) -> Vec<(StatusCode, Value)> {
    let path = format!("/accounts/{account}/withdrawals");
    join_all((0..count).map(|i| {
        let server = servers[i % servers.len()];
        let path = path.clone();
        async move {
            let response = server
                .post(&path)
                .json(&json!({"amount": amount}))
                .send()
                .await
                .expect("request sent");
            let status = response.status();
            let body: Value = response.json().await.expect("JSON body");
            (status, body)
        }
    }))
    .await
}

#[tokio::test]
async fn fifty_concurrent_withdrawals_never_overdraw() {
    let app = TestApp::spawn().await;
    let account = app.open_account(1_000).await;

    let answers = withdraw_concurrently(&[&app.server], account, 50, 100).await;

    let succeeded = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused = answers
        .iter()
        .filter(|(s, b)| {
            *s == StatusCode::UNPROCESSABLE_ENTITY && b["code"] == "insufficient_funds"
        })
        .count();
    assert_eq!(succeeded, 10, "answers: {answers:?}");
    assert_eq!(refused, 40, "answers: {answers:?}");
    let mut versions: Vec<u64> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, b)| b["version"].as_u64().unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (3..=12).collect::<Vec<_>>(),
        "each success its own version"
    );

    let (state, version) = app.account(account).await;
    assert_eq!(state.balance.amount(), 0);
    assert_eq!(version, 12);
    assert_eq!(
        app.count_of(&format!("account-{account}"), "MoneyWithdrawn")
            .await,
        10
    );
    app.stop().await;
}

/// Two processes' worth of servers on one database: the in-process
/// serialisation does not help across them, so the store's optimistic
/// concurrency and the bounded retries carry the race.
#[tokio::test]
async fn concurrent_withdrawals_through_two_servers_stay_consistent() {
    let app = TestApp::spawn().await;
    let second = Server::start(app.db.pool.clone(), |config| config.max_retries = 20).await;
    let account = app.open_account(1_000).await;

    let answers = withdraw_concurrently(&[&app.server, &second], account, 30, 100).await;

    let succeeded = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    for (status, body) in &answers {
        let expected = *status == StatusCode::OK
            || (*status == StatusCode::UNPROCESSABLE_ENTITY
                && body["code"] == "insufficient_funds");
        assert!(expected, "unexpected answer {status}: {body}");
    }
    assert_eq!(succeeded, 10, "answers: {answers:?}");
    let (state, version) = app.account(account).await;
    assert_eq!(state.balance.amount(), 0);
    assert_eq!(version, 12);
    assert_eq!(
        app.count_of(&format!("account-{account}"), "MoneyWithdrawn")
            .await,
        10
    );
    second.stop().await;
    app.stop().await;
}

/// Reservations are made by the saga, not over HTTP: this races 50
/// `InventoryCommand::Reserve` through the repository, the way the saga
/// sends them.
#[tokio::test]
async fn fifty_concurrent_reservations_never_oversell() {
    let app = TestApp::spawn().await;
    app.create_item("GPU", 20).await;
    // Each refusal appends nothing, so a request can lose at most one race
    // per successful reservation (20): 25 retries can never run out.
    let repository = Arc::new(Repository::<Inventory>::new(app.store()).with_max_retries(25));

    let results = join_all((0..50).map(|_| {
        let repository = Arc::clone(&repository);
        tokio::spawn(async move {
            let command = InventoryCommand::Reserve {
                order_id: OrderId::new(Uuid::now_v7()),
                quantity: Quantity::new(1).expect("1 is a quantity"),
            };
            repository
                .execute("GPU", &command, ExecuteOptions::default(), |_| ())
                .await
        })
    }))
    .await;

    let mut reserved = 0;
    let mut refused = 0;
    for result in results {
        match result.expect("task") {
            Ok(Executed::Done(outcome)) if outcome.events.len() == 1 => reserved += 1,
            Ok(Executed::Refused(InventoryError::InsufficientStock { .. })) => refused += 1,
            Ok(other) => panic!("unexpected outcome {other:?}"),
            Err(ExecuteError::ConflictRetriesExhausted { attempts }) => {
                panic!("retries ran out after {attempts} attempts")
            }
            Err(error) => panic!("unexpected error {error}"),
        }
    }
    assert_eq!(reserved, 20);
    assert_eq!(refused, 30);
    let loaded = repository.load("GPU").await.unwrap();
    assert_eq!(loaded.state.reserved, 20);
    assert_eq!(loaded.state.available(), 0);
    assert_eq!(app.count_of("inventory-GPU", "StockReserved").await, 20);
    app.stop().await;
}

#[tokio::test]
async fn if_match_pins_the_version() {
    let app = TestApp::spawn().await;
    let account = app.open_account(500).await; // version 2
    let path = format!("/accounts/{account}/withdrawals");

    let before = app.event_count().await;
    let response = app
        .post(&path)
        .header(IF_MATCH, "\"1\"")
        .json(&json!({"amount": 100}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(
        response,
        StatusCode::PRECONDITION_FAILED,
        "version_mismatch",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains('2'),
        "{problem}"
    );
    assert_eq!(app.event_count().await, before);

    let response = app
        .post(&path)
        .header(IF_MATCH, "\"2\"")
        .json(&json!({"amount": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()[ETAG], "\"3\"");
    let body = assert_json(response, StatusCode::OK).await;
    assert_eq!(body["version"], 3);

    // The ETag of one answer is the If-Match of the next.
    let response = app
        .post(&path)
        .header(IF_MATCH, "\"3\"")
        .json(&json!({"amount": 100}))
        .send()
        .await
        .unwrap();
    assert_json(response, StatusCode::OK).await;

    // A stale version (the account moved on to 4) is refused.
    let stale = app
        .post(&path)
        .header(IF_MATCH, "\"3\"")
        .json(&json!({"amount": 100}))
        .send()
        .await
        .unwrap();
    assert_problem(stale, StatusCode::PRECONDITION_FAILED, "version_mismatch").await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .contains("command_api_concurrency_conflicts_total{outcome=\"precondition_failed\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

/// Writers outside this process (the saga, another instance) move an
/// aggregate on behind the server's back: the state the server remembers
/// is then stale, and must never decide anything on its own.
#[tokio::test]
async fn writes_from_elsewhere_are_never_missed() {
    use domain::{AccountCommand, Amount, BankAccount, Currency, CustomerId};

    let app = TestApp::spawn().await;
    let customer = Uuid::now_v7();
    let body = assert_json(
        app.post_json(
            "/accounts",
            &json!({"customer_id": customer, "currency": "EUR"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let account: Uuid = body["account_id"].as_str().unwrap().parse().unwrap();
    let deposits = format!("/accounts/{account}/deposits");
    let withdrawals = format!("/accounts/{account}/withdrawals");
    assert_json(
        app.post_json(&deposits, &json!({"amount": 100})).await,
        StatusCode::OK,
    )
    .await;

    // Elsewhere: a charge of 100 for an order (balance 0), then a refund of
    // it (balance 100 again): two events the server did not write.
    let repository = Repository::<BankAccount>::new(app.store());
    let order_id = OrderId::new(Uuid::now_v7());
    for command in [
        AccountCommand::Charge {
            order_id,
            customer_id: CustomerId::new(customer),
            currency: Currency::EUR,
            amount: Amount::new(100).unwrap(),
        },
        AccountCommand::Refund { order_id },
    ] {
        let executed = repository
            .execute(
                &account.to_string(),
                &command,
                ExecuteOptions::default(),
                |_| (),
            )
            .await
            .unwrap();
        assert!(matches!(executed, Executed::Done(_)));
    }

    // The server remembers version 2; the stream is at 4.
    let body = assert_json(
        app.post_json(&deposits, &json!({"amount": 50})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["version"], 5);

    // Elsewhere again: a charge of 150 empties the account.
    let other_order = OrderId::new(Uuid::now_v7());
    repository
        .execute(
            &account.to_string(),
            &AccountCommand::Charge {
                order_id: other_order,
                customer_id: CustomerId::new(customer),
                currency: Currency::EUR,
                amount: Amount::new(150).unwrap(),
            },
            ExecuteOptions::default(),
            |_| (),
        )
        .await
        .unwrap();
    // The remembered balance (150) would allow this; the real one (0) not.
    assert_problem(
        app.post_json(&withdrawals, &json!({"amount": 100})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    )
    .await;
    // A refund elsewhere: the remembered version (5) is stale again, the
    // append at it conflicts and the withdrawal is decided on a fresh load.
    repository
        .execute(
            &account.to_string(),
            &AccountCommand::Refund {
                order_id: other_order,
            },
            ExecuteOptions::default(),
            |_| (),
        )
        .await
        .unwrap();
    let body = assert_json(
        app.post_json(&withdrawals, &json!({"amount": 150})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["version"], 8);
    // If-Match against the real version, not the remembered one.
    let response = app
        .post(&deposits)
        .header(IF_MATCH, "\"8\"")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(assert_json(response, StatusCode::OK).await["version"], 9);

    let (state, version) = app.account(account).await;
    assert_eq!(version, 9);
    assert_eq!(state.balance.amount(), 1);
    app.stop().await;
}
