//! The Command API's configuration: one typed struct, from flags or
//! environment variables, with local defaults.
//!
//! The database URL, the log format and `--migrate` are options every
//! `purser` subcommand shares, so they are not flags of this struct: the
//! binary connects the pool the application is built with.

use std::net::SocketAddr;
use std::time::Duration;

/// The default body limit: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// The default share of the process's pool.
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 16;

/// How long idempotency keys are kept by default.
pub const DEFAULT_IDEMPOTENCY_TTL: &str = "24h";

/// How often expired idempotency keys are purged by default.
pub const DEFAULT_IDEMPOTENCY_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The default listen address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

/// The default longest time a request may take: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// The default retries of a command after a concurrency conflict.
pub const DEFAULT_MAX_RETRIES: u32 = 10;

/// Orders allowed to wait for their saga by default before `POST /orders`
/// answers 503.
pub const DEFAULT_SAGA_BACKLOG_LIMIT: u64 = 10_000;

/// The pause between two measurements of the saga backlog by default.
pub const DEFAULT_SAGA_BACKLOG_REFRESH: Duration = Duration::from_secs(1);

/// Most commands appended by one statement and commit by default.
pub const DEFAULT_GROUP_COMMIT_MAX_SIZE: usize = 64;

/// How long a group waits for more commands by default (only while other
/// groups are in flight), in microseconds.
pub const DEFAULT_GROUP_COMMIT_MAX_WAIT_US: u64 = 0;

/// Groups in flight at once by default.
pub const DEFAULT_GROUP_COMMIT_WRITERS: usize = 2;

/// A stream's state is snapshotted every this many events by default.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long = "bind", env = "PURSER_COMMAND_API_BIND", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// Connections of the process's pool the Command API may use.
    #[arg(
        long = "db-max-connections",
        env = "PURSER_COMMAND_API_DB_MAX_CONNECTIONS",
        default_value_t = DEFAULT_DB_MAX_CONNECTIONS
    )]
    pub db_max_connections: u32,

    /// Longest time a request may take, in milliseconds (503 after that).
    #[arg(
        long = "request-timeout-ms",
        env = "PURSER_COMMAND_API_REQUEST_TIMEOUT_MS",
        default_value_t = DEFAULT_REQUEST_TIMEOUT_MS
    )]
    pub request_timeout_ms: u64,

    /// Largest request body accepted, in bytes (413 above).
    #[arg(
        long = "body-limit",
        env = "PURSER_COMMAND_API_BODY_LIMIT",
        default_value_t = DEFAULT_BODY_LIMIT
    )]
    pub body_limit: usize,

    /// How many times a command is re-read and re-decided after a
    /// concurrency conflict before answering 409 (without `If-Match`).
    #[arg(
        long = "max-retries",
        env = "PURSER_COMMAND_API_MAX_RETRIES",
        default_value_t = DEFAULT_MAX_RETRIES
    )]
    pub max_retries: u32,

    /// A stream's state is saved every this many events (and when a load
    /// had to read more), and loads read the snapshot and the events after
    /// it: the cost of a command does not grow with its stream. 0: never.
    #[arg(
        long = "snapshot-every",
        env = "PURSER_SNAPSHOT_EVERY",
        default_value_t = DEFAULT_SNAPSHOT_EVERY
    )]
    pub snapshot_every: u64,

    /// How many aggregates of each type (accounts, items) the Command API
    /// remembers the state of, the least recently used forgotten first: a
    /// command on one of them decides on it without reading its stream
    /// (the append's expected version proves it current). 0: none.
    #[arg(
        long = "aggregate-cache-size",
        env = "PURSER_AGGREGATE_CACHE_SIZE",
        default_value_t = event_store::DEFAULT_CACHE_SIZE
    )]
    pub aggregate_cache_size: usize,

    /// Group commit: at most this many concurrent commands are appended by
    /// one statement and one commit, each with its own version check and
    /// idempotency record. 1: each command commits alone.
    #[arg(
        long = "group-commit-max-size",
        env = "PURSER_GROUP_COMMIT_MAX_SIZE",
        default_value_t = DEFAULT_GROUP_COMMIT_MAX_SIZE
    )]
    pub group_commit_max_size: usize,

    /// Group commit: how long a group waits for more commands, in
    /// microseconds, and only while other groups are in flight (a command
    /// that finds none is written at once). 0: a group takes the commands
    /// already waiting. Counted in whole milliseconds (Tokio's timer).
    #[arg(
        long = "group-commit-max-wait-us",
        env = "PURSER_GROUP_COMMIT_MAX_WAIT_US",
        default_value_t = DEFAULT_GROUP_COMMIT_MAX_WAIT_US
    )]
    pub group_commit_max_wait_us: u64,

    /// Group commit: groups in flight at once, each on a connection of the
    /// Command API's pool share.
    #[arg(
        long = "group-commit-writers",
        env = "PURSER_GROUP_COMMIT_WRITERS",
        default_value_t = DEFAULT_GROUP_COMMIT_WRITERS
    )]
    pub group_commit_writers: usize,

    /// Orders placed whose saga has not started yet, past which
    /// `POST /orders` answers 503 `saga_backlog` with `Retry-After` and
    /// appends nothing. 0: no bound.
    #[arg(
        long = "saga-backlog-limit",
        env = "PURSER_SAGA_BACKLOG_LIMIT",
        default_value_t = DEFAULT_SAGA_BACKLOG_LIMIT
    )]
    pub saga_backlog_limit: u64,

    /// The pause between two measurements of the saga backlog, taken in
    /// the background (requests take the last measure).
    #[arg(skip = DEFAULT_SAGA_BACKLOG_REFRESH)]
    pub saga_backlog_refresh: Duration,

    /// How long the answer to a request with an `Idempotency-Key` is kept
    /// at least (a repeat within it is replayed): `24h`, `90m`, `3600s`.
    /// Older keys are purged by a sweep every minute.
    #[arg(
        long = "idempotency-ttl",
        env = "PURSER_IDEMPOTENCY_TTL",
        default_value = DEFAULT_IDEMPOTENCY_TTL,
        value_parser = service::duration::parse_duration
    )]
    pub idempotency_ttl: Duration,

    /// How often the sweep purges expired idempotency keys.
    #[arg(skip = DEFAULT_IDEMPOTENCY_SWEEP_EVERY)]
    pub idempotency_sweep_every: Duration,

    /// The listener's limits (header and idle timeouts, concurrency cap):
    /// options of the process, which the binary flattens once and copies
    /// here, so `purser serve` has one set for both APIs.
    #[arg(skip)]
    pub http: service::HttpConfig,
}

/// The defaults, as `purser command-api` with no flags and no environment
/// has them.
impl Default for Config {
    fn default() -> Config {
        Config {
            bind: DEFAULT_BIND
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            db_max_connections: DEFAULT_DB_MAX_CONNECTIONS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            body_limit: DEFAULT_BODY_LIMIT,
            max_retries: DEFAULT_MAX_RETRIES,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            aggregate_cache_size: event_store::DEFAULT_CACHE_SIZE,
            group_commit_max_size: DEFAULT_GROUP_COMMIT_MAX_SIZE,
            group_commit_max_wait_us: DEFAULT_GROUP_COMMIT_MAX_WAIT_US,
            group_commit_writers: DEFAULT_GROUP_COMMIT_WRITERS,
            saga_backlog_limit: DEFAULT_SAGA_BACKLOG_LIMIT,
            saga_backlog_refresh: DEFAULT_SAGA_BACKLOG_REFRESH,
            idempotency_ttl: service::duration::parse_duration(DEFAULT_IDEMPOTENCY_TTL)
                .expect("the default TTL is a duration"),
            idempotency_sweep_every: DEFAULT_IDEMPOTENCY_SWEEP_EVERY,
            http: service::HttpConfig::default(),
        }
    }
}

impl Config {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// How appends are grouped.
    pub fn group_commit(&self) -> event_store::GroupCommitConfig {
        event_store::GroupCommitConfig {
            max_size: self.group_commit_max_size,
            max_wait: Duration::from_micros(self.group_commit_max_wait_us),
            writers: self.group_commit_writers,
        }
    }

    /// Requests handled at once before shedding load (503).
    pub fn max_concurrent_requests(&self) -> usize {
        self.http
            .max_concurrent_requests_for(self.db_max_connections)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn defaults_match_local() {
        let cli = Cli::try_parse_from(["test"]).expect("defaults parse");
        let local = Config::default();
        assert_eq!(cli.config.bind, local.bind);
        assert_eq!(cli.config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(cli.config.body_limit, 64 * 1024);
        assert_eq!(cli.config.request_timeout(), Duration::from_secs(10));
        assert_eq!(cli.config.max_retries, local.max_retries);
        assert_eq!(cli.config.idempotency_ttl, local.idempotency_ttl);
        assert_eq!(cli.config.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(
            cli.config.idempotency_sweep_every,
            local.idempotency_sweep_every
        );
        let cli = Cli::try_parse_from([
            "test",
            "--bind",
            "127.0.0.1:0",
            "--body-limit",
            "1024",
            "--idempotency-ttl",
            "90m",
        ])
        .expect("flags parse");
        assert_eq!(cli.config.bind.port(), 0);
        assert_eq!(cli.config.body_limit, 1024);
        assert_eq!(cli.config.idempotency_ttl, Duration::from_secs(5400));
        assert!(Cli::try_parse_from(["test", "--idempotency-ttl", "1 day"]).is_err());
    }
}
