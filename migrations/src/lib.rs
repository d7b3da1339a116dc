//! Purser's SQL migrations. The files live in `migrations/sql/`; they are
//! embedded at compile time and applied by `purser migrate` (and, unless
//! disabled, by every service at startup).
//!
//! Schemas: `event_store` holds the events, idempotency records, snapshots and
//! subscription checkpoints; `read_models` holds what projections build.

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./sql");

/// Applies every pending migration.
pub async fn run(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

#[cfg(feature = "testing")]
pub mod testing;
