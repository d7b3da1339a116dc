//! The Command API on a port of its own (127.0.0.1:0), over a database of
//! its own.

use std::net::SocketAddr;
use std::time::Duration;

use command_api::{Application, Config};
use domain::{AccountState, BankAccount};
use event_store::{EventStore, Repository};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use service::auth::Access;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{init_tracing, TestDatabase};

/// The unit price (EUR) of the items [`TestApp::create_item`] creates.
pub const DEFAULT_PRICE: i64 = 1_000;

/// A running Command API.
pub struct Server {
    pub address: SocketAddr,
    pub client: Client,
    shutdown: CancellationToken,
    handle: JoinHandle<command_api::Result<()>>,
}

impl Server {
    /// Serves on 127.0.0.1:0 with `pool`, without authentication (the
    /// harness's explicit choice: tests of other things send no tokens).
    pub async fn start(pool: PgPool, configure: impl FnOnce(&mut Config)) -> Server {
        Server::start_with_access(pool, Access::insecure(), configure).await
    }

    /// Serves on 127.0.0.1:0 with `pool`, letting callers in as `access`
    /// says.
    pub async fn start_with_access(
        pool: PgPool,
        access: Access,
        configure: impl FnOnce(&mut Config),
    ) -> Server {
        let mut config = Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Config::default()
        };
        configure(&mut config);
        let application = Application::build(&config, pool, access)
            .await
            .expect("application binds");
        let address = application.address();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(application.run(shutdown.clone()));
        Server {
            address,
            client: Client::new(),
            shutdown,
            handle,
        }
    }

    /// A [`crate::http::Client`] of this server.
    pub fn api(&self) -> crate::http::Client {
        crate::http::Client::new(self.address)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.post(path)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Signals shutdown without waiting.
    pub fn signal_shutdown(&mut self) {
        self.shutdown.cancel();
    }

    /// Shuts down gracefully and waits for the server to finish.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        tokio::time::timeout(Duration::from_secs(30), &mut self.handle)
            .await
            .expect("server stops within 30 s")
            .expect("server task")
            .expect("server ran without error");
    }

    pub async fn join(self) -> command_api::Result<()> {
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("server stops within 30 s")
            .expect("server task")
    }
}

/// A server with its own fresh database.
pub struct TestApp {
    pub server: Server,
    pub db: TestDatabase,
}

impl std::ops::Deref for TestApp {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> TestApp {
        init_tracing();
        let db = TestDatabase::create().await;
        let server = Server::start(db.pool.clone(), configure).await;
        TestApp { server, db }
    }

    /// A server verifying real tokens (`access`).
    pub async fn spawn_with_access(access: Access) -> TestApp {
        TestApp::spawn_with_access_and(access, |_| {}).await
    }

    /// A server verifying real tokens (`access`), configured by `configure`.
    pub async fn spawn_with_access_and(
        access: Access,
        configure: impl FnOnce(&mut Config),
    ) -> TestApp {
        init_tracing();
        let db = TestDatabase::create().await;
        let server = Server::start_with_access(db.pool.clone(), access, configure).await;
        TestApp { server, db }
    }

    pub fn store(&self) -> EventStore {
        EventStore::new(self.db.pool.clone())
    }

    /// Stops the server and drops the database.
    pub async fn stop(self) {
        self.server.stop().await;
        self.db.drop().await;
    }

    /// Rows in `event_store.events`.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM event_store.events")
            .fetch_one(&self.db.pool)
            .await
            .expect("count events")
    }

    /// Rows in `event_store.idempotency`.
    pub async fn idempotency_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM event_store.idempotency")
            .fetch_one(&self.db.pool)
            .await
            .expect("count idempotency records")
    }

    /// How many events of `event_type` the stream holds.
    pub async fn count_of(&self, stream_id: &str, event_type: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM event_store.events WHERE stream_id = $1 AND event_type = $2",
        )
        .bind(stream_id)
        .bind(event_type)
        .fetch_one(&self.db.pool)
        .await
        .expect("count events")
    }

    /// The account's state, folded from its stream.
    pub async fn account(&self, id: Uuid) -> (AccountState, u64) {
        let loaded = Repository::<BankAccount>::new(self.store())
            .load(&id.to_string())
            .await
            .expect("load account");
        (loaded.state, loaded.version)
    }

    /// Opens an account over HTTP and deposits `balance` into it.
    pub async fn open_account(&self, balance: i64) -> Uuid {
        let response = self
            .post_json(
                "/accounts",
                &json!({"customer_id": Uuid::now_v7(), "currency": "EUR"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("json body");
        let id: Uuid = body["account_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("account_id");
        if balance > 0 {
            let response = self
                .post_json(
                    &format!("/accounts/{id}/deposits"),
                    &json!({"amount": balance}),
                )
                .await;
            assert_eq!(response.status(), StatusCode::OK);
        }
        id
    }

    /// Creates an inventory item over HTTP, at [`DEFAULT_PRICE`] EUR.
    pub async fn create_item(&self, sku: &str, quantity: i64) {
        self.create_item_at(sku, quantity, DEFAULT_PRICE, "EUR")
            .await;
    }

    /// Creates an inventory item over HTTP at `unit_price` in `currency`.
    pub async fn create_item_at(&self, sku: &str, quantity: i64, unit_price: i64, currency: &str) {
        let response = self
            .post_json(
                "/inventory",
                &json!({"sku": sku, "name": format!("Item {sku}"), "quantity": quantity,
                        "unit_price": unit_price, "currency": currency}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}
