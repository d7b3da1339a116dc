//! Load shedding: a cap on requests in flight (which a `min_version` wait
//! leaves once it waits) and on `min_version` waiters, each answered
//! 503 `overloaded` with `Retry-After` when reached, and the request id
//! rule.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use query_api::{AppState, Progress};
use uuid::Uuid;

use test_support::router::{assert_problem, send, Response};
use test_support::Harness;

/// Starts `GET uri` and returns once `until` holds of `state`.
async fn start_get(
    state: &AppState,
    uri: String,
    what: &str,
    until: impl Fn(&AppState) -> bool,
) -> tokio::task::JoinHandle<Response> {
    let request = tokio::spawn({
        let state = state.clone();
        async move { send(state, Request::get(uri).body(Body::empty()).unwrap()).await }
    });
    test_support::eventually(
        what,
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            let holds = until(state);
            async move {
                if holds {
                    Ok(())
                } else {
                    Err(())
                }
            }
        },
    )
    .await;
    request
}

/// Starts a read of `account` waiting for `min_version` (within ten
/// seconds), and returns once it waits: once it has a waiter's place it
/// leaves the requests' cap (before, another request could take the
/// waiter's place first).
async fn hold_a_waiter(
    state: &AppState,
    account: Uuid,
    min_version: u64,
) -> tokio::task::JoinHandle<Response> {
    let uri = format!("/accounts/{account}?min_version={min_version}&wait_ms=10000");
    start_get(state, uri, "the request to wait", |state| {
        state.progress.waiters("accounts") > 0 && state.concurrency.in_flight() == 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_waiters_over_the_cap_are_shed_at_once() {
    let h = Harness::new().await;
    let account = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.project_all().await;
    let state = AppState::new(
        h.db.pool.clone(),
        Progress::new(Duration::from_millis(50)).with_max_waiters(1),
    );
    let waiting = hold_a_waiter(&state, account, 50).await;

    let started = Instant::now();
    let shed = h
        .get_with(
            state.clone(),
            &format!("/accounts/{account}?min_version=50&wait_ms=10000"),
        )
        .await;
    // A waiter admitted would answer `min_version_timeout` after the full
    // 10 s; shed, it answers `overloaded` without waiting (the margin is
    // for a loaded machine).
    assert!(started.elapsed() < Duration::from_secs(8), "shed at once");
    assert_problem(&shed, 503, "overloaded");
    assert_eq!(shed.headers["retry-after"], "1");
    // A read that needs no wait is served; so is one already satisfied.
    let plain = h
        .get_with(state.clone(), &format!("/accounts/{account}"))
        .await;
    assert_eq!(plain.status, 200, "{}", plain.text);
    let reached = h
        .get_with(state.clone(), &format!("/accounts/{account}?min_version=1"))
        .await;
    assert_eq!(reached.status, 200, "{}", reached.text);
    assert!(!waiting.is_finished(), "the waiter still waits");
    waiting.abort();
    h.drop().await;
}

/// Starts a plain read of `uri` that stays in flight, holding its place
/// under the concurrency cap, while the table it reads is locked
/// ([`lock_table`]).
async fn hold_a_busy_read(state: &AppState, uri: String) -> tokio::task::JoinHandle<Response> {
    start_get(state, uri, "the read to be in flight", |state| {
        state.concurrency.in_flight() == 1
    })
    .await
}

/// A transaction holding a read model's `table` exclusively: reads of it
/// wait until it ends.
async fn lock_table(
    pool: &sqlx::PgPool,
    table: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut lock = pool.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *lock)
        .await
        .unwrap();
    lock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_cap_are_shed_and_health_is_exempt() {
    let h = Harness::new().await;
    let account = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.project_all().await;
    let state = AppState::new(h.db.pool.clone(), Progress::new(Duration::from_millis(50)))
        .with_max_concurrent_requests(1);
    let lock = lock_table(&h.db.pool, "read_models.accounts").await;
    let busy = hold_a_busy_read(&state, format!("/accounts/{account}")).await;

    let started = Instant::now();
    let shed = h
        .get_with(state.clone(), &format!("/accounts/{account}"))
        .await;
    assert!(started.elapsed() < Duration::from_secs(2), "shed at once");
    assert_problem(&shed, 503, "overloaded");
    assert_eq!(shed.headers["retry-after"], "1");
    let live = h.get_with(state.clone(), "/health/live").await;
    assert_eq!(live.status, 200);
    // The held read is answered once the table is free, and its place is
    // free again.
    lock.rollback().await.unwrap();
    let held = busy.await.unwrap();
    assert_eq!(held.status, 200, "{}", held.text);
    assert_eq!(state.concurrency.in_flight(), 0);
    let served = h
        .get_with(state.clone(), &format!("/accounts/{account}"))
        .await;
    assert_eq!(served.status, 200, "{}", served.text);
    h.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_version_wait_leaves_the_concurrency_cap_to_other_requests() {
    let h = Harness::new().await;
    let account = h.open_account_of(Uuid::now_v7(), "EUR").await;
    h.project_all().await;
    // One place: a wait that kept it would shed every other read while it
    // waits (and reads at a rate times their lag above the cap would be
    // shed while the pool idles).
    let state = AppState::new(h.db.pool.clone(), Progress::new(Duration::from_millis(50)))
        .with_max_concurrent_requests(1);
    let waiting = hold_a_waiter(&state, account, 2).await;
    assert_eq!(state.progress.waiters("accounts"), 1);
    assert_eq!(state.concurrency.in_flight(), 0, "the wait holds no place");
    for _ in 0..3 {
        let plain = h
            .get_with(state.clone(), &format!("/accounts/{account}"))
            .await;
        assert_eq!(plain.status, 200, "{}", plain.text);
    }
    // Woken, the wait re-reads and is answered though a read of the items
    // holds the only place: bounded by the waiters' cap, it does not queue
    // behind new requests (nor, taking a place, shed them).
    h.deposit(account, 100).await;
    // Read before the lock: its transaction would hold the gap-safe read.
    let events = h.all_events().await;
    let lock = lock_table(&h.db.pool, "read_models.inventory").await;
    let busy = hold_a_busy_read(&state, "/inventory/NONE".to_owned()).await;
    projections::Projector::new(projections::by_name("accounts").unwrap(), h.store.clone())
        .apply_batch(&events)
        .await
        .unwrap();
    let seen = waiting.await.unwrap();
    assert_eq!(seen.status, 200, "{}", seen.text);
    assert_eq!(seen.json["version"], 2);
    assert!(
        !busy.is_finished(),
        "the read of the items still holds the place"
    );
    lock.rollback().await.unwrap();
    assert_eq!(busy.await.unwrap().status, 404);
    assert_eq!(state.concurrency.in_flight(), 0);
    h.drop().await;
}

#[tokio::test]
async fn request_ids_outside_the_safe_alphabet_or_length_are_replaced() {
    let h = Harness::new().await;
    let valid = "trace:0123.abc_DEF-9";
    let too_long = "x".repeat(129);
    let cases = [
        (HeaderValue::from_static(valid), true),
        (HeaderValue::from_str(&too_long).unwrap(), false),
        (HeaderValue::from_static("with space"), false),
        (HeaderValue::from_static("a/b"), false),
        (
            HeaderValue::from_bytes("\u{fc}ber".as_bytes()).unwrap(),
            false,
        ),
        (HeaderValue::from_static(""), false),
    ];
    for (sent, kept) in cases {
        let request = Request::get("/health/live")
            .header("x-request-id", sent.clone())
            .body(Body::empty())
            .unwrap();
        let response = send(h.state(Duration::from_millis(50)), request).await;
        let echoed = response.headers["x-request-id"].clone();
        if kept {
            assert_eq!(echoed, sent);
        } else {
            assert_ne!(echoed, sent);
            let fresh: Uuid = echoed.to_str().unwrap().parse().expect("a uuid");
            assert_eq!(fresh.get_version_num(), 7);
        }
    }
    h.drop().await;
}
