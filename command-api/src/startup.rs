//! The router (no I/O) and the application (binds, serves, shuts down
//! gracefully).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state, map_response_with_state};
use axum::routing::{get, post};
use axum::Router;
use event_store::EventStore;
use service::auth::{authenticate, customer_only, operator_only, Access};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::config::Config;
use crate::middleware::{not_found, problem_for_bare_errors, timeout};
use crate::retention::IdempotencySweep;
use crate::routes::{accounts, health, inventory, orders, projections, sagas};
use crate::state::AppState;
use crate::{openapi, Error, Result};

/// What shutdown waits beyond the request timeout for connections to close.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// Every route of the Command API with its middleware. No I/O: handlers can
/// be driven with `tower::ServiceExt::oneshot`.
///
/// Every route but `/health/*` and `/openapi.json` needs a caller that
/// `access` lets in (401, 429); each route's role is checked next (403),
/// before its handler looks at the request (the API guide's table).
pub fn router(state: AppState, access: Access) -> Router {
    let middleware = ServiceBuilder::new()
        .layer(from_fn(service::middleware::request_id))
        .layer(service::middleware::request_trace_layer())
        .layer(from_fn_with_state(
            state.metrics().http().clone(),
            service::metrics::record_requests,
        ))
        .layer(map_response_with_state(
            state.clone(),
            problem_for_bare_errors,
        ))
        .layer(from_fn_with_state(
            state.concurrency().clone(),
            service::middleware::shed_load,
        ))
        .layer(from_fn_with_state(state.clone(), timeout))
        // The body limit is enforced where a command reads its body (the
        // `Command` extractor: 413 from the declared length, or once a
        // streamed body passes it), so after authentication (401) and the
        // route's role (403), as the API guide orders the checks.
        .layer(DefaultBodyLimit::max(state.body_limit()));

    let customer = || from_fn(customer_only);
    let operator = || from_fn(operator_only);
    Router::new()
        .route("/accounts", post(accounts::open).route_layer(customer()))
        .route(
            "/accounts/{id}/deposits",
            post(accounts::deposit).route_layer(customer()),
        )
        .route(
            "/accounts/{id}/withdrawals",
            post(accounts::withdraw).route_layer(customer()),
        )
        .route(
            "/accounts/{id}/close",
            post(accounts::close).route_layer(customer()),
        )
        .route(
            "/inventory",
            post(inventory::create).route_layer(operator()),
        )
        .route(
            "/inventory/{sku}/restock",
            post(inventory::restock).route_layer(operator()),
        )
        .route(
            "/inventory/{sku}/price",
            post(inventory::set_price).route_layer(operator()),
        )
        .route("/orders", post(orders::place).route_layer(customer()))
        // A customer cancels its own order (ownership is the aggregate's),
        // an operator any.
        .route("/orders/{id}/cancel", post(orders::cancel))
        .route(
            "/sagas/{order_id}/retry",
            post(sagas::retry).route_layer(operator()),
        )
        .route(
            "/projections/{name}/rebuild",
            post(projections::rebuild).route_layer(operator()),
        )
        .route(
            "/projections/{name}/unpark",
            post(projections::unpark).route_layer(operator()),
        )
        .route(
            "/projections/{name}/reset",
            post(projections::reset).route_layer(operator()),
        )
        .route("/metrics", get(health::metrics).route_layer(operator()))
        .route_layer(from_fn_with_state(access, authenticate))
        // Open: no token.
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
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
    /// Purges expired idempotency keys while the server runs.
    sweep: IdempotencySweep,
    /// How long shutdown waits for open connections.
    drain: Duration,
    http: service::HttpConfig,
    readiness: service::Readiness,
}

impl Application {
    /// Binds `config.bind` and serves with `pool`, which the caller has
    /// migrated and keeps owning (it is not closed on shutdown).
    pub async fn build(config: &Config, pool: PgPool, access: Access) -> Result<Application> {
        Application::build_in(config, pool, access, &service::metrics::Registry::new()).await
    }

    /// As [`Application::build`], its metrics in `registry` (the process's
    /// one registry, which its `/metrics` serves whole).
    pub async fn build_in(
        config: &Config,
        pool: PgPool,
        access: Access,
        registry: &service::metrics::Registry,
    ) -> Result<Application> {
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
        let state = AppState::with_registry(EventStore::new(pool), config, registry);
        let sweep = IdempotencySweep::new(
            state.clone(),
            config.idempotency_ttl,
            config.idempotency_sweep_every,
        );
        let readiness = state.readiness().clone();
        Ok(Application {
            listener,
            address,
            readiness,
            sweep,
            router: router(state, access),
            drain: config.request_timeout() + DRAIN_MARGIN,
            http: config.http.clone(),
        })
    }

    /// The process's components `/health/ready` waits for: `purser serve`
    /// registers the others here.
    pub fn readiness(&self) -> &service::Readiness {
        &self.readiness
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
        let sweep = tokio::spawn(self.sweep.run(shutdown.clone()));
        let served =
            service::http::serve(self.listener, self.router, &self.http, shutdown, self.drain)
                .await;
        // The sweep stops at the shutdown too; a batch is one statement.
        let _ = sweep.await;
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
