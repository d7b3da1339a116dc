//! The router (no I/O) and the application (binds, serves, shuts down
//! gracefully).

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn_with_state, map_response_with_state};
use axum::routing::{get, post};
use axum::Router;
use event_store::EventStore;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
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
    /// The pool `build` opened (closed on shutdown); `None` when the caller
    /// lent one to `build_with_pool`.
    owned_pool: Option<PgPool>,
}

impl Application {
    /// Connects to the database (migrating it first when configured) and
    /// binds `config.bind`.
    pub async fn build(config: Config) -> Result<Application> {
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&config.database_url)
            .map_err(Error::Database)?;
        if config.migrate_on_start {
            migrations::run(&pool).await.map_err(Error::Migrate)?;
        }
        let mut application = Application::build_with_pool(&config, pool.clone()).await?;
        application.owned_pool = Some(pool);
        Ok(application)
    }

    /// Binds `config.bind` and serves with `pool`, which the caller has
    /// migrated and keeps owning (it is not closed on shutdown).
    pub async fn build_with_pool(config: &Config, pool: PgPool) -> Result<Application> {
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
            owned_pool: None,
        })
    }

    /// The address actually bound (the port is known when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until SIGTERM or ctrl-c, then finishes in-flight requests.
    pub async fn run_until_stopped(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then stops accepting connections,
    /// finishes in-flight requests (and closes the pool it opened). Requests
    /// are bounded by the request timeout; a connection still open
    /// `drain` after the signal (a client that never finishes sending its
    /// request) is dropped.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        tracing::info!(address = %self.address, "command API listening");
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            let _ = signalled.send(());
        };
        let serve = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .into_future();
        let drain_deadline = async {
            match on_signal.await {
                Ok(()) => tokio::time::sleep(self.drain).await,
                Err(_) => std::future::pending().await,
            }
        };
        let served = tokio::select! {
            served = serve => served,
            () = drain_deadline => {
                tracing::warn!(drain = ?self.drain, "connections still open after the drain period; stopping anyway");
                Ok(())
            }
        };
        tracing::info!("command API stopped");
        if let Some(pool) = self.owned_pool {
            pool.close().await;
        }
        served.map_err(Error::Serve)
    }
}

/// Completes on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
