//! `purser saga`: the order-fulfilment saga orchestrator, and
//! `purser saga retry ORDER_ID` for sagas that need attention.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use service::metrics::{AdminListener, Registry};
use service::{Component, Components};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Connections the orchestrator uses.
pub const POOL_SIZE: u32 = 16;

/// Where the orchestrator's process serves its admin listener by default.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:8082";

/// Options of `purser saga`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub orchestrator: OrchestratorArgs,
}

/// The orchestrator's own options (`purser serve` has them too).
#[derive(Debug, clap::Args)]
pub struct OrchestratorArgs {
    #[command(flatten)]
    pub saga: ::saga::SagaConfig,
    /// Where the process serves `GET /metrics` (OpenMetrics text of the
    /// process's registry, no token: keep it on an address only the
    /// scraper reaches) and `GET /health/live` (port 0 picks a free one).
    #[arg(
        long = "admin-addr",
        visible_alias = "saga-metrics-addr",
        env = "PURSER_ADMIN_ADDR",
        default_value = DEFAULT_ADMIN_ADDR
    )]
    pub admin_addr: SocketAddr,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Resume a saga that needs attention: its stuck step gets a fresh
    /// retry budget, and the running orchestrator carries on with it.
    Retry {
        /// The order whose saga to resume.
        order_id: String,
    },
}

/// The orchestrator as a component: tails the event store for the order
/// events that start and wake sagas and drives them until shutdown.
/// PostgreSQL is all it needs: no broker.
pub struct Orchestrator {
    store: event_store::EventStore,
    saga: ::saga::SagaConfig,
    carrier: ::saga::CircuitBreaker,
    metrics: Arc<::saga::SagaMetrics>,
    ready: service::ReadyFlag,
}

impl Orchestrator {
    /// Registers its metrics in the process's `registry` (and the sagas
    /// per state, from the read model, unless the process shows them
    /// already). Ships through the carrier at `--carrier-url`, or the
    /// simulated one in this process, behind a circuit breaker.
    pub fn build(
        saga: ::saga::SagaConfig,
        pool: PgPool,
        registry: &Registry,
    ) -> Result<Orchestrator> {
        let carrier = saga
            .carrier
            .build()
            .context("building the carrier's HTTP client")?;
        match &saga.carrier.http.url {
            Some(url) => tracing::info!(%url, "shipping through the carrier over HTTP"),
            None => tracing::info!("shipping through the simulated carrier in this process"),
        }
        let metrics = ::saga::SagaMetrics::new();
        registry.register(|r| {
            metrics.register(r);
            carrier.register(r);
        });
        crate::metrics::register_projection_status(registry, &pool);
        crate::metrics::register_saga_backlog(registry, &pool);
        Ok(Orchestrator {
            store: event_store::EventStore::new(pool),
            saga,
            carrier,
            metrics: Arc::new(metrics),
            ready: service::ReadyFlag::detached(),
        })
    }

    /// Ready once the orchestrator runs (it needs nothing but the database,
    /// which the process opened already); its carrier's circuit breaker is
    /// the readiness detail `carrier` (`closed`, `open`, `half_open`),
    /// which never makes the process unready.
    pub fn with_readiness(mut self, readiness: &service::Readiness) -> Orchestrator {
        self.ready = readiness.register("saga orchestrator");
        let carrier = self.carrier.clone();
        readiness.detail("carrier", move || carrier.state().as_str().to_owned());
        self
    }
}

impl Component for Orchestrator {
    type Error = anyhow::Error;

    fn name(&self) -> &'static str {
        "saga orchestrator"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let carrier = Arc::new(self.carrier);
        self.ready.set();
        ::saga::run(self.store, self.saga, carrier, self.metrics, shutdown)
            .await
            .context("running the saga orchestrator")
    }
}

/// Binds the admin listener (`/metrics`, `/health/live`) at `addr`.
pub async fn admin(addr: SocketAddr, registry: &Registry) -> Result<AdminListener> {
    AdminListener::bind(addr, registry.clone())
        .await
        .with_context(|| format!("binding the admin listener to {addr}"))
}

/// `purser saga`, or `purser saga retry ORDER_ID`.
pub async fn run(global: &GlobalArgs, args: Args, shutdown: CancellationToken) -> Result<()> {
    let pool = db::open(global, POOL_SIZE).await?;
    if let Some(Action::Retry { order_id }) = &args.action {
        return retry(&event_store::EventStore::new(pool), order_id).await;
    }
    let registry = Registry::new();
    crate::metrics::register_pool(&registry, &pool);
    let admin = admin(args.orchestrator.admin_addr, &registry).await?;
    let orchestrator = Orchestrator::build(args.orchestrator.saga, pool.clone(), &registry)?;
    let mut components = Components::new(shutdown);
    components.spawn(orchestrator);
    components.spawn(admin);
    let stopped = components.wait().await;
    pool.close().await;
    Ok(stopped?)
}

/// `purser saga retry ORDER_ID`.
async fn retry(store: &event_store::EventStore, order_id: &str) -> Result<()> {
    let id = domain::OrderId::parse(order_id)
        .map_err(|_| anyhow::anyhow!("{order_id:?} is not an order id (a UUID)"))?;
    let state = ::saga::retry(store, id)
        .await
        .with_context(|| format!("retrying the saga of order {id}"))?;
    println!("saga of order {id} resumed ({state}); the orchestrator carries on with it");
    Ok(())
}
