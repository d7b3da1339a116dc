//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use domain::{BankAccount, Inventory, Order};
use event_store::EventStore;

use crate::commands::Commands;
use crate::config::Config;
use crate::metrics::Metrics;

/// Cheap to clone: everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    accounts: Commands<BankAccount>,
    inventory: Commands<Inventory>,
    orders: Commands<Order>,
    metrics: Metrics,
    body_limit: usize,
    request_timeout: Duration,
}

impl AppState {
    pub fn new(store: EventStore, config: &Config) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                accounts: Commands::new(store.clone(), config.max_retries),
                inventory: Commands::new(store.clone(), config.max_retries),
                orders: Commands::new(store.clone(), config.max_retries),
                store,
                metrics: Metrics::new(),
                body_limit: config.body_limit,
                request_timeout: config.request_timeout(),
            }),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    pub fn accounts(&self) -> &Commands<BankAccount> {
        &self.inner.accounts
    }

    pub fn inventory(&self) -> &Commands<Inventory> {
        &self.inner.inventory
    }

    pub fn orders(&self) -> &Commands<Order> {
        &self.inner.orders
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn body_limit(&self) -> usize {
        self.inner.body_limit
    }

    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }
}
