//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use service::metrics::{HttpMetrics, Registry};

use sqlx::PgPool;

use crate::progress::Progress;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub progress: Progress,
    /// Upper bound of a whole request (waits included).
    pub request_timeout: Duration,
    /// The cap on requests in flight (load shedding).
    pub concurrency: service::ConcurrencyCap,
    /// The projections whose workers `/health/ready` waits for (every one).
    pub projections: Vec<&'static str>,
    /// The other components of this process that `/health/ready` waits for
    /// (`purser serve`); `None` when the Query API runs alone.
    pub readiness: Option<service::Readiness>,
    /// The process's registry, which `/metrics` serves.
    pub registry: Registry,
    /// The Query API's RED metrics (`query_api_http_*`).
    pub http_metrics: HttpMetrics,
    /// Cancelled when the server stops: the consoles' endless streams
    /// (`/console/events`) end then, so that shutdown does not wait for them.
    pub closing: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// No I/O: without [`Progress::spawn_listener`] running, `min_version`
    /// waits poll.
    /// Its metrics in a registry of its own until [`AppState::with_registry`].
    pub fn new(pool: PgPool, progress: Progress) -> Self {
        let registry = Registry::new();
        register(&registry, &pool);
        AppState {
            http_metrics: HttpMetrics::new(&registry, "query_api"),
            registry,
            pool,
            progress,
            request_timeout: Duration::from_secs(15),
            concurrency: service::ConcurrencyCap::new(
                crate::QueryApiConfig::default().max_concurrent_requests(),
            ),
            projections: projections::names(),
            readiness: None,
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Ready only once every component of `readiness` is too.
    pub fn with_readiness(mut self, readiness: service::Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Its metrics in `registry`, the process's: its RED metrics, and the
    /// projections' progress and sagas per state, read from the database
    /// when scraped (once per process, whoever else shows them).
    pub fn with_registry(mut self, registry: &Registry) -> Self {
        register(registry, &self.pool);
        self.http_metrics = HttpMetrics::new(registry, "query_api");
        self.registry = registry.clone();
        self
    }

    /// At most `max` requests in flight (health checks aside).
    pub fn with_max_concurrent_requests(mut self, max: usize) -> Self {
        self.concurrency = service::ConcurrencyCap::new(max);
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// Registers the projections' progress and the sagas per state, refreshed
/// from `pool` at each scrape, unless the process has them already.
pub fn register(registry: &Registry, pool: &PgPool) {
    let status = projections::metrics::StatusMetrics::new();
    if registry.register_group("projection_status", |r| status.register(r)) {
        let pool = pool.clone();
        registry.on_scrape(Arc::new(move || {
            let (status, pool) = (status.clone(), pool.clone());
            Box::pin(async move {
                if let Err(error) = status.refresh(&pool).await {
                    tracing::warn!(%error, "cannot read the projections' progress for /metrics");
                }
            })
        }));
    }
}
