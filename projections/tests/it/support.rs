//! Test helpers: a fresh database with an event store, commands through the
//! real `Repository`, and snapshots of the read models.

use std::sync::Arc;

use domain::{
    AccountCommand, AccountId, Aggregate, Amount, BankAccount, Currency, CustomerId, Inventory,
    InventoryCommand, Order, OrderCommand, OrderId, Quantity, Sku,
};
use event_store::{Checkpoint, EventStore, ExecuteOptions, Executed, RecordedEvent, Repository};
use migrations::testing::TestDatabase;
use projections::{Projection, Projector};
use uuid::Uuid;

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

    pub fn projector(&self, projection: impl Projection) -> Projector {
        Projector::new(Arc::new(projection), self.store.clone())
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
        let repository = Repository::<A>::new(self.store.clone()).with_max_retries(50);
        let executed = repository
            .execute(id, &command, ExecuteOptions::default(), |_| ())
            .await
            .unwrap_or_else(|e| panic!("execute on {id}: {e}"));
        match executed {
            Executed::Done(outcome) => Ok(outcome.version),
            Executed::Refused(error) => Err(domain::DomainError::code(&error).to_owned()),
            Executed::Replayed(_) => panic!("no idempotency key was sent"),
        }
    }

    pub async fn open_account(&self, currency: &str) -> (Uuid, Uuid) {
        let account_id = Uuid::now_v7();
        let customer_id = Uuid::now_v7();
        self.exec::<BankAccount>(
            &account_id.to_string(),
            AccountCommand::Open {
                account_id: AccountId::new(account_id),
                customer_id: CustomerId::new(customer_id),
                currency: currency_of(currency),
            },
        )
        .await;
        (account_id, customer_id)
    }

    pub async fn deposit(&self, account_id: Uuid, amount: i64) -> u64 {
        self.exec::<BankAccount>(
            &account_id.to_string(),
            AccountCommand::Deposit {
                amount: amount_of(amount),
            },
        )
        .await
    }

    pub async fn withdraw(&self, account_id: Uuid, amount: i64) -> Result<u64, String> {
        self.try_exec::<BankAccount>(
            &account_id.to_string(),
            AccountCommand::Withdraw {
                amount: amount_of(amount),
            },
        )
        .await
    }

    pub async fn create_item(&self, sku: &str, quantity: i64) -> u64 {
        self.exec::<Inventory>(
            sku,
            InventoryCommand::Create {
                sku: Sku::parse(sku).expect("valid sku"),
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

    pub async fn order(&self, order_id: Uuid, command: OrderCommand) -> u64 {
        self.exec::<Order>(&order_id.to_string(), command).await
    }

    /// Every event in the store, in the global read order. `read_all` only
    /// returns events older than every transaction in flight on the server
    /// (other tests' included), so read until all committed events arrived.
    pub async fn all_events(&self) -> Vec<RecordedEvent> {
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM event_store.events")
            .fetch_one(&self.db.pool)
            .await
            .expect("count events");
        let store = &self.store;
        migrations::testing::eventually(
            "read_all to return every event",
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(20),
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

    /// Waits until the projections named have applied exactly every event
    /// of their stream types: the events of those types, less the events
    /// applied as the bookkeeping counts them (a rebuild's replayed ones,
    /// then each stream's row beyond its base), is 0 for each; not below
    /// either, which the Query API's lag would not show. `what` names the
    /// wait in the failure (with a seed, say).
    pub async fn caught_up(&self, names: &[&str], what: &str, within: std::time::Duration) {
        let pool = &self.db.pool;
        let followed: Vec<(&str, Vec<&str>)> = projections::all()
            .iter()
            .filter(|p| names.contains(&p.name()))
            .map(|p| (p.name(), p.stream_types().to_vec()))
            .collect();
        let followed = &followed;
        migrations::testing::eventually(
            what,
            within,
            std::time::Duration::from_millis(100),
            move || async move {
                let mut off = Vec::new();
                for (name, types) in followed {
                    let unapplied: i64 = sqlx::query_scalar(
                        "SELECT (SELECT count(*) FROM event_store.events WHERE stream_type = ANY($2)) \
                              - coalesce((SELECT replayed_events FROM read_models.projection_status \
                                          WHERE projection = $1), 0) \
                              - coalesce((SELECT sum(version - base) FROM read_models.applied \
                                          WHERE projection = $1), 0)::bigint",
                    )
                    .bind(name)
                    .bind(types)
                    .fetch_one(pool)
                    .await
                    .expect("unapplied events");
                    if unapplied != 0 {
                        off.push((*name, unapplied));
                    }
                }
                if off.is_empty() {
                    Ok(())
                } else {
                    Err(off)
                }
            },
        )
        .await;
    }

    /// Every row of the read models (and the applied versions, however they
    /// are recorded) as text, in a
    /// stable order: two projections that converged give equal snapshots.
    pub async fn snapshot(&self) -> Vec<String> {
        let mut rows = Vec::new();
        for (table, order) in [
            ("read_models.accounts", "account_id"),
            ("read_models.account_transactions", "account_id, seq"),
            ("read_models.inventory", "sku"),
            ("read_models.orders", "order_id"),
            ("read_models.order_lines", "order_id, line_no"),
            ("read_models.parked", "projection, stream_id"),
        ] {
            let text: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT t::text FROM {table} AS t ORDER BY {order}"
            ))
            .fetch_all(&self.db.pool)
            .await
            .expect("snapshot");
            rows.extend(text.into_iter().map(|t| format!("{table} {t}")));
        }
        for projection in projections::all() {
            let name = projection.name();
            let applied =
                projections::applied_versions(&self.db.pool, name, projection.stream_types())
                    .await
                    .expect("applied versions");
            rows.extend(
                applied
                    .into_iter()
                    .map(|(stream, version)| format!("applied {name} {stream} {version}")),
            );
        }
        rows
    }

    pub async fn drop(self) {
        self.db.drop().await;
    }
}

pub fn currency_of(code: &str) -> Currency {
    Currency::parse(code).expect("valid currency")
}

pub fn amount_of(minor_units: i64) -> Amount {
    Amount::new(minor_units).expect("positive amount")
}

pub fn quantity_of(n: i64) -> Quantity {
    Quantity::new(n).expect("valid quantity")
}

pub fn order_id(id: Uuid) -> OrderId {
    OrderId::new(id)
}

/// The price (EUR) `create_item` gives `sku`: the one [`crate::projector::place`]
/// orders it at.
pub fn catalog_price(sku: &str) -> domain::Price {
    let unit_price = match sku {
        "LAPTOP-15" => 99_999,
        "MOUSE-1" => 1_500,
        _ => 1_000,
    };
    domain::Price::new(
        domain::UnitPrice::new(unit_price).expect("positive price"),
        Currency::EUR,
    )
}
