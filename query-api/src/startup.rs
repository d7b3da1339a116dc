//! The router (no I/O) and the [`Application`] that binds and serves it.

use std::net::SocketAddr;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use axum::{BoxError, Router};
use service::auth::{authenticate, operator_only, Access};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::config::QueryApiConfig;
use crate::console;
use crate::error::ApiError;
use crate::openapi::openapi_json;
use crate::progress::Progress;
use crate::routes::{accounts, health, inventory, orders, projections, sagas};
use crate::state::AppState;

/// Request bodies are not used by any endpoint; a declared length over this
/// is refused (413) once the caller and its role are checked.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What shutdown waits beyond the request timeout for connections to close.
const DRAIN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Every route, with the middleware stack: request id (set and sent back),
/// trace span (request id, method, matched route; a child of the caller's
/// span when the request carries a W3C `traceparent`), load shedding,
/// timeout, body limit.
///
/// Every route but `/health/*`, `/openapi.json` and the console's page and
/// assets needs a caller that
/// `access` lets in (401, 429); the operator-only ones answer 403 to
/// anyone else before their handler looks at the request. What a customer
/// may see of the rest is each handler's business (its own only).
pub fn router(state: AppState, access: Access) -> Router {
    let timeout = state.request_timeout;
    let operator = || from_fn(operator_only);
    // The body limit is checked on each route, inside authentication and
    // the route's role (the API guide's order: 401, 403, then 400/413).
    let limit = || from_fn_with_state(BODY_LIMIT, service::middleware::content_length_limit);
    let concurrency = state.concurrency.clone();
    let http_metrics = state.http_metrics.clone();
    Router::new()
        .route(
            "/accounts/{id}",
            get(accounts::get_account).route_layer(limit()),
        )
        .route(
            "/accounts/{id}/transactions",
            get(accounts::list_transactions).route_layer(limit()),
        )
        .route(
            "/inventory",
            get(inventory::list_items).route_layer(limit()),
        )
        .route(
            "/inventory/{sku}",
            get(inventory::get_item).route_layer(limit()),
        )
        .route("/orders", get(orders::list_orders).route_layer(limit()))
        .route("/orders/{id}", get(orders::get_order).route_layer(limit()))
        .route(
            "/sagas",
            get(sagas::list_sagas)
                .route_layer(limit())
                .route_layer(operator()),
        )
        .route(
            "/sagas/counts",
            get(sagas::saga_counts)
                .route_layer(limit())
                .route_layer(operator()),
        )
        .route(
            "/sagas/{order_id}",
            get(sagas::get_saga).route_layer(limit()),
        )
        .route(
            "/projections",
            get(projections::list_projections)
                .route_layer(limit())
                .route_layer(operator()),
        )
        .route(
            "/projections/{name}/parked",
            get(projections::list_parked)
                .route_layer(limit())
                .route_layer(operator()),
        )
        .route(
            "/console/events",
            get(console::events)
                .route_layer(limit())
                .route_layer(operator()),
        )
        .route(
            "/metrics",
            get(projections::metrics)
                .route_layer(limit())
                .route_layer(operator()),
        )
        .route_layer(from_fn_with_state(access, authenticate))
        // Open: no token.
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/openapi.json", get(openapi_json))
        // The console's page and assets hold no data: open.
        .route("/console", get(console::page).route_layer(limit()))
        .route(
            "/console/console.js",
            get(console::script).route_layer(limit()),
        )
        .route(
            "/console/console.css",
            get(console::style).route_layer(limit()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(from_fn(service::middleware::request_id))
                .layer(service::middleware::request_trace_layer())
                .layer(from_fn_with_state(
                    http_metrics,
                    service::metrics::record_requests,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    concurrency,
                    service::middleware::shed_load,
                ))
                .layer(HandleErrorLayer::new(move |error: BoxError| async move {
                    if error.is::<tower::timeout::error::Elapsed>() {
                        ApiError::Timeout(timeout)
                    } else {
                        ApiError::Status {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            detail: "internal error".to_owned(),
                        }
                    }
                }))
                .timeout(timeout),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::Status {
        status: StatusCode::NOT_FOUND,
        detail: "no such resource".to_owned(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::Status {
        status: StatusCode::METHOD_NOT_ALLOWED,
        detail: "the Query API only answers GET".to_owned(),
    }
}

/// The Query API, bound to its port.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    state: AppState,
    access: Access,
    http: service::HttpConfig,
}

impl Application {
    /// Binds `config.addr` (port 0 picks a free port) and serves with
    /// `pool`, which the caller has migrated and keeps owning. Does not
    /// touch the database.
    pub async fn build(
        config: &QueryApiConfig,
        pool: PgPool,
        access: Access,
    ) -> std::io::Result<Application> {
        Application::build_in(config, pool, access, &service::metrics::Registry::new()).await
    }

    /// As [`Application::build`], its metrics in `registry` (the process's
    /// one registry, which its `/metrics` serves whole).
    pub async fn build_in(
        config: &QueryApiConfig,
        pool: PgPool,
        access: Access,
        registry: &service::metrics::Registry,
    ) -> std::io::Result<Application> {
        let listener = TcpListener::bind(config.addr).await?;
        let address = listener.local_addr()?;
        let progress = Progress::new(config.poll_interval()).with_max_waiters(config.max_waiters);
        let state = AppState::new(pool, progress)
            .with_registry(registry)
            .with_request_timeout(config.request_timeout())
            .with_max_concurrent_requests(config.max_concurrent_requests());
        Ok(Application {
            listener,
            address,
            state,
            access,
            http: config.http.clone(),
        })
    }

    /// `/health/ready` waits for every component of `readiness` too (`purser
    /// serve`).
    pub fn with_readiness(mut self, readiness: service::Readiness) -> Self {
        self.state = self.state.with_readiness(readiness);
        self
    }

    /// The address actually bound (the port is known when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Application {
            listener,
            address,
            mut state,
            access,
            http,
        } = self;
        // The consoles' live streams end at the shutdown.
        state.closing = shutdown.child_token();
        let drain = state.request_timeout + DRAIN_MARGIN;
        let stop_listening = shutdown.child_token();
        let listener_task = state
            .progress
            .spawn_listener(state.pool.clone(), stop_listening.clone());
        tracing::info!(%address, "query API listening");
        let served =
            service::http::serve(listener, router(state, access), &http, shutdown, drain).await;
        stop_listening.cancel();
        let _ = listener_task.await;
        tracing::info!("query API stopped");
        served
    }
}

impl service::Component for Application {
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        "query API"
    }

    async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        Application::run(self, shutdown).await
    }
}
