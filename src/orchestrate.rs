//! `purser saga`: the order-fulfilment saga orchestrator, and
//! `purser saga retry ORDER_ID` for sagas that need attention.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Options of `purser saga`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SagaArgs {
    #[command(subcommand)]
    pub action: Option<SagaAction>,
    #[command(flatten)]
    pub saga: saga::SagaConfig,
    /// Where the orchestrator serves `GET /metrics` (Prometheus text) and
    /// `GET /health/live` (port 0 picks a free one).
    #[arg(
        long = "saga-metrics-addr",
        env = "PURSER_SAGA_METRICS_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    pub metrics_addr: SocketAddr,
}

#[derive(Debug, clap::Subcommand)]
pub enum SagaAction {
    /// Resume a saga that needs attention: its stuck step gets a fresh
    /// retry budget, and the running orchestrator carries on with it.
    Retry {
        /// The order whose saga to resume.
        order_id: String,
    },
}

/// `purser saga`: tails the event store for the order events that start and
/// wake sagas and drives them until SIGTERM or ctrl-c. PostgreSQL is all it
/// needs: no broker.
pub async fn run(global: &GlobalArgs, args: SagaArgs) -> Result<()> {
    let pool = db::connect(&global.database_url, 16).await?;
    migrations::run(&pool)
        .await
        .context("applying the migrations")?;
    let store = event_store::EventStore::new(pool);
    if let Some(SagaAction::Retry { order_id }) = &args.action {
        return retry(&store, order_id).await;
    }
    let shutdown = CancellationToken::new();
    query_api::cancel_on_signal(shutdown.clone());
    let metrics = Arc::new(saga::SagaMetrics::new());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the saga metrics to {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "saga metrics listening");
    let server = axum::serve(listener, metrics_router(Arc::clone(&metrics)))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let carrier = Arc::new(saga::SimulatedCarrier::new(&args.saga.carrier));
    let (driven, served) = tokio::join!(
        saga::run(store, args.saga, carrier, metrics, shutdown.clone()),
        server
    );
    driven.context("running the saga orchestrator")?;
    served.context("serving the saga metrics")
}

/// `GET /metrics` and `GET /health/live` of the orchestrator.
fn metrics_router(metrics: Arc<saga::SagaMetrics>) -> axum::Router {
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
    let state = saga::retry(store, id)
        .await
        .with_context(|| format!("retrying the saga of order {id}"))?;
    println!("saga of order {id} resumed ({state}); the orchestrator carries on with it");
    Ok(())
}
