//! Callers with real tokens (`test_support::tokens::Keys`, a development key pair of the
//! test's own) and a Command API that verifies them, with what the
//! ownership tests ask of it: who owns what, and who appended each event.

use command_api::Config;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use test_support::command_api::{TestApp, DEFAULT_PRICE};
use test_support::http::assert_json;
use test_support::tokens::{generous, Keys};

/// Who sends a request: a customer, an operator, or nobody (no token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Customer(Uuid),
    Operator(String),
    Nobody,
}

impl Who {
    pub fn customer() -> Who {
        Who::Customer(Uuid::now_v7())
    }

    pub fn operator(name: &str) -> Who {
        Who::Operator(name.to_owned())
    }

    /// The `actor` its events record.
    pub fn actor(&self) -> String {
        match self {
            Who::Customer(id) => id.to_string(),
            Who::Operator(name) => name.clone(),
            Who::Nobody => String::new(),
        }
    }
}

/// A Command API that verifies tokens, over a database of its own.
pub struct SecuredApp {
    pub app: TestApp,
    pub keys: Keys,
}

impl std::ops::Deref for SecuredApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl SecuredApp {
    pub async fn spawn() -> SecuredApp {
        SecuredApp::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> SecuredApp {
        let keys = Keys::new();
        let app = TestApp::spawn_with_access_and(keys.access(generous()), configure).await;
        SecuredApp { app, keys }
    }

    /// A POST by `who` (with its token, or none).
    pub fn post_as(&self, who: &Who, path: &str) -> RequestBuilder {
        let request = self.app.post(path);
        match who {
            Who::Customer(id) => request.bearer_auth(self.keys.customer(*id)),
            Who::Operator(name) => request.bearer_auth(self.keys.operator(name)),
            Who::Nobody => request,
        }
    }

    /// A POST of `body` by `who`.
    pub async fn send(&self, who: &Who, path: &str, body: &Value) -> Response {
        self.post_as(who, path)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// `GET /metrics` as an operator.
    pub async fn metrics(&self) -> String {
        self.app
            .client
            .get(self.app.url("/metrics"))
            .bearer_auth(self.keys.operator("metrics"))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("metrics text")
    }

    /// Opens an account of `customer` holding `balance`.
    pub async fn open_account_of(&self, customer: &Who, balance: i64) -> Uuid {
        let Who::Customer(customer_id) = customer else {
            panic!("only a customer opens an account")
        };
        let body = json!({"customer_id": customer_id, "currency": "EUR"});
        let opened = assert_json(
            self.send(customer, "/accounts", &body).await,
            StatusCode::CREATED,
        )
        .await;
        let id: Uuid = opened["account_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("account_id");
        if balance > 0 {
            let path = format!("/accounts/{id}/deposits");
            let deposited = self
                .send(customer, &path, &json!({"amount": balance}))
                .await;
            assert_json(deposited, StatusCode::OK).await;
        }
        id
    }

    /// Places an order of `customer` charged to `account`; its id.
    pub async fn place_order_of(&self, customer: &Who, account: Uuid, sku: &str) -> Uuid {
        let placed = assert_json(
            self.send(customer, "/orders", &order_of(customer, account, sku))
                .await,
            StatusCode::ACCEPTED,
        )
        .await;
        placed["order_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("order_id")
    }

    /// Creates an inventory item, as an operator.
    pub async fn create_item_as_operator(&self, sku: &str, quantity: i64) {
        let body = json!({"sku": sku, "name": format!("Item {sku}"), "quantity": quantity,
                          "unit_price": DEFAULT_PRICE, "currency": "EUR"});
        let created = self
            .send(&Who::operator("stock"), "/inventory", &body)
            .await;
        assert_json(created, StatusCode::CREATED).await;
    }

    /// Events in the stream `stream_id`.
    pub async fn stream_len(&self, stream_id: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM event_store.events WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_one(&self.app.db.pool)
            .await
            .expect("count events")
    }

    /// The `actor` of every event of the stream, in order.
    pub async fn actors(&self, stream_id: &str) -> Vec<Option<String>> {
        sqlx::query_scalar(
            "SELECT metadata->>'actor' FROM event_store.events WHERE stream_id = $1 \
             ORDER BY version",
        )
        .bind(stream_id)
        .fetch_all(&self.app.db.pool)
        .await
        .expect("read actors")
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

/// A place-order body of `customer` charged to `account`.
pub fn order_of(customer: &Who, account: Uuid, sku: &str) -> Value {
    let mut body = json!({
        "account_id": account,
        "currency": "EUR",
        "lines": [{"sku": sku, "quantity": 1}],
        "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                             "postal_code": "28013", "country": "ES"}
    });
    if let Who::Customer(id) = customer {
        body["customer_id"] = json!(id);
    }
    body
}
