//! The process's metrics: the one registry every component registers in
//! (`service::metrics::Registry`), the database pool's gauges, and the
//! admin listener's address of the processes without an API.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use service::metrics::Registry;
use sqlx::PgPool;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// `purser_db_pool_connections{state="idle"|"in_use"}` and
/// `purser_db_pool_max_connections`, read from the pool at each scrape.
pub fn register_pool(registry: &Registry, pool: &PgPool) {
    let connections = Family::<StateLabel, Gauge>::default();
    let max = Gauge::<i64>::default();
    registry.register(|r| {
        r.register(
            "purser_db_pool_connections",
            "Connections of the process's PostgreSQL pool, idle or in use",
            connections.clone(),
        );
        r.register(
            "purser_db_pool_max_connections",
            "Most connections the process's pool opens",
            max.clone(),
        );
    });
    let pool = pool.clone();
    registry.on_scrape(Arc::new(move || {
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        connections
            .get_or_create(&StateLabel { state: "idle" })
            .set(idle);
        connections
            .get_or_create(&StateLabel { state: "in_use" })
            .set((size - idle).max(0));
        max.set(i64::from(pool.options().get_max_connections()));
        Box::pin(async {})
    }));
}

/// The saga backlog's gauges (orders waiting for their saga, and the age
/// of the oldest), measured at each scrape, once per process.
pub fn register_saga_backlog(registry: &Registry, pool: &PgPool) {
    ::command_api::backlog::register_metrics(registry, pool);
}

/// Registers the projections' progress and sagas per state (from the
/// database, at each scrape), once per process.
pub fn register_projection_status(registry: &Registry, pool: &PgPool) {
    ::query_api::state::register(registry, pool);
}

/// The admin listener's address (`/metrics`, `/health/live`).
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Where this process serves `GET /metrics` (OpenMetrics text, no
    /// token: keep it on an address only the scraper reaches) and
    /// `GET /health/live`; port 0 picks a free one.
    #[arg(long = "admin-addr", env = "PURSER_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
}

impl AdminArgs {
    /// The address given, else `default`.
    pub fn or(&self, default: &str) -> SocketAddr {
        self.admin_addr
            .unwrap_or_else(|| default.parse().expect("a valid default address"))
    }
}
