//! The API guide's access table, command side: for each route, a customer who owns
//! the thing, a customer who does not (404, the very body a missing id
//! gets), an operator and no token; every refusal appends nothing. And the
//! caller's `sub` as the `actor` of what its request appends.

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::callers::{order_of, SecuredApp, Who};
use test_support::http::{assert_json, assert_problem};

/// Status and body of a problem answer.
async fn problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_problem(response, status, code).await
}

/// `who` sends `body` to `path` and is refused with `status`/`code`, and
/// the event store is exactly as before. The problem's body.
async fn refused(
    app: &SecuredApp,
    who: &Who,
    path: &str,
    body: &Value,
    status: StatusCode,
    code: &str,
) -> Value {
    let before = app.event_count().await;
    let answer = problem(app.send(who, path, body).await, status, code).await;
    assert_eq!(app.event_count().await, before, "{who:?} {path}: appended");
    answer
}

#[tokio::test]
async fn account_commands_are_the_owners_alone() {
    let app = SecuredApp::spawn().await;
    let owner = Who::customer();
    let stranger = Who::customer();
    let operator = Who::operator("olga");
    let account = app.open_account_of(&owner, 10_000).await;
    let stream = format!("account-{account}");
    let missing = Uuid::now_v7();

    for (action, body) in [
        ("deposits", json!({"amount": 100})),
        ("withdrawals", json!({"amount": 100})),
        ("close", json!({})),
    ] {
        let path = format!("/accounts/{account}/{action}");
        let not_theirs = refused(
            &app,
            &stranger,
            &path,
            &body,
            StatusCode::NOT_FOUND,
            "account_not_found",
        )
        .await;
        let absent = problem(
            app.send(&stranger, &format!("/accounts/{missing}/{action}"), &body)
                .await,
            StatusCode::NOT_FOUND,
            "account_not_found",
        )
        .await;
        assert_eq!(not_theirs, absent, "{action}: another's is a missing one");
        // The owner sees its own missing account the same way too.
        let owners_absent = problem(
            app.send(&owner, &format!("/accounts/{missing}/{action}"), &body)
                .await,
            StatusCode::NOT_FOUND,
            "account_not_found",
        )
        .await;
        assert_eq!(owners_absent, absent);
        refused(
            &app,
            &operator,
            &path,
            &body,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        refused(
            &app,
            &Who::Nobody,
            &path,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        )
        .await;
    }

    // The owner may: a deposit, a withdrawal, then (at zero) the close.
    let deposits = format!("/accounts/{account}/deposits");
    let withdrawals = format!("/accounts/{account}/withdrawals");
    let close = format!("/accounts/{account}/close");
    assert_json(
        app.send(&owner, &deposits, &json!({"amount": 100})).await,
        StatusCode::OK,
    )
    .await;
    assert_json(
        app.send(&owner, &withdrawals, &json!({"amount": 10_100}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_json(app.send(&owner, &close, &json!({})).await, StatusCode::OK).await;
    // A closed account is still nobody else's: 404, not `account_closed`.
    refused(
        &app,
        &stranger,
        &deposits,
        &json!({"amount": 1}),
        StatusCode::NOT_FOUND,
        "account_not_found",
    )
    .await;

    let owner_sub = Some(owner.actor());
    assert_eq!(app.stream_len(&stream).await, 5);
    assert_eq!(app.actors(&stream).await, vec![owner_sub; 5]);
    app.stop().await;
}

#[tokio::test]
async fn an_account_is_opened_by_a_customer_for_itself() {
    let app = SecuredApp::spawn().await;
    let customer = Who::customer();
    let Who::Customer(customer_id) = customer else {
        unreachable!()
    };
    let other = Uuid::now_v7();

    // Without `customer_id`: the caller's own.
    let opened = assert_json(
        app.send(&customer, "/accounts", &json!({"currency": "EUR"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let id: Uuid = opened["account_id"].as_str().unwrap().parse().unwrap();
    let (state, _) = app.account(id).await;
    assert_eq!(state.customer_id.map(|c| c.as_uuid()), Some(customer_id));
    assert_eq!(
        app.actors(&format!("account-{id}")).await,
        vec![Some(customer.actor())]
    );

    let body = json!({"customer_id": other, "currency": "EUR"});
    refused(
        &app,
        &customer,
        "/accounts",
        &body,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let body = json!({"customer_id": customer_id, "currency": "EUR"});
    refused(
        &app,
        &Who::operator("olga"),
        "/accounts",
        &body,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        &Who::Nobody,
        "/accounts",
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn an_order_is_charged_only_to_the_callers_own_account() {
    let app = SecuredApp::spawn().await;
    app.create_item_as_operator("PEN-1", 10).await;
    let buyer = Who::customer();
    let victim = Who::customer();
    let own = app.open_account_of(&buyer, 1_000).await;
    let theirs = app.open_account_of(&victim, 1_000).await;

    let order = app.place_order_of(&buyer, own, "PEN-1").await;
    assert_eq!(
        app.actors(&format!("order-{order}")).await,
        vec![Some(buyer.actor())]
    );

    let not_theirs = refused(
        &app,
        &buyer,
        "/orders",
        &order_of(&buyer, theirs, "PEN-1"),
        StatusCode::NOT_FOUND,
        "account_not_found",
    )
    .await;
    let absent = refused(
        &app,
        &buyer,
        "/orders",
        &order_of(&buyer, Uuid::now_v7(), "PEN-1"),
        StatusCode::NOT_FOUND,
        "account_not_found",
    )
    .await;
    assert_eq!(not_theirs, absent);
    // The same body as a deposit to a missing account.
    let deposit_absent = problem(
        app.send(
            &buyer,
            &format!("/accounts/{}/deposits", Uuid::now_v7()),
            &json!({"amount": 1}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "account_not_found",
    )
    .await;
    assert_eq!(not_theirs, deposit_absent);

    refused(
        &app,
        &Who::operator("olga"),
        "/orders",
        &order_of(&buyer, own, "PEN-1"),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    refused(
        &app,
        &Who::Nobody,
        "/orders",
        &order_of(&buyer, own, "PEN-1"),
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn an_order_is_cancelled_by_its_customer_or_any_operator() {
    let app = SecuredApp::spawn().await;
    app.create_item_as_operator("PEN-1", 10).await;
    let buyer = Who::customer();
    let stranger = Who::customer();
    let operator = Who::operator("olga");
    let account = app.open_account_of(&buyer, 1_000).await;
    let first = app.place_order_of(&buyer, account, "PEN-1").await;
    let second = app.place_order_of(&buyer, account, "PEN-1").await;
    let body = json!({"reason": "changed my mind"});

    let path = format!("/orders/{first}/cancel");
    let not_theirs = refused(
        &app,
        &stranger,
        &path,
        &body,
        StatusCode::NOT_FOUND,
        "order_not_found",
    )
    .await;
    let absent = problem(
        app.send(
            &stranger,
            &format!("/orders/{}/cancel", Uuid::now_v7()),
            &body,
        )
        .await,
        StatusCode::NOT_FOUND,
        "order_not_found",
    )
    .await;
    assert_eq!(not_theirs, absent);
    refused(
        &app,
        &Who::Nobody,
        &path,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;

    assert_json(app.send(&buyer, &path, &body).await, StatusCode::ACCEPTED).await;
    let second_path = format!("/orders/{second}/cancel");
    assert_json(
        app.send(&operator, &second_path, &body).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(
        app.actors(&format!("order-{first}")).await,
        vec![Some(buyer.actor()), Some(buyer.actor())]
    );
    assert_eq!(
        app.actors(&format!("order-{second}")).await,
        vec![Some(buyer.actor()), Some("olga".to_owned())]
    );
    app.stop().await;
}

#[tokio::test]
async fn operator_commands_record_the_operators_name() {
    let app = SecuredApp::spawn().await;
    let operator = Who::operator("olga");
    let body = json!({"sku": "LAMP-2", "name": "Lamp", "quantity": 3,
                      "unit_price": 2500, "currency": "EUR"});
    assert_json(
        app.send(&operator, "/inventory", &body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_json(
        app.send(
            &operator,
            "/inventory/LAMP-2/restock",
            &json!({"quantity": 2}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        app.actors("inventory-LAMP-2").await,
        vec![Some("olga".to_owned()); 2]
    );
    // A customer may not.
    refused(
        &app,
        &Who::customer(),
        "/inventory/LAMP-2/restock",
        &json!({"quantity": 2}),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    app.stop().await;
}
