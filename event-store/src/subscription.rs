use std::fmt;
use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::{
    notify, Checkpoint, EventStore, LocalAppends, RawRecordedEvent, RecordedEvent, Result,
};

/// A tail of [`EventStore::read_all`]: each [`Subscription::next_batch`]
/// returns the next events after the subscription's checkpoint, waiting
/// until there is at least one.
///
/// It wakes at once on the appends of its own process
/// ([`EventStore::local_appends`]), on `LISTEN event_store_appended` for
/// those of other processes (one pool connection held for the
/// subscription's life), and polls every `poll_interval` as a fallback
/// (default 500 ms), so a lost notification or a dead listener connection
/// only delays delivery. The checkpoint lives in memory; persist it with
/// [`EventStore::save_checkpoint`] once the events are handled, and resume
/// with [`EventStore::load_checkpoint`].
pub struct Subscription {
    store: EventStore,
    checkpoint: Checkpoint,
    listener: Option<PgListener>,
    local: LocalAppends,
    poll_interval: Duration,
}

/// Re-read delays while committed events wait behind an older transaction
/// still in flight: from 5 ms, doubling, up to 20 ms (an append commits in
/// a few milliseconds; at 100 ms, one slow transaction anywhere on the
/// server cost the relay up to 100 ms after it ended, which was the tail of
/// the end-to-end lag under load).
const RETRY_PENDING_FROM: Duration = Duration::from_millis(5);
const RETRY_PENDING_UP_TO: Duration = Duration::from_millis(20);

impl Subscription {
    /// Default polling fallback.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

    pub(crate) fn new(store: EventStore, from: Checkpoint) -> Self {
        Subscription {
            local: store.local_appends(),
            store,
            checkpoint: from,
            listener: None,
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
        }
    }

    /// Changes the polling fallback interval.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(RETRY_PENDING_FROM);
        self
    }

    /// Where the subscription stands: after the last event returned.
    pub fn checkpoint(&self) -> Checkpoint {
        self.checkpoint
    }

    /// The next events (at most `max`, at least one) in read-all order,
    /// waiting for them if there are none yet. Cancel-safe: dropping the
    /// future loses no event (the checkpoint only moves when it returns).
    #[tracing::instrument(skip_all, fields(transaction_id = self.checkpoint.transaction_id, position = self.checkpoint.position), err)]
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        self.next_page(max).await
    }

    /// [`Subscription::next_batch`] with the payloads left as their stored
    /// JSON text ([`EventStore::read_all_raw`]).
    #[tracing::instrument(skip_all, fields(transaction_id = self.checkpoint.transaction_id, position = self.checkpoint.position), err)]
    pub async fn next_raw_batch(&mut self, max: usize) -> Result<Vec<RawRecordedEvent>> {
        self.next_page(max).await
    }

    async fn next_page<E: Page>(&mut self, max: usize) -> Result<Vec<E>> {
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let mut retry = RETRY_PENDING_FROM;
        loop {
            // Listen before reading, so nothing committed after the read
            // goes unnoticed.
            self.ensure_listening().await;
            self.local.mark_seen();
            let events = E::read(&self.store, self.checkpoint, limit).await?;
            if let Some(last) = events.last() {
                self.checkpoint = last.checkpoint();
                return Ok(events);
            }
            if self.store.has_events_after(self.checkpoint).await? {
                // Committed but behind an older transaction still in flight,
                // which may commit without notifying: re-read soon.
                let cap = RETRY_PENDING_UP_TO.min(self.poll_interval);
                self.wait_for_wake_up(retry.min(cap)).await;
                retry = (retry * 2).min(cap);
            } else {
                self.wait_for_wake_up(self.poll_interval).await;
                retry = RETRY_PENDING_FROM;
            }
        }
    }

    async fn ensure_listening(&mut self) {
        if self.listener.is_some() {
            return;
        }
        let listener = async {
            let mut listener = PgListener::connect_with(self.store.pool()).await?;
            listener.listen(notify::CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listener {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => tracing::warn!(%error, "cannot LISTEN; polling only"),
        }
    }

    /// Waits up to `timeout` or until this process appends or a
    /// notification comes.
    async fn wait_for_wake_up(&mut self, timeout: Duration) {
        let local = self.local.changed();
        let Some(listener) = &mut self.listener else {
            let _ = tokio::time::timeout(timeout, local).await;
            return;
        };
        let heard = tokio::select! {
            () = local => return,
            heard = tokio::time::timeout(timeout, listener.recv()) => heard,
        };
        match heard {
            Ok(Ok(_)) => {
                // Several notifications mean the same thing: drain them.
                while listener.next_buffered().is_some() {}
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "listener failed; reconnecting on the next read");
                self.listener = None;
            }
            Err(_elapsed) => {}
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("checkpoint", &self.checkpoint)
            .field("listening", &self.listener.is_some())
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// What a subscription can read a page of.
trait Page: Sized {
    async fn read(store: &EventStore, after: Checkpoint, limit: i64) -> Result<Vec<Self>>;
    fn checkpoint(&self) -> Checkpoint;
}

impl Page for RecordedEvent {
    async fn read(store: &EventStore, after: Checkpoint, limit: i64) -> Result<Vec<Self>> {
        store.read_all(after, limit).await
    }

    fn checkpoint(&self) -> Checkpoint {
        RecordedEvent::checkpoint(self)
    }
}

impl Page for RawRecordedEvent {
    async fn read(store: &EventStore, after: Checkpoint, limit: i64) -> Result<Vec<Self>> {
        store.read_all_raw(after, limit).await
    }

    fn checkpoint(&self) -> Checkpoint {
        RawRecordedEvent::checkpoint(self)
    }
}
