//! Phase 1: the rebuild lock, a session advisory lock on a connection of
//! its own (a second rebuild fails fast; the server releases the lock when
//! the process dies).

use sqlx::{Connection, PgConnection, PgPool};

use crate::{Error, Result, REBUILD_LOCK};

/// A projection's rebuild lock, held on a connection of its own (closing it,
/// or the process dying, releases the lock).
pub(crate) struct RebuildLock {
    conn: PgConnection,
    projection: String,
}

impl RebuildLock {
    /// Takes the lock, or fails with [`Error::RebuildRunning`].
    pub(crate) async fn acquire(pool: &PgPool, projection: &str) -> Result<RebuildLock> {
        let mut conn = pool.acquire().await?.detach();
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))")
                .bind(REBUILD_LOCK)
                .bind(projection)
                .fetch_one(&mut conn)
                .await?;
        if !locked {
            let _ = conn.close().await;
            return Err(Error::RebuildRunning(projection.to_owned()));
        }
        Ok(RebuildLock {
            conn,
            projection: projection.to_owned(),
        })
    }

    /// Releases the lock (before this returns: another process may take it
    /// right away) and closes the connection.
    pub(crate) async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))")
            .bind(REBUILD_LOCK)
            .bind(&self.projection)
            .execute(&mut self.conn)
            .await;
        if let Err(error) = unlocked {
            // Closing the session releases it too, a moment later.
            tracing::warn!(projection = %self.projection, error = %error, "cannot release the rebuild lock");
        }
        let _ = self.conn.close().await;
    }
}

/// Whether some process holds `projection`'s rebuild lock now.
pub async fn is_running(pool: &PgPool, projection: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND classid = hashtext($1)::oid AND objid = hashtext($2)::oid)",
    )
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(REBUILD_LOCK)
    .bind(projection)
    .fetch_one(pool)
    .await?)
}
