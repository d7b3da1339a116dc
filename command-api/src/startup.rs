//! The router (no I/O) and the application (binds, serves, shuts down
//! gracefully).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn_with_state, map_response_with_state};
use axum::routing::{get, post};
use axum::Router;
use event_store::EventStore;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::middleware::{
    not_found, problem_for_bare_errors, record_metrics, timeout, MakeRequestUuidV7, RequestEnd,
    RequestSpan,
};
use crate::routes::{accounts, health, inventory, orders, sagas};
use crate::state::AppState;
use crate::{openapi, Error, Result};

/// What shutdown waits beyond the request timeout for connections to close.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// Every route of the Command API with its middleware. No I/O: handlers can
/// be driven with `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuidV7))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(RequestSpan)
                .on_request(())
                .on_response(RequestEnd)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(from_fn_with_state(state.clone(), record_metrics))
        .layer(map_response_with_state(
            state.clone(),
            problem_for_bare_errors,
        ))
        .layer(from_fn_with_state(state.clone(), timeout))
        .layer(RequestBodyLimitLayer::new(state.body_limit()))
        .layer(DefaultBodyLimit::max(state.body_limit()));

    Router::new()
        .route("/accounts", post(accounts::open))
        .route("/accounts/{id}/deposits", post(accounts::deposit))
        .route("/accounts/{id}/withdrawals", post(accounts::withdraw))
        .route("/accounts/{id}/close", post(accounts::close))
        .route("/inventory", post(inventory::create))
        .route("/inventory/{sku}/restock", post(inventory::restock))
        .route("/inventory/{sku}/price", post(inventory::set_price))
        .route("/orders", post(orders::place))
        .route("/orders/{id}/cancel", post(orders::cancel))
        .route("/sagas/{order_id}/retry", post(sagas::retry))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(not_found)
        .layer(middleware)
        .with_state(state)
}

/// The Command API bound to its address, ready to serve.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    router: Router,
    /// How long shutdown waits for open connections.
    drain: Duration,
}

impl Application {
    /// Binds `config.bind` and serves with `pool`, which the caller has
    /// migrated and keeps owning (it is not closed on shutdown).
    pub async fn build(config: &Config, pool: PgPool) -> Result<Application> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| Error::Bind {
                address: config.bind,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| Error::Bind {
            address: config.bind,
            source,
        })?;
        let state = AppState::new(EventStore::new(pool), config);
        Ok(Application {
            listener,
            address,
            router: router(state),
            drain: config.request_timeout() + DRAIN_MARGIN,
        })
    }

    /// The address actually bound (the port is known when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting
    /// connections and finishes in-flight requests. Requests are bounded by
    /// the request timeout; a connection still open `drain` after the
    /// signal (a client that never finishes sending its request) is dropped.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(address = %self.address, "command API listening");
        let stopping = shutdown.clone();
        let serve = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                stopping.cancelled().await;
                tracing::info!("shutting down: no new connections, finishing in-flight requests");
            })
            .into_future();
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.drain).await;
        };
        let served = tokio::select! {
            served = serve => served,
            () = drain_deadline => {
                tracing::warn!(drain = ?self.drain, "connections still open after the drain period; stopping anyway");
                Ok(())
            }
        };
        tracing::info!("command API stopped");
        served.map_err(Error::Serve)
    }
}

impl service::Component for Application {
    type Error = Error;

    fn name(&self) -> &'static str {
        "command API"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        Application::run(self, shutdown).await
    }
}
