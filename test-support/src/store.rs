//! A fresh database with its event store, and commands through the real
//! repository: how tests write what the read side, the relay and the saga
//! then see.

use std::time::Duration;

use domain::{
    AccountCommand, AccountId, Aggregate, BankAccount, CustomerId, DomainError, DomainEvent,
    Inventory, InventoryCommand, Order, OrderCommand,
};
use event_store::{
    Checkpoint, EventStore, ExecuteOptions, Executed, RecordedEvent, Repository, StreamId,
};
use uuid::Uuid;

use crate::fixtures::{amount_of, catalog_price, currency_of, place, quantity_of, sku_of};
use crate::{eventually, TestDatabase};

/// A database of one test's own, and its event store.
pub struct Harness {
    pub db: TestDatabase,
    pub store: EventStore,
}

impl Harness {
    pub async fn new() -> Harness {
        let db = TestDatabase::create().await;
        let store = EventStore::new(db.pool.clone());
        Harness { db, store }
    }

    /// Runs a command that must be accepted; returns the stream version after it.
    pub async fn exec<A: Aggregate>(&self, id: &str, command: A::Command) -> u64 {
        match self.try_exec::<A>(id, command).await {
            Ok(version) => version,
            Err(error) => panic!("command on {}-{id} refused: {error}", A::STREAM_TYPE),
        }
    }

    /// Runs a command; `Err` with the refusal's code when the domain refuses it.
    pub async fn try_exec<A: Aggregate>(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<u64, String> {
        execute::<A>(&self.store, id, &command).await
    }

    /// Opens an account in `currency`; `(account, customer)`.
    pub async fn open_account(&self, currency: &str) -> (Uuid, Uuid) {
        let customer = Uuid::now_v7();
        (self.open_account_of(customer, currency).await, customer)
    }

    /// Opens an account of `customer` in `currency`; its id.
    pub async fn open_account_of(&self, customer: Uuid, currency: &str) -> Uuid {
        let account = Uuid::now_v7();
        self.exec::<BankAccount>(
            &account.to_string(),
            AccountCommand::Open {
                account_id: AccountId::new(account),
                customer_id: CustomerId::new(customer),
                currency: currency_of(currency),
            },
        )
        .await;
        account
    }

    pub async fn deposit(&self, account: Uuid, amount: i64) -> u64 {
        self.exec::<BankAccount>(
            &account.to_string(),
            AccountCommand::Deposit {
                amount: amount_of(amount),
            },
        )
        .await
    }

    pub async fn withdraw(&self, account: Uuid, amount: i64) -> Result<u64, String> {
        self.try_exec::<BankAccount>(
            &account.to_string(),
            AccountCommand::Withdraw {
                amount: amount_of(amount),
            },
        )
        .await
    }

    /// Creates an item at its [`catalog_price`](crate::fixtures::catalog_price).
    pub async fn create_item(&self, sku: &str, quantity: i64) -> u64 {
        self.exec::<Inventory>(
            sku,
            InventoryCommand::Create {
                sku: sku_of(sku),
                name: format!("Item {sku}"),
                quantity: quantity_of(quantity),
                price: catalog_price(sku),
            },
        )
        .await
    }

    pub async fn inventory(&self, sku: &str, command: InventoryCommand) -> Result<u64, String> {
        self.try_exec::<Inventory>(sku, command).await
    }

    pub async fn order(&self, order: Uuid, command: OrderCommand) -> u64 {
        self.exec::<Order>(&order.to_string(), command).await
    }

    /// Places [`place`]'s order for `customer` on `account`; its id.
    pub async fn place_order(&self, customer: Uuid, account: Uuid) -> Uuid {
        let order = Uuid::now_v7();
        self.order(order, place(order, customer, account)).await;
        order
    }

    /// Every committed event in the store, in the global read order.
    pub async fn all_events(&self) -> Vec<RecordedEvent> {
        all_events(&self.store).await
    }

    /// Closes the pool and drops the database.
    pub async fn drop(self) {
        self.db.drop().await;
    }
}

/// Runs one command through the repository (conflicts retried), without an
/// idempotency key: the new stream version, or the refusal's code.
///
/// # Panics
/// When the store fails (not when the domain refuses).
pub async fn execute<A: Aggregate>(
    store: &EventStore,
    id: &str,
    command: &A::Command,
) -> Result<u64, String> {
    let executed = Repository::<A>::new(store.clone())
        .with_max_retries(50)
        .execute(id, command, ExecuteOptions::default(), |_| ())
        .await
        .unwrap_or_else(|e| panic!("execute on {}-{id}: {e}", A::STREAM_TYPE));
    match executed {
        Executed::Done(outcome) => Ok(outcome.version),
        Executed::Refused(error) => Err(error.code().to_owned()),
        Executed::Replayed(_) => panic!("no idempotency key was sent"),
    }
}

/// Every committed event in the store, in the global read order. `read_all`
/// only returns events older than every transaction in flight on the server
/// (other tests' included), so this reads until all committed events
/// arrived.
pub async fn all_events(store: &EventStore) -> Vec<RecordedEvent> {
    let total = event_count(store).await;
    eventually(
        "read_all to return every event",
        Duration::from_secs(30),
        Duration::from_millis(20),
        move || async move {
            let events = store
                .read_all(Checkpoint::START, i64::MAX)
                .await
                .expect("read_all");
            if events.len() as i64 >= total {
                Ok(events)
            } else {
                Err(format!("{} of {total}", events.len()))
            }
        },
    )
    .await
}

/// Rows in `event_store.events`.
pub async fn event_count(store: &EventStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_store.events")
        .fetch_one(store.pool())
        .await
        .expect("count events")
}

/// Decodes every event of a stream, `"{type}-{id}"`.
pub async fn stream_events<E: DomainEvent>(store: &EventStore, stream: &str) -> Vec<E> {
    let (stream_type, id) = stream.split_once('-').expect("type-id");
    store
        .read_stream(&StreamId::new(stream_type, id), 1)
        .await
        .expect("read stream")
        .iter()
        .map(|recorded| recorded.decode::<E>().expect("decode"))
        .collect()
}

/// Waits until some backend of the store's database waits for a lock (a
/// writer blocked on a uniqueness check of an uncommitted row, say).
pub async fn wait_for_lock_waiter(store: &EventStore) {
    let pool = store.pool();
    eventually(
        "a backend blocked on a lock",
        Duration::from_secs(20),
        Duration::from_millis(10),
        move || async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .expect("pg_stat_activity");
            if waiting > 0 {
                Ok(())
            } else {
                Err("no backend waits")
            }
        },
    )
    .await;
}
