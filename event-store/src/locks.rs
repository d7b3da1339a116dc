//! In-process serialisation of commands per aggregate.
//!
//! Optimistic concurrency in the event store is what keeps every stream
//! consistent; serialising here only keeps requests to one aggregate that
//! reach this process at the same time from racing each other into
//! conflicts and retries (50 concurrent withdrawals would otherwise re-read
//! and re-decide up to 50 times). Writers in other processes still meet the
//! store's conflict check and the bounded retries.
//!
//! Striped: a fixed array of mutexes indexed by a hash of the stream id, so
//! memory is bounded; two streams that share a stripe merely take turns.
//! What each command left behind is remembered by the
//! [`AggregateCache`](crate::AggregateCache) built on these locks.

use std::hash::{BuildHasher, RandomState};

use tokio::sync::{Mutex, MutexGuard};

/// How many stripes: enough that unrelated aggregates rarely share one.
const STRIPES: usize = 1024;

/// Striped per-stream locks.
#[derive(Debug)]
pub struct StreamLocks {
    stripes: Box<[Mutex<()>]>,
    hasher: RandomState,
}

/// A stream's turn: held, no other holder of the same stripe runs.
pub type StreamTurn<'a> = MutexGuard<'a, ()>;

impl Default for StreamLocks {
    fn default() -> Self {
        StreamLocks::new()
    }
}

impl StreamLocks {
    /// 1,024 stripes.
    pub fn new() -> StreamLocks {
        StreamLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The stripe `stream` takes its turn on: the holder of one stream's
    /// turn holds the turn of every stream of its stripe.
    pub fn stripe(&self, stream: &str) -> usize {
        (self.hasher.hash_one(stream) as usize) % self.stripes.len()
    }

    /// Waits for the stripe of `stream` (e.g. `account-0191...`).
    pub async fn lock(&self, stream: &str) -> StreamTurn<'_> {
        self.stripes[self.stripe(stream)].lock().await
    }

    /// The stripe of `stream` if nobody holds it now (`None`: taken, maybe
    /// by the caller itself, through another stream of the same stripe).
    pub fn try_lock(&self, stream: &str) -> Option<StreamTurn<'_>> {
        self.stripes[self.stripe(stream)].try_lock().ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_stream_is_serialised_and_others_are_not() {
        let locks = Arc::new(StreamLocks::default());
        let held = locks.lock("account-a").await;
        let other = (0..100)
            .map(|i| format!("account-{i}"))
            .find(|name| locks.stripe(name) != locks.stripe("account-a"))
            .expect("some name in another stripe");
        let free = tokio::time::timeout(Duration::from_secs(5), locks.lock(&other)).await;
        assert!(free.is_ok(), "an unrelated stream was blocked");
        drop(free);
        let waiter = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _guard = locks.lock("account-a").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the same stream was not serialised");
        assert!(
            locks.try_lock("account-a").is_none(),
            "a held stream is not free"
        );
        assert!(
            locks.try_lock(&other).is_some(),
            "an unrelated stream is free"
        );
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter got the lock once released")
            .expect("waiter task");
    }
}
