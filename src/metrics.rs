//! The process's metrics: the one registry every component registers in
//! (`service::metrics::Registry`), the database pool's gauges and acquire
//! times, and the admin listener's address of the processes without an
//! API.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use service::metrics::Registry;
use sqlx::PgPool;
use tracing::field::{Field, Visit};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Upper bounds of the acquire histogram, in seconds: an idle connection
/// is handed over in microseconds, so milliseconds already mean waiting.
const ACQUIRE_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How long each acquire of a connection from the process's pool took.
static POOL_ACQUIRE: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(ACQUIRE_BUCKETS));

/// sqlx reports every acquire of a pool built with
/// `PoolOptions::acquire_time_level` (`crate::db::connect`) as an event of
/// this target, with the time it took in this field (spelt so by sqlx).
const ACQUIRE_TARGET: &str = "sqlx::pool::acquire";
const ACQUIRE_FIELD: &str = "aquired_after_secs";

/// The layer of the process's subscriber that turns sqlx's acquire events
/// into `purser_db_pool_acquire_seconds` samples. sqlx counts no waiters
/// and has no hook where an acquire starts, but it times each acquire from
/// its start (waiting for a connection included) to the connection handed
/// over: every query and transaction of the process, wherever it runs.
pub fn pool_acquire_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + 'static,
{
    AcquireTimes.with_filter(Targets::new().with_target(ACQUIRE_TARGET, tracing::Level::TRACE))
}

struct AcquireTimes;

impl<S: tracing::Subscriber> Layer<S> for AcquireTimes {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut seconds = AcquireSeconds(None);
        event.record(&mut seconds);
        if let Some(seconds) = seconds.0 {
            POOL_ACQUIRE.observe(seconds);
        }
    }
}

struct AcquireSeconds(Option<f64>);

impl Visit for AcquireSeconds {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == ACQUIRE_FIELD {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// `purser_db_pool_connections{state="idle"|"in_use"}` and
/// `purser_db_pool_max_connections`, read from the pool at each scrape, and
/// `purser_db_pool_acquire_seconds`, the time each acquire took
/// ([`pool_acquire_layer`]): sqlx does not expose how many tasks wait for
/// a connection, so its tail stands for them.
pub fn register_pool(registry: &Registry, pool: &PgPool) {
    let connections = Family::<StateLabel, Gauge>::default();
    let max = Gauge::<i64>::default();
    registry.register(|r| {
        r.register(
            "purser_db_pool_acquire_seconds",
            "Time to acquire a connection from the process's pool, waiting for one included",
            POOL_ACQUIRE.clone(),
        );
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

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    fn acquires(registry: &Registry) -> u64 {
        let text = registry.encode();
        text.lines()
            .find_map(|line| line.strip_prefix("purser_db_pool_acquire_seconds_count "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or_else(|| panic!("no acquire count in\n{text}"))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_acquire_of_the_process_pool_is_timed() {
        let db = test_support::TestDatabase::create().await;
        // This runtime's tasks all run on this thread: sqlx's events reach
        // the layer.
        let _timed = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(pool_acquire_layer()),
        );
        let pool = crate::db::connect(&db.url, 2).await.expect("pool");
        let registry = Registry::new();
        register_pool(&registry, &pool);
        let before = acquires(&registry);
        for _ in 0..3 {
            sqlx::query("SELECT 1").execute(&pool).await.expect("query");
        }
        let mut tx = pool.begin().await.expect("transaction");
        sqlx::query("SELECT 1")
            .execute(&mut *tx)
            .await
            .expect("query");
        tx.commit().await.expect("commit");
        // Other tests of this process may time theirs meanwhile.
        assert!(acquires(&registry) >= before + 4);
        pool.close().await;
        db.drop().await;
    }
}
