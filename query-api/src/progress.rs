//! Read-your-writes: waiting until a read model has applied a version.
//!
//! Projection workers `pg_notify('purser_projection', ...)` after every
//! committed batch: the projection's name, then (when they fit in the
//! payload) the stream ids the batch moved, one a line
//! ([`projections::notification`]). One LISTEN connection per process turns
//! those into wake-ups: a waiting request re-reads its row when its own
//! stream moved, or on a notification that names no stream (then every
//! waiter of the projection re-reads), or after a slow poll interval when no
//! notification comes (listener down): never a busy loop, and no herd of
//! every waiter re-reading on every batch.
//!
//! The same connection hears the rebuilds' progress
//! ([`projections::requests::PROGRESS_CHANNEL`]), and passes which
//! projection moved on to the operator console's live view
//! ([`Progress::changes`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// The default and largest `wait_ms`.
pub const DEFAULT_WAIT: Duration = Duration::from_millis(2_000);
pub const MAX_WAIT_MS: u64 = 10_000;

/// The largest `min_version`: a stream's version is an `i64`, so a larger
/// one can never be reached (400, not a wait).
pub const MAX_MIN_VERSION: u64 = i64::MAX as u64;

/// `(projection, stream id)` -> how many wait on that stream, and their
/// wake-ups.
type Waiting = Arc<Mutex<HashMap<(&'static str, String), (usize, watch::Sender<u64>)>>>;

/// Wake-ups per projection (a counter bumped on a notification that names
/// no stream), and per stream someone waits on.
#[derive(Clone)]
pub struct Progress {
    channels: Arc<HashMap<&'static str, watch::Sender<u64>>>,
    /// `(projection, stream id)` -> the waiters' count and their wake-ups.
    streams: Waiting,
    poll: Duration,
    /// One permit per request allowed to wait at once.
    waiters: Arc<Semaphore>,
    max_waiters: usize,
    /// The projections that moved, as the LISTEN connection hears it, for
    /// the operator console's live view ([`Progress::changes`]).
    changes: broadcast::Sender<Change>,
}

/// What the LISTEN connection heard, for the operator console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A projection applied a batch, or its rebuild, parked streams or
    /// requests changed.
    Projection(&'static str),
    /// Notifications may have been missed (the connection was lost): any
    /// projection may have moved.
    Any,
}

/// Changes kept for a slow console before it is told it lagged.
const CHANGES_BUFFER: usize = 256;

impl Progress {
    /// One channel per projection; `poll` is the fallback re-read interval.
    pub fn new(poll: Duration) -> Self {
        let channels = projections::all()
            .iter()
            .map(|p| (p.name(), watch::channel(0u64).0))
            .collect();
        Progress {
            channels: Arc::new(channels),
            streams: Arc::default(),
            poll,
            waiters: Arc::new(Semaphore::new(crate::config::DEFAULT_MAX_WAITERS)),
            max_waiters: crate::config::DEFAULT_MAX_WAITERS,
            changes: broadcast::channel(CHANGES_BUFFER).0,
        }
    }

    /// The projections that move from now on, as the one LISTEN connection
    /// of the process hears them (no query per subscriber).
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Tells the consoles that `projection` (a name of a notification's
    /// payload) moved.
    fn changed(&self, projection: &str) {
        if self.changes.receiver_count() == 0 {
            return;
        }
        if let Some((name, _)) = self.channels.get_key_value(projection) {
            let _ = self.changes.send(Change::Projection(name));
        }
    }

    /// At most `max` requests wait at once; one more is refused with 503
    /// `overloaded` rather than queued.
    pub fn with_max_waiters(mut self, max: usize) -> Self {
        self.waiters = Arc::new(Semaphore::new(max));
        self.max_waiters = max;
        self
    }

    /// Wakes the waiters of `projection`.
    pub fn bump(&self, projection: &str) {
        if let Some(sender) = self.channels.get(projection) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes whom a projection's notification concerns: the waiters of the
    /// streams it names, or every waiter of the projection when it names
    /// none.
    pub fn notified(&self, payload: &str) {
        let (projection, streams) = projections::notification::parse(payload);
        if streams.is_empty() {
            self.bump(projection);
            return;
        }
        let Some((name, _)) = self.channels.get_key_value(projection) else {
            return;
        };
        let waiting = self.streams.lock().expect("progress lock");
        if waiting.is_empty() {
            return;
        }
        for stream in streams {
            if let Some((_, sender)) = waiting.get(&(*name, stream.to_owned())) {
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// A wake-up of `stream`'s own, released when the guard is dropped.
    fn watch_stream(&self, projection: &str, stream: &str) -> Option<StreamWatch> {
        let (name, _) = self.channels.get_key_value(projection)?;
        let key = (*name, stream.to_owned());
        let receiver = {
            let mut waiting = self.streams.lock().expect("progress lock");
            let entry = waiting
                .entry(key.clone())
                .or_insert_with(|| (0, watch::channel(0u64).0));
            entry.0 += 1;
            entry.1.subscribe()
        };
        Some(StreamWatch {
            streams: Arc::clone(&self.streams),
            key,
            receiver,
        })
    }

    /// How many requests wait on `projection` now.
    pub fn waiters(&self, projection: &str) -> usize {
        self.channels
            .get(projection)
            .map_or(0, watch::Sender::receiver_count)
    }

    /// Wakes every waiter (after the listener lost notifications).
    pub fn bump_all(&self) {
        for sender in self.channels.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Runs `read` until it yields `Some`, re-running it when `projection`
    /// progresses (or every poll interval), until `wait` has elapsed: then
    /// 503 `min_version_timeout`, at the deadline even if a re-read is in
    /// flight (only the first read, which a `wait` of 0 still makes, is
    /// never cut short). A request that has to wait while the cap of waiters
    /// is reached is answered 503 `overloaded` at once.
    pub async fn wait_for<T, F, Fut>(
        &self,
        projection: &str,
        stream: &str,
        min_version: u64,
        wait: Duration,
        mut read: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, ApiError>>,
    {
        let deadline = Instant::now() + wait;
        let mut first = true;
        let timeout = || ApiError::MinVersionTimeout {
            min_version,
            waited: wait,
        };
        let mut receiver = self.channels.get(projection).map(watch::Sender::subscribe);
        let mut own = self.watch_stream(projection, stream);
        let mut permit = None;
        loop {
            // Mark the current progress as seen *before* reading, so that a
            // notification arriving during the read is not missed.
            if let Some(receiver) = receiver.as_mut() {
                receiver.borrow_and_update();
            }
            if let Some(own) = own.as_mut() {
                own.receiver.borrow_and_update();
            }
            let found = if std::mem::take(&mut first) {
                read().await?
            } else {
                tokio::time::timeout_at(deadline, read())
                    .await
                    .map_err(|_| timeout())??
            };
            if let Some(found) = found {
                return Ok(found);
            }
            if permit.is_none() {
                let acquired = Arc::clone(&self.waiters).try_acquire_owned();
                permit = Some(acquired.map_err(|_| {
                    ApiError::Overloaded(format!(
                        "{} requests are already waiting for a read model; retry later",
                        self.max_waiters
                    ))
                })?);
                // A waiter from now on, bounded by the waiters' cap (its
                // re-reads too), no longer by the requests' one.
                service::middleware::leave_the_cap();
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(timeout());
            }
            let nap = self.poll.min(deadline - now);
            match (receiver.as_mut(), own.as_mut()) {
                (Some(receiver), Some(own)) => {
                    tokio::select! {
                        changed = receiver.changed() => {
                            if changed.is_err() {
                                tokio::time::sleep(nap).await;
                            }
                        }
                        _ = own.receiver.changed() => {}
                        () = tokio::time::sleep(nap) => {}
                    }
                }
                _ => tokio::time::sleep(nap).await,
            }
        }
    }

    /// Listens to the projections' notifications until `shutdown`,
    /// reconnecting with backoff. Without it, waits fall back to polling.
    pub fn spawn_listener(
        &self,
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let progress = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = progress.listen(&pool) => {
                        if let Err(error) = result {
                            tracing::warn!(error = %error, ?backoff, "projection LISTEN failed; polling until it is back");
                        }
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    async fn listen(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([
                projections::NOTIFY_CHANNEL,
                projections::requests::PROGRESS_CHANNEL,
            ])
            .await?;
        // Anything applied before LISTEN took effect is only seen by a re-read.
        self.bump_all();
        let _ = self.changes.send(Change::Any);
        loop {
            match listener.try_recv().await? {
                Some(notification) => {
                    let payload = notification.payload();
                    if notification.channel() == projections::NOTIFY_CHANNEL {
                        self.notified(payload);
                    }
                    self.changed(projections::notification::parse(payload).0);
                }
                // The connection was lost and re-established: notifications
                // may have been missed.
                None => {
                    self.bump_all();
                    let _ = self.changes.send(Change::Any);
                }
            }
        }
    }
}

/// A waiter's interest in one stream; the last one out removes the entry.
struct StreamWatch {
    streams: Waiting,
    key: (&'static str, String),
    receiver: watch::Receiver<u64>,
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        let mut waiting = self.streams.lock().expect("progress lock");
        if let Some(entry) = waiting.get_mut(&self.key) {
            entry.0 -= 1;
            if entry.0 == 0 {
                waiting.remove(&self.key);
            }
        }
    }
}

/// `min_version` and `wait_ms` of a single-entity read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consistency {
    pub min_version: Option<u64>,
    pub wait: Duration,
}

impl Consistency {
    pub fn new(min_version: Option<u64>, wait_ms: Option<u64>) -> Result<Self, ApiError> {
        let wait = match wait_ms {
            None => DEFAULT_WAIT,
            Some(ms) if ms <= MAX_WAIT_MS => Duration::from_millis(ms),
            Some(ms) => {
                return Err(ApiError::InvalidQuery(format!(
                    "wait_ms must be at most {MAX_WAIT_MS}, got {ms}"
                )))
            }
        };
        if let Some(version) = min_version.filter(|&v| v > MAX_MIN_VERSION) {
            return Err(ApiError::InvalidQuery(format!(
                "min_version must be at most {MAX_MIN_VERSION} (no stream's version can be \
                 higher), got {version}"
            )));
        }
        Ok(Consistency {
            min_version: min_version.filter(|&v| v > 0),
            wait,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_version_is_at_most_the_largest_version() {
        let at = |v: u64| Consistency::new(Some(v), None);
        assert_eq!(at(0).unwrap().min_version, None);
        assert_eq!(
            at(MAX_MIN_VERSION).unwrap().min_version,
            Some(MAX_MIN_VERSION)
        );
        assert!(matches!(
            at(MAX_MIN_VERSION + 1),
            Err(ApiError::InvalidQuery(_))
        ));
        assert!(matches!(
            Consistency::new(None, Some(MAX_WAIT_MS + 1)),
            Err(ApiError::InvalidQuery(_))
        ));
    }

    /// A re-read that never finishes (a stuck database) does not hold the
    /// answer past the deadline: the wait ends with `min_version_timeout`.
    #[tokio::test]
    async fn a_wait_ends_at_its_deadline_even_with_a_read_in_flight() {
        let progress = Progress::new(Duration::from_millis(5));
        let mut reads = 0;
        let outcome = progress
            .wait_for(
                "accounts",
                "account-1",
                7,
                Duration::from_millis(50),
                || {
                    reads += 1;
                    let first = reads == 1;
                    async move {
                        if first {
                            Ok(None)
                        } else {
                            std::future::pending::<Result<Option<()>, ApiError>>().await
                        }
                    }
                },
            )
            .await;
        assert!(
            matches!(
                outcome,
                Err(ApiError::MinVersionTimeout { min_version: 7, .. })
            ),
            "{outcome:?}"
        );
        assert_eq!(reads, 2, "the first read, then one cut short");
    }
}
