//! `Idempotency-Key`s are the caller's: two callers' same key is two keys,
//! and nobody is answered from another's stored response. Keys are kept
//! `PURSER_IDEMPOTENCY_TTL` and then purged by the Command API's sweep,
//! which counts them in `/metrics`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use test_support::eventually;

use crate::callers::{SecuredApp, Who};
use test_support::http::{assert_json, assert_problem};

const REPLAYED: &str = "idempotent-replayed";

/// `who` posts `body` to `path` under `key`: status, replayed?, body.
async fn keyed(
    app: &SecuredApp,
    who: &Who,
    key: &str,
    path: &str,
    body: &Value,
) -> (StatusCode, bool, Value) {
    let response = app
        .post_as(who, path)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    let replayed = response.headers().contains_key(REPLAYED);
    (status, replayed, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn two_customers_with_one_key_and_one_body_run_two_commands() {
    let app = SecuredApp::spawn().await;
    let (ana, bo) = (Who::customer(), Who::customer());
    let body = json!({"currency": "EUR"});

    let (status, replayed, anas) = keyed(&app, &ana, "open-1", "/accounts", &body).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{anas}");
    let (status, replayed, bos) = keyed(&app, &bo, "open-1", "/accounts", &body).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, false), "{bos}");
    assert_ne!(anas["account_id"], bos["account_id"], "two accounts");

    // Each replays its own answer, never the other's.
    for (who, own) in [(&ana, &anas), (&bo, &bos)] {
        let (status, replayed, again) = keyed(&app, who, "open-1", "/accounts", &body).await;
        assert_eq!((status, replayed), (StatusCode::CREATED, true));
        assert_eq!(&again, own);
    }
    for (who, answer) in [(&ana, &anas), (&bo, &bos)] {
        let id: uuid::Uuid = answer["account_id"].as_str().unwrap().parse().unwrap();
        let (state, _) = app.account(id).await;
        assert_eq!(
            state.customer_id.map(|c| c.as_uuid().to_string()),
            Some(who.actor())
        );
    }
    assert_eq!(app.event_count().await, 2);
    assert_eq!(app.idempotency_count().await, 2);
    app.stop().await;
}

#[tokio::test]
async fn another_callers_stored_answer_is_never_replayed() {
    let app = SecuredApp::spawn().await;
    let (owner, stranger) = (Who::customer(), Who::customer());
    let account = app.open_account_of(&owner, 0).await;
    let path = format!("/accounts/{account}/deposits");
    let body = json!({"amount": 500});

    let (status, _, owners) = keyed(&app, &owner, "pay-1", &path, &body).await;
    assert_eq!(status, StatusCode::OK, "{owners}");
    let events = app.event_count().await;

    // The same key, path and body from a stranger: its own command, which
    // finds nothing of its own there.
    let response = app
        .post_as(&stranger, &path)
        .header("Idempotency-Key", "pay-1")
        .json(&body)
        .send()
        .await
        .expect("request sent");
    assert!(!response.headers().contains_key(REPLAYED));
    assert_problem(response, StatusCode::NOT_FOUND, "account_not_found").await;
    assert_eq!(app.event_count().await, events);

    let (status, replayed, again) = keyed(&app, &owner, "pay-1", &path, &body).await;
    assert_eq!((status, replayed), (StatusCode::OK, true));
    assert_eq!(again, owners);
    assert_eq!(app.account(account).await.0.balance.amount(), 500);
    app.stop().await;
}

#[tokio::test]
async fn the_sweep_purges_keys_older_than_the_ttl_and_counts_them() {
    let app = SecuredApp::spawn_with(|config| {
        config.idempotency_ttl = Duration::from_secs(3600);
        config.idempotency_sweep_every = Duration::from_millis(50);
    })
    .await;
    let customer = Who::customer();
    let account = app.open_account_of(&customer, 0).await;
    let path = format!("/accounts/{account}/deposits");
    for key in ["old-1", "old-2", "fresh"] {
        let (status, _, body) = keyed(&app, &customer, key, &path, &json!({"amount": 1})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(app.idempotency_count().await, 3);
    // Just inside the TTL: kept. Past it: purged.
    sqlx::query(
        "UPDATE event_store.idempotency SET created_at = now() - interval '59 minutes' \
         WHERE key = 'fresh'",
    )
    .execute(&app.db.pool)
    .await
    .expect("age the fresh key");
    sqlx::query(
        "UPDATE event_store.idempotency SET created_at = now() - interval '61 minutes' \
         WHERE key LIKE 'old-%'",
    )
    .execute(&app.db.pool)
    .await
    .expect("age the old keys");

    eventually(
        "the old keys are purged and counted",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let metrics = app.metrics().await;
            let purged = metrics
                .lines()
                .find_map(|line| line.strip_prefix("command_api_idempotency_keys_purged_total "))
                .map(str::to_owned);
            let left = app.idempotency_count().await;
            (left == 1 && purged.as_deref() == Some("2"))
                .then_some(())
                .ok_or((left, purged))
        },
    )
    .await;
    let kept: Vec<String> = sqlx::query_scalar("SELECT key FROM event_store.idempotency")
        .fetch_all(&app.db.pool)
        .await
        .expect("keys");
    assert_eq!(kept, vec!["fresh".to_owned()]);

    // A purged key is new again: the request runs again.
    let (status, replayed, body) =
        keyed(&app, &customer, "old-1", &path, &json!({"amount": 1})).await;
    assert_eq!((status, replayed), (StatusCode::OK, false), "{body}");
    let (status, replayed, _) = keyed(&app, &customer, "fresh", &path, &json!({"amount": 1})).await;
    assert_eq!((status, replayed), (StatusCode::OK, true));
    assert_eq!(app.account(account).await.0.balance.amount(), 4);
    assert_json(
        app.send(&customer, &path, &json!({"amount": 1})).await,
        StatusCode::OK,
    )
    .await;
    app.stop().await;
}
