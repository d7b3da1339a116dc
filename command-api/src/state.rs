//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use domain::{BankAccount, Inventory, Order};
use event_store::{EventStore, Repository};

use crate::config::Config;
use crate::lock::StreamLocks;
use crate::metrics::Metrics;

/// Cheap to clone: everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    accounts: Repository<BankAccount>,
    inventory: Repository<Inventory>,
    orders: Repository<Order>,
    metrics: Metrics,
    locks: StreamLocks,
    body_limit: usize,
    request_timeout: Duration,
    max_retries: u32,
}

impl AppState {
    pub fn new(store: EventStore, config: &Config) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                // Retries are counted and bounded by `commands::execute`.
                accounts: Repository::new(store.clone()).with_max_retries(0),
                inventory: Repository::new(store.clone()).with_max_retries(0),
                orders: Repository::new(store.clone()).with_max_retries(0),
                store,
                metrics: Metrics::new(),
                locks: StreamLocks::new(),
                body_limit: config.body_limit,
                request_timeout: config.request_timeout(),
                max_retries: config.max_retries,
            }),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    pub fn accounts(&self) -> &Repository<BankAccount> {
        &self.inner.accounts
    }

    pub fn inventory(&self) -> &Repository<Inventory> {
        &self.inner.inventory
    }

    pub fn orders(&self) -> &Repository<Order> {
        &self.inner.orders
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn locks(&self) -> &StreamLocks {
        &self.inner.locks
    }

    pub fn body_limit(&self) -> usize {
        self.inner.body_limit
    }

    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    pub fn max_retries(&self) -> u32 {
        self.inner.max_retries
    }
}
