//! In-process serialisation of commands per aggregate, with a cache of the
//! last state each command left behind (the Command API's and the saga's).
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
//! Each stripe also holds a small map from stream id to a value (the
//! command layer keeps the aggregate's last known state there), guarded by
//! the same mutex.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use tokio::sync::{Mutex, MutexGuard};

/// How many stripes: enough that unrelated aggregates rarely share one.
const STRIPES: usize = 1024;

/// How many streams one stripe remembers by default (16 Ki in all).
pub const DEFAULT_ENTRIES_PER_STRIPE: usize = 16;

/// Striped per-stream locks, each stripe remembering a bounded number of
/// streams' values.
#[derive(Debug)]
pub struct StreamLocks<V> {
    stripes: Box<[Mutex<Stripe<V>>]>,
    hasher: RandomState,
}

/// One stripe's remembered values, reachable only while holding its lock.
#[derive(Debug)]
pub struct Stripe<V> {
    entries: HashMap<String, V>,
    capacity: usize,
}

impl<V> Stripe<V> {
    /// What `stream` left, if remembered.
    pub fn get(&self, stream: &str) -> Option<&V> {
        self.entries.get(stream)
    }

    /// Remembers `value` for `stream`, forgetting some other stream when the
    /// stripe is full (and nothing at all at capacity 0).
    pub fn insert(&mut self, stream: &str, value: V) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.entries.get_mut(stream) {
            *slot = value;
            return;
        }
        if self.entries.len() >= self.capacity {
            if let Some(evicted) = self.entries.keys().next().cloned() {
                self.entries.remove(&evicted);
            }
        }
        self.entries.insert(stream.to_owned(), value);
    }

    /// Forgets what `stream` left.
    pub fn remove(&mut self, stream: &str) {
        self.entries.remove(stream);
    }
}

impl<V> Default for StreamLocks<V> {
    fn default() -> Self {
        StreamLocks::new(DEFAULT_ENTRIES_PER_STRIPE)
    }
}

impl<V> StreamLocks<V> {
    /// Stripes that remember up to `entries_per_stripe` streams each.
    pub fn new(entries_per_stripe: usize) -> StreamLocks<V> {
        StreamLocks {
            stripes: (0..STRIPES)
                .map(|_| {
                    Mutex::new(Stripe {
                        entries: HashMap::new(),
                        capacity: entries_per_stripe,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn index(&self, stream: &str) -> usize {
        (self.hasher.hash_one(stream) as usize) % self.stripes.len()
    }

    /// Waits for the stripe of `stream` (e.g. `account-0191...`).
    pub async fn lock(&self, stream: &str) -> MutexGuard<'_, Stripe<V>> {
        self.stripes[self.index(stream)].lock().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_stream_is_serialised_and_others_are_not() {
        let locks = Arc::new(StreamLocks::<()>::default());
        let held = locks.lock("account-a").await;
        let other = (0..100)
            .map(|i| format!("account-{i}"))
            .find(|name| locks.index(name) != locks.index("account-a"))
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
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter got the lock once released")
            .expect("waiter task");
    }

    #[tokio::test]
    async fn a_stripe_remembers_a_bounded_number_of_streams() {
        let locks = StreamLocks::<u32>::new(4);
        let mut stripe = locks.lock("s").await;
        stripe.insert("s", 1);
        stripe.insert("s", 2);
        assert_eq!(stripe.get("s"), Some(&2));
        for i in 0..200 {
            stripe.insert(&format!("other-{i}"), i);
        }
        assert_eq!(stripe.entries.len(), 4);
        stripe.remove("other-199");
        assert_eq!(stripe.get("other-199"), None);

        let forgetful = StreamLocks::<u32>::new(0);
        let mut stripe = forgetful.lock("s").await;
        stripe.insert("s", 1);
        assert_eq!(stripe.get("s"), None);
    }
}
