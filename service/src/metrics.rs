//! Metrics: one [`Registry`] per process (`prometheus-client`), rendered
//! in the OpenMetrics text format by `GET /metrics` of every HTTP listener
//! of the process (each API's, behind the operator role) and of its admin
//! listener ([`AdminListener`]: `/metrics` and `/health/live`, for the
//! processes without an API).
//!
//! Most metrics are counted where things happen. Those that are facts of
//! the database (a projection's lag, sagas per state, the relay's distance
//! from the store's head) are read when scraped: a component registers a
//! refresh ([`Registry::on_scrape`]) that sets them first. What a process
//! runs twice (two APIs in `purser serve` both showing the projections'
//! progress) registers once per group ([`Registry::register_group`]).
//!
//! [`HttpMetrics`] are the RED metrics of an API (requests by method,
//! matched route and status, and a latency histogram per route), recorded
//! by the [`record_requests`] middleware.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
pub use prometheus_client;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Component;

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the refreshes that read the database; a
/// refresh that takes longer leaves its previous values.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bounds of the latency histograms, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Sets metrics from the database right before a scrape is encoded.
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The process's registry. Cheap to clone: clones share it.
#[derive(Clone, Default)]
pub struct Registry {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    registry: RwLock<prometheus_client::registry::Registry>,
    refreshes: Mutex<Vec<Refresh>>,
    groups: Mutex<HashSet<&'static str>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers metrics: `register` gets the registry itself.
    pub fn register(&self, register: impl FnOnce(&mut prometheus_client::registry::Registry)) {
        let mut registry = self
            .shared
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        register(&mut registry);
    }

    /// Registers `group`'s metrics unless it is registered already (then
    /// `register` is not called); `true` when it registered them.
    pub fn register_group(
        &self,
        group: &'static str,
        register: impl FnOnce(&mut prometheus_client::registry::Registry),
    ) -> bool {
        let new = self
            .shared
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group);
        if new {
            self.register(register);
        }
        new
    }

    /// Runs `refresh` before each scrape is encoded.
    pub fn on_scrape(&self, refresh: Refresh) {
        self.shared
            .refreshes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(refresh);
    }

    /// The OpenMetrics text of every metric, after the refreshes ran (each
    /// for at most a couple of seconds).
    pub async fn render(&self) -> String {
        let refreshes: Vec<Refresh> = self
            .shared
            .refreshes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let refreshed = futures::future::join_all(refreshes.iter().map(|refresh| refresh()));
        if tokio::time::timeout(REFRESH_TIMEOUT, refreshed)
            .await
            .is_err()
        {
            tracing::warn!("metrics refresh took over {REFRESH_TIMEOUT:?}; serving older values");
        }
        self.encode()
    }

    /// The OpenMetrics text of every metric as it stands (no refresh).
    pub fn encode(&self) -> String {
        let registry = self
            .shared
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// `GET /metrics`: the registry's text.
pub async fn metrics(State(registry): State<Registry>) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        registry.render().await,
    )
        .into_response()
}

/// The labels of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// The labels of a route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The RED metrics of an HTTP API: `{prefix}_http_requests_total` by
/// method, matched route and status, and
/// `{prefix}_http_request_duration_seconds` by method and route.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

/// The route label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl HttpMetrics {
    /// Registers the families under `prefix` (`command_api`, `query_api`).
    pub fn new(registry: &Registry, prefix: &str) -> HttpMetrics {
        let metrics = HttpMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
        };
        registry.register(|r| {
            r.register(
                format!("{prefix}_http_requests"),
                "HTTP requests by method, matched route and status",
                metrics.requests.clone(),
            );
            r.register(
                format!("{prefix}_http_request_duration_seconds"),
                "HTTP request latency by method and matched route",
                metrics.durations.clone(),
            );
        });
        metrics
    }

    /// Records one finished request.
    pub fn record(&self, method: &Method, route: &str, status: u16, latency: Duration) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                method,
                route: route.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }
}

/// The method as a label: the standard ones, else `OTHER` (a client must
/// not be able to make series at will).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware: counts and times each request by its matched route (never
/// its raw path, so ids make no series).
pub async fn record_requests(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.record(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The admin listener of a process without an API (`purser relay`,
/// `purser project`, `purser saga`): `GET /metrics` (the process's
/// registry, without a token: bind it to an address only the scraper
/// reaches) and `GET /health/live`.
pub struct AdminListener {
    listener: TcpListener,
    registry: Registry,
}

impl AdminListener {
    /// Binds `addr` (port 0 picks a free one).
    pub async fn bind(addr: SocketAddr, registry: Registry) -> std::io::Result<AdminListener> {
        let listener = TcpListener::bind(addr).await?;
        Ok(AdminListener { listener, registry })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// The admin listener's routes.
pub fn admin_router(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok" }))
        .with_state(registry)
}

impl Component for AdminListener {
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        "admin listener"
    }

    async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        tracing::info!(address = %self.listener.local_addr()?, "admin listening");
        axum::serve(self.listener, admin_router(self.registry))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_counters_histograms_values_and_refreshes() {
        let registry = Registry::new();
        let http = HttpMetrics::new(&registry, "test_api");
        http.record(&Method::POST, "/accounts", 201, Duration::from_millis(3));
        http.record(&Method::POST, "/accounts", 201, Duration::from_millis(30));
        http.record(&Method::POST, "/accounts", 422, Duration::from_secs(100));
        let lag = Family::<RouteLabels, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(|r| r.register("test_lag_events", "Lag", lag.clone()));
        assert!(registry.register_group("g", |_| {}));
        assert!(!registry.register_group("g", |_| panic!("registered twice")));
        registry.on_scrape(Arc::new(move || {
            let lag = lag.clone();
            Box::pin(async move {
                let labels = RouteLabels {
                    method: "GET",
                    route: "/x".to_owned(),
                };
                lag.get_or_create(&labels).set(7);
            })
        }));
        let text = registry.render().await;
        for line in [
            "test_api_http_requests_total{method=\"POST\",route=\"/accounts\",status=\"201\"} 2",
            "test_api_http_requests_total{method=\"POST\",route=\"/accounts\",status=\"422\"} 1",
            "test_api_http_request_duration_seconds_bucket{le=\"0.005\",method=\"POST\",route=\"/accounts\"} 1",
            "test_api_http_request_duration_seconds_bucket{le=\"+Inf\",method=\"POST\",route=\"/accounts\"} 3",
            "test_api_http_request_duration_seconds_count{method=\"POST\",route=\"/accounts\"} 3",
            "# TYPE test_api_http_request_duration_seconds histogram",
            "# TYPE test_lag_events gauge",
            "# HELP test_lag_events Lag.",
            "test_lag_events{method=\"GET\",route=\"/x\"} 7",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
