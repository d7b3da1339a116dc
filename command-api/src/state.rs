//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use domain::{BankAccount, FulfilmentSaga, Inventory, Order};
use event_store::EventStore;

use crate::backlog::BacklogGate;
use crate::catalog::Catalog;
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
    sagas: Commands<FulfilmentSaga>,
    catalog: Catalog,
    backlog: BacklogGate,
    metrics: Arc<Metrics>,
    body_limit: usize,
    request_timeout: Duration,
    concurrency: service::ConcurrencyCap,
    /// The other components of this process `/health/ready` waits for
    /// (none unless `purser serve` registers them).
    readiness: service::Readiness,
}

impl AppState {
    /// With a registry of its own (tests; a process passes its one
    /// registry to [`AppState::with_registry`]).
    pub fn new(store: EventStore, config: &Config) -> AppState {
        AppState::with_registry(store, config, &service::metrics::Registry::new())
    }

    /// Its metrics registered in `registry`, the process's.
    pub fn with_registry(
        store: EventStore,
        config: &Config,
        registry: &service::metrics::Registry,
    ) -> AppState {
        let metrics = Arc::new(Metrics::new(registry));
        crate::backlog::register_metrics(registry, store.pool());
        let store = store.with_group_commit(config.group_commit(), metrics.group_commit());
        let retries = config.max_retries;
        let every = config.snapshot_every;
        AppState {
            inner: Arc::new(Inner {
                accounts: Commands::new(
                    store.clone(),
                    retries,
                    config.aggregate_cache_size,
                    every,
                    Arc::clone(&metrics),
                ),
                inventory: Commands::new(
                    store.clone(),
                    retries,
                    config.aggregate_cache_size,
                    every,
                    Arc::clone(&metrics),
                ),
                // An order gets one command over HTTP after it is placed (a
                // cancellation), and its state can be large: not remembered.
                orders: Commands::new(store.clone(), retries, 0, every, Arc::clone(&metrics)),
                // Operators retry a saga now and then: nothing to remember.
                sagas: Commands::new(store.clone(), retries, 0, every, Arc::clone(&metrics)),
                catalog: Catalog::new(store.clone(), every),
                backlog: BacklogGate::new(
                    store.pool().clone(),
                    config.saga_backlog_limit,
                    config.saga_backlog_refresh,
                ),
                store,
                metrics,
                body_limit: config.body_limit,
                request_timeout: config.request_timeout(),
                concurrency: service::ConcurrencyCap::new(config.max_concurrent_requests()),
                readiness: service::Readiness::new(),
            }),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// The components of the process `/health/ready` waits for.
    pub fn readiness(&self) -> &service::Readiness {
        &self.inner.readiness
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

    pub fn sagas(&self) -> &Commands<FulfilmentSaga> {
        &self.inner.sagas
    }

    /// Prices, read from the inventory streams.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The saga backlog new orders are admitted against.
    pub fn backlog(&self) -> &BacklogGate {
        &self.inner.backlog
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

    /// The cap on requests in flight (load shedding).
    pub fn concurrency(&self) -> &service::ConcurrencyCap {
        &self.inner.concurrency
    }
}
