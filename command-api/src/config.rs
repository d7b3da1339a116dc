//! The Command API's configuration: one typed struct, from flags or
//! environment variables, with local defaults.
//!
//! The database URL and the log format are options every `purser`
//! subcommand shares (`--database-url`/`DATABASE_URL`,
//! `--log-format`/`PURSER_LOG_FORMAT`, JSON logs included), so they are not
//! flags of this struct: the binary fills `database_url` in.

use std::net::SocketAddr;
use std::time::Duration;

/// The default body limit: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// The default listen address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long = "bind", env = "PURSER_COMMAND_API_BIND", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,

    /// PostgreSQL URL (set from the shared `--database-url`).
    #[arg(skip)]
    pub database_url: String,

    /// Size of the database connection pool.
    #[arg(
        long = "db-max-connections",
        env = "PURSER_COMMAND_API_DB_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub db_max_connections: u32,

    /// Longest time a request may take, in milliseconds (503 after that).
    #[arg(
        long = "request-timeout-ms",
        env = "PURSER_COMMAND_API_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
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
        default_value_t = 10
    )]
    pub max_retries: u32,

    /// Apply pending database migrations at startup.
    #[arg(
        long = "migrate-on-start",
        env = "PURSER_MIGRATE_ON_START",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub migrate_on_start: bool,
}

impl Config {
    /// The defaults, as `purser command-api` with no flags and no environment
    /// has them, for the database at `database_url`.
    pub fn local(database_url: impl Into<String>) -> Config {
        Config {
            bind: DEFAULT_BIND
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            database_url: database_url.into(),
            db_max_connections: 16,
            request_timeout_ms: 10_000,
            body_limit: DEFAULT_BODY_LIMIT,
            max_retries: 10,
            migrate_on_start: true,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
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
        let local = Config::local("");
        assert_eq!(cli.config.bind, local.bind);
        assert_eq!(cli.config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(cli.config.body_limit, 64 * 1024);
        assert_eq!(cli.config.request_timeout(), Duration::from_secs(10));
        assert_eq!(cli.config.max_retries, local.max_retries);
        assert!(cli.config.migrate_on_start);
        let cli = Cli::try_parse_from([
            "test",
            "--bind",
            "127.0.0.1:0",
            "--migrate-on-start",
            "false",
            "--body-limit",
            "1024",
        ])
        .expect("flags parse");
        assert_eq!(cli.config.bind.port(), 0);
        assert!(!cli.config.migrate_on_start);
        assert_eq!(cli.config.body_limit, 1024);
    }
}
