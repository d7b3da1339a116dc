//! Commands run one at a time per aggregate in this process, each deciding
//! on the state the previous one left behind: [`AggregateCache`].
//!
//! The remembered state saves reading the stream: the next command is
//! decided on it and appended with its version as the expected one
//! ([`Repository::execute_from`]), so the append's version check proves it
//! was current. When another process (or anything that bypassed this
//! cache) wrote meanwhile, that append conflicts: the entry is dropped and
//! the command decided again on a fresh load. So several processes on one
//! database stay correct with their caches on; a conflict is how one learns
//! of another's write. A refusal, a no-op, a replay or an error forgets the
//! stream (what the repository decided on then is not at hand).
//!
//! A caller that appends itself, with other streams in one transaction (the
//! saga's steps), follows the same rule by hand: it takes the turn with the
//! remembered state ([`AggregateCache::turn_with`], or
//! [`AggregateCache::try_turn_with`] when it already holds other turns),
//! decides on it, appends at its version, and once committed puts back
//! what its append left ([`AggregateCache::remember`]).
//!
//! The cache is bounded: at most `capacity` aggregates, the least recently
//! used forgotten first. Its hits, misses, evictions and size are counted
//! in [`CacheMetrics`], which the process registers in its registry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use domain::Aggregate;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::locks::{StreamLocks, StreamTurn};
use crate::{ExecuteError, ExecuteOptions, Executed, Loaded, Outcome, Repository, StreamId};

/// How many aggregates one cache remembers by default.
pub const DEFAULT_CACHE_SIZE: usize = 16 * 1024;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamTypeLabel {
    stream_type: &'static str,
}

/// The aggregate caches' metrics, by stream type: hits (a command decided
/// on a remembered state), misses (it read the stream), evictions (an
/// aggregate forgotten to make room), entries and capacity. Cheap to clone:
/// clones count together. Register them once per process
/// ([`CacheMetrics::register`]) and hand clones to every cache.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    hits: Family<StreamTypeLabel, Counter>,
    misses: Family<StreamTypeLabel, Counter>,
    evictions: Family<StreamTypeLabel, Counter>,
    entries: Family<StreamTypeLabel, Gauge>,
    capacity: Family<StreamTypeLabel, Gauge>,
}

impl CacheMetrics {
    /// Metrics at zero.
    pub fn new() -> CacheMetrics {
        CacheMetrics::default()
    }

    /// Registers them in `registry` as `{prefix}_aggregate_cache_hits_total`,
    /// `_misses_total`, `_evictions_total`, `_entries` and `_capacity`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry, prefix: &str) {
        registry.register(
            format!("{prefix}_aggregate_cache_hits"),
            "Commands decided on an aggregate state remembered in memory, by stream type",
            self.hits.clone(),
        );
        registry.register(
            format!("{prefix}_aggregate_cache_misses"),
            "Commands that read their aggregate's stream (not remembered), by stream type",
            self.misses.clone(),
        );
        registry.register(
            format!("{prefix}_aggregate_cache_evictions"),
            "Aggregates forgotten to make room in the cache, by stream type",
            self.evictions.clone(),
        );
        registry.register(
            format!("{prefix}_aggregate_cache_entries"),
            "Aggregates remembered in the cache, by stream type",
            self.entries.clone(),
        );
        registry.register(
            format!("{prefix}_aggregate_cache_capacity"),
            "Most aggregates the cache remembers, by stream type",
            self.capacity.clone(),
        );
    }

    fn of(&self, stream_type: &'static str) -> Counters {
        let label = StreamTypeLabel { stream_type };
        Counters {
            hits: self.hits.get_or_create(&label).clone(),
            misses: self.misses.get_or_create(&label).clone(),
            evictions: self.evictions.get_or_create(&label).clone(),
            entries: self.entries.get_or_create(&label).clone(),
            capacity: self.capacity.get_or_create(&label).clone(),
        }
    }
}

/// One cache's metrics (its stream type's).
#[derive(Debug, Clone)]
struct Counters {
    hits: Counter,
    misses: Counter,
    evictions: Counter,
    entries: Gauge,
    capacity: Gauge,
}

/// What [`AggregateCache`] decides a command on, in the aggregate's turn.
#[derive(Debug, Clone, Copy)]
enum Known {
    /// The state the last command left, if remembered (else a read).
    Remembered,
    /// The initial state at version 0, unread: an id the caller just made.
    New,
}

/// A [`Repository`] whose commands run one at a time per aggregate in this
/// process and decide on the state the previous one left, remembered for
/// up to `capacity` aggregates (see the module's documentation).
pub struct AggregateCache<A: Aggregate> {
    repository: Repository<A>,
    locks: StreamLocks,
    entries: Mutex<Lru<Loaded<A>>>,
    counters: Counters,
}

impl<A: Aggregate> std::fmt::Debug for AggregateCache<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateCache")
            .field("repository", &self.repository)
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> AggregateCache<A> {
    /// Commands through `repository`, remembering up to `capacity`
    /// aggregates (0: none; commands are still serialised per aggregate),
    /// counted in `metrics`.
    pub fn new(repository: Repository<A>, capacity: usize, metrics: &CacheMetrics) -> Self {
        let counters = metrics.of(A::STREAM_TYPE);
        counters
            .capacity
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        AggregateCache {
            repository,
            locks: StreamLocks::new(),
            entries: Mutex::new(Lru::new(capacity)),
            counters,
        }
    }

    /// The repository it runs commands through.
    pub fn repository(&self) -> &Repository<A> {
        &self.repository
    }

    /// Most aggregates remembered.
    pub fn capacity(&self) -> usize {
        self.lru().capacity
    }

    /// Aggregates remembered now.
    pub fn len(&self) -> usize {
        self.lru().entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, Lru<Loaded<A>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Repository::execute`], once the turn of aggregate `id` in this
    /// process has come, deciding first on the state the last command on
    /// it left (if remembered). The outcome of a command carried out is
    /// remembered; anything else forgets the aggregate.
    pub async fn execute<R>(
        &self,
        id: &str,
        command: &A::Command,
        options: ExecuteOptions,
        record: impl Fn(Result<&Outcome<A>, &A::Error>) -> R + Send + Sync,
    ) -> Result<Executed<A, R>, ExecuteError<A::Error>>
    where
        R: Serialize + DeserializeOwned + Send,
    {
        self.execute_in_turn(id, Known::Remembered, command, options, record)
            .await
    }

    /// [`AggregateCache::execute`] for an aggregate whose id the caller made
    /// just now (a uuid v7): its stream cannot exist yet, so the command is
    /// decided on the initial state at version 0 without reading it, and
    /// the append at version 0 proves it (a conflict reads the stream, and
    /// a refusal is decided again on a read, as on any remembered state).
    /// Remembered afterwards as any command's outcome.
    pub async fn execute_new<R>(
        &self,
        id: &str,
        command: &A::Command,
        options: ExecuteOptions,
        record: impl Fn(Result<&Outcome<A>, &A::Error>) -> R + Send + Sync,
    ) -> Result<Executed<A, R>, ExecuteError<A::Error>>
    where
        R: Serialize + DeserializeOwned + Send,
    {
        self.execute_in_turn(id, Known::New, command, options, record)
            .await
    }

    /// Executes `command` once the turn of aggregate `id` in this process
    /// has come, from the state `known` says, and remembers the outcome of
    /// a command carried out.
    async fn execute_in_turn<R>(
        &self,
        id: &str,
        known: Known,
        command: &A::Command,
        options: ExecuteOptions,
        record: impl Fn(Result<&Outcome<A>, &A::Error>) -> R + Send + Sync,
    ) -> Result<Executed<A, R>, ExecuteError<A::Error>>
    where
        R: Serialize + DeserializeOwned + Send,
    {
        let stream = StreamId::of::<A>(id);
        let _turn = self.locks.lock(stream.as_str()).await;
        let known = match known {
            // Taken out: whatever happens next, only a command carried out
            // puts a state back.
            Known::Remembered => self.take(stream.as_str()),
            Known::New => Some(Loaded {
                state: A::initial(),
                version: 0,
                position: None,
            }),
        };
        let result = self
            .repository
            .execute_from(known, id, command, options, record)
            .await;
        if let Ok(Executed::Done(outcome)) = &result {
            let mut lru = self.lru();
            let evicted = lru.insert(
                stream.as_str(),
                Loaded {
                    state: outcome.state.clone(),
                    version: outcome.version,
                    position: outcome.position,
                },
            );
            if evicted {
                self.counters.evictions.inc();
            }
            self.counters.entries.set(lru.len_i64());
        }
        result
    }

    /// Waits for the turn of aggregate `id` in this process, for a caller
    /// that decides and appends itself (e.g. with other streams in one
    /// transaction), holding it until dropped (after its commit): the turn
    /// and the state the last command left, if remembered. That state is
    /// taken out: the caller decides on it, and its append at the state's
    /// version proves it current (on a conflict it loads afresh; a refusal
    /// or a no-op decided on it proves nothing, so it is decided again on a
    /// fresh load, as [`Repository::execute_from`] does). Once committed,
    /// the caller puts back what its append left ([`AggregateCache::remember`]);
    /// whatever it does not put back is forgotten.
    pub async fn turn_with(&self, id: &str) -> (StreamTurn<'_>, Option<Loaded<A>>) {
        let stream = StreamId::of::<A>(id);
        let turn = self.locks.lock(stream.as_str()).await;
        (turn, self.take(stream.as_str()))
    }

    /// [`AggregateCache::turn_with`] if the turn is free right away; `None`
    /// when someone in this process holds it (or another aggregate of the
    /// same stripe: the caller itself, maybe), so that a caller already
    /// holding turns never waits for one while holding them.
    pub fn try_turn_with(&self, id: &str) -> Option<(StreamTurn<'_>, Option<Loaded<A>>)> {
        let stream = StreamId::of::<A>(id);
        let turn = self.locks.try_lock(stream.as_str())?;
        Some((turn, self.take(stream.as_str())))
    }

    /// The stripe aggregate `id` takes its turn on ([`StreamLocks::stripe`]):
    /// a caller holding the turn of another aggregate of that stripe holds
    /// `id`'s too, and takes its remembered state with
    /// [`AggregateCache::take_in_turn`] (asking for the turn again would
    /// wait for itself).
    pub fn stripe(&self, id: &str) -> usize {
        self.locks.stripe(StreamId::of::<A>(id).as_str())
    }

    /// The state remembered for aggregate `id`, taken out, for a caller
    /// that holds its turn through another aggregate of the same stripe
    /// (see [`AggregateCache::stripe`]).
    pub fn take_in_turn(&self, id: &str) -> Option<Loaded<A>> {
        self.take(StreamId::of::<A>(id).as_str())
    }

    /// Remembers `loaded` as aggregate `id`'s state: one the caller's own
    /// commit left (while it held the turn) or one it read. A state only
    /// ever comes from a commit, so the later of two is the truer one: a
    /// remembered state at a later version stays.
    pub fn remember(&self, id: &str, loaded: Loaded<A>) {
        let stream = StreamId::of::<A>(id);
        let mut lru = self.lru();
        if lru
            .get(stream.as_str())
            .is_some_and(|known| known.version > loaded.version)
        {
            return;
        }
        if lru.insert(stream.as_str(), loaded) {
            self.counters.evictions.inc();
        }
        self.counters.entries.set(lru.len_i64());
    }

    /// The state remembered for aggregate `id` (a copy; it stays), without
    /// waiting for its turn.
    pub fn peek(&self, id: &str) -> Option<Loaded<A>> {
        let stream = StreamId::of::<A>(id);
        self.lru().get(stream.as_str()).cloned()
    }

    /// Forgets aggregate `id`: the next command reads its stream.
    pub fn forget(&self, id: &str) {
        let stream = StreamId::of::<A>(id);
        let mut lru = self.lru();
        lru.take(stream.as_str());
        self.counters.entries.set(lru.len_i64());
    }

    /// Takes the state remembered for `stream` out, counting a hit or a
    /// miss.
    fn take(&self, stream: &str) -> Option<Loaded<A>> {
        let mut lru = self.lru();
        let known = lru.take(stream);
        if lru.capacity > 0 {
            match known {
                Some(_) => self.counters.hits.inc(),
                None => self.counters.misses.inc(),
            };
        }
        self.counters.entries.set(lru.len_i64());
        known
    }
}

/// At most `capacity` values by key, the least recently used forgotten
/// first.
#[derive(Debug)]
struct Lru<V> {
    capacity: usize,
    /// Incremented at each use: a value's last use.
    clock: u64,
    entries: HashMap<String, (V, u64)>,
    /// Keys by last use, oldest first.
    by_use: BTreeMap<u64, String>,
}

impl<V> Lru<V> {
    fn new(capacity: usize) -> Lru<V> {
        Lru {
            capacity,
            clock: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    fn len_i64(&self) -> i64 {
        i64::try_from(self.entries.len()).unwrap_or(i64::MAX)
    }

    /// The value of `key`, left where it is (a peek is no use).
    fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).map(|(value, _)| value)
    }

    /// Removes and returns the value of `key`.
    fn take(&mut self, key: &str) -> Option<V> {
        let (value, used) = self.entries.remove(key)?;
        self.by_use.remove(&used);
        Some(value)
    }

    /// Remembers `value` under `key` as the most recently used; `true` when
    /// another key was forgotten to make room. At capacity 0, remembers
    /// nothing.
    fn insert(&mut self, key: &str, value: V) -> bool {
        if self.capacity == 0 {
            return false;
        }
        self.clock += 1;
        let used = self.clock;
        if let Some((slot, last)) = self.entries.get_mut(key) {
            *slot = value;
            self.by_use.remove(last);
            *last = used;
            self.by_use.insert(used, key.to_owned());
            return false;
        }
        let mut evicted = false;
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            evicted = true;
        }
        self.entries.insert(key.to_owned(), (value, used));
        self.by_use.insert(used, key.to_owned());
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_is_forgotten_and_the_bound_holds() {
        let mut lru = Lru::new(3);
        assert!(!lru.insert("a", 1));
        assert!(!lru.insert("b", 2));
        assert!(!lru.insert("c", 3));
        // "a" used again: "b" is now the oldest.
        let a = lru.take("a").expect("a remembered");
        assert!(!lru.insert("a", a + 10));
        assert!(lru.insert("d", 4), "a full cache evicts");
        assert_eq!(lru.take("b"), None);
        assert_eq!(lru.take("a"), Some(11));
        for i in 0..1_000 {
            lru.insert(&format!("k{i}"), i);
            assert!(lru.entries.len() <= 3);
            assert_eq!(lru.entries.len(), lru.by_use.len());
        }
        assert_eq!(lru.take("k999"), Some(999));
        assert_eq!(lru.take("k996"), None);

        let mut none = Lru::new(0);
        assert!(!none.insert("a", 1));
        assert_eq!(none.take("a"), None);
    }
}
