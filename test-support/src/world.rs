//! A whole write side for one test: its own database and topic prefix, the
//! Command API on a free port, the relay, and the saga orchestrator with a
//! simulated carrier whose behaviour the test controls.

use std::sync::Arc;
use std::time::Duration;

use domain::{
    AccountState, Aggregate, BankAccount, DomainEvent, FulfilmentSaga, Inventory, InventoryState,
    Order, OrderState, SagaState,
};
use event_store::{EventStore, Repository};
use kafka::KafkaConfig;
use reqwest::StatusCode;
use saga::{BeforeStep, Carrier, Orchestrator, SagaConfig, SagaMetrics, SimulatedCarrier, Trigger};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::http::{order_body_for, Client};
use crate::pipeline::Pipeline;
use crate::{eventually, init_tracing, TestDatabase};

/// Quick retries, short deadlines: a test runs in seconds.
pub fn fast_config() -> SagaConfig {
    SagaConfig {
        step_timeout_ms: 2_000,
        max_attempts: 3,
        backoff_ms: 20,
        backoff_max_ms: 200,
        lease_ms: 2_000,
        concurrency: 16,
        poll_ms: 50,
        ..SagaConfig::default()
    }
}

/// Topics of the saga tests' own on other brokers.
pub fn kafka_config_on(brokers: String) -> KafkaConfig {
    KafkaConfig {
        brokers,
        ..crate::kafka::config("saga-test")
    }
}

pub struct World {
    pub db: TestDatabase,
    pub store: EventStore,
    pub kafka: KafkaConfig,
    pub carrier: SimulatedCarrier,
    pub metrics: Arc<SagaMetrics>,
    pub config: SagaConfig,
    api: Client,
    pipeline: Pipeline,
}

impl World {
    /// Database, topics, Command API and relay; the saga is started by
    /// [`World::start_saga`].
    pub async fn new(config: SagaConfig) -> World {
        World::on(config, crate::kafka::config("saga-test")).await
    }

    /// [`World::new`] on the broker(s) of `kafka`.
    pub async fn on(config: SagaConfig, kafka: KafkaConfig) -> World {
        init_tracing();
        kafka::ensure_topics(&kafka, kafka::STREAM_TYPES)
            .await
            .expect("create topics");
        let db = TestDatabase::create().await;
        let store = EventStore::new(db.pool.clone());
        let mut pipeline = Pipeline::new();
        let api = pipeline.command_api(&db.pool).await;
        pipeline.relay(&store, &kafka);

        World {
            db,
            store,
            kafka,
            carrier: SimulatedCarrier::default(),
            metrics: Arc::new(SagaMetrics::new()),
            config,
            api,
            pipeline,
        }
    }

    /// Starts a world with its saga running.
    pub async fn running(config: SagaConfig) -> World {
        let mut world = World::new(config).await;
        world.start_saga(None);
        world
    }

    pub fn orchestrator(&self, hook: Option<BeforeStep>) -> Orchestrator {
        self.orchestrator_with(Arc::new(self.carrier.clone()), hook)
    }

    /// [`World::orchestrator`] shipping through `carrier` instead of the
    /// world's simulated carrier.
    pub fn orchestrator_with(
        &self,
        carrier: Arc<dyn Carrier>,
        hook: Option<BeforeStep>,
    ) -> Orchestrator {
        let orchestrator = Orchestrator::new(
            self.store.clone(),
            carrier,
            self.config.clone(),
            Arc::clone(&self.metrics),
        );
        match hook {
            Some(hook) => orchestrator.with_before_step(hook),
            None => orchestrator,
        }
    }

    /// Runs the trigger and the orchestrator in this process.
    pub fn start_saga(&mut self, hook: Option<BeforeStep>) {
        self.start_saga_with(Arc::new(self.carrier.clone()), hook);
    }

    /// [`World::start_saga`] shipping through `carrier`.
    pub fn start_saga_with(&mut self, carrier: Arc<dyn Carrier>, hook: Option<BeforeStep>) {
        let shutdown = self.pipeline.shutdown.child_token();
        let orchestrator = self.orchestrator_with(carrier, hook);
        let trigger = Trigger::new(orchestrator.clone());
        self.pipeline
            .spawn("saga trigger", trigger.run(shutdown.clone()));
        self.pipeline
            .spawn("saga orchestrator", orchestrator.run(shutdown));
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.api.post(path, &body, None).await
    }

    /// [`World::post`] with an `Idempotency-Key`.
    pub async fn post_with_key(&self, path: &str, body: Value, key: &str) -> (StatusCode, Value) {
        self.api.post(path, &body, Some(key)).await
    }

    /// Opens an account in EUR with `balance` deposited; `(account, customer)`.
    pub async fn account(&self, balance: i64) -> (Uuid, Uuid) {
        let customer = Uuid::now_v7();
        let (status, body) = self
            .post(
                "/accounts",
                json!({"customer_id": customer, "currency": "EUR"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let account: Uuid = body["account_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid");
        if balance > 0 {
            let (status, body) = self
                .post(
                    &format!("/accounts/{account}/deposits"),
                    json!({ "amount": balance }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        (account, customer)
    }

    /// Creates an item at `unit_price` EUR.
    pub async fn item(&self, sku: &str, quantity: i64, unit_price: i64) {
        let (status, body) = self
            .post(
                "/inventory",
                json!({"sku": sku, "name": format!("Item {sku}"), "quantity": quantity,
                       "unit_price": unit_price, "currency": "EUR"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Sets an item's price.
    pub async fn price(&self, sku: &str, unit_price: i64) {
        let (status, body) = self
            .post(
                &format!("/inventory/{sku}/price"),
                json!({ "unit_price": unit_price }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Places an order of `(sku, quantity, unit_price)` lines, the unit
    /// price being the one the client saw (the catalog's, or the order is
    /// refused); its id.
    pub async fn place(
        &self,
        (account, customer): (Uuid, Uuid),
        lines: &[(&str, i64, i64)],
        country: &str,
    ) -> Uuid {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(sku, quantity, unit_price)| {
                json!({"sku": sku, "quantity": quantity, "unit_price": unit_price})
            })
            .collect();
        let (status, body) = self
            .post(
                "/orders",
                order_body_for(customer, account, Value::Array(lines), country),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["order_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("uuid")
    }

    pub async fn cancel(&self, order: Uuid) -> (StatusCode, Value) {
        self.post(
            &format!("/orders/{order}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await
    }

    pub async fn saga(&self, order: Uuid) -> SagaState {
        self.load::<FulfilmentSaga>(&order.to_string()).await
    }

    pub async fn order(&self, order: Uuid) -> OrderState {
        self.load::<Order>(&order.to_string()).await
    }

    pub async fn balance_of(&self, account: Uuid) -> i64 {
        let state: AccountState = self.load::<BankAccount>(&account.to_string()).await;
        state.balance.amount()
    }

    pub async fn stock(&self, sku: &str) -> InventoryState {
        self.load::<Inventory>(sku).await
    }

    async fn load<A: Aggregate>(&self, id: &str) -> A::State {
        Repository::<A>::new(self.store.clone())
            .load(id)
            .await
            .expect("load")
            .state
    }

    /// Waits (at most 30 s) until the saga of `order` satisfies `done`.
    pub async fn wait_saga(&self, order: Uuid, done: impl Fn(&SagaState) -> bool) -> SagaState {
        self.wait_saga_within(order, Duration::from_secs(30), done)
            .await
    }

    /// [`World::wait_saga`], at most `within`.
    pub async fn wait_saga_within(
        &self,
        order: Uuid,
        within: Duration,
        done: impl Fn(&SagaState) -> bool,
    ) -> SagaState {
        let done = &done;
        eventually(
            &format!("the saga of {order} to get there"),
            within,
            Duration::from_millis(25),
            move || async move {
                let state = self.saga(order).await;
                if done(&state) {
                    Ok(state)
                } else {
                    Err(state)
                }
            },
        )
        .await
    }

    /// Waits until the work queue `saga.due` is empty: every wake-up handled.
    pub async fn queue_drained(&self, within: Duration) {
        let pool = &self.db.pool;
        eventually(
            "the work queue to empty",
            within,
            Duration::from_millis(50),
            move || async move {
                let due: i64 = sqlx::query_scalar("SELECT count(*) FROM saga.due")
                    .fetch_one(pool)
                    .await
                    .expect("due");
                if due == 0 {
                    Ok(())
                } else {
                    Err(format!("{due} sagas due"))
                }
            },
        )
        .await;
    }

    /// Waits until the saga of `order` is over (completed or compensated).
    pub async fn finished(&self, order: Uuid) -> SagaState {
        self.wait_saga(order, |s| s.status.is_terminal()).await
    }

    /// The events of one stream, by type name.
    pub async fn event_types(&self, stream: &str) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT event_type FROM event_store.events WHERE stream_id = $1 ORDER BY version",
        )
        .bind(stream)
        .fetch_all(&self.db.pool)
        .await
        .expect("events")
    }

    /// Every event in the store, stream by stream, each stream in version
    /// order.
    pub async fn all_events(&self) -> Vec<StoredEvent> {
        let rows: Vec<(String, String, String, i32, Value)> = sqlx::query_as(
            "SELECT stream_type, stream_id, event_type, schema_version, payload \
             FROM event_store.events ORDER BY stream_id, version",
        )
        .fetch_all(&self.db.pool)
        .await
        .expect("events");
        rows.into_iter()
            .map(
                |(stream_type, stream_id, event_type, schema_version, payload)| StoredEvent {
                    stream_type,
                    stream_id,
                    event_type,
                    schema_version,
                    payload,
                },
            )
            .collect()
    }

    pub async fn stop(self) {
        self.pipeline
            .stop_whatever_happened(Duration::from_secs(10))
            .await;
        self.db.drop().await;
    }
}

/// One row of `event_store.events`, as [`World::all_events`] reads it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub stream_type: String,
    pub stream_id: String,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
}

impl StoredEvent {
    /// The stream's id without its type: `order-{id}` -> `{id}`.
    pub fn id(&self) -> &str {
        self.stream_id
            .strip_prefix(&self.stream_type)
            .and_then(|rest| rest.strip_prefix('-'))
            .expect("stream id is {type}-{id}")
    }

    pub fn decode<E: DomainEvent>(&self) -> E {
        let version = u32::try_from(self.schema_version).expect("schema version");
        E::from_stored(&self.event_type, version, self.payload.clone()).unwrap_or_else(|e| {
            panic!(
                "{} in {} does not decode: {e}",
                self.event_type, self.stream_id
            )
        })
    }
}

/// A hook that holds the saga before the first attempt of step `name`
/// until the returned sender fires (or is dropped).
pub fn hold_before(
    name: &'static str,
) -> (
    BeforeStep,
    tokio::sync::oneshot::Sender<()>,
    Arc<tokio::sync::Notify>,
) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
    let reached = Arc::new(tokio::sync::Notify::new());
    let reached_hook = Arc::clone(&reached);
    let hook: BeforeStep = Arc::new(move |step| {
        let released = Arc::clone(&released);
        let reached = Arc::clone(&reached_hook);
        let matches = step.name() == name;
        Box::pin(async move {
            if !matches {
                return false;
            }
            let Some(receiver) = released.lock().await.take() else {
                return false;
            };
            reached.notify_one();
            let _ = receiver.await;
            true
        })
    });
    (hook, release, reached)
}
