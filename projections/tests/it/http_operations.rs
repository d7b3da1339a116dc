//! The operator's commands on projections over HTTP (`POST
//! /projections/{name}/rebuild|unpark|reset` on the Command API, with real
//! tokens), and the requested rebuild carried out by a
//! [`RequestRunner`], as `purser project` and `purser serve` run it.

use std::time::Duration;

use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use projections::rebuild::RebuildOptions;
use projections::requests::RequestRunner;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use test_support::command_api::Server;
use test_support::http::{assert_json, assert_problem};
use test_support::tokens::{assert_unauthorized, generous, Keys};
use test_support::{eventually, Harness};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

/// A Command API that verifies tokens, over the harness's database.
struct Operators {
    h: Harness,
    keys: Keys,
    server: Server,
}

enum Who {
    Operator(&'static str),
    Customer,
    Nobody,
}

impl Operators {
    async fn start() -> Operators {
        let h = Harness::new().await;
        let keys = Keys::new();
        let server =
            Server::start_with_access(h.db.pool.clone(), keys.access(generous()), |_| {}).await;
        Operators { h, keys, server }
    }

    async fn post(&self, who: &Who, path: &str, body: &Value) -> Response {
        let request = self.server.post(path).json(body);
        let request = match who {
            Who::Operator(name) => request.bearer_auth(self.keys.operator(name)),
            Who::Customer => request.bearer_auth(self.keys.customer(Uuid::now_v7())),
            Who::Nobody => request,
        };
        request.send().await.expect("request sent")
    }

    /// `path` as operator `olga`, under `Idempotency-Key: key`.
    async fn post_keyed(&self, key: &str, path: &str, body: &Value) -> Response {
        self.server
            .post(path)
            .bearer_auth(self.keys.operator("olga"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.h.db.pool)
            .await
            .expect("count")
    }

    async fn requests(&self) -> i64 {
        self.count("SELECT count(*) FROM read_models.projection_requests")
            .await
    }

    async fn parked(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT stream_id FROM read_models.parked ORDER BY stream_id")
            .fetch_all(&self.h.db.pool)
            .await
            .expect("parked")
    }

    async fn stop(self) {
        self.server.stop().await;
        self.h.drop().await;
    }
}

/// Appends an event the accounts projection cannot decode (a
/// `MoneyDeposited` without an amount) at `version + 1`.
async fn append_poison(store: &EventStore, account: Uuid, version: u64) {
    let poison = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "MoneyDeposited".to_owned(),
        schema_version: 1,
        payload: json!({ "amount": "lots" }),
    };
    store
        .append(
            &StreamId::new("account", account),
            ExpectedVersion::Exact(version),
            &[poison],
            &Metadata::default(),
        )
        .await
        .expect("append poison");
}

/// Two accounts projected, one of them parked by a poison event; returns
/// the parked stream.
async fn with_a_parked_stream(ops: &Operators) -> String {
    let (bad, _) = ops.h.open_account("EUR").await;
    let (good, _) = ops.h.open_account("EUR").await;
    ops.h.deposit(bad, 100).await;
    ops.h.deposit(good, 40).await;
    append_poison(&ops.h.store, bad, 2).await;
    let events = ops.h.all_events().await;
    for projection in projections::all() {
        projections::Projector::new(projection, ops.h.store.clone())
            .with_max_attempts(1)
            .apply_batch(&events)
            .await
            .expect("apply");
    }
    let stream = format!("account-{bad}");
    assert_eq!(ops.parked().await, vec![stream.clone()]);
    stream
}

#[tokio::test]
async fn only_an_operator_may_and_a_refusal_records_nothing() {
    let ops = Operators::start().await;
    let parked = with_a_parked_stream(&ops).await;
    let before = ops.h.snapshot().await;
    for (path, body) in [
        ("/projections/accounts/rebuild", json!({})),
        ("/projections/accounts/unpark", json!({})),
        (
            "/projections/accounts/reset",
            json!({"confirm": "accounts"}),
        ),
    ] {
        let response = ops.post(&Who::Customer, path, &body).await;
        assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
        let response = ops.post(&Who::Nobody, path, &body).await;
        assert_unauthorized(response, "unauthenticated", path).await;
    }
    assert_eq!(ops.requests().await, 0);
    assert_eq!(ops.parked().await, vec![parked]);
    assert_eq!(ops.h.snapshot().await, before);
    ops.stop().await;
}

#[tokio::test]
async fn unknown_names_bad_stream_ids_and_unconfirmed_resets_are_refused() {
    let ops = Operators::start().await;
    let parked = with_a_parked_stream(&ops).await;
    let before = ops.h.snapshot().await;
    let olga = Who::Operator("olga");
    for (path, body) in [
        ("/projections/nope/rebuild", json!({})),
        ("/projections/nope/unpark", json!({})),
        ("/projections/nope/reset", json!({"confirm": "nope"})),
    ] {
        let response = ops.post(&olga, path, &body).await;
        assert_problem(response, StatusCode::NOT_FOUND, "projection_not_found").await;
    }
    for stream_id in [
        "",
        "account-",
        "ledger-1",
        "account-a b",
        &"account-1".repeat(10),
    ] {
        let response = ops
            .post(
                &olga,
                "/projections/accounts/unpark",
                &json!({ "stream_id": stream_id }),
            )
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_id").await;
    }
    let response = ops
        .post(&olga, "/projections/accounts/unpark", &json!({"stream": 1}))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    for confirm in ["orders", "Accounts", ""] {
        let response = ops
            .post(
                &olga,
                "/projections/accounts/reset",
                &json!({ "confirm": confirm }),
            )
            .await;
        assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirmation_mismatch",
        )
        .await;
    }
    let response = ops
        .post(&olga, "/projections/accounts/reset", &json!({}))
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
    assert_eq!(ops.requests().await, 0);
    assert_eq!(ops.parked().await, vec![parked]);
    assert_eq!(ops.h.snapshot().await, before);
    ops.stop().await;
}

#[tokio::test]
async fn unpark_one_stream_or_all_applies_their_waiting_events() {
    let ops = Operators::start().await;
    let parked = with_a_parked_stream(&ops).await;
    let olga = Who::Operator("olga");

    // A stream that is not parked: nothing to do.
    let response = ops
        .post(
            &olga,
            "/projections/accounts/unpark",
            &json!({"stream_id": format!("account-{}", Uuid::now_v7())}),
        )
        .await;
    let body = assert_json(response, StatusCode::OK).await;
    assert_eq!(body, json!({"projection": "accounts", "streams": []}));

    // Still poison: applied nothing, parked again.
    let response = ops
        .post(
            &olga,
            "/projections/accounts/unpark",
            &json!({ "stream_id": parked }),
        )
        .await;
    let body = assert_json(response, StatusCode::OK).await;
    assert_eq!(
        body,
        json!({"projection": "accounts",
               "streams": [{"stream_id": parked, "applied": 0, "parked_again": true}]})
    );
    assert_eq!(ops.parked().await, vec![parked.clone()]);

    // Fixed (an operator's upcaster, say): every parked stream un-parks.
    sqlx::query("UPDATE event_store.events SET payload = $2 WHERE stream_id = $1 AND version = 3")
        .bind(&parked)
        .bind(json!({ "amount": 1, "balance_after": 101 }))
        .execute(&ops.h.db.pool)
        .await
        .expect("fix the payload");
    let response = ops
        .post(&olga, "/projections/accounts/unpark", &json!({}))
        .await;
    let body = assert_json(response, StatusCode::OK).await;
    assert_eq!(
        body,
        json!({"projection": "accounts",
               "streams": [{"stream_id": parked, "applied": 1, "parked_again": false}]})
    );
    assert!(ops.parked().await.is_empty());
    let balance = ops
        .count(&format!(
            "SELECT balance FROM read_models.accounts WHERE account_id = '{}'",
            parked.trim_start_matches("account-")
        ))
        .await;
    assert_eq!(balance, 101);
    ops.stop().await;
}

#[tokio::test]
async fn reset_empties_the_read_model_and_is_refused_while_a_rebuild_runs() {
    let ops = Operators::start().await;
    with_a_parked_stream(&ops).await;
    let olga = Who::Operator("olga");

    // A rebuild running elsewhere (its lock held, as `purser projections
    // rebuild` holds it): reset and rebuild are refused.
    let mut holder = ops.h.db.pool.acquire().await.expect("connection");
    sqlx::query(
        "SELECT pg_advisory_lock(hashtext('purser.projection.rebuild'), hashtext('accounts'))",
    )
    .execute(&mut *holder)
    .await
    .expect("lock");
    let response = ops
        .post(
            &olga,
            "/projections/accounts/reset",
            &json!({"confirm": "accounts"}),
        )
        .await;
    assert_problem(response, StatusCode::CONFLICT, "rebuild_running").await;
    let response = ops
        .post(&olga, "/projections/accounts/rebuild", &json!({}))
        .await;
    assert_problem(response, StatusCode::CONFLICT, "rebuild_running").await;
    assert_eq!(ops.requests().await, 0);
    assert_eq!(
        ops.count("SELECT count(*) FROM read_models.accounts").await,
        2
    );
    sqlx::query(
        "SELECT pg_advisory_unlock(hashtext('purser.projection.rebuild'), hashtext('accounts'))",
    )
    .execute(&mut *holder)
    .await
    .expect("unlock");
    drop(holder);

    let response = ops
        .post(
            &olga,
            "/projections/accounts/reset",
            &json!({"confirm": "accounts"}),
        )
        .await;
    let body = assert_json(response, StatusCode::OK).await;
    assert_eq!(body, json!({"projection": "accounts", "reset": true}));
    assert_eq!(
        ops.count("SELECT count(*) FROM read_models.accounts").await,
        0
    );
    assert!(ops.parked().await.is_empty());
    assert_eq!(
        ops.count("SELECT count(*) FROM read_models.applied WHERE projection = 'accounts'")
            .await,
        0
    );
    ops.stop().await;
}

/// The first answer under a key, and whether it was marked replayed.
async fn answer(response: Response) -> (StatusCode, bool, Value) {
    let status = response.status();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let body = response.json().await.expect("JSON body");
    (status, replayed, body)
}

#[tokio::test]
async fn an_operators_command_under_an_idempotency_key_runs_once_and_is_replayed() {
    let ops = Operators::start().await;
    let parked = with_a_parked_stream(&ops).await;
    let reset = json!({"confirm": "accounts"});

    // A reset, then its repeat: the repeat answers the same, marked, and
    // does not empty what was projected since.
    let first = answer(
        ops.post_keyed("r-1", "/projections/accounts/reset", &reset)
            .await,
    )
    .await;
    assert_eq!(
        first,
        (
            StatusCode::OK,
            false,
            json!({"projection": "accounts", "reset": true})
        )
    );
    let events = ops.h.all_events().await;
    projections::Projector::new(
        projections::by_name("accounts").expect("accounts"),
        ops.h.store.clone(),
    )
    .with_max_attempts(1)
    .apply_batch(&events)
    .await
    .expect("apply");
    let projected = ops.count("SELECT count(*) FROM read_models.accounts").await;
    assert_eq!(projected, 2);
    let again = answer(
        ops.post_keyed("r-1", "/projections/accounts/reset", &reset)
            .await,
    )
    .await;
    assert_eq!(again, (StatusCode::OK, true, first.2.clone()));
    assert_eq!(
        ops.count("SELECT count(*) FROM read_models.accounts").await,
        projected
    );

    // The same key with another request is refused and does nothing.
    let response = ops
        .post_keyed(
            "r-1",
            "/projections/orders/reset",
            &json!({"confirm": "orders"}),
        )
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;

    // A rebuild asked twice under one key is one request: the repeat is
    // the first 202 again, not 409 `rebuild_running`.
    let first = answer(
        ops.post_keyed("b-1", "/projections/accounts/rebuild", &json!({}))
            .await,
    )
    .await;
    assert_eq!((first.0, first.1), (StatusCode::ACCEPTED, false));
    let again = answer(
        ops.post_keyed("b-1", "/projections/accounts/rebuild", &json!({}))
            .await,
    )
    .await;
    assert_eq!(again, (StatusCode::ACCEPTED, true, first.2.clone()));
    assert_eq!(ops.requests().await, 1);
    // Under another key it is refused while the first stands, and that
    // refusal is not kept: it would not last.
    let response = ops
        .post_keyed("b-2", "/projections/accounts/rebuild", &json!({}))
        .await;
    assert_problem(response, StatusCode::CONFLICT, "rebuild_running").await;
    let response = ops
        .post_keyed("b-2", "/projections/accounts/rebuild", &json!({}))
        .await;
    assert!(response.headers().get("idempotent-replayed").is_none());
    assert_problem(response, StatusCode::CONFLICT, "rebuild_running").await;

    // A lasting refusal is kept and replayed like a success.
    let unknown = answer(
        ops.post_keyed("u-1", "/projections/nope/unpark", &json!({}))
            .await,
    )
    .await;
    assert_eq!((unknown.0, unknown.1), (StatusCode::NOT_FOUND, false));
    let again = answer(
        ops.post_keyed("u-1", "/projections/nope/unpark", &json!({}))
            .await,
    )
    .await;
    assert_eq!(again, (StatusCode::NOT_FOUND, true, unknown.2));
    // The replayed reset emptied nothing: the poison stream projected
    // (and parked) since the first is still parked.
    assert_eq!(ops.parked().await, vec![parked]);
    ops.stop().await;
}

#[tokio::test]
async fn a_rebuild_requested_over_http_is_run_by_a_worker_and_leaves_the_read_model_equal() {
    let ops = Operators::start().await;
    for _ in 0..5 {
        let (account, _) = ops.h.open_account("EUR").await;
        ops.h.deposit(account, 7).await;
    }
    ops.h.project_all().await;
    let before = ops.h.snapshot().await;
    let olga = Who::Operator("olga");

    let response = ops
        .post(&olga, "/projections/accounts/rebuild", &json!({}))
        .await;
    let body = assert_json(response, StatusCode::ACCEPTED).await;
    assert_eq!(body["projection"], "accounts");
    // The operator is who asked.
    assert_eq!(body["requested_by"], "olga");
    assert!(body["requested_at"].is_string(), "{body}");
    let request = projections::requests::pending(&ops.h.db.pool, "accounts")
        .await
        .expect("pending")
        .expect("recorded");
    assert_eq!(request.requested_by, "olga");
    assert!(request.started_at.is_none());

    // Requested and not yet run: a second request is refused.
    let response = ops
        .post(
            &Who::Operator("otto"),
            "/projections/accounts/rebuild",
            &json!({}),
        )
        .await;
    assert_problem(response, StatusCode::CONFLICT, "rebuild_running").await;
    assert_eq!(ops.requests().await, 1);

    // Two runners, as two worker processes: the request runs once, and
    // the read model is what it was.
    let shutdown = CancellationToken::new();
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let runner = RequestRunner::new(
                ops.h.store.clone(),
                &[],
                RebuildOptions {
                    batch_size: 3,
                    ..RebuildOptions::default()
                },
            )
            .expect("runner");
            tokio::spawn(runner.run(shutdown.clone()))
        })
        .collect();
    let pool = ops.h.db.pool.clone();
    eventually(
        "the requested rebuild ran",
        DEADLINE,
        Duration::from_millis(50),
        || {
            let pool = pool.clone();
            async move {
                let waiting: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM read_models.projection_requests")
                        .fetch_one(&pool)
                        .await
                        .expect("requests");
                let rebuilding: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM read_models.rebuilds")
                        .fetch_one(&pool)
                        .await
                        .expect("rebuilds");
                if waiting == 0 && rebuilding == 0 {
                    Ok(())
                } else {
                    Err((waiting, rebuilding))
                }
            }
        },
    )
    .await;
    assert_eq!(ops.h.snapshot().await, before);
    let status = projections::status::all(&ops.h.db.pool)
        .await
        .expect("status");
    assert!(status.iter().all(|s| s.rebuild.is_none()), "{status:?}");

    // A new request is accepted, and run as soon as it is announced.
    let response = ops
        .post(&olga, "/projections/orders/rebuild", &json!({}))
        .await;
    assert_json(response, StatusCode::ACCEPTED).await;
    let pool = ops.h.db.pool.clone();
    eventually(
        "the second request ran",
        DEADLINE,
        Duration::from_millis(50),
        || {
            let pool = pool.clone();
            async move {
                let waiting: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM read_models.projection_requests")
                        .fetch_one(&pool)
                        .await
                        .expect("requests");
                if waiting == 0 {
                    Ok(())
                } else {
                    Err(waiting)
                }
            }
        },
    )
    .await;
    assert_eq!(ops.h.snapshot().await, before);
    shutdown.cancel();
    for runner in runners {
        runner.await.expect("runner");
    }
    ops.stop().await;
}
