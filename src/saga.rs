//! `purser saga`: the order-fulfilment saga orchestrator, and
//! `purser saga retry ORDER_ID` for sagas that need attention.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::routing::get;
use service::Component;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Connections the orchestrator uses.
pub const POOL_SIZE: u32 = 16;

/// Where the orchestrator serves its metrics by default.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:8082";

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
    /// Where the orchestrator serves `GET /metrics` (Prometheus text) and
    /// `GET /health/live` (port 0 picks a free one).
    #[arg(
        long = "saga-metrics-addr",
        env = "PURSER_SAGA_METRICS_ADDR",
        default_value = DEFAULT_METRICS_ADDR
    )]
    pub metrics_addr: SocketAddr,
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
/// events that start and wake sagas and drives them until shutdown, serving
/// its metrics. PostgreSQL is all it needs: no broker.
pub struct Orchestrator {
    store: event_store::EventStore,
    saga: ::saga::SagaConfig,
    metrics: Arc<::saga::SagaMetrics>,
    listener: TcpListener,
    ready: service::ReadyFlag,
}

impl Orchestrator {
    /// Binds the metrics address.
    pub async fn build(args: OrchestratorArgs, pool: PgPool) -> Result<Orchestrator> {
        let listener = TcpListener::bind(args.metrics_addr)
            .await
            .with_context(|| format!("binding the saga metrics to {}", args.metrics_addr))?;
        Ok(Orchestrator {
            store: event_store::EventStore::new(pool),
            saga: args.saga,
            metrics: Arc::new(::saga::SagaMetrics::new()),
            listener,
            ready: service::ReadyFlag::detached(),
        })
    }

    /// Set once the orchestrator runs (it needs nothing but the database,
    /// which the process opened already).
    pub fn with_ready(mut self, ready: service::ReadyFlag) -> Orchestrator {
        self.ready = ready;
        self
    }
}

impl Component for Orchestrator {
    type Error = anyhow::Error;

    fn name(&self) -> &'static str {
        "saga orchestrator"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "saga metrics listening");
        let server = axum::serve(self.listener, metrics_router(Arc::clone(&self.metrics)))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let carrier = Arc::new(::saga::SimulatedCarrier::new(&self.saga.carrier));
        self.ready.set();
        let (driven, served) = tokio::join!(
            ::saga::run(
                self.store,
                self.saga,
                carrier,
                self.metrics,
                shutdown.clone()
            ),
            server
        );
        driven.context("running the saga orchestrator")?;
        served.context("serving the saga metrics")
    }
}

/// `purser saga`, or `purser saga retry ORDER_ID`.
pub async fn run(global: &GlobalArgs, args: Args, shutdown: CancellationToken) -> Result<()> {
    let pool = db::open(global, POOL_SIZE).await?;
    if let Some(Action::Retry { order_id }) = &args.action {
        return retry(&event_store::EventStore::new(pool), order_id).await;
    }
    Orchestrator::build(args.orchestrator, pool)
        .await?
        .run(shutdown)
        .await
}

/// `GET /metrics` and `GET /health/live` of the orchestrator.
fn metrics_router(metrics: Arc<::saga::SagaMetrics>) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/health/live", get(|| async { "ok" }))
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
