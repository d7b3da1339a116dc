//! SIGKILL of `purser serve` in the middle of grouped commands under load
//! (group commit: concurrent commands appended by one statement and one
//! commit): every 2xx a client got is in the store, and nothing else is;
//! each command is whole (its events and its idempotency record) or absent,
//! and a repeat of its request after the restart says which.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use test_support::{eventually, TestDatabase};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::serve::{addresses_logged, keys, serve_on, token, wait_ready};
use crate::DEADLINE;

const CLIENTS: usize = 12;
/// Deposits answered 2xx before the kill.
const KILL_AFTER: usize = 150;

/// `purser serve` on `db` (migrated); the Command API's and the admin
/// listener's addresses.
async fn start(db: &TestDatabase, keys: &std::path::Path) -> (Child, String, String) {
    let kafka = test_support::kafka::isolated("group-kill");
    let mut child = serve_on(db, false, keys, &kafka);
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let [command_api, admin] =
        addresses_logged(&mut lines, ["command API listening", "admin listening"]).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    wait_ready(&http, &format!("http://{command_api}/health/ready")).await;
    (child, command_api, admin)
}

/// A deposit of 1 under `key`: its status and whether it was a replay, or
/// `None` when no answer came (the process was killed).
async fn deposit(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    account: &str,
    key: &str,
) -> Option<(StatusCode, bool)> {
    let response = http
        .post(format!("http://{api}/accounts/{account}/deposits"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({"amount": 1}))
        .send()
        .await
        .ok()?;
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    response.bytes().await.ok()?;
    Some((status, replayed))
}

#[tokio::test]
async fn a_kill_amid_grouped_commands_keeps_exactly_what_was_answered() {
    let db = TestDatabase::create().await;
    let keys = keys();
    let (mut child, api, admin) = start(&db, keys.path()).await;
    let http = reqwest::Client::new();

    // One customer and account per client.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let customer = uuid::Uuid::now_v7();
        let token = token(keys.path(), &auth::Subject::Customer(customer));
        let opened = http
            .post(format!("http://{api}/accounts"))
            .bearer_auth(&token)
            .json(&json!({"currency": "EUR"}))
            .send()
            .await
            .expect("open");
        assert_eq!(opened.status(), StatusCode::CREATED);
        let opened: Value = opened.json().await.expect("account");
        let account = opened["account_id"].as_str().expect("id").to_owned();
        clients.push((customer, token, account));
    }

    // Load: each client deposits under a fresh key, one after the other,
    // until its connection fails.
    let answered = Arc::new(AtomicUsize::new(0));
    let sent: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let ok: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (client, (_, token, account)) in clients.iter().cloned().enumerate() {
        let (http, api) = (http.clone(), api.clone());
        let (answered, sent, ok, stop) = (
            Arc::clone(&answered),
            Arc::clone(&sent),
            Arc::clone(&ok),
            Arc::clone(&stop),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("kill-{client}-{n}");
                sent.lock().unwrap().push((client, key.clone()));
                match deposit(&http, &api, &token, &account, &key).await {
                    Some((status, _)) if status.is_success() => {
                        ok.lock().unwrap().insert(key);
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Some((status, _)) => panic!("{key}: answered {status}"),
                    None => return,
                }
            }
        }));
    }
    eventually(
        "deposits answered",
        DEADLINE,
        Duration::from_millis(5),
        || async {
            let done = answered.load(Ordering::SeqCst);
            if done >= KILL_AFTER {
                Ok(())
            } else {
                Err(format!("{done} answered"))
            }
        },
    )
    .await;
    // Groups of more than one command are being written.
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse()
            .expect("number")
    };
    let (groups, commands) = (
        value("command_api_group_commit_size_count"),
        value("command_api_group_commit_size_sum"),
    );
    assert!(
        commands > groups,
        "no group of two or more: {groups} groups, {commands} commands"
    );

    child.kill().await.expect("SIGKILL");
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.expect("client");
    }

    // Every 2xx is in the store, once; nothing else is; each command whole.
    let deposited: Vec<String> = sqlx::query_scalar(
        "SELECT metadata->>'causation_id' FROM event_store.events \
         WHERE event_type = 'MoneyDeposited'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("deposits");
    let in_store: HashSet<String> = deposited.iter().cloned().collect();
    assert_eq!(in_store.len(), deposited.len(), "a deposit twice");
    let ok = ok.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    let sent_keys: HashSet<String> = sent.iter().map(|(_, key)| key.clone()).collect();
    assert!(
        ok.is_subset(&in_store),
        "answered 2xx, not in the store: {:?}",
        ok.difference(&in_store).collect::<Vec<_>>()
    );
    assert!(in_store.is_subset(&sent_keys), "in the store, never sent");
    let recorded: HashSet<String> =
        sqlx::query_scalar("SELECT key FROM event_store.idempotency WHERE key LIKE 'kill-%'")
            .fetch_all(&db.pool)
            .await
            .expect("records")
            .into_iter()
            .collect();
    assert_eq!(
        recorded, in_store,
        "events without their record, or records without events"
    );

    // After a restart, each request cut off is sent again with its key: a
    // replay when it was in the store, carried out now when it was not.
    let (mut child, api, _) = start(&db, keys.path()).await;
    let mut balances: HashMap<usize, i64> = HashMap::new();
    for (client, key) in &sent {
        *balances.entry(*client).or_default() += 1;
        if ok.contains(key) {
            continue;
        }
        let (_, token, account) = &clients[*client];
        let (status, replayed) = deposit(&http, &api, token, account, key)
            .await
            .expect("answered after the restart");
        assert_eq!(status, StatusCode::OK, "{key}");
        assert_eq!(
            replayed,
            in_store.contains(key),
            "{key}: replayed {replayed}"
        );
    }
    for (client, (_, _, account)) in clients.iter().enumerate() {
        let balance: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM event_store.events \
             WHERE stream_id = $1 AND event_type = 'MoneyDeposited'",
        )
        .bind(format!("account-{account}"))
        .fetch_one(&db.pool)
        .await
        .expect("deposits of the account");
        assert_eq!(balance, balances[&client], "account {client}");
    }
    child.kill().await.expect("stop");
    db.drop().await;
}
