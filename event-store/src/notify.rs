//! Wake-ups for subscribers, kept off the append's commit path.
//!
//! `NOTIFY` inside the appending transaction would be the obvious choice,
//! but Postgres serialises the commits of all notifying transactions behind
//! one database-wide lock held until the commit record is flushed, which
//! defeats group commit: measured with pgbench on the 2-core development
//! machine, an insert that also notifies reached 43% of the bare insert's
//! rate at 8 writers and 19% at 32 (BENCHMARKS.md). So an append only pokes
//! this process-local notifier; one background task per `EventStore` turns
//! any number of pokes into one `pg_notify` in its own transaction, at most
//! one in flight and at most one per [`MIN_INTERVAL`] (a notifying
//! transaction costs a commit like an append's, so one per append would
//! still cost a single writer a large share of its rate). Subscribers in any process `LISTEN` on [`CHANNEL`] and poll
//! as a fallback, so a lost wake-up (crash between commit and notify) only
//! delays delivery to the next poll.

use std::sync::OnceLock;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;

/// The channel subscribers `LISTEN` on; the payload is empty.
pub const CHANNEL: &str = "event_store_appended";

/// Shortest time between two notifications from one `EventStore`: the most
/// a wake-up can lag behind its append, beyond the notification's own
/// round trip.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
pub(crate) struct Notifier {
    /// Capacity 1: a poke while one is pending is absorbed by it.
    pokes: OnceLock<mpsc::Sender<()>>,
}

impl Notifier {
    /// Asks for one `pg_notify` soon. Never blocks, never fails. Must be
    /// called within a Tokio runtime (the task starts on first use).
    pub(crate) fn poke(&self, pool: &PgPool) {
        let pokes = self.pokes.get_or_init(|| {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(run(pool.clone(), rx));
            tx
        });
        // Full means a notification is already due: nothing to add.
        let _ = pokes.try_send(());
    }
}

/// Ends when the last `EventStore` clone (and so the sender) is dropped.
async fn run(pool: PgPool, mut pokes: mpsc::Receiver<()>) {
    while pokes.recv().await.is_some() {
        if pool.is_closed() {
            break;
        }
        let next_allowed = tokio::time::Instant::now() + MIN_INTERVAL;
        if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&pool)
            .await
        {
            // Subscribers fall back to polling.
            tracing::debug!(%error, "event store wake-up notification failed");
        }
        // Pokes meanwhile wait in the channel, coalesced into one.
        tokio::time::sleep_until(next_allowed).await;
    }
}
