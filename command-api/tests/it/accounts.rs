//! Bank account commands: success paths and domain refusals.

use domain::{AccountEvent, AccountStatus};
use reqwest::header::ETAG;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use test_support::command_api::TestApp;
use test_support::http::{assert_json, assert_problem};
use test_support::store::stream_events;

#[tokio::test]
async fn open_deposit_withdraw_close() {
    let app = TestApp::spawn().await;
    let customer = Uuid::now_v7();

    let response = app
        .post_json(
            "/accounts",
            &json!({"customer_id": customer, "currency": "EUR"}),
        )
        .await;
    assert_eq!(response.headers()[ETAG], "\"1\"");
    let body = assert_json(response, StatusCode::CREATED).await;
    let id: Uuid = body["account_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 7, "server-made ids are uuid v7");
    assert_eq!(body["version"], 1);
    let opened_at: i64 = sqlx::query_scalar("SELECT max(position) FROM event_store.events")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(body["position"], opened_at);
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["account_id", "position", "version"]
    );

    let deposits = format!("/accounts/{id}/deposits");
    let response = app.post_json(&deposits, &json!({"amount": 10_000})).await;
    assert_eq!(response.headers()[ETAG], "\"2\"");
    let body = assert_json(response, StatusCode::OK).await;
    assert_eq!(body["account_id"], id.to_string());
    assert_eq!(body["version"], 2);
    assert!(body["position"].as_i64().unwrap() > opened_at);

    let withdrawals = format!("/accounts/{id}/withdrawals");
    let body = assert_json(
        app.post_json(&withdrawals, &json!({"amount": 2_500})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["version"], 3);

    let before = app.event_count().await;
    assert_problem(
        app.post_json(&withdrawals, &json!({"amount": 7_501})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient_funds",
    )
    .await;
    let close = format!("/accounts/{id}/close");
    assert_problem(
        app.post_json(&close, &json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "account_not_empty",
    )
    .await;
    assert_eq!(app.event_count().await, before, "refusals append nothing");

    assert_json(
        app.post_json(&withdrawals, &json!({"amount": 7_500})).await,
        StatusCode::OK,
    )
    .await;
    let body = assert_json(app.post_json(&close, &json!({})).await, StatusCode::OK).await;
    assert_eq!(body["version"], 5);

    let before = app.event_count().await;
    assert_problem(
        app.post_json(&deposits, &json!({"amount": 1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "account_closed",
    )
    .await;
    assert_eq!(app.event_count().await, before);

    let (state, version) = app.account(id).await;
    assert_eq!(version, 5);
    assert_eq!(state.status, AccountStatus::Closed);
    assert_eq!(state.balance.amount(), 0);
    let events: Vec<AccountEvent> = stream_events(&app.store(), &format!("account-{id}")).await;
    assert!(
        matches!(events[0], AccountEvent::AccountOpened { customer_id, .. } if customer_id.as_uuid() == customer)
    );
    assert!(matches!(events[4], AccountEvent::AccountClosed));
    app.stop().await;
}

#[tokio::test]
async fn open_with_a_client_id_and_refuse_a_second_open() {
    let app = TestApp::spawn().await;
    let id = Uuid::new_v4();
    let body = json!({"customer_id": Uuid::now_v7(), "currency": "USD", "account_id": id});
    let response = assert_json(app.post_json("/accounts", &body).await, StatusCode::CREATED).await;
    assert_eq!(response["account_id"], id.to_string());

    assert_problem(
        app.post_json("/accounts", &body).await,
        StatusCode::CONFLICT,
        "account_already_exists",
    )
    .await;
    assert_eq!(app.event_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn commands_on_an_unknown_account_are_404() {
    let app = TestApp::spawn().await;
    let id = Uuid::now_v7();
    for (path, body) in [
        (format!("/accounts/{id}/deposits"), json!({"amount": 1})),
        (format!("/accounts/{id}/withdrawals"), json!({"amount": 1})),
        (format!("/accounts/{id}/close"), json!({})),
    ] {
        assert_problem(
            app.post_json(&path, &body).await,
            StatusCode::NOT_FOUND,
            "account_not_found",
        )
        .await;
    }
    assert_eq!(app.event_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn close_accepts_an_empty_body() {
    let app = TestApp::spawn().await;
    let id = app.open_account(0).await;
    let response = app
        .post(&format!("/accounts/{id}/close"))
        .send()
        .await
        .unwrap();
    let body = assert_json(response, StatusCode::OK).await;
    assert_eq!(body["version"], 2);
    app.stop().await;
}
