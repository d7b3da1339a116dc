//! A fresh database, commands through the real repository, read models built
//! by the real projectors, and the router driven without a socket.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use domain::{
    AccountCommand, AccountId, Aggregate, Amount, BankAccount, CountryCode, Currency, CustomerId,
    Inventory, InventoryCommand, LineToPlace, Order, OrderCommand, OrderId, Price, Quantity,
    ShippingAddress, Sku, UnitPrice,
};
use event_store::{Checkpoint, EventStore, ExecuteOptions, Executed, Repository};
use migrations::testing::TestDatabase;
use projections::Projector;
use query_api::{router, AppState, Progress};
use tower::ServiceExt;
use uuid::Uuid;

pub struct Harness {
    pub db: TestDatabase,
    pub store: EventStore,
}

pub struct Response {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub json: serde_json::Value,
    pub text: String,
}

impl Harness {
    pub async fn new() -> Harness {
        let db = TestDatabase::create().await;
        let store = EventStore::new(db.pool.clone());
        Harness { db, store }
    }

    pub fn state(&self, poll: Duration) -> AppState {
        AppState::new(self.db.pool.clone(), Progress::new(poll))
    }

    /// One request through the router, no socket.
    pub async fn get(&self, uri: &str) -> Response {
        self.get_with(self.state(Duration::from_millis(50)), uri)
            .await
    }

    pub async fn get_with(&self, state: AppState, uri: &str) -> Response {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        send(state, request).await
    }

    /// Runs a command that must be accepted; returns the stream version after it.
    pub async fn exec<A: Aggregate>(&self, id: &str, command: A::Command) -> u64 {
        let executed = Repository::<A>::new(self.store.clone())
            .execute(id, &command, ExecuteOptions::default(), |_| ())
            .await
            .unwrap_or_else(|e| panic!("execute on {id}: {e}"));
        match executed {
            Executed::Done(outcome) => outcome.version,
            Executed::Refused(error) => panic!("command on {id} refused: {error}"),
            Executed::Replayed(_) => panic!("no idempotency key was sent"),
        }
    }

    pub async fn open_account(&self, customer: Uuid) -> Uuid {
        let account = Uuid::now_v7();
        self.exec::<BankAccount>(
            &account.to_string(),
            AccountCommand::Open {
                account_id: AccountId::new(account),
                customer_id: CustomerId::new(customer),
                currency: Currency::parse("EUR").unwrap(),
            },
        )
        .await;
        account
    }

    pub async fn deposit(&self, account: Uuid, amount: i64) -> u64 {
        self.exec::<BankAccount>(
            &account.to_string(),
            AccountCommand::Deposit {
                amount: Amount::new(amount).unwrap(),
            },
        )
        .await
    }

    pub async fn create_item(&self, sku: &str, quantity: i64) -> u64 {
        self.exec::<Inventory>(
            sku,
            InventoryCommand::Create {
                sku: Sku::parse(sku).unwrap(),
                name: format!("Item {sku}"),
                quantity: Quantity::new(quantity).unwrap(),
                price: catalog_price(sku),
            },
        )
        .await
    }

    pub async fn place_order(&self, customer: Uuid, account: Uuid) -> Uuid {
        let order = Uuid::now_v7();
        self.exec::<Order>(&order.to_string(), place(order, customer, account))
            .await;
        order
    }

    /// Applies everything in the store to every projection. `read_all` only
    /// returns events older than every transaction in flight on the server
    /// (other tests' included), so read until all committed events arrived.
    pub async fn project_all(&self) {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM event_store.events")
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
        let store = &self.store;
        let events = migrations::testing::eventually(
            "read_all to return every event",
            Duration::from_secs(30),
            Duration::from_millis(20),
            move || async move {
                let events = store.read_all(Checkpoint::START, i64::MAX).await.unwrap();
                if events.len() as i64 >= total {
                    Ok(events)
                } else {
                    Err(format!("{} of {total}", events.len()))
                }
            },
        )
        .await;
        for projection in projections::all() {
            Projector::new(projection, self.store.clone())
                .apply_batch(&events)
                .await
                .unwrap();
        }
    }

    pub fn projector(&self, name: &str) -> Projector {
        Projector::new(projections::by_name(name).unwrap(), self.store.clone())
    }

    pub async fn drop(self) {
        self.db.drop().await;
    }
}

pub async fn send(state: AppState, request: Request<Body>) -> Response {
    send_with(state, service::auth::Access::insecure(), request).await
}

/// One request through the router as `access` lets callers in.
pub async fn send_with(
    state: AppState,
    access: service::auth::Access,
    request: Request<Body>,
) -> Response {
    let response = router(state, access).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Response {
        status,
        headers,
        json,
        text,
    }
}

/// The price (EUR) `create_item` gives `sku`: the one [`place`] orders it at.
pub fn catalog_price(sku: &str) -> Price {
    let unit_price = match sku {
        "LAPTOP-15" => 99_999,
        "MOUSE-1" => 1_500,
        _ => 1_000,
    };
    Price::new(UnitPrice::new(unit_price).unwrap(), Currency::EUR)
}

pub fn place(order: Uuid, customer: Uuid, account: Uuid) -> OrderCommand {
    OrderCommand::Place {
        order_id: OrderId::new(order),
        customer_id: CustomerId::new(customer),
        account_id: AccountId::new(account),
        currency: Currency::parse("EUR").unwrap(),
        lines: vec![
            LineToPlace::priced(
                Sku::parse("LAPTOP-15").unwrap(),
                Quantity::new(1).unwrap(),
                catalog_price("LAPTOP-15"),
            ),
            LineToPlace::priced(
                Sku::parse("MOUSE-1").unwrap(),
                Quantity::new(2).unwrap(),
                catalog_price("MOUSE-1"),
            ),
        ],
        shipping_address: ShippingAddress::new(
            "Ana".into(),
            "Calle Mayor 1".into(),
            None,
            "Madrid".into(),
            "28013".into(),
            CountryCode::parse("ES").unwrap(),
        )
        .unwrap(),
    }
}

/// Asserts an RFC 9457 problem with `status` and `code`.
pub fn assert_problem(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status.as_u16(), status, "{}", response.text);
    assert_eq!(
        response.headers.get("content-type").unwrap(),
        "application/problem+json",
        "{}",
        response.text
    );
    assert_eq!(response.json["status"], status);
    assert_eq!(response.json["code"], code, "{}", response.text);
    assert!(response.json["type"].is_string() && response.json["title"].is_string());
    assert!(response.json["detail"].is_string());
}
