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
        // sqlx keeps a connection's buffers at the largest message it has
        // sent or read, and the pool hands every connection in turn to
        // every component: each came to hold the largest batch any
        // projection or saga step had written through it (a projection's
        // batch of sagas runs to hundreds of KiB), so resident memory crept
        // up for as long as larger batches kept turning up (BENCHMARKS.md,
        // the soak). Back to their default size (8 KiB) whenever a
        // connection returns to the pool: a small reallocation at most.
        .after_release(|connection, _| {
            connection.shrink_buffers();
            Box::pin(std::future::ready(Ok(true)))
        })
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

    /// The anonymous memory this process has resident, in KiB.
    fn resident_anon_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .expect("/proc/self/status")
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon in /proc/self/status")
    }

    /// sqlx keeps a connection's write buffer at the largest message it
    /// sent; the pool shrinks it when the connection comes back (without
    /// that, the 64 MiB stay resident: the soak's creeping memory).
    #[tokio::test]
    async fn a_large_query_leaves_no_buffer_behind_in_the_pool() {
        // Above glibc's largest mmap threshold (32 MiB): the buffer's
        // memory goes back to the system when it is freed or shrunk.
        const LARGE: usize = 64 << 20;
        let db = test_support::TestDatabase::create_unmigrated().await;
        let pool = connect(&db.url, 1).await.expect("connected");
        let before = resident_anon_kib();
        let length: i32 = sqlx::query_scalar("SELECT length($1)")
            .bind("x".repeat(LARGE))
            .fetch_one(&pool)
            .await
            .expect("queried");
        assert_eq!(usize::try_from(length), Ok(LARGE));
        // The connection returns to the pool in a task of its own.
        test_support::eventually(
            "the connection's 64 MiB write buffer to be released",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                let grown = resident_anon_kib().saturating_sub(before);
                if grown < (LARGE as u64 / 1024) / 2 {
                    Ok(())
                } else {
                    Err(format!("{grown} KiB more resident than before the query"))
                }
            },
        )
        .await;
        pool.close().await;
        db.drop().await;
    }
}
