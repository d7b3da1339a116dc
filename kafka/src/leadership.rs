//! One active relay at a time (design decision 12): the relay that holds a
//! PostgreSQL advisory lock publishes; the others stand by and try to take
//! the lock every second.
//!
//! The lock is a session lock on a connection of its own, held for as long
//! as the relay is active. A task checks that connection every
//! [`CHECK_INTERVAL`]; when a check fails or hangs the lease is lost and the
//! relay stops publishing at once. The server ends the session of a relay
//! that stops checking (frozen, or cut off from the database) after
//! [`IDLE_SESSION_TIMEOUT`], which frees the lock for a standby; a relay
//! that dies outright closes its socket and frees the lock straight away.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The advisory lock's key: `purser` in ASCII, then the relay's number.
pub const RELAY_LOCK_KEY: i64 = 0x7075_7273_6572_0001;

/// How often a standby tries to take the lock.
pub(crate) const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// How often the active relay checks its lock connection.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long one check may take before the lease counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the server keeps the lock of a relay that stopped checking
/// (PostgreSQL's `idle_session_timeout` on the lock connection). Longer than
/// [`CHECK_INTERVAL`] + [`CHECK_TIMEOUT`], so such a relay has stopped
/// publishing before a standby can take over.
const IDLE_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Tries to take an advisory lock on a dedicated connection.
pub struct Leadership {
    options: PgConnectOptions,
    key: i64,
    /// The connection of the last attempt, kept between attempts.
    connection: Option<PgConnection>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Leadership by lock `key`, on connections made like `pool`'s. The
    /// connection's `application_name` names the process, so
    /// `pg_locks` joined with `pg_stat_activity` shows which relay is active.
    pub fn new(pool: &PgPool, key: i64) -> Self {
        let name = format!("purser relay (pid {})", std::process::id());
        let options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(&name);
        Self {
            options,
            key,
            connection: None,
        }
    }

    /// One attempt: `Ok(Some(lease))` with the lock held, `Ok(None)` when
    /// another session holds it.
    pub async fn try_acquire(&mut self) -> Result<Option<Lease>, sqlx::Error> {
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => PgConnection::connect_with(&self.options).await?,
        };
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            self.connection = Some(connection);
            return Ok(None);
        }
        let timeout = format!(
            "SET idle_session_timeout = {}",
            IDLE_SESSION_TIMEOUT.as_millis()
        );
        if let Err(error) = sqlx::query(&timeout).execute(&mut connection).await {
            tracing::warn!(%error, "cannot set idle_session_timeout on the relay lock connection");
        }
        Ok(Some(Lease::hold(connection, self.key)))
    }
}

/// The lock, held on its connection by a task that checks it.
#[derive(Debug)]
pub struct Lease {
    /// Cancelled by the task when the connection failed.
    lost: CancellationToken,
    /// Cancelled to make the task unlock and close the connection.
    release: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Lease {
    fn hold(mut connection: PgConnection, key: i64) -> Lease {
        let lost = CancellationToken::new();
        let release = CancellationToken::new();
        let task = tokio::spawn({
            let (lost, release) = (lost.clone(), release.clone());
            async move {
                let mut interval = tokio::time::interval(CHECK_INTERVAL);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = interval.tick() => {}
                        () = release.cancelled() => break,
                    }
                    let check = sqlx::query("SELECT 1").execute(&mut connection);
                    let failure = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(error)) => error.to_string(),
                        Err(_elapsed) => format!("no answer within {CHECK_TIMEOUT:?}"),
                    };
                    tracing::warn!(
                        error = failure,
                        "the relay lock connection failed: the lock is lost"
                    );
                    lost.cancel();
                    // Dropping the connection closes it; the server frees
                    // the lock when it notices.
                    return;
                }
                let unlock = async {
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(key)
                        .execute(&mut connection)
                        .await?;
                    connection.close().await
                };
                match tokio::time::timeout(CHECK_TIMEOUT, unlock).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "relay lock not released cleanly; closing its connection frees it")
                    }
                    Err(_elapsed) => tracing::debug!(
                        "relay lock not released in time; closing its connection frees it"
                    ),
                }
            }
        });
        Lease {
            lost,
            release,
            task: Some(task),
        }
    }

    /// Completes when the lock was lost (its connection failed).
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.lost.cancelled()
    }

    /// Whether the lock was lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Unlocks and closes the connection, waiting until that is done.
    pub async fn release(mut self) {
        self.release.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Lease {
    /// A lease dropped without [`Lease::release`] is released in the
    /// background.
    fn drop(&mut self) {
        self.release.cancel();
    }
}
