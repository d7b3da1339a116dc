//! Group commit: appends at an exact expected version that reach one
//! `EventStore` together are written by one statement, one round trip and
//! one commit (one WAL flush) for all of them ([`GroupCommit`]).
//!
//! # Why one statement, not savepoints
//!
//! Each command in a group keeps its own expected-version check and its own
//! idempotency record, and one command's conflict must not fail its
//! neighbours. Savepoints per command in one transaction would give that,
//! but at a round trip per command (SAVEPOINT, append, record, RELEASE),
//! and they would break the gap-safe global order: a transaction's id is
//! assigned at its first write, so a later append in the same transaction
//! could check its expected version under a newer snapshot than the one
//! before that id, and land with a smaller transaction id than the writer
//! of the version it follows (the rule in `store.rs`: in a transaction, the
//! append must be the first write). One statement has one snapshot, taken
//! before its first write: every command's expectation is checked before
//! the transaction id exists, exactly as a lone append's is.
//!
//! The statement ([`APPEND_GROUP`]) checks each command on its own, per row
//! of the `unnest`ed input: its stream is at the expected version (that
//! version exists, or 0) and not past it (the next version does not exist),
//! under the statement's snapshot. Commands that pass are inserted; those
//! that fail insert nothing and are answered with a conflict, which the
//! repository handles as ever (re-read, decide again, append again, in a
//! later group). A command's records of idempotency are inserted in the
//! same statement, only for commands whose events are. So only what a
//! snapshot cannot see can fail the statement as a whole: a concurrent
//! writer (another process) in flight on one of the versions, a key written
//! meanwhile by a concurrent request, an error. Then nothing of the group
//! was written, and each of its commands is appended again alone, the way
//! it was before group commit ([`Grouped::Alone`]): a neighbour's trouble
//! costs a retry, never an error or a wrong answer. Two commands of one
//! stream never share a group (the later one waits for the next).
//!
//! An idempotency record holds the answer, which states the position of
//! the command's last event; so a command under a key reserves its
//! positions from the log's sequence first (one round trip of its own,
//! [`reserve_positions`]) and the statement inserts its events at them. A
//! group with records runs its statement in a transaction that commits
//! only if every command's caller still waits: a request that timed out
//! meanwhile leaves nothing (not even a record that would answer its retry
//! with a replay), as a lone command's rolled-back transaction did; the
//! others of that group are then appended alone. A group without records
//! is one autocommit statement, as a lone append is.
//! Positions only ever order events within one transaction (the global
//! order is `(transaction_id, position)`), and a reserved position is still
//! unique and in version order within its stream.
//!
//! # When a group forms
//!
//! A few writers (each a task with its own connection at a time) take turns
//! at the queue. The writer at the queue takes the first command and every
//! command already waiting, up to the maximum size. A command that finds
//! nothing in flight and nothing queued skips the queue altogether
//! ([`GroupCommit::try_alone`]): it is appended by its own task with the
//! lone append's statement, as without group commit, so one client is not
//! slower than without it (the hand-off to a writer and the group's
//! statement cost a lone command about a third more time); while it is in
//! flight, the commands that arrive queue and form the next group. Only while other groups are in flight (the
//! database is busy, more commands are surely coming) does a writer wait
//! for more, at most the configured time, before it writes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use crate::notify::Notifier;
use crate::rows::Rows;
use crate::{Appended, IdempotencyKey, NewEvent, Result, StreamId};

/// The statement of a group: see the module's documentation. Inputs, one
/// element per event: $1 the command's index in the group, $2 stream id,
/// $3 stream type, $4 expected version, $5 the event's place in its
/// command (1..), $6 event id, $7 type, $8 schema version, $9 payload,
/// $10 metadata, $11 a reserved position (NULL: the next). One element per
/// idempotency record: $12 the command's index, $13 scope, $14 key, $15
/// fingerprint, $16 record. Returns the event id and position of every
/// event inserted.
const APPEND_GROUP: &str = "\
WITH e AS (
    SELECT *
    FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::uuid[],
                $7::text[], $8::int4[], $9::jsonb[], $10::jsonb[], $11::int8[])
             WITH ORDINALITY
             AS e(item, stream_id, stream_type, expected, n, event_id, event_type,
                  schema_version, payload, metadata, position, ord)
), ok AS (
    SELECT e.item FROM e
    WHERE e.n = 1
      AND (e.expected = 0 OR EXISTS (
              SELECT FROM event_store.events x
              WHERE x.stream_id = e.stream_id AND x.version = e.expected))
      AND NOT EXISTS (
              SELECT FROM event_store.events x
              WHERE x.stream_id = e.stream_id AND x.version = e.expected + 1)
), appended AS (
    INSERT INTO event_store.events
        (position, event_id, stream_type, stream_id, version, event_type, schema_version,
         payload, metadata)
    OVERRIDING SYSTEM VALUE
    SELECT coalesce(e.position, nextval('event_store.events_position_seq')), e.event_id,
           e.stream_type, e.stream_id, e.expected + e.n, e.event_type, e.schema_version,
           e.payload, e.metadata
    FROM e
    WHERE e.item IN (SELECT item FROM ok)
    ORDER BY e.ord
    RETURNING event_id, position
), recorded AS (
    INSERT INTO event_store.idempotency (scope, key, fingerprint, record)
    SELECT k.scope, k.key, k.fingerprint, k.record
    FROM unnest($12::int4[], $13::text[], $14::text[], $15::text[], $16::jsonb[])
             AS k(item, scope, key, fingerprint, record)
    WHERE k.item IN (SELECT item FROM ok)
)
SELECT event_id, position FROM appended";

/// Reserves `count` positions of the log's sequence, in order.
pub(crate) async fn reserve_positions(pool: &PgPool, count: usize) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT nextval('event_store.events_position_seq') FROM generate_series(1, $1)",
    )
    .bind(i64::try_from(count).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await?)
}

/// How appends are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Most commands in one group (1: no grouping).
    pub max_size: usize,
    /// Longest a group waits for more commands, and only while other
    /// groups are in flight (zero: it takes only those already waiting).
    /// Tokio's timer counts in milliseconds: a wait is at least 1 ms.
    pub max_wait: Duration,
    /// Groups in flight at once (each on one connection of the pool).
    pub writers: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            max_size: 64,
            max_wait: Duration::ZERO,
            writers: 2,
        }
    }
}

/// Group sizes and groups written again one by one. Cheap to clone:
/// clones count together.
#[derive(Debug, Clone)]
pub struct GroupCommitMetrics {
    size: Histogram,
    alone: Counter,
    queued: Gauge,
}

impl Default for GroupCommitMetrics {
    fn default() -> Self {
        GroupCommitMetrics {
            size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            alone: Counter::default(),
            queued: Gauge::default(),
        }
    }
}

impl GroupCommitMetrics {
    /// Metrics at zero.
    pub fn new() -> GroupCommitMetrics {
        GroupCommitMetrics::default()
    }

    /// Registers them in `registry` as `{prefix}_group_commit_size` (a
    /// histogram of commands per group written) and
    /// `{prefix}_group_commit_failed_groups_total` (groups whose statement
    /// failed as a whole, their commands appended again one by one) and
    /// `{prefix}_group_commit_queued` (commands waiting for a group).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry, prefix: &str) {
        registry.register(
            format!("{prefix}_group_commit_size"),
            "Commands appended by one statement and commit (group commit)",
            self.size.clone(),
        );
        registry.register(
            format!("{prefix}_group_commit_failed_groups"),
            "Groups whose statement failed as a whole (a concurrent writer in flight, a key taken): their commands were appended again one by one",
            self.alone.clone(),
        );
        registry.register(
            format!("{prefix}_group_commit_queued"),
            "Commands waiting for their group",
            self.queued.clone(),
        );
    }
}

/// One command's append, waiting for its group.
pub(crate) struct Pending {
    pub(crate) stream: StreamId,
    pub(crate) expected: u64,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) metadata: serde_json::Value,
    /// Reserved positions of the events (with a record).
    pub(crate) positions: Option<Vec<i64>>,
    pub(crate) record: Option<(IdempotencyKey, serde_json::Value)>,
    pub(crate) reply: oneshot::Sender<Grouped>,
}

/// How a command's append in a group ended.
#[derive(Debug)]
pub(crate) enum Grouped {
    /// Its events (and record) are committed.
    Appended(Appended),
    /// Its stream was not at the expected version: nothing of it written.
    Conflict,
    /// The group's statement failed as a whole: nothing written; append it
    /// alone.
    Alone,
}

/// The group committer of one `EventStore` (shared by its clones).
#[derive(Debug)]
pub(crate) struct GroupCommit {
    config: GroupCommitConfig,
    metrics: GroupCommitMetrics,
    /// Groups being written, and lone appends ([`GroupCommit::try_alone`]).
    in_flight: Arc<AtomicUsize>,
    /// Commands submitted and not yet taken into a group.
    queued: Arc<AtomicUsize>,
    /// The queue; its writers start on first use.
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
}

struct Shared {
    config: GroupCommitConfig,
    metrics: GroupCommitMetrics,
    pool: PgPool,
    notifier: Arc<Notifier>,
    intake: Mutex<Intake>,
    in_flight: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
}

struct Intake {
    queue: mpsc::UnboundedReceiver<Pending>,
    /// Commands put off to the next group (their stream was in this one).
    later: VecDeque<Pending>,
}

impl GroupCommit {
    pub(crate) fn new(config: GroupCommitConfig, metrics: GroupCommitMetrics) -> GroupCommit {
        GroupCommit {
            config,
            metrics,
            in_flight: Arc::default(),
            queued: Arc::default(),
            queue: OnceLock::new(),
        }
    }

    /// When nothing is being written and nothing waits, a pass to append
    /// alone, at once, without the queue; counted in flight until dropped,
    /// so the commands arriving meanwhile group.
    pub(crate) fn try_alone(&self) -> Option<Alone> {
        if self.queued.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.in_flight
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .ok()?;
        Some(Alone(Arc::clone(&self.in_flight)))
    }

    /// Queues `pending` for the next group. Must be called within a Tokio
    /// runtime (the writers start on first use); they end when the last
    /// `EventStore` clone is dropped.
    pub(crate) fn submit(&self, pool: &PgPool, notifier: &Arc<Notifier>, pending: Pending) {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            let shared = Arc::new(Shared {
                config: self.config,
                metrics: self.metrics.clone(),
                pool: pool.clone(),
                notifier: Arc::clone(notifier),
                intake: Mutex::new(Intake {
                    queue: receiver,
                    later: VecDeque::new(),
                }),
                in_flight: Arc::clone(&self.in_flight),
                queued: Arc::clone(&self.queued),
            });
            for _ in 0..self.config.writers.max(1) {
                tokio::spawn(write_groups(Arc::clone(&shared)));
            }
            sender
        });
        self.metrics.queued.inc();
        self.queued.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::SendError(pending)) = queue.send(pending) {
            self.metrics.queued.dec();
            self.queued.fetch_sub(1, Ordering::SeqCst);
            // No writer left (the runtime is shutting down): alone, then.
            let _ = pending.reply.send(Grouped::Alone);
        }
    }
}

/// A lone append in flight ([`GroupCommit::try_alone`]), until dropped.
#[derive(Debug)]
pub(crate) struct Alone(Arc<AtomicUsize>);

impl Drop for Alone {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One writer: takes a group from the queue (counted in flight from then
/// on), writes it, answers each of its commands; until the queue is closed.
async fn write_groups(shared: Arc<Shared>) {
    while let Some(group) = next_group(&shared).await {
        write(&shared, group).await;
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The next group: the first command waiting, those already behind it,
/// and (only while other groups are in flight) those arriving within the
/// maximum wait.
async fn next_group(shared: &Shared) -> Option<Vec<Pending>> {
    let max = shared.config.max_size.max(1);
    let mut intake = shared.intake.lock().await;
    let first = match intake.later.pop_front() {
        Some(first) => first,
        None => intake.queue.recv().await?,
    };
    let mut streams = HashSet::new();
    streams.insert(first.stream.as_str().to_owned());
    let mut group = vec![first];
    let mut put_off = VecDeque::new();
    let mut add = |pending: Pending, group: &mut Vec<Pending>| {
        if streams.insert(pending.stream.as_str().to_owned()) {
            group.push(pending);
        } else {
            put_off.push_back(pending);
        }
    };
    while group.len() < max {
        let Some(pending) = intake.later.pop_front() else {
            break;
        };
        add(pending, &mut group);
    }
    while group.len() < max {
        match intake.queue.try_recv() {
            Ok(pending) => add(pending, &mut group),
            Err(_) => break,
        }
    }
    let wait = shared.config.max_wait;
    if group.len() < max && !wait.is_zero() && shared.in_flight.load(Ordering::SeqCst) > 0 {
        let deadline = tokio::time::Instant::now() + wait;
        while group.len() < max {
            match tokio::time::timeout_at(deadline, intake.queue.recv()).await {
                Ok(Some(pending)) => add(pending, &mut group),
                _ => break,
            }
        }
    }
    // In flight before no longer queued: a command arriving in between
    // must not find both at zero and go alone beside this group.
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    shared.queued.fetch_sub(group.len(), Ordering::SeqCst);
    shared
        .metrics
        .queued
        .dec_by(i64::try_from(group.len()).unwrap_or(i64::MAX));
    // Put off: first in the next group, in their order.
    while let Some(pending) = put_off.pop_back() {
        intake.later.push_front(pending);
    }
    Some(group)
}

/// Writes `group` in one statement and answers each command.
async fn write(shared: &Shared, group: Vec<Pending>) {
    shared.metrics.size.observe(group.len() as f64);
    let written = if group.iter().any(|pending| pending.record.is_some()) {
        write_recorded(shared, &group).await
    } else {
        append_group(&shared.pool, &group).await.map(Some)
    };
    match written {
        Ok(Some(positions)) => {
            let mut appended_any = false;
            for pending in group {
                let answer = match outcome(&pending, &positions) {
                    Some(appended) => {
                        appended_any = true;
                        Grouped::Appended(appended)
                    }
                    None => Grouped::Conflict,
                };
                let _ = pending.reply.send(answer);
            }
            if appended_any {
                shared.notifier.poke(&shared.pool);
            }
        }
        Ok(None) => {
            // Rolled back: a command's caller gave up meanwhile.
            for pending in group {
                let _ = pending.reply.send(Grouped::Alone);
            }
        }
        Err(error) => {
            tracing::debug!(%error, size = group.len(), "group append failed; appending its commands alone");
            shared.metrics.alone.inc();
            for pending in group {
                let _ = pending.reply.send(Grouped::Alone);
            }
        }
    }
}

/// A group with idempotency records, in a transaction that commits only if
/// every command's caller still waits: a command whose caller gave up (its
/// request timed out) must leave nothing, not even a record that would
/// answer its retry with a replay. `None` when rolled back for that: the
/// others are appended alone. (A group without records commits with its
/// statement, as a lone append does.)
async fn write_recorded(shared: &Shared, group: &[Pending]) -> Result<Option<HashMap<Uuid, i64>>> {
    let mut tx = shared.pool.begin().await?;
    let positions = append_group(&mut *tx, group).await?;
    if group.iter().any(|pending| pending.reply.is_closed()) {
        tx.rollback().await?;
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(positions))
}

/// What the statement did for `pending`: its events are all there, or none.
fn outcome(pending: &Pending, positions: &HashMap<Uuid, i64>) -> Option<Appended> {
    let last = pending.events.last()?;
    let position = *positions.get(&last.event_id)?;
    Some(Appended {
        version: pending.expected + pending.events.len() as u64,
        position,
    })
}

/// The group's statement: the position of every event inserted, by id.
async fn append_group<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    group: &[Pending],
) -> Result<HashMap<Uuid, i64>> {
    let count = group.iter().map(|p| p.events.len()).sum();
    let mut events = Rows::with_capacity(count);
    let mut positions: Vec<Option<i64>> = Vec::with_capacity(count);
    let mut record_items = Vec::new();
    let mut scopes = Vec::new();
    let mut keys = Vec::new();
    let mut fingerprints = Vec::new();
    let mut records = Vec::new();
    for (index, pending) in group.iter().enumerate() {
        for (place, event) in pending.events.iter().enumerate() {
            events.push(
                index,
                &pending.stream,
                pending.expected,
                place,
                event,
                &pending.metadata,
            );
            positions.push(
                pending
                    .positions
                    .as_ref()
                    .and_then(|reserved| reserved.get(place).copied()),
            );
        }
        if let Some((key, record)) = &pending.record {
            record_items.push(i32::try_from(index).unwrap_or(i32::MAX));
            scopes.push(key.scope.as_str());
            keys.push(key.key.as_str());
            fingerprints.push(key.fingerprint.as_str());
            records.push(record);
        }
    }
    let rows: Vec<(Uuid, i64)> = events
        .query_as(APPEND_GROUP)
        .bind(&positions)
        .bind(&record_items)
        .bind(&scopes)
        .bind(&keys)
        .bind(&fingerprints)
        .bind(&records)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().collect())
}
