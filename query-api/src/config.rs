//! The Query API's settings.

use std::net::SocketAddr;
use std::time::Duration;

/// The default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8081";
/// The default upper bound of a whole request.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 15_000;
/// The default poll of a `min_version` wait.
pub const DEFAULT_POLL_MS: u64 = 1_000;
/// The default cap on requests waiting for a `min_version` at once.
pub const DEFAULT_MAX_WAITERS: usize = 1_000;
/// The connections of the process's pool the Query API uses.
pub const POOL_SIZE: u32 = 20;

/// Where the Query API listens and how it waits.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct QueryApiConfig {
    /// Listen address.
    #[arg(
        id = "query_api_addr",
        long = "query-api-addr",
        env = "PURSER_QUERY_API_ADDR",
        default_value = DEFAULT_ADDR
    )]
    pub addr: SocketAddr,
    /// Upper bound of a whole request, waits included (must exceed the
    /// longest `wait_ms`, 10 000).
    #[arg(id = "query_api_request_timeout_ms", long = "query-api-request-timeout-ms", env = "PURSER_QUERY_API_REQUEST_TIMEOUT_MS",
          default_value_t = DEFAULT_REQUEST_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(10_001..))]
    pub request_timeout_ms: u64,
    /// How often a `min_version` wait re-reads the database when no
    /// notification arrives (the fallback to LISTEN).
    #[arg(id = "query_api_poll_ms", long = "query-api-poll-ms", env = "PURSER_QUERY_API_POLL_MS", default_value_t = DEFAULT_POLL_MS,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_ms: u64,
    /// Requests that may wait for a `min_version` at once; beyond it, 503
    /// `overloaded` with `Retry-After`.
    #[arg(id = "query_api_max_waiters", long = "query-api-max-waiters", env = "PURSER_MAX_WAITERS",
          default_value_t = DEFAULT_MAX_WAITERS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_waiters: usize,
    /// The listener's limits: options of the process, which the binary
    /// flattens once and copies here.
    #[arg(skip)]
    pub http: service::HttpConfig,
}

impl Default for QueryApiConfig {
    fn default() -> Self {
        QueryApiConfig {
            addr: DEFAULT_ADDR
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8081))),
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            poll_ms: DEFAULT_POLL_MS,
            max_waiters: DEFAULT_MAX_WAITERS,
            http: service::HttpConfig::default(),
        }
    }
}

impl QueryApiConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Requests handled at once before shedding load (503).
    pub fn max_concurrent_requests(&self) -> usize {
        self.http.max_concurrent_requests_for(POOL_SIZE)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}
