//! Purser's SQL migrations. The files live in `migrations/sql/`; they are
//! embedded at compile time and applied by `purser migrate` (or by any
//! `purser` command given `--migrate`); the services never migrate by
//! themselves, so they can run as a role without DDL rights.
//!
//! Schemas: `event_store` holds the events, idempotency records, snapshots and
//! subscription checkpoints; `read_models` holds what projections build.

#![warn(unreachable_pub)]

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./sql");

/// Applies every pending migration.
pub async fn run(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// The embedded migrations not applied to the database yet, by version.
/// Reads only: creates nothing (no migrations table on a fresh database).
pub async fn pending(pool: &sqlx::PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = match table {
        Some(_) => {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(pool)
                .await?
        }
        None => Vec::new(),
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| m.version)
        .collect())
}
