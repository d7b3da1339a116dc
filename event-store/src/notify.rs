//! Wake-ups for subscribers, kept off the append's commit path.
//!
//! `NOTIFY` inside the appending transaction would be the obvious choice,
//! but Postgres serialises the commits of all notifying transactions behind
//! one database-wide lock held until the commit record is flushed, which
//! defeats group commit: measured with pgbench on the 2-core development
//! machine, an insert that also notifies reached 43% of the bare insert's
//! rate at 8 writers and 19% at 32 (BENCHMARKS.md). So an append only pokes
//! this process-local notifier, which does two things:
//!
//! - It wakes the subscribers of this process at once ([`LocalAppends`]):
//!   every `EventStore` of the process on the same database shares one
//!   signal, so in `purser serve` the relay and the saga trigger learn of
//!   the Command API's appends without a round trip through the server.
//! - One background task per `EventStore` turns any number of pokes into
//!   one `pg_notify` in its own transaction, at most one in flight and at
//!   most one per [`MIN_INTERVAL`] (a notifying transaction costs a commit
//!   like an append's, so one per append would still cost a single writer a
//!   large share of its rate), for the subscribers of other processes.
//!
//! Subscribers in any process `LISTEN` on [`CHANNEL`] and poll as a
//! fallback, so a lost wake-up (crash between commit and notify) only
//! delays delivery to the next poll.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

/// The channel subscribers `LISTEN` on; the payload is empty.
pub const CHANNEL: &str = "event_store_appended";

/// Shortest time between two notifications from one `EventStore`: the most
/// a wake-up in another process can lag behind its append, beyond the
/// notification's own round trip.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub(crate) struct Notifier {
    /// Capacity 1: a poke while one is pending is absorbed by it.
    pokes: OnceLock<mpsc::Sender<()>>,
    /// This process's appends to the notifier's database.
    local: Arc<watch::Sender<()>>,
}

impl Notifier {
    /// The notifier of an `EventStore` on `pool`.
    pub(crate) fn new(pool: &PgPool) -> Self {
        Notifier {
            pokes: OnceLock::new(),
            local: local_signal(pool),
        }
    }

    /// Wakes this process's subscribers now and asks for one `pg_notify`
    /// soon; after a commit that wrote events. Never blocks, never fails.
    /// Must be called within a Tokio runtime (the task starts on first use).
    pub(crate) fn poke(&self, pool: &PgPool) {
        self.local.send_replace(());
        let pokes = self.pokes.get_or_init(|| {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(run(pool.clone(), rx));
            tx
        });
        // Full means a notification is already due: nothing to add.
        let _ = pokes.try_send(());
    }

    /// A subscription to this process's appends to the database.
    pub(crate) fn local_appends(&self) -> LocalAppends {
        LocalAppends {
            receiver: self.local.subscribe(),
            _sender: Arc::clone(&self.local),
        }
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

/// Appends committed by this process to one database, through any
/// `EventStore` on it ([`crate::EventStore::local_appends`]): a subscriber in
/// the process wakes on them at once, without waiting for the `pg_notify`
/// (up to 10 ms later, the notifier's shortest interval, plus its round
/// trip). Appends of other processes still come only by `LISTEN` on
/// [`CHANNEL`] (or polling).
///
/// Use it as a `watch`: [`LocalAppends::mark_seen`] before reading, then
/// [`LocalAppends::changed`] waits for an append committed after the mark
/// (at once if one already was), so none committed during the read is
/// missed.
#[derive(Debug)]
pub struct LocalAppends {
    receiver: watch::Receiver<()>,
    /// Keeps the signal alive while anyone waits on it.
    _sender: Arc<watch::Sender<()>>,
}

impl LocalAppends {
    /// Marks every append committed so far as seen.
    pub fn mark_seen(&mut self) {
        self.receiver.mark_unchanged();
    }

    /// Waits until an append commits after the last [`LocalAppends::mark_seen`]
    /// (returns at once if one already has), and marks it seen.
    /// Cancel-safe.
    pub async fn changed(&mut self) {
        // The sender lives as long as `self`: this never fails.
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Which database a pool writes to: the server's address and the
/// database's name. Two pools with the same key share the process's signal.
/// (The same server under two names only costs the in-process wake-up:
/// those subscribers still hear `pg_notify`.)
fn database_of(pool: &PgPool) -> String {
    let options = pool.connect_options();
    let database = options
        .get_database()
        .unwrap_or_else(|| options.get_username());
    match options.get_socket() {
        Some(socket) => format!("{}|{database}", socket.display()),
        None => format!("{}:{}|{database}", options.get_host(), options.get_port()),
    }
}

/// The process's signal for the database of `pool`, shared by every
/// `EventStore` on it while any of them (or a subscriber) lives.
fn local_signal(pool: &PgPool) -> Arc<watch::Sender<()>> {
    static SIGNALS: LazyLock<Mutex<HashMap<String, Weak<watch::Sender<()>>>>> =
        LazyLock::new(Mutex::default);
    let mut signals = SIGNALS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = database_of(pool);
    if let Some(signal) = signals.get(&key).and_then(Weak::upgrade) {
        return signal;
    }
    signals.retain(|_, signal| signal.strong_count() > 0);
    let signal = Arc::new(watch::Sender::new(()));
    signals.insert(key, Arc::downgrade(&signal));
    signal
}
