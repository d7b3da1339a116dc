//! Scale-out under faults: every component several times over behind the
//! gateway, on one database and one broker, as separate `purser` processes:
//! two Command APIs and two Query APIs behind nginx, two relays (one active
//! by the advisory lock), three projection workers (consumer-group members),
//! two saga orchestrators (sharing sagas by leases). Customers deposit,
//! withdraw, place and cancel orders through the gateway while one instance
//! of each kind is killed for real (SIGKILL), the active relay among them.
//!
//! Afterwards every order is `shipped` or `cancelled`, money and stock add
//! up exactly per account and SKU, the read models equal a rebuild from the
//! store, every stream reached the broker complete and in order, and the
//! clients only ever saw documented answers (a request cut off by a kill is
//! sent again with its `Idempotency-Key` and applied once).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka::{EventConsumer, KafkaConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};
use test_support::tokens::Keys;
use test_support::{eventually, TestDatabase};
use tokio::process::{Child, Command};
use uuid::Uuid;

use test_support::gateway::{free_port, Gateway, Settings};

use crate::gateway::client;
use crate::{purser, stderr, DEADLINE, PURSER};

const CUSTOMERS: usize = 6;
const ROUNDS: usize = 24;
const SKUS: [&str; 3] = ["SCALE-A", "SCALE-B", "SCALE-C"];
const STOCK: i64 = 40;
const PRICE: i64 = 700;
/// Requests answered before the kills.
const KILL_AFTER: usize = CUSTOMERS * ROUNDS / 3;

/// The processes of one kind.
struct Role {
    name: &'static str,
    children: Vec<Child>,
    /// The addresses of the HTTP ones.
    ports: Vec<u16>,
}

struct Fleet {
    db: TestDatabase,
    kafka: KafkaConfig,
    keys: Keys,
    roles: Vec<Role>,
}

impl Fleet {
    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(PURSER)
            .args(args)
            .args(["--database-url", &self.db.url])
            .env("RUST_LOG", "warn")
            .env("PURSER_AUTH_JWKS", self.keys.keys.jwks())
            .env("KAFKA_BROKERS", &self.kafka.brokers)
            .env("PURSER_KAFKA_TOPIC_PREFIX", &self.kafka.topic_prefix)
            .env("PURSER_KAFKA_SESSION_TIMEOUT_MS", "2000")
            .env_remove("PURSER_INSECURE_NO_AUTH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("purser starts")
    }

    async fn start(&mut self, name: &'static str, count: usize) {
        let mut role = Role {
            name,
            children: Vec::new(),
            ports: Vec::new(),
        };
        for _ in 0..count {
            let port = free_port();
            let address = format!("127.0.0.1:{port}");
            let kafka = [
                "--kafka-brokers",
                &self.kafka.brokers,
                "--kafka-topic-prefix",
                &self.kafka.topic_prefix,
                "--kafka-session-timeout-ms",
                "2000",
            ];
            let child = match name {
                "command-api" => self.spawn(&["command-api", "--bind", &address]),
                "query-api" => self.spawn(&["query-api", "--query-api-addr", &address]),
                "relay" => self.spawn(&[&["relay", "--admin-addr", &address][..], &kafka].concat()),
                "project" => {
                    self.spawn(&[&["project", "--admin-addr", &address][..], &kafka].concat())
                }
                "saga" => self.spawn(&[
                    "saga",
                    "--admin-addr",
                    &address,
                    "--saga-lease-ms",
                    "1000",
                    "--saga-poll-ms",
                    "50",
                    "--saga-backoff-ms",
                    "50",
                ]),
                other => panic!("no role {other}"),
            };
            role.children.push(child);
            role.ports.push(port);
        }
        // Every role listens: the APIs, and the others' admin listener.
        {
            for port in &role.ports {
                wait_live(*port).await;
            }
        }
        self.roles.push(role);
    }

    fn role(&mut self, name: &str) -> &mut Role {
        self.roles
            .iter_mut()
            .find(|role| role.name == name)
            .expect("role started")
    }

    fn ports(&self, name: &str) -> Vec<u16> {
        self.roles
            .iter()
            .find(|role| role.name == name)
            .map(|role| role.ports.clone())
            .unwrap_or_default()
    }
}

async fn wait_live(port: u16) {
    let client = client();
    let url = format!("http://127.0.0.1:{port}/health/live");
    eventually(
        "a service to be live",
        DEADLINE,
        Duration::from_millis(50),
        || {
            let request = client.get(&url).send();
            async move {
                match request.await {
                    Ok(response) if response.status() == StatusCode::OK => Ok(()),
                    Ok(response) => Err(response.status().to_string()),
                    Err(error) => Err(error.to_string()),
                }
            }
        },
    )
    .await;
}

/// The pid of the relay holding the relay lock, from its session's
/// `application_name` (`purser relay (pid N)`).
async fn active_relay(db: &TestDatabase) -> Option<u32> {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l \
           JOIN pg_stat_activity a ON a.pid = l.pid \
           JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
           AND l.classid::bigint = ($1 >> 32) AND l.objid::bigint = ($1 & 4294967295)",
    )
    .bind(kafka::RELAY_LOCK_KEY)
    .fetch_optional(&db.pool)
    .await
    .expect("pg_locks");
    holder?
        .strip_prefix("purser relay (pid ")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

/// What the clients were told, per account: the money they moved.
#[derive(Default)]
struct Ledger {
    deposited: HashMap<Uuid, i64>,
    withdrawn: HashMap<Uuid, i64>,
    /// Accepted orders: id -> (account, lines).
    orders: HashMap<Uuid, (Uuid, Vec<(String, i64)>)>,
    /// Every status a client got as a final answer.
    statuses: BTreeMap<u16, usize>,
    /// Requests sent again after a kill cut them off.
    resent: usize,
}

/// Posts through the gateway until a final, documented answer: a request
/// cut off by a kill (transport error, 502, 503, 504) or rate limited is
/// sent again with the same `Idempotency-Key`.
async fn post(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    path: &str,
    body: &Value,
    ledger: &Mutex<Ledger>,
) -> (StatusCode, Value) {
    let key = Uuid::now_v7().to_string();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "POST {path} never got a final answer"
        );
        let sent = http
            .post(format!("{gateway}{path}"))
            .bearer_auth(token)
            .header("Idempotency-Key", &key)
            .json(body)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(_) => {
                ledger.lock().unwrap().resent += 1;
                continue;
            }
        };
        let status = response.status();
        if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
            let retry: u64 = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .expect("Retry-After on a 429/502/503/504");
            assert!(retry <= 5, "Retry-After {retry}");
            ledger.lock().unwrap().resent += 1;
            // Retry-After is seconds; a shorter wait is allowed and keeps the
            // test quick (the answer only says when a retry may succeed).
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        *ledger
            .lock()
            .unwrap()
            .statuses
            .entry(status.as_u16())
            .or_default() += 1;
        return (status, body);
    }
}

/// Asserts `(status, body)` is one of the answers `path` documents.
fn documented(path: &str, status: StatusCode, body: &Value) {
    let code = body["code"].as_str().unwrap_or_default();
    let ok = match status.as_u16() {
        200..=202 => true,
        409 => code == "concurrency_conflict",
        422 => matches!(
            code,
            "insufficient_funds" | "order_not_cancellable" | "account_closed"
        ),
        _ => false,
    };
    assert!(ok, "POST {path}: undocumented answer {status} {body}");
}

/// One customer's load: deposits, withdrawals, orders (one in five to
/// country `XX`, which the carrier refuses) and some cancellations.
async fn customer(
    gateway: String,
    token: String,
    account: Uuid,
    seed: usize,
    answered: Arc<AtomicUsize>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let http = client();
    let mut placed: Vec<Uuid> = Vec::new();
    for round in 0..ROUNDS {
        let n = seed * 31 + round * 7;
        let (path, body) = match round % 4 {
            0 | 2 => (
                format!("/accounts/{account}/deposits"),
                json!({ "amount": 1_000 + (n % 5) as i64 * 100 }),
            ),
            1 => (
                format!("/accounts/{account}/withdrawals"),
                json!({ "amount": 300 + (n % 3) as i64 * 200 }),
            ),
            _ if round % 8 == 7 && !placed.is_empty() => (
                format!("/orders/{}/cancel", placed[n % placed.len()]),
                json!({ "reason": "changed my mind" }),
            ),
            _ => {
                let sku = SKUS[n % SKUS.len()];
                let quantity = 1 + (n % 3) as i64;
                let country = if n % 5 == 0 { "XX" } else { "ES" };
                (
                    "/orders".to_owned(),
                    json!({
                        "account_id": account,
                        "currency": "EUR",
                        "lines": [{ "sku": sku, "quantity": quantity }],
                        "shipping_address": {
                            "name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                            "postal_code": "28013", "country": country
                        }
                    }),
                )
            }
        };
        let (status, answer) = post(&http, &gateway, &token, &path, &body, &ledger).await;
        documented(&path, status, &answer);
        if status.is_success() {
            let mut ledger = ledger.lock().unwrap();
            let amount = body["amount"].as_i64().unwrap_or_default();
            if path.ends_with("/deposits") {
                *ledger.deposited.entry(account).or_default() += amount;
            } else if path.ends_with("/withdrawals") {
                *ledger.withdrawn.entry(account).or_default() += amount;
            } else if path == "/orders" {
                let order: Uuid = answer["order_id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .expect("order_id");
                let line = &body["lines"][0];
                let lines = vec![(
                    line["sku"].as_str().unwrap().to_owned(),
                    line["quantity"].as_i64().unwrap(),
                )];
                ledger.orders.insert(order, (account, lines));
                placed.push(order);
            }
        }
        answered.fetch_add(1, Ordering::SeqCst);
    }
}

/// A GET through the gateway as `token`, retried while an instance dies,
/// and while the read model has not applied the entity yet (404: right
/// after the kills, the surviving workers and the standby relay are still
/// catching up).
async fn get(http: &reqwest::Client, url: &str, token: &str) -> Value {
    eventually(url, DEADLINE, Duration::from_millis(50), || async {
        let response = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response.json::<Value>().await.expect("JSON"));
        }
        assert!(
            matches!(status.as_u16(), 404 | 502..=504),
            "GET {url}: {status}"
        );
        Err(status.to_string())
    })
    .await
}

/// The version of a stream in the store.
async fn stream_version(db: &TestDatabase, stream: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(version), 0) FROM event_store.events WHERE stream_id = $1",
    )
    .bind(stream)
    .fetch_one(&db.pool)
    .await
    .expect("stream version")
}

/// Every row of the read models of `projection`, as text, in a stable order.
async fn read_model(db: &TestDatabase, projection: &str) -> Vec<String> {
    let tables = projections::by_name(projection)
        .expect("projection")
        .tables();
    let mut rows = Vec::new();
    for table in tables {
        let text: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT t::text FROM read_models.{} AS t ORDER BY 1",
            table.name
        ))
        .fetch_all(&db.pool)
        .await
        .expect("read model rows");
        rows.extend(text.into_iter().map(|t| format!("{} {t}", table.name)));
    }
    rows
}

/// Waits until every projection has applied everything in the store.
async fn caught_up(db: &TestDatabase) {
    eventually(
        "the projections to apply everything in the store",
        DEADLINE,
        Duration::from_millis(100),
        || async {
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM event_store.events e \
                   CROSS JOIN unnest($1::text[]) AS p(name) \
                   LEFT JOIN read_models.applied a \
                     ON a.projection = p.name AND a.stream_id = e.stream_id \
                  WHERE e.stream_type = ANY(CASE p.name \
                          WHEN 'accounts' THEN ARRAY['account'] \
                          WHEN 'inventory' THEN ARRAY['inventory'] \
                          WHEN 'orders' THEN ARRAY['order'] \
                          ELSE ARRAY['saga'] END) \
                    AND e.version > coalesce(a.version, 0)",
            )
            .bind(projections::names())
            .fetch_one(&db.pool)
            .await
            .expect("lag");
            if behind == 0 {
                Ok(())
            } else {
                Err(behind)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn every_component_twice_behind_the_gateway_survives_a_kill_of_each_and_loses_nothing() {
    let db = TestDatabase::create().await;
    let kafka = test_support::kafka::config("scale");
    kafka::ensure_topics(&kafka, kafka::STREAM_TYPES)
        .await
        .expect("topics");
    let mut fleet = Fleet {
        db,
        kafka,
        keys: Keys::new(),
        roles: Vec::new(),
    };
    fleet.start("command-api", 2).await;
    fleet.start("query-api", 2).await;
    fleet.start("relay", 2).await;
    fleet.start("project", 3).await;
    fleet.start("saga", 2).await;
    let gateway = Gateway::start(Settings::to(
        fleet.ports("command-api"),
        fleet.ports("query-api"),
    ))
    .await;
    let base = gateway.url("");
    let http = client();
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // The catalog, by an operator.
    let operator = fleet.keys.operator("ops");
    for sku in SKUS {
        let body = json!({
            "sku": sku, "name": sku, "quantity": STOCK, "unit_price": PRICE, "currency": "EUR"
        });
        let (status, answer) = post(&http, &base, &operator, "/inventory", &body, &ledger).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    // One account per customer.
    let mut customers = Vec::new();
    for _ in 0..CUSTOMERS {
        let id = Uuid::now_v7();
        let token = fleet.keys.customer(id);
        let (status, answer) = post(
            &http,
            &base,
            &token,
            "/accounts",
            &json!({ "currency": "EUR" }),
            &ledger,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let account: Uuid = answer["account_id"].as_str().unwrap().parse().unwrap();
        customers.push((token, account));
    }

    let answered = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = customers
        .iter()
        .enumerate()
        .map(|(seed, (token, account))| {
            tokio::spawn(customer(
                base.clone(),
                token.clone(),
                *account,
                seed,
                answered.clone(),
                ledger.clone(),
            ))
        })
        .collect();

    // A third of the way in, one instance of each kind dies.
    eventually(
        "a third of the load to be answered",
        DEADLINE,
        Duration::from_millis(20),
        || {
            let done = answered.load(Ordering::SeqCst);
            async move {
                if done >= KILL_AFTER {
                    Ok(())
                } else {
                    Err(done)
                }
            }
        },
    )
    .await;
    let active = eventually(
        "a relay to hold the lock",
        DEADLINE,
        Duration::from_millis(20),
        || async { active_relay(&fleet.db).await.ok_or("none") },
    )
    .await;
    for name in ["command-api", "query-api", "project", "saga"] {
        fleet.role(name).children[0]
            .kill()
            .await
            .expect("SIGKILL an instance");
    }
    let relays = &mut fleet.role("relay").children;
    let index = relays
        .iter()
        .position(|relay| relay.id() == Some(active))
        .expect("the lock holder is one of ours");
    relays[index]
        .kill()
        .await
        .expect("SIGKILL the active relay");
    let standby = relays[1 - index].id().expect("standby running");

    for task in load {
        task.await.expect("a customer's load");
    }
    eventually(
        "the standby relay to take over",
        DEADLINE,
        Duration::from_millis(50),
        || async {
            match active_relay(&fleet.db).await {
                Some(pid) if pid == standby => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;

    let ledger = Arc::into_inner(ledger)
        .expect("the load is over")
        .into_inner()
        .unwrap();
    assert!(!ledger.orders.is_empty(), "orders were placed");

    // Every order ends shipped or cancelled; what shipped is charged and
    // takes stock.
    let mut charged: HashMap<Uuid, i64> = HashMap::new();
    let mut shipped_quantity: HashMap<String, i64> = HashMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let tokens: HashMap<Uuid, &str> = customers
        .iter()
        .map(|(token, account)| (*account, token.as_str()))
        .collect();
    for (order, (account, lines)) in &ledger.orders {
        let url = gateway.url(&format!("/orders/{order}"));
        let token = tokens[account];
        let status = eventually(
            "the order to be shipped or cancelled",
            DEADLINE,
            Duration::from_millis(100),
            || {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let read = get(&http, &url, token).await;
                    match read["status"].as_str() {
                        Some(s @ ("shipped" | "cancelled")) => Ok((s.to_owned(), read)),
                        other => Err(other.map(str::to_owned)),
                    }
                }
            },
        )
        .await;
        let (state, read) = status;
        *outcomes.entry(state.clone()).or_default() += 1;
        if state == "shipped" {
            let total = read["total"].as_i64().expect("total");
            assert_eq!(
                total,
                lines.iter().map(|(_, q)| q * PRICE).sum::<i64>(),
                "catalog price"
            );
            *charged.entry(*account).or_default() += total;
            for (sku, quantity) in lines {
                *shipped_quantity.entry(sku.clone()).or_default() += quantity;
            }
        }
    }

    // Money: per account, deposits - withdrawals - what shipped.
    for (token, account) in &customers {
        let expected = ledger.deposited.get(account).copied().unwrap_or(0)
            - ledger.withdrawn.get(account).copied().unwrap_or(0)
            - charged.get(account).copied().unwrap_or(0);
        let version = stream_version(&fleet.db, &format!("account-{account}")).await;
        let read = get(
            &http,
            &gateway.url(&format!(
                "/accounts/{account}?min_version={version}&wait_ms=10000"
            )),
            token,
        )
        .await;
        assert_eq!(read["balance"], expected, "account {account}: {read}");
    }
    // Stock: per SKU, what shipped left; nothing stays reserved.
    for sku in SKUS {
        let version = stream_version(&fleet.db, &format!("inventory-{sku}")).await;
        let read = get(
            &http,
            &gateway.url(&format!(
                "/inventory/{sku}?min_version={version}&wait_ms=10000"
            )),
            &operator,
        )
        .await;
        let shipped = shipped_quantity.get(sku).copied().unwrap_or(0);
        assert_eq!(read["on_hand"], STOCK - shipped, "{sku}: {read}");
        assert_eq!(read["reserved"], 0, "{sku}: {read}");
    }

    // The read models equal a rebuild from the store.
    caught_up(&fleet.db).await;
    for projection in projections::names() {
        let before = read_model(&fleet.db, projection).await;
        let rebuilt = purser(&fleet.db, &["projections", "rebuild", projection]).await;
        assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
        let after = read_model(&fleet.db, projection).await;
        assert_eq!(before, after, "{projection} differs from its rebuild");
    }

    // Every stream reached the broker complete and in order per stream.
    let consumer = EventConsumer::new(
        &fleet.kafka,
        &format!("{}.audit", fleet.kafka.topic_prefix),
        kafka::STREAM_TYPES,
    )
    .expect("consumer");
    let stored: HashMap<String, u64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT stream_id, max(version) FROM event_store.events GROUP BY stream_id",
    )
    .fetch_all(&fleet.db.pool)
    .await
    .expect("streams")
    .into_iter()
    .map(|(stream, version)| (stream, version as u64))
    .collect();
    let mut delivered: HashMap<String, u64> = HashMap::new();
    let mut events = HashSet::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while delivered != stored {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} streams delivered whole",
            stored
                .iter()
                .filter(|(s, v)| delivered.get(*s) == Some(v))
                .count(),
            stored.len()
        );
        for d in consumer
            .next_batch(500, Duration::from_millis(200))
            .await
            .expect("consume")
        {
            events.insert(d.event.event_id);
            let last = delivered.entry(d.event.stream_id.clone()).or_insert(0);
            // A re-publish after the failover repeats versions already seen;
            // a new version always follows the last one.
            if d.event.version > *last {
                assert_eq!(
                    d.event.version,
                    *last + 1,
                    "{} skipped or reordered a version",
                    d.event.stream_id
                );
                *last = d.event.version;
            }
        }
    }

    eprintln!(
        "scale-out: {} orders {:?}, answers {:?}, {} requests resent after kills, {} events",
        ledger.orders.len(),
        outcomes,
        ledger.statuses,
        ledger.resent,
        events.len()
    );
    drop(gateway);
    fleet.db.drop().await;
}
