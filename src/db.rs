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

/// How often [`keep_trimmed`] counts the pool's idle connections.
const TRIM_SAMPLE: Duration = Duration::from_millis(100);
/// Over how long the process's pool is watched for connections none
/// needed ([`keep_trimmed`]).
const TRIM_WINDOW: Duration = Duration::from_secs(10);
/// Idle connections [`keep_trimmed`] leaves beyond what a window needed.
const TRIM_SPARE: usize = 2;

/// Closes the connections `pool` did not need, until it is closed: every
/// `window`, as many as were idle throughout it, less
/// [`TRIM_SPARE`]. sqlx lends its idle connections oldest first, so under
/// a steady load every connection is used in turn, none stays idle for an
/// idle timeout, and a pool that one stall grew (the database's checkpoint,
/// a burst) kept every connection it opened, each with its buffers and
/// prepared statements: resident memory stepped up with every stall and
/// never came down (BENCHMARKS.md, the soak). Trimmed, the pool follows its
/// load, and what a connection held is freed for the next one.
pub async fn keep_trimmed(pool: PgPool, window: Duration) {
    let mut sample = tokio::time::interval(TRIM_SAMPLE);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut window_ends = tokio::time::Instant::now() + window;
    let mut fewest_idle = usize::MAX;
    while !pool.is_closed() {
        sample.tick().await;
        fewest_idle = fewest_idle.min(pool.num_idle());
        if tokio::time::Instant::now() < window_ends {
            continue;
        }
        for _ in 0..fewest_idle.saturating_sub(TRIM_SPARE) {
            let Some(connection) = pool.try_acquire() else {
                break;
            };
            // Best effort: a connection that fails to close is gone too.
            let _ = connection.close().await;
        }
        fewest_idle = usize::MAX;
        window_ends = tokio::time::Instant::now() + window;
    }
}

/// The process's pool: connects, then applies the pending migrations when
/// `--migrate` was given, or else fails (naming them) if any is pending, so
/// a service never runs on a schema it does not know and never needs DDL
/// rights.
pub async fn open(global: &GlobalArgs, max_connections: u32) -> Result<PgPool> {
    let pool = connect(&global.database_url, max_connections).await?;
    tokio::spawn(keep_trimmed(pool.clone(), TRIM_WINDOW));
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
    use crate::tests::resident_anon_kib;

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

    /// sqlx keeps a connection's write buffer at the largest message it
    /// sent; the pool shrinks it when the connection comes back (without
    /// that, the 64 MiB stay resident: the soak's creeping memory).
    #[tokio::test]
    async fn a_large_query_leaves_no_buffer_behind_in_the_pool() {
        // What the query freed goes back to the system within jemalloc's
        // decay (10 s, src/main.rs); a buffer kept at 64 MiB never does.
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
            Duration::from_secs(40),
            Duration::from_millis(100),
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

    /// A burst opens connections; once it is over, the pool gives back
    /// those no load needs any more (without the trimming, sqlx keeps all
    /// of them for as long as anything uses the pool), and keeps those in
    /// use.
    #[tokio::test]
    async fn the_pool_gives_back_the_connections_a_burst_opened() {
        let db = test_support::TestDatabase::create_unmigrated().await;
        let pool = connect(&db.url, 8).await.expect("connected");
        let mut burst = Vec::new();
        for _ in 0..8 {
            burst.push(pool.acquire().await.expect("a connection"));
        }
        assert_eq!(pool.size(), 8);
        drop(burst);
        let mut held = pool.acquire().await.expect("a connection in use");
        let trimming = tokio::spawn(keep_trimmed(pool.clone(), Duration::from_millis(300)));
        test_support::eventually(
            "the idle connections beyond the spare to be closed",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                let open = usize::try_from(pool.size()).expect("a small pool");
                if open <= 1 + TRIM_SPARE {
                    Ok(())
                } else {
                    Err(format!("{open} connections open"))
                }
            },
        )
        .await;
        // The one in use was not taken away.
        let answer: i32 = sqlx::query_scalar("SELECT 7")
            .fetch_one(&mut *held)
            .await
            .expect("the held connection still works");
        assert_eq!(answer, 7);
        drop(held);
        pool.close().await;
        trimming.await.expect("the trimming ends with the pool");
        db.drop().await;
    }
}
