//! Property: for random sequences of commands by random callers (three
//! customers and an operator), over HTTP against the real store, no caller
//! ever changes an aggregate it does not own, nor learns of one through a
//! command's answer: where it may not act, the answer is the very answer a
//! missing id gets (or 403 for a role that may never), and nothing is
//! appended; and every event an account or order holds was appended by its
//! owner (or, for an order's cancellation, an operator).

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::callers::{order_of, SecuredApp, Who};

const CUSTOMERS: usize = 3;
const SKU: &str = "PROP-1";

#[derive(Debug, Clone)]
enum Op {
    Open {
        by: usize,
    },
    Deposit {
        by: usize,
        account: usize,
        amount: i64,
    },
    Withdraw {
        by: usize,
        account: usize,
        amount: i64,
    },
    Close {
        by: usize,
        account: usize,
    },
    Place {
        by: usize,
        account: usize,
    },
    Cancel {
        by: usize,
        order: usize,
    },
}

/// `by` picks a caller: customers `0..CUSTOMERS`, then the operator.
/// `account` and `order` pick among those made so far, or a missing id.
fn op() -> impl Strategy<Value = Op> {
    let by = 0..=CUSTOMERS;
    prop_oneof![
        by.clone().prop_map(|by| Op::Open { by }),
        (by.clone(), 0..8usize, 1..500i64).prop_map(|(by, account, amount)| Op::Deposit {
            by,
            account,
            amount
        }),
        (by.clone(), 0..8usize, 1..500i64).prop_map(|(by, account, amount)| Op::Withdraw {
            by,
            account,
            amount
        }),
        (by.clone(), 0..8usize).prop_map(|(by, account)| Op::Close { by, account }),
        (by.clone(), 0..8usize).prop_map(|(by, account)| Op::Place { by, account }),
        (by, 0..8usize).prop_map(|(by, order)| Op::Cancel { by, order }),
    ]
}

/// What one case made, and whose it is.
struct World {
    callers: Vec<Who>,
    accounts: Vec<(Uuid, usize)>,
    orders: Vec<(Uuid, usize)>,
}

impl World {
    fn new() -> World {
        let mut callers: Vec<Who> = (0..CUSTOMERS).map(|_| Who::customer()).collect();
        callers.push(Who::operator("olga"));
        World {
            callers,
            accounts: Vec::new(),
            orders: Vec::new(),
        }
    }

    /// An account made so far, or (past the end) a missing one.
    fn account(&self, pick: usize) -> (Uuid, Option<usize>) {
        match self.accounts.get(pick % (self.accounts.len() + 1)) {
            Some(&(id, owner)) => (id, Some(owner)),
            None => (Uuid::now_v7(), None),
        }
    }

    fn order(&self, pick: usize) -> (Uuid, Option<usize>) {
        match self.orders.get(pick % (self.orders.len() + 1)) {
            Some(&(id, owner)) => (id, Some(owner)),
            None => (Uuid::now_v7(), None),
        }
    }
}

/// Status and JSON body of `who` posting `body` to `path`.
async fn post(app: &SecuredApp, who: &Who, path: &str, body: &Value) -> (StatusCode, Value) {
    let response = app.send(who, path, body).await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn id_of(body: &Value, field: &str) -> Uuid {
    body[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{field} in {body}"))
}

/// Runs `op`, checking what its answer may say.
async fn step(app: &SecuredApp, world: &mut World, op: &Op) {
    let operator = CUSTOMERS;
    let (by, path, body, target, owner, missing_code) = match op {
        Op::Open { by } => {
            let (status, answer) = post(
                app,
                &world.callers[*by],
                "/accounts",
                &json!({"currency": "EUR"}),
            )
            .await;
            if *by == operator {
                assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
            } else {
                assert_eq!(status, StatusCode::CREATED, "{answer}");
                world.accounts.push((id_of(&answer, "account_id"), *by));
            }
            return;
        }
        Op::Place { by, account } => {
            let (account, owner) = world.account(*account);
            let who = &world.callers[*by];
            let before = app.event_count().await;
            let (status, answer) = post(app, who, "/orders", &order_of(who, account, SKU)).await;
            if *by == operator {
                assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
            } else if owner == Some(*by) {
                assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
                world.orders.push((id_of(&answer, "order_id"), *by));
                return;
            } else {
                assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
                let absent = post(app, who, "/orders", &order_of(who, Uuid::now_v7(), SKU)).await;
                assert_eq!(
                    (status, answer),
                    absent,
                    "another's account is a missing one"
                );
            }
            assert_eq!(app.event_count().await, before, "a refused order appended");
            return;
        }
        Op::Deposit {
            by,
            account,
            amount,
        } => {
            let (id, owner) = world.account(*account);
            (
                *by,
                format!("/accounts/{id}/deposits"),
                json!({"amount": amount}),
                format!("account-{id}"),
                owner,
                "account_not_found",
            )
        }
        Op::Withdraw {
            by,
            account,
            amount,
        } => {
            let (id, owner) = world.account(*account);
            (
                *by,
                format!("/accounts/{id}/withdrawals"),
                json!({"amount": amount}),
                format!("account-{id}"),
                owner,
                "account_not_found",
            )
        }
        Op::Close { by, account } => {
            let (id, owner) = world.account(*account);
            (
                *by,
                format!("/accounts/{id}/close"),
                json!({}),
                format!("account-{id}"),
                owner,
                "account_not_found",
            )
        }
        Op::Cancel { by, order } => {
            let (id, owner) = world.order(*order);
            (
                *by,
                format!("/orders/{id}/cancel"),
                json!({"reason": "random"}),
                format!("order-{id}"),
                owner,
                "order_not_found",
            )
        }
    };
    let who = &world.callers[by];
    let cancel = matches!(op, Op::Cancel { .. });
    let before = app.stream_len(&target).await;
    let (status, answer) = post(app, who, &path, &body).await;
    let may = owner.is_some() && (owner == Some(by) || (cancel && by == operator));
    if may {
        assert!(
            status.is_success() || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{op:?}: {status} {answer}"
        );
        return;
    }
    if by == operator && !cancel {
        assert_eq!(status, StatusCode::FORBIDDEN, "{op:?}: {answer}");
    } else {
        assert_eq!(status, StatusCode::NOT_FOUND, "{op:?}: {answer}");
        assert_eq!(answer["code"], missing_code);
        // The very answer the same caller gets for an id that never was.
        let absent_path = path.replacen(
            target.split_once('-').map(|(_, id)| id).unwrap_or_default(),
            &Uuid::now_v7().to_string(),
            1,
        );
        let absent = post(app, who, &absent_path, &body).await;
        assert_eq!(
            (status, answer),
            absent,
            "{op:?}: another's is a missing one"
        );
    }
    assert_eq!(
        app.stream_len(&target).await,
        before,
        "{op:?}: a refusal appended"
    );
}

/// Every event of the case's accounts was appended by their owner, every
/// event of its orders by their owner or the operator.
async fn only_owners_appended(app: &SecuredApp, world: &World) {
    let mut owners: HashMap<String, (String, bool)> = HashMap::new();
    for &(id, owner) in &world.accounts {
        owners.insert(
            format!("account-{id}"),
            (world.callers[owner].actor(), false),
        );
    }
    for &(id, owner) in &world.orders {
        owners.insert(format!("order-{id}"), (world.callers[owner].actor(), true));
    }
    let streams: Vec<String> = owners.keys().cloned().collect();
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT stream_id, metadata->>'actor' FROM event_store.events WHERE stream_id = ANY($1)",
    )
    .bind(&streams)
    .fetch_all(&app.db.pool)
    .await
    .expect("read actors");
    for (stream, actor) in rows {
        let (owner, operator_may) = &owners[&stream];
        let actor = actor.unwrap_or_default();
        assert!(
            actor == *owner || (*operator_may && actor == "olga"),
            "{stream} of {owner} has an event by {actor}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_caller_changes_or_sees_what_it_does_not_own() {
    let app = SecuredApp::spawn().await;
    app.create_item_as_operator(SKU, 1_000_000).await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&proptest::collection::vec(op(), 1..25), |ops| {
            handle.block_on(async {
                let mut world = World::new();
                for op in &ops {
                    step(&app, &mut world, op).await;
                }
                only_owners_appended(&app, &world).await;
            });
            Ok(())
        })
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    app.stop().await;
}
