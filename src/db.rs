//! Connecting to PostgreSQL, with errors that say where we tried to connect
//! and never print the password of the URL. A `purser` process opens one
//! pool ([`open`]), sized for what it runs, and lends it to its components.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::GlobalArgs;

/// Local default; the project's scripts start a server there when none runs.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long to wait for the server before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses a `postgres://` URL.
pub fn parse_url(url: &str) -> Result<PgConnectOptions> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    anyhow::ensure!(
        matches!(scheme, Some("postgres" | "postgresql")),
        "DATABASE_URL is not a PostgreSQL URL (expected postgres://user@host:port/database)"
    );
    url.parse().context(
        "DATABASE_URL is not a PostgreSQL URL (expected postgres://user@host:port/database)",
    )
}

/// `user@host:port/database`: where a URL points, without its password.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    )
}

/// Opens a pool of at most `max_connections`. One connection is made first,
/// so an unreachable server, a refused login or a missing database fails
/// fast with the server's own reason and the server named.
#[tracing::instrument(skip_all, fields(server))]
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options = parse_url(url)?;
    let server = describe(&options);
    tracing::Span::current().record("server", server.as_str());
    let failed = || {
        format!("cannot connect to PostgreSQL at {server} (is it running? is DATABASE_URL right?)")
    };

    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
        .with_context(failed)?
        .with_context(failed)?;
    // Best effort: the probe has done its job.
    let _ = probe.close().await;

    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        // Each acquire reported at debug: `purser_db_pool_acquire_seconds`
        // (`crate::metrics::pool_acquire_layer`).
        .acquire_time_level(log::LevelFilter::Debug)
        .connect_with(options)
        .await
        .with_context(failed)
}

/// The process's pool: connects, then applies the pending migrations when
/// `--migrate` was given, or else fails (naming them) if any is pending, so
/// a service never runs on a schema it does not know and never needs DDL
/// rights.
pub async fn open(global: &GlobalArgs, max_connections: u32) -> Result<PgPool> {
    let pool = connect(&global.database_url, max_connections).await?;
    if global.migrate {
        migrations::run(&pool)
            .await
            .context("applying the migrations")?;
        tracing::info!("migrations applied");
        return Ok(pool);
    }
    let pending = migrations::pending(&pool)
        .await
        .context("reading the applied migrations")?;
    if let Some(first) = pending.first() {
        let server = describe(&parse_url(&global.database_url)?);
        anyhow::bail!(
            "the database at {server} lacks {} of the migrations (from {first:04}): \
             run `purser migrate` first, or pass --migrate",
            pending.len()
        );
    }
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_leaves_the_password_out() {
        let options = parse_url("postgres://app:s3cret@db.example:6543/purser").expect("valid URL");
        let described = describe(&options);
        assert_eq!(described, "app@db.example:6543/purser");
        assert!(!described.contains("s3cret"));
    }

    #[test]
    fn a_url_of_another_database_is_refused() {
        assert!(parse_url("mysql://root@127.0.0.1/app").is_err());
        assert!(parse_url("127.0.0.1:5432").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_naming_it_and_the_cause() {
        // Port 1 on loopback: nothing listens there, the connection is refused.
        let error = connect("postgres://postgres:pw@127.0.0.1:1/postgres", 1)
            .await
            .expect_err("nothing listens on port 1");
        let message = format!("{error:#}");
        assert!(
            message.starts_with("cannot connect to PostgreSQL at postgres@127.0.0.1:1/postgres"),
            "{message}"
        );
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!message.contains("pw"), "{message}");
    }
}
