//! `purser serve`: components never migrate by themselves. On a database
//! without the migrations it refuses to start (and creates nothing); with
//! `--migrate` it migrates, serves, and stops cleanly on SIGTERM. Once both
//! APIs answer ready, a command is readable with the default `min_version`
//! wait, from a fresh database and a fresh broker.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use test_support::{eventually, TestDatabase};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

use crate::{DEADLINE, PURSER};

/// A development key pair, as `scripts/up` makes one.
pub(crate) fn keys() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    auth::init_keys(dir.path()).expect("auth init");
    dir
}

/// `purser serve` on `db`, every address on a free port, topics of its own,
/// tokens verified with the key pair in `keys`, JSON logs on a piped
/// stderr.
fn serve(db: &TestDatabase, migrate: bool, keys: &std::path::Path) -> Child {
    serve_on(db, migrate, keys, &test_support::kafka::isolated("serve"))
}

/// [`serve`] on the brokers and topics of `kafka`.
pub(crate) fn serve_on(
    db: &TestDatabase,
    migrate: bool,
    keys: &std::path::Path,
    kafka: &kafka::KafkaConfig,
) -> Child {
    let mut command = Command::new(PURSER);
    command
        .args(["serve", "--database-url", &db.url, "--log-format", "json"])
        .args(["--bind", "127.0.0.1:0"])
        .args(["--query-api-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--kafka-brokers", &kafka.brokers])
        .args(["--kafka-topic-prefix", &kafka.topic_prefix])
        .env("RUST_LOG", "info,sqlx=warn")
        .env("PURSER_AUTH_JWKS", keys.join(auth::JWKS_FILE))
        .env_remove("PURSER_INSECURE_NO_AUTH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if migrate {
        command.arg("--migrate");
    }
    command.spawn().expect("purser serve starts")
}

/// The relations of `db` outside the system schemas.
async fn tables(db: &TestDatabase) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&db.pool)
    .await
    .expect("list tables")
}

/// Reads JSON log lines until every one of `messages` was seen, and returns
/// the `address` each carried, in the order of `messages`. The components
/// start in tasks of their own, so they log in any order.
pub(crate) async fn addresses_logged<const N: usize>(
    lines: &mut Lines<BufReader<ChildStderr>>,
    messages: [&str; N],
) -> [String; N] {
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    let complete = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("stderr") {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            for (message, slot) in messages.iter().zip(found.iter_mut()) {
                if event["message"] == *message {
                    *slot = event["address"].as_str().map(str::to_owned);
                }
            }
            if found.iter().all(Option::is_some) {
                return;
            }
        }
    })
    .await;
    let missing: Vec<&str> = messages
        .iter()
        .zip(&found)
        .filter(|(_, slot)| slot.is_none())
        .map(|(message, _)| *message)
        .collect();
    assert!(
        complete.is_ok() && missing.is_empty(),
        "purser serve never logged {missing:?} with an address"
    );
    found.map(|slot| slot.expect("checked above"))
}

#[tokio::test]
async fn serve_refuses_an_unmigrated_database_and_creates_nothing() {
    let db = TestDatabase::create_unmigrated().await;
    let keys = keys();
    let child = serve(&db, false, keys.path());
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("purser serve exits")
        .expect("purser serve ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("purser migrate"), "{stderr}");
    assert!(stderr.contains("--migrate"), "{stderr}");
    assert_eq!(tables(&db).await, Vec::<String>::new());
    db.drop().await;
}

#[tokio::test]
async fn serve_with_migrate_migrates_serves_and_stops_on_sigterm() {
    let db = TestDatabase::create_unmigrated().await;
    let keys = keys();
    let mut child = serve(&db, true, keys.path());
    let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let [command_api, query_api] =
        addresses_logged(&mut lines, ["command API listening", "query API listening"]).await;
    // Keep draining, so the child never blocks on a full pipe.
    let drained = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
        seen
    });

    assert!(
        tables(&db).await.contains(&"event_store.events".to_owned()),
        "migrated"
    );
    let http = reqwest::Client::new();
    for url in [
        format!("http://{command_api}/health/ready"),
        format!("http://{query_api}/health/ready"),
    ] {
        eventually(&url, DEADLINE, Duration::from_millis(100), || async {
            match http.get(&url).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(response.status().to_string()),
                Err(error) => Err(error.to_string()),
            }
        })
        .await;
    }
    // Both APIs verify tokens: none is 401, a customer's opens its account.
    let anonymous = http
        .post(format!("http://{command_api}/accounts"))
        .json(&serde_json::json!({"currency": "EUR"}))
        .send()
        .await
        .expect("open an account");
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    let signing_key =
        std::fs::read_to_string(keys.path().join(auth::SIGNING_KEY_FILE)).expect("signing key");
    let customer = uuid::Uuid::now_v7();
    let token = auth::issue_token(
        &signing_key,
        &auth::Subject::Customer(customer),
        Duration::from_secs(600),
        auth::DEFAULT_ISSUER,
        auth::DEFAULT_AUDIENCE,
    )
    .expect("token");
    let opened = http
        .post(format!("http://{command_api}/accounts"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"currency": "EUR"}))
        .send()
        .await
        .expect("open an account");
    assert_eq!(opened.status(), reqwest::StatusCode::CREATED);
    let queried = http
        .get(format!("http://{query_api}/orders"))
        .send()
        .await
        .expect("list orders");
    assert_eq!(queried.status(), reqwest::StatusCode::UNAUTHORIZED);

    let pid = child.id().expect("running").to_string();
    let signalled = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill -TERM");
    assert!(signalled.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("purser serve stops after SIGTERM")
        .expect("purser serve ran");
    let logged = drained.await.expect("stderr read").join("\n");
    assert!(status.success(), "{status}: {logged}");
    for component in [
        "command API",
        "relay",
        "projection workers",
        "saga orchestrator",
        "query API",
    ] {
        assert!(
            logged.contains(&format!(r#""component":"{component}""#)),
            "{component} did not report stopping: {logged}"
        );
    }
    db.drop().await;
}

/// A customer's token signed with the key pair in `keys`.
fn customer_token(keys: &std::path::Path) -> String {
    token(keys, &auth::Subject::Customer(uuid::Uuid::now_v7()))
}

/// A token for `subject` signed with the key pair in `keys`.
pub(crate) fn token(keys: &std::path::Path, subject: &auth::Subject) -> String {
    let signing_key =
        std::fs::read_to_string(keys.join(auth::SIGNING_KEY_FILE)).expect("signing key");
    auth::issue_token(
        &signing_key,
        subject,
        Duration::from_secs(600),
        auth::DEFAULT_ISSUER,
        auth::DEFAULT_AUDIENCE,
    )
    .expect("token")
}

/// Waits until `url` answers 200, polling; the last answer on failure.
pub(crate) async fn wait_ready(http: &reqwest::Client, url: &str) {
    eventually(url, DEADLINE, Duration::from_millis(20), || async {
        match http.get(url).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!(
                "{}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            )),
            Err(error) => Err(error.to_string()),
        }
    })
    .await;
}

/// Three times in a row, each time a fresh database and a fresh broker (no
/// topic, no consumer group yet): `purser serve`, wait until both APIs
/// answer ready, open an account, and read it back with the `min_version`
/// the command answered and the default wait. Ready came too early if the
/// read is not 200 (the workers still joining their group answer 503
/// `min_version_timeout` after the 2 s wait).
#[tokio::test]
async fn once_ready_a_command_is_readable_with_the_default_wait() {
    let http = reqwest::Client::new();
    for start in 1..=3 {
        let db = TestDatabase::create_unmigrated().await;
        let broker = test_support::kafka::PrivateBroker::start().await;
        let kafka = kafka::KafkaConfig {
            brokers: broker.address.clone(),
            ..test_support::kafka::isolated("ready")
        };
        let keys = keys();
        let mut child = serve_on(&db, true, keys.path(), &kafka);
        let mut lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
        let [command_api, query_api] =
            addresses_logged(&mut lines, ["command API listening", "query API listening"]).await;
        let drained = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push(line);
            }
            seen
        });
        wait_ready(&http, &format!("http://{command_api}/health/ready")).await;
        wait_ready(&http, &format!("http://{query_api}/health/ready")).await;

        let token = customer_token(keys.path());
        let opened = http
            .post(format!("http://{command_api}/accounts"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"currency": "EUR"}))
            .send()
            .await
            .expect("open an account");
        assert_eq!(
            opened.status(),
            reqwest::StatusCode::CREATED,
            "start {start}"
        );
        let opened: Value = opened.json().await.expect("the account");
        let id = opened["account_id"].as_str().expect("account_id");
        let version = opened["version"].as_u64().expect("version");
        let read = http
            .get(format!(
                "http://{query_api}/accounts/{id}?min_version={version}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .expect("read the account");
        let status = read.status();
        let body = read.text().await.unwrap_or_default();

        let pid = child.id().expect("running").to_string();
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await;
        let _ = tokio::time::timeout(DEADLINE, child.wait()).await;
        let logged = drained.await.expect("stderr read").join("\n");
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "start {start}: {body}\n{logged}"
        );
        drop(broker);
        db.drop().await;
    }
}
