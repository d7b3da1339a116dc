//! What starts and wakes sagas: `OrderPlaced`, `CancellationRequested` and
//! `SagaRetried`, read from the event store itself (design decision 10). No
//! broker sits between an order's append and its saga, and nothing a saga
//! does comes from a message: the trigger only makes the order's saga due in
//! `saga.due`; the orchestrator then starts it from the order's own stream
//! (`Orchestrator::drive`), so its account, amount, lines and address are
//! the ones the store holds.
//!
//! # One step, one transaction
//!
//! Each step of the trigger is one PostgreSQL transaction that
//!
//! 1. takes the trigger's lock, `pg_advisory_xact_lock`: the steps of every
//!    orchestrator process are serialised, so two never act on the same
//!    stretch of the log at once, and each one starts from the checkpoint the
//!    previous one committed. A transaction-scoped advisory lock rather than
//!    `SELECT ... FOR UPDATE` on the checkpoint row, because a row lock gives
//!    the transaction an xid for its whole duration, and an xid in flight
//!    holds back the gap-safe horizon of every reader of the log (the relay,
//!    the projections' rebuilds, this trigger). A crashed holder's lock goes
//!    with its connection. It is sent with the `BEGIN`: one round trip;
//! 2. reads the checkpoint (`saga.trigger`), the gap-safe horizon and the
//!    trigger events after the checkpoint (an index range scan of
//!    `events_saga_trigger_idx`, which holds only these events), in one
//!    statement;
//! 3. writes the `saga.due` rows they call for: an `OrderPlaced` whose saga
//!    has no stream yet gets a row (if it has none), a cancellation or an
//!    operator's retry makes the saga due now. The new sagas are leased to
//!    this process's orchestrator, as far as its run loop has room, as its
//!    own claim would lease them;
//! 4. moves the checkpoint, and commits; then hands the sagas it leased to
//!    the run loop, which drives them at once (no claim, no poll between
//!    the order and its saga), and nudges the run loop to claim the others.
//!
//! A crash anywhere before the commit leaves nothing behind, and the next
//! step reads the same events again; a crash after it leaves the sagas it
//! leased to their leases, which run out, and another orchestrator claims
//! them, as after any crash of a driver. A re-read never starts a saga twice:
//! waking is idempotent, and starting is guarded by the saga's stream
//! (`saga-{order_id}` version 1 is unique), as it always was.
//!
//! # Ahead of the horizon
//!
//! The checkpoint only moves over events whose transaction is older than
//! every transaction still in flight on the server (design decision 3,
//! `EventStore::read_all`), so it never skips one committed late. But the
//! horizon is server-wide: any transaction elsewhere on the server holds it
//! back. Since acting twice on an event is harmless, the trigger does not
//! wait for it: it acts on every committed trigger event after the
//! checkpoint, settled or not, and remembers (in memory, up to
//! [`MAX_AHEAD`]) the ones it acted on beyond the horizon; its reads leave
//! those out, so they neither take a batch's room nor get woken again, and
//! the checkpoint moves over them once they settle. Another process, or this
//! one after a restart, may wake them once more; that costs one more look
//! at the saga (and for an `OrderPlaced` whose saga exists, not even that).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use domain::OrderId;
use event_store::LocalAppends;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Claimed, Orchestrator, Result, PAUSE_AFTER_ENV};

/// Trigger events read in one step at most.
const BATCH: i64 = 1_000;

/// Most events remembered as acted on beyond the horizon. Past it (the
/// horizon held back for long by a transaction elsewhere, with thousands of
/// orders placed meanwhile), newer events wait for the horizon like any
/// gap-safe reader's.
const MAX_AHEAD: usize = 20_000;

/// The value of [`PAUSE_AFTER_ENV`] that stops the trigger for ever after it
/// wrote a step's `saga.due` rows and before it recorded its checkpoint
/// (the step's transaction still open), for crash tests.
pub const PAUSE_IN_TRIGGER: &str = "trigger";

/// Begins a step: the transaction and the trigger's lock, in one round trip.
const BEGIN_LOCKED: &str =
    "BEGIN; SELECT pg_advisory_xact_lock(hashtext('purser.saga'), hashtext('trigger'))";

/// In one statement (one snapshot, taken once the lock is held): the
/// checkpoint and the gap-safe horizon (every transaction with a smaller id
/// has finished, so its events are visible to this snapshot), in the first
/// row, which alone has a horizon; then the committed trigger events after
/// the checkpoint, but for those at the positions of `$1` (acted on
/// already), at most `$2`, in no particular order. The events' first two
/// conditions are the predicate of `events_saga_trigger_idx` (migration
/// 0008), word for word; the checkpoint comes as scalar subqueries, which
/// are constants for the index's range (as a joined row, the planner may
/// choose to filter every trigger event ever: see `backlog`); the ORDER BY
/// names the table's columns so that the index serves it. The checkpoint's
/// row always exists (migration 0008 writes it).
const READ: &str = "\
SELECT coalesce((SELECT transaction_id FROM saga.trigger), '0'::xid8)::text::bigint,
       coalesce((SELECT position FROM saga.trigger), 0),
       pg_snapshot_xmin(pg_current_snapshot())::text::bigint, NULL::text, NULL::text
UNION ALL
(SELECT transaction_id::text::bigint, position, NULL::bigint, stream_id, event_type
 FROM event_store.events
 WHERE stream_type IN ('order', 'saga')
   AND event_type IN ('OrderPlaced', 'CancellationRequested', 'SagaRetried')
   AND (transaction_id, position)
       > ((SELECT transaction_id FROM saga.trigger), (SELECT position FROM saga.trigger))
   AND position <> ALL($1::bigint[])
 ORDER BY events.transaction_id, events.position
 LIMIT $2)";

/// Orders placed: a row for each whose saga has no stream yet, unless it has
/// one (already due, or being driven). The first `$3` of them are leased to
/// orchestrator `$2` for `$4` ms, as its claim would (`Queue::claim`): the
/// trigger hands them to its own orchestrator at once. Returns the rows
/// written, and whether each was leased.
const DUE_PLACED: &str = "\
INSERT INTO saga.due (order_id, lease_owner, lease_until)
SELECT o,
       CASE WHEN n <= $3 THEN $2::uuid END,
       CASE WHEN n <= $3 THEN now() + make_interval(secs => $4::float8 / 1000) END
FROM unnest($1::uuid[]) WITH ORDINALITY AS u(o, n)
WHERE NOT EXISTS (SELECT FROM event_store.events WHERE stream_id = 'saga-' || o AND version = 1)
ON CONFLICT (order_id) DO NOTHING
RETURNING order_id, wakeups, lease_owner IS NOT NULL";

/// Sagas woken by a cancellation or an operator's retry: due now, and
/// `wakeups` bumped so that a driver holding the saga looks again
/// (`Queue::wake`, for many orders at once).
const DUE_WOKEN: &str = "\
INSERT INTO saga.due (order_id, due_at)
SELECT DISTINCT o, now() FROM unnest($1::uuid[]) AS o
ON CONFLICT (order_id) DO UPDATE
SET due_at = LEAST(saga.due.due_at, now()), wakeups = saga.due.wakeups + 1";

const SAVE: &str = "\
INSERT INTO saga.trigger (transaction_id, position) VALUES ($1::text::xid8, $2)
ON CONFLICT (only_row) DO UPDATE
SET transaction_id = excluded.transaction_id, position = excluded.position, updated_at = now()";

/// `(transaction_id, position)`: where an event sorts in the log.
type Key = (i64, i64);

/// What one step of the trigger did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerOutcome {
    /// Nothing new after the checkpoint.
    Idle,
    /// This many events were read and acted on (or had been already).
    Handled(usize),
}

/// Tails the event store's trigger events and makes their sagas due.
pub struct Trigger {
    orchestrator: Orchestrator,
    pool: PgPool,
    listener: Option<PgListener>,
    /// Appends committed in this process: a wake-up without `NOTIFY`'s
    /// round trip and interval (an order placed through this process's
    /// Command API starts its saga at once).
    local: LocalAppends,
    poll: Duration,
    /// Events after the checkpoint acted on already (beyond the horizon).
    ahead: BTreeSet<Key>,
    /// The last step read a full batch and got somewhere: step again now.
    more: bool,
    pause: bool,
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trigger")
            .field("listening", &self.listener.is_some())
            .field("poll", &self.poll)
            .field("ahead", &self.ahead.len())
            .finish_non_exhaustive()
    }
}

impl Trigger {
    /// A trigger for `orchestrator`'s database, polling every `poll_ms` of
    /// its configuration when no `LISTEN` wake-up comes.
    pub fn new(orchestrator: Orchestrator) -> Self {
        let pool = orchestrator.store().pool().clone();
        let local = orchestrator.store().local_appends();
        let poll = Duration::from_millis(orchestrator.config().poll_ms);
        let pause = std::env::var(PAUSE_AFTER_ENV).is_ok_and(|step| step == PAUSE_IN_TRIGGER);
        Trigger {
            orchestrator,
            pool,
            listener: None,
            local,
            poll,
            ahead: BTreeSet::new(),
            more: false,
            pause,
        }
    }

    /// One step (see the module's documentation): reads up to a batch of
    /// trigger events after the checkpoint, writes their `saga.due` rows and
    /// the new checkpoint in one transaction, and nudges the orchestrator.
    #[tracing::instrument(skip_all, err)]
    pub async fn step(&mut self) -> Result<TriggerOutcome> {
        // Before the transaction, whose `now()` the leases count from.
        let leased_at = Instant::now();
        let mut tx = self.pool.begin_with(BEGIN_LOCKED).await?;
        let skip: Vec<i64> = self.ahead.iter().map(|(_, position)| *position).collect();
        type Row = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let read: Vec<Row> = sqlx::query_as(READ)
            .bind(&skip)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
        let mut checkpoint: Key = (0, 0);
        let mut horizon = 0;
        let mut rows = Vec::with_capacity(read.len());
        for row in read {
            match row {
                (Some(transaction_id), Some(position), Some(xmin), _, _) => {
                    checkpoint = (transaction_id, position);
                    horizon = xmin;
                }
                (Some(transaction_id), Some(position), None, Some(stream_id), Some(event_type)) => {
                    rows.push((transaction_id, position, stream_id, event_type));
                }
                row => tracing::error!(?row, "skipping a row the trigger's read cannot give"),
            }
        }
        rows.sort_unstable_by_key(|(transaction_id, position, _, _)| (*transaction_id, *position));
        if rows.is_empty() && self.ahead.is_empty() {
            tx.commit().await?;
            self.more = false;
            return Ok(TriggerOutcome::Idle);
        }

        let mut placed = Vec::new();
        let mut woken = Vec::new();
        let mut acted_ahead = Vec::new();
        for (transaction_id, position, stream_id, event_type) in &rows {
            if *transaction_id >= horizon {
                if self.ahead.len() + acted_ahead.len() >= MAX_AHEAD {
                    // Acted on once settled.
                    continue;
                }
                acted_ahead.push((*transaction_id, *position));
            }
            let Some(order_id) = order_id_of(stream_id) else {
                tracing::error!(%stream_id, "skipping an event whose stream id names no order");
                continue;
            };
            if event_type == "OrderPlaced" {
                placed.push(order_id.as_uuid());
            } else {
                woken.push(order_id.as_uuid());
            }
        }
        // The new checkpoint: the last settled event handled, read now or
        // acted on before. Every event up to it is one of those (the read
        // leaves out only the ones acted on before, and returns all the
        // others up to its last row; all of them when the batch is not
        // full), and none can appear below it any more.
        let full = rows.len() == BATCH as usize;
        let last_read = rows.last().map(|(t, p, _, _)| (*t, *p));
        let within = |key: &Key| !full || last_read.is_some_and(|last| *key <= last);
        let settled_up_to = rows
            .iter()
            .map(|(t, p, _, _)| (*t, *p))
            .chain(self.ahead.iter().copied())
            .filter(|key| key.0 < horizon && within(key))
            .max()
            .map_or(checkpoint, |key| key.max(checkpoint));

        let mut due = 0;
        // Room in this process's run loop for the new sagas, taken now and
        // given back for those not leased (or if this step fails).
        let room = Room::take(&self.orchestrator, placed.len());
        let mut claimed = Vec::new();
        if !placed.is_empty() {
            let config = self.orchestrator.config();
            let rows: Vec<(Uuid, i64, bool)> = sqlx::query_as(DUE_PLACED)
                .bind(&placed)
                .bind(self.orchestrator.queue().owner())
                .bind(i64::try_from(room.0).unwrap_or(i64::MAX))
                .bind(config.lease_for_step_ms() as f64)
                .fetch_all(&mut *tx)
                .await?;
            for (order_id, wakeups, leased) in rows {
                if leased {
                    claimed.push(Claimed {
                        order_id: OrderId::new(order_id),
                        wakeups,
                        leased_at,
                    });
                } else {
                    due += 1;
                }
            }
        }
        if !woken.is_empty() {
            due += sqlx::query(DUE_WOKEN)
                .bind(&woken)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if self.pause && !rows.is_empty() {
            eprintln!(
                "{PAUSE_AFTER_ENV}: paused after {PAUSE_IN_TRIGGER} read {} events, \
                 before its checkpoint",
                rows.len()
            );
            tracing::warn!("paused in the trigger ({PAUSE_AFTER_ENV})");
            std::future::pending::<()>().await;
        }
        if settled_up_to != checkpoint {
            sqlx::query(SAVE)
                .bind(settled_up_to.0.to_string())
                .bind(settled_up_to.1)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;

        // A full batch that got somewhere: there may be more at once. (A
        // batch full of events left for later waits like an empty one.)
        self.more = full && (settled_up_to != checkpoint || !acted_ahead.is_empty());
        self.ahead.extend(acted_ahead);
        self.ahead = self
            .ahead
            .split_off(&(settled_up_to.0, settled_up_to.1 + 1));
        // The new sagas leased here are driven at once; the others (no
        // room) are claimed by the run loop, nudged.
        room.hand_over(claimed.clone());
        if due > 0 {
            self.orchestrator.nudge();
        }
        tracing::debug!(
            events = rows.len(),
            placed = placed.len(),
            woken = woken.len(),
            handed_over = claimed.len(),
            due,
            ahead = self.ahead.len(),
            "trigger step"
        );
        Ok(TriggerOutcome::Handled(rows.len()))
    }

    /// Runs until `shutdown`: a step whenever something was appended (in
    /// this process, or in any other: `LISTEN`), or every `poll_ms`
    /// without; failures (the database down) are retried with backoff.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        const MIN_BACKOFF: Duration = Duration::from_millis(100);
        const MAX_BACKOFF: Duration = Duration::from_secs(5);
        let mut backoff = MIN_BACKOFF;
        tracing::info!("saga trigger started");
        while !shutdown.is_cancelled() {
            // Listen before reading, so nothing committed after the read
            // goes unnoticed.
            self.ensure_listening().await;
            // What woke it so far, the step reads: seen.
            self.local.mark_seen();
            if let Some(listener) = &mut self.listener {
                while listener.next_buffered().is_some() {}
            }
            let step = tokio::select! {
                () = shutdown.cancelled() => break,
                step = self.step() => step,
            };
            match step {
                Ok(_) => {
                    backoff = MIN_BACKOFF;
                    if self.more {
                        continue;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "saga trigger failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wait_for_wake_up() => {}
            }
        }
        tracing::info!("saga trigger stopped");
        Ok(())
    }

    async fn ensure_listening(&mut self) {
        if self.listener.is_some() {
            return;
        }
        let listener = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(event_store::NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listener {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => tracing::warn!(%error, "cannot LISTEN; polling only"),
        }
    }

    /// Waits up to `poll` or until an append in this process or a
    /// notification comes.
    async fn wait_for_wake_up(&mut self) {
        let local = &mut self.local;
        let Some(listener) = &mut self.listener else {
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = local.changed() => {}
            }
            return;
        };
        let notified = tokio::select! {
            notified = tokio::time::timeout(self.poll, listener.recv()) => notified,
            () = local.changed() => return,
        };
        match notified {
            Ok(Ok(_)) => {
                // Several notifications mean the same thing: drain them.
                while listener.next_buffered().is_some() {}
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "listener failed; reconnecting on the next step");
                self.listener = None;
            }
            Err(_elapsed) => {}
        }
    }
}

/// Room taken in the orchestrator's run loop for sagas this step leases;
/// what is not handed over is given back when it is dropped.
struct Room<'a>(usize, &'a Orchestrator);

impl<'a> Room<'a> {
    fn take(orchestrator: &'a Orchestrator, want: usize) -> Room<'a> {
        Room(orchestrator.reserve(want), orchestrator)
    }

    /// Hands `claimed` (at most the room taken) to the run loop.
    fn hand_over(mut self, claimed: Vec<Claimed>) {
        self.0 -= claimed.len();
        self.1.hand_over(claimed);
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.1.give_back(self.0);
    }
}

/// `order-{uuid}` or `saga-{uuid}` -> the uuid.
fn order_id_of(stream_id: &str) -> Option<OrderId> {
    let (_, id) = stream_id.split_once('-')?;
    OrderId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_saga_stream_ids_name_their_order() {
        let id = "0191d0c2-7a3e-7cc1-9a41-3f1f0d5b2a10";
        assert_eq!(
            order_id_of(&format!("order-{id}")).map(|o| o.to_string()),
            Some(id.to_owned())
        );
        assert_eq!(
            order_id_of(&format!("saga-{id}")).map(|o| o.to_string()),
            Some(id.to_owned())
        );
        assert_eq!(order_id_of("order-nope"), None);
    }
}
