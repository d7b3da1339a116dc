//! The Query API's settings.

use std::net::SocketAddr;
use std::time::Duration;

/// Where the Query API listens and how it waits.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct QueryApiConfig {
    /// Listen address.
    #[arg(
        id = "query_api_addr",
        long = "query-api-addr",
        env = "QUERY_API_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub addr: SocketAddr,
    /// Upper bound of a whole request, waits included (must exceed the
    /// longest `wait_ms`, 10 000).
    #[arg(id = "query_api_request_timeout_ms", long = "query-api-request-timeout-ms", env = "QUERY_API_REQUEST_TIMEOUT_MS",
          default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(10_001..))]
    pub request_timeout_ms: u64,
    /// How often a `min_version` wait re-reads the database when no
    /// notification arrives (the fallback to LISTEN).
    #[arg(id = "query_api_poll_ms", long = "query-api-poll-ms", env = "QUERY_API_POLL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_ms: u64,
}

impl Default for QueryApiConfig {
    fn default() -> Self {
        QueryApiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            request_timeout_ms: 15_000,
            poll_ms: 1_000,
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
