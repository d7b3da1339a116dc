//! Every test that touches Postgres gets its own database.
//!
//! ```ignore
//! let db = test_support::TestDatabase::create().await;
//! // ... use db.pool ...
//! db.drop().await;
//! ```
//!
//! The server is the one at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the test database is named
//! `purser_test_<uuid>` and has every migration applied. A test that panics
//! before calling [`TestDatabase::drop`] leaves its database behind;
//! [`TestDatabase::drop_leftovers`] removes those.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// Default server when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Prefix of every database this module creates.
pub const NAME_PREFIX: &str = "purser_test_";

/// A freshly created, migrated database, private to one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// Pool of at most [`TestDatabase::MAX_CONNECTIONS`] connections to it.
    pub pool: PgPool,
    /// Connection URL of the test database (for code that connects itself).
    pub url: String,
    /// Its name, `purser_test_<uuid simple>`.
    pub name: String,
}

impl TestDatabase {
    /// Size of [`TestDatabase::pool`].
    pub const MAX_CONNECTIONS: u32 = 10;

    /// Creates the database, applies every migration and opens a pool.
    ///
    /// # Panics
    /// When the server is unreachable or a migration fails: this is test
    /// support, and a test cannot proceed without its database.
    pub async fn create() -> TestDatabase {
        let db = TestDatabase::create_unmigrated().await;
        migrations::MIGRATOR
            .run(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("cannot migrate test database {}: {e}", db.name));
        db
    }

    /// Creates the database and opens a pool, without applying any
    /// migration: an empty database, as a fresh server has it.
    ///
    /// # Panics
    /// When the server is unreachable.
    pub async fn create_unmigrated() -> TestDatabase {
        let server_url = server_url();
        let server: PgConnectOptions = server_url
            .parse()
            .unwrap_or_else(|e| panic!("DATABASE_URL {server_url:?} is not a Postgres URL: {e}"));
        let name = format!("{NAME_PREFIX}{}", uuid::Uuid::new_v4().simple());

        let mut admin = server
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {server_url}: {e}"));
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        // Best effort: the connection is done with.
        let _ = admin.close().await;

        let options = server.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(Self::MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test database {name}: {e}"));

        let url = database_url(&server_url, &name);
        TestDatabase { pool, url, name }
    }

    /// Closes the pool and drops the database, terminating any connection
    /// still open to it. Best effort: failures are ignored. Closing waits
    /// (a few seconds at most) for checked-out connections to come back;
    /// drop what holds them first (e.g. a LISTEN subscription).
    pub async fn drop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.pool.close()).await;
        if let Ok(mut admin) = PgConnection::connect(&server_url()).await {
            let _ = sqlx::query(&format!(
                r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
                self.name
            ))
            .execute(&mut admin)
            .await;
            let _ = admin.close().await;
        }
    }

    /// Drops every `purser_test_*` database on the server (left behind by
    /// tests that panicked). Do not call it while tests are running.
    pub async fn drop_leftovers() -> Result<usize, sqlx::Error> {
        let mut admin = PgConnection::connect(&server_url()).await?;
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
                .bind(NAME_PREFIX)
                .fetch_all(&mut admin)
                .await?;
        for name in &names {
            sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                .execute(&mut admin)
                .await?;
        }
        admin.close().await?;
        Ok(names.len())
    }
}

fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// `server_url` with its database path replaced by `name`, query kept.
fn database_url(server_url: &str, name: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    // After "scheme://", the first '/' starts the database path.
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn database_url_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
