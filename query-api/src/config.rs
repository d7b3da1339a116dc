//! The Query API's settings.

use std::net::SocketAddr;
use std::time::Duration;

/// The default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8081";
/// The default upper bound of a whole request.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 15_000;
/// The default poll of a `min_version` wait.
pub const DEFAULT_POLL_MS: u64 = 1_000;

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
}

impl Default for QueryApiConfig {
    fn default() -> Self {
        QueryApiConfig {
            addr: DEFAULT_ADDR
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8081))),
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            poll_ms: DEFAULT_POLL_MS,
        }
    }
}

impl QueryApiConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}
