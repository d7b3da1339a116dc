//! The driver loop: claims due sagas and drives each one as far as it goes
//! now. A step on this database is one transaction, with the steps on this
//! database that follow it (`atomic`); a carrier step is recorded (with its
//! deadline), carried out (`steps`), and its outcome recorded in one
//! transaction with the steps on this database after it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::{
    next_action, step_errors, Action, OrderId, SagaCommand, SagaState, SagaStatus, Situation, Step,
    StepStatus,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::atomic::leaves_the_database;
use super::steps::StepResult;
use super::{
    Current, Orchestrator, Start, PAUSE_AFTER_ENV, PAUSE_AFTER_HAND_OVER, PAUSE_BEFORE_ENV,
};
use crate::{Claimed, Result};

/// How driving one saga ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// `completed` or `compensated`.
    Finished(SagaStatus),
    /// Stopped for an operator.
    NeedsAttention,
    /// A retry is due then.
    Waiting {
        /// When, in milliseconds since the Unix epoch.
        until_ms: i64,
    },
    /// Woken for an order that does not exist.
    NoOrder,
    /// Another orchestrator took the saga over (this one's lease ran out).
    LostLease,
}

impl Orchestrator {
    /// Claims due sagas and drives them, at most `concurrency` at a time,
    /// until `shutdown`; the sagas in hand then get a few seconds to finish
    /// their step (one cut short is repaired like a crash). While it runs,
    /// the trigger hands it the new sagas it claimed itself, in the
    /// transaction that made them due: they are driven at once, without a
    /// claim of their own.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let config = &self.inner.config;
        let poll = Duration::from_millis(config.poll_ms);
        let mut tasks = JoinSet::new();
        let mut backoff = Duration::from_millis(100);
        let (hand_off, mut handed) = mpsc::unbounded_channel();
        *self.lock_hand_off() = Some(hand_off);
        tracing::info!(owner = %self.inner.queue.owner(), "saga orchestrator started");
        // A hand-over alone does not call for a claim: the queue is looked
        // at when woken, when a saga is let go, and every `poll`.
        let mut claim = true;
        let mut next_poll = Instant::now();
        while !shutdown.is_cancelled() {
            if claim || Instant::now() >= next_poll {
                // Not taken before the claim: the trigger's hand-overs go on
                // meanwhile (together they may pass `concurrency` by a few).
                let free = self.room_left();
                let mut pause = poll;
                match self
                    .inner
                    .queue
                    .claim(free, config.lease_for_step_ms())
                    .await
                {
                    Ok(claimed) => {
                        backoff = Duration::from_millis(100);
                        self.take_room_anyway(claimed.len());
                        for claimed in claimed {
                            self.spawn_drive(&mut tasks, claimed, None);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, ?backoff, "cannot claim due sagas; retrying");
                        pause = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                next_poll = Instant::now() + pause;
            }
            claim = true;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = self.inner.wake.notified() => {}
                Some(claimed) = handed.recv() => {
                    self.pause_after_hand_over_if_asked(claimed.order_id).await;
                    let new = Current::not_started(claimed.order_id);
                    self.spawn_drive(&mut tasks, claimed, Some(new));
                    claim = false;
                }
                () = tokio::time::sleep_until(next_poll.into()) => {}
            }
        }
        // Handed over from now on: left to their leases.
        self.lock_hand_off().take();
        handed.close();
        while let Some(claimed) = handed.recv().await {
            tracing::debug!(order_id = %claimed.order_id, "stopping: a saga handed over is left to its lease");
            self.give_back(1);
        }
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "stopping with sagas in the middle of a step"
            );
            tasks.abort_all();
        }
        tracing::info!("saga orchestrator stopped");
        Ok(())
    }

    /// Drives `claimed` in a task of `tasks` (with room taken for it, given
    /// back when it ends).
    fn spawn_drive(&self, tasks: &mut JoinSet<()>, claimed: Claimed, known: Option<Current>) {
        let orchestrator = self.clone();
        tasks.spawn(async move {
            let _room = Room(&orchestrator);
            orchestrator.drive_logged(claimed, known).await;
        });
    }

    async fn drive_logged(&self, claimed: Claimed, known: Option<Current>) {
        let driven = self.drive_from(claimed, known).await;
        // The next drive reads the order afresh anyway: what this one
        // remembered would only hold memory (a finished order's for ever).
        self.forget_order(claimed.order_id);
        match driven {
            Ok(drive) => tracing::debug!(order_id = %claimed.order_id, ?drive, "saga driven"),
            Err(error) => {
                let retry = self.inner.config.backoff(1);
                tracing::warn!(order_id = %claimed.order_id, %error, ?retry, "cannot drive saga; retrying");
                let due = Utc::now() + retry;
                if let Err(error) = self.inner.queue.reschedule(claimed, due).await {
                    // The lease runs out and the saga is claimed again.
                    tracing::debug!(%error, "cannot reschedule");
                }
            }
        }
    }

    /// Drives one claimed saga as far as it goes now: until it is over,
    /// waits for a retry, or needs an operator. The saga's stream is read
    /// once, then followed by what this orchestrator appends to it (read
    /// again only after it lost a race).
    ///
    /// The lease is renewed only when less than half of it is left (and
    /// never less than a step's deadline): it only keeps other
    /// orchestrators from taking the saga over while it is driven here; the
    /// saga stream's expected version is what keeps two from recording the
    /// same step.
    pub async fn drive(&self, claimed: Claimed) -> Result<Drive> {
        self.drive_from(claimed, None).await
    }

    /// [`Orchestrator::drive`], from `known` (the saga as it is, when the
    /// caller knows: a new one handed over by the trigger) instead of its
    /// stream.
    #[tracing::instrument(skip_all, fields(order_id = %claimed.order_id), err)]
    async fn drive_from(&self, claimed: Claimed, known: Option<Current>) -> Result<Drive> {
        let order_id = claimed.order_id;
        let config = &self.inner.config;
        let lease = Duration::from_millis(config.lease_for_step_ms());
        let renew_below = (lease / 2).max(Duration::from_millis(
            config.step_timeout_ms.saturating_add(1_000),
        ));
        let mut lease_until = claimed.leased_at + lease;
        let mut lost_races = 0u32;
        let mut known = known;
        // A carrier step this drive recorded with the steps before it, to
        // carry out now.
        let mut recorded: Option<(Step, u32)> = None;
        // What this process remembers of the order may be from an earlier
        // drive: the cancellation check reads it afresh.
        self.forget_order(order_id);
        loop {
            if lease_until.saturating_duration_since(Instant::now()) < renew_below {
                let asked = Instant::now();
                if !self
                    .inner
                    .queue
                    .renew(order_id, config.lease_for_step_ms())
                    .await?
                {
                    return Ok(Drive::LostLease);
                }
                lease_until = asked + lease;
            }
            let current = match known.take() {
                Some(current) => current,
                None => self.load(order_id).await?,
            };
            let state = &current.state;
            if state.status == SagaStatus::NotStarted {
                // Made due by the trigger (or woken before its start was
                // recorded): start it from the order's own stream.
                match self.start_from_order(&current).await? {
                    Start::Started(started) => known = Some(*started),
                    Start::Moved => {}
                    Start::NoOrder => {
                        self.inner.queue.finish(claimed).await?;
                        return Ok(Drive::NoOrder);
                    }
                }
                continue;
            }
            let cancellation_requested = state.status == SagaStatus::Running
                && self.cancellation_requested(order_id).await?;
            let now_ms = Utc::now().timestamp_millis();
            let action = next_action(
                state,
                &Situation {
                    now_ms,
                    cancellation_requested,
                    max_attempts: config.max_attempts,
                },
            );
            tracing::debug!(?action, status = %state.status, "next action");
            let joins_a_batch =
                matches!(&action, Action::Attempt { step, .. } if !leaves_the_database(step));
            if !current.unsaved.is_empty() && !joins_a_batch {
                // The start, decided to commit with the first batch of
                // steps, and something else comes first (a cancellation
                // meanwhile): saved on its own, then planned again.
                match self.save_start(&current).await? {
                    Some(saved) => known = Some(saved),
                    None => lost_races += 1,
                }
                continue;
            }
            let next = match action {
                Action::Done => {
                    self.inner.queue.finish(claimed).await?;
                    return Ok(Drive::Finished(state.status));
                }
                Action::Idle => {
                    self.inner.queue.finish(claimed).await?;
                    return Ok(Drive::NeedsAttention);
                }
                Action::Wait { until_ms } => {
                    let due = DateTime::from_timestamp_millis(until_ms).unwrap_or_else(Utc::now);
                    self.inner.queue.reschedule(claimed, due).await?;
                    return Ok(Drive::Waiting { until_ms });
                }
                Action::BeginCompensation(reason) => {
                    tracing::info!(%reason, "saga compensating");
                    self.record_on(&current, SagaCommand::BeginCompensation { reason })
                        .await?
                }
                Action::Complete => {
                    let next = self.record_on(&current, SagaCommand::Complete).await?;
                    if next.is_some() {
                        self.inner.metrics.completed();
                        tracing::info!("saga completed");
                    }
                    next
                }
                Action::FinishCompensation => {
                    let next = self
                        .record_on(&current, SagaCommand::FinishCompensation)
                        .await?;
                    if next.is_some() {
                        self.inner.metrics.compensated();
                        tracing::info!("saga compensated");
                    }
                    next
                }
                Action::NeedsAttention { step, error } => {
                    tracing::error!(%step, %error, "saga needs attention");
                    let next = self
                        .record_on(&current, SagaCommand::NeedAttention { step, error })
                        .await?;
                    if next.is_some() {
                        self.inner.metrics.needs_attention();
                    }
                    next
                }
                Action::TimedOut { step, attempt } => {
                    let retry_at_ms = now_ms + millis(config.backoff(attempt));
                    tracing::warn!(%step, attempt, "step passed its deadline without an outcome");
                    self.record_on(
                        &current,
                        SagaCommand::FailStep {
                            step,
                            attempt,
                            error: step_errors::TIMEOUT.to_owned(),
                            retry_at_ms,
                        },
                    )
                    .await?
                }
                Action::Attempt { step, attempt } => {
                    if let Some(hook) = &self.inner.before_step {
                        if hook(&step).await {
                            // Held up: the order may have moved meanwhile.
                            self.forget_order(order_id);
                            continue;
                        }
                    }
                    let deadline_ms = now_ms + config.step_timeout_ms as i64;
                    if leaves_the_database(&step) {
                        // Recorded before it is carried out: a crash after
                        // the call is repaired by calling again under the
                        // same key.
                        let command = SagaCommand::StartStep {
                            step: step.clone(),
                            attempt,
                            deadline_ms,
                        };
                        match self.record_on(&current, command).await? {
                            Some(started) => {
                                self.pause_before_if_asked(order_id, &step).await;
                                self.run_step(started, step, attempt, deadline_ms).await?
                            }
                            None => None,
                        }
                    } else {
                        self.step_in_one_transaction(
                            &current,
                            step,
                            attempt,
                            deadline_ms,
                            cancellation_requested,
                        )
                        .await?
                    }
                }
                Action::Resume {
                    step,
                    attempt,
                    deadline_ms,
                } => {
                    if recorded.take() == Some((step.clone(), attempt)) {
                        self.pause_before_if_asked(order_id, &step).await;
                    } else {
                        // A call to the carrier cut short (or, from an
                        // earlier version, any step recorded before it was
                        // carried out): again, under the same key.
                        tracing::info!(%step, attempt, "resuming a step cut short");
                    }
                    self.run_step(current, step, attempt, deadline_ms).await?
                }
            };
            recorded = next
                .as_ref()
                .and_then(|next| carrier_in_flight(&next.state));
            if next.is_some() {
                lost_races = 0;
                known = next;
            } else {
                // The saga moved under us (another orchestrator): look again,
                // a few times, then leave it for later.
                lost_races += 1;
                if lost_races >= 3 {
                    let due = Utc::now() + config.backoff(1);
                    self.inner.queue.reschedule(claimed, due).await?;
                    return Ok(Drive::Waiting {
                        until_ms: due.timestamp_millis(),
                    });
                }
            }
        }
    }

    /// One attempt of `step` recorded before it is carried out (the
    /// carrier's, or one resumed), within its deadline, and its outcome
    /// recorded, with the steps on this database after it. `None` when the
    /// saga moved meanwhile.
    async fn run_step(
        &self,
        current: Current,
        step: Step,
        attempt: u32,
        deadline_ms: i64,
    ) -> Result<Option<Current>> {
        let span = super::step_span(&current, &step, attempt);
        self.run_step_traced(current, step, attempt, deadline_ms)
            .instrument(span)
            .await
    }

    async fn run_step_traced(
        &self,
        current: Current,
        step: Step,
        attempt: u32,
        deadline_ms: i64,
    ) -> Result<Option<Current>> {
        let order_id = current.order_id;
        let started = Instant::now();
        let left = u64::try_from(deadline_ms - Utc::now().timestamp_millis()).unwrap_or(0);
        let result = match tokio::time::timeout(
            Duration::from_millis(left),
            self.carry_out(&current.state, &step, &current.metadata),
        )
        .await
        {
            Ok(result) => result,
            Err(_elapsed) => StepResult::Transient {
                code: step_errors::TIMEOUT,
                detail: format!(
                    "no answer before the step's deadline ({} ms)",
                    self.inner.config.step_timeout_ms
                ),
            },
        };
        let latency = started.elapsed();
        self.pause_if_asked(order_id, &step).await;
        let metrics = &self.inner.metrics;
        let command = match result {
            StepResult::Done { tracking_number } => {
                metrics.step(step.name(), "succeeded", latency);
                tracing::debug!(%step, attempt, ?latency, "step succeeded");
                SagaCommand::SucceedStep {
                    step,
                    tracking_number,
                }
            }
            StepResult::Refused { code, error } => {
                metrics.step(step.name(), "refused", latency);
                tracing::info!(%step, attempt, %code, %error, "step refused");
                if step.is_compensation() || step.refusal_reason().is_none() {
                    metrics.needs_attention();
                }
                SagaCommand::RefuseStep { step, code, error }
            }
            StepResult::Transient { code, detail } => {
                metrics.step(step.name(), "failed", latency);
                let retry = self.inner.config.backoff(attempt);
                // The detail (a driver's message...) stays in the log; the
                // saga records the code, which is what the API shows.
                tracing::warn!(%step, attempt, code, error = %detail, ?retry, "step failed; retrying");
                SagaCommand::FailStep {
                    step,
                    attempt,
                    error: code.to_owned(),
                    retry_at_ms: Utc::now().timestamp_millis() + millis(retry),
                }
            }
        };
        // A cancellation asked for during the call is not missed: marking
        // the order shipped, decided on the order as remembered, meets it
        // in the order's version and is refused (and compensated).
        let cancellation_requested = current.state.status == SagaStatus::Running
            && self.cancellation_requested(order_id).await?;
        self.record_with_next_steps(&current, command, cancellation_requested)
            .await
    }

    /// Whether the customer asked to cancel the order, on its state as this
    /// process remembers it: each step's commit on the order leaves it
    /// there, and it is read afresh when it is not (at the start of a
    /// drive, after a hold). A request that comes in meanwhile is one that
    /// came in just after the step: the next step on the order meets it in
    /// the order's version (its append conflicts, and it is decided again
    /// on the order as it is), and the check after that sees it.
    pub(super) async fn cancellation_requested(&self, order_id: OrderId) -> Result<bool> {
        let id = order_id.to_string();
        let orders = &self.inner.orders;
        let loaded = match orders.peek(&id) {
            Some(loaded) => loaded,
            None => {
                let loaded = orders.repository().load(&id).await?;
                orders.remember(&id, loaded.clone());
                loaded
            }
        };
        Ok(loaded.state.cancellation_requested.is_some())
    }

    fn forget_order(&self, order_id: OrderId) {
        self.inner.orders.forget(&order_id.to_string());
    }

    /// With [`PAUSE_AFTER_ENV`] naming `step`, stands still for ever: a
    /// step on this database inside its transaction, before the commit; a
    /// carrier step after the call, before its outcome is recorded.
    pub(super) async fn pause_if_asked(&self, order_id: OrderId, step: &Step) {
        if self.inner.pause_after.as_deref() == Some(step.name()) {
            eprintln!("{PAUSE_AFTER_ENV}: paused after {step} of order {order_id}");
            tracing::warn!(%order_id, %step, "paused ({PAUSE_AFTER_ENV})");
            std::future::pending::<()>().await;
        }
    }

    /// With [`PAUSE_AFTER_ENV`] set to [`PAUSE_AFTER_HAND_OVER`], stands
    /// still for ever (the whole run loop) once the trigger has handed it a
    /// saga it leased, before the saga is driven: the lease is committed,
    /// nothing of the saga is.
    async fn pause_after_hand_over_if_asked(&self, order_id: OrderId) {
        if self.inner.pause_after.as_deref() == Some(PAUSE_AFTER_HAND_OVER) {
            eprintln!(
                "{PAUSE_AFTER_ENV}: paused after {PAUSE_AFTER_HAND_OVER} of order {order_id}"
            );
            tracing::warn!(%order_id, "paused after the hand-over ({PAUSE_AFTER_ENV})");
            std::future::pending::<()>().await;
        }
    }

    /// With [`PAUSE_BEFORE_ENV`] naming `step` (a carrier step), stands still
    /// for ever once its attempt is recorded, before the carrier is called.
    async fn pause_before_if_asked(&self, order_id: OrderId, step: &Step) {
        if self.inner.pause_before.as_deref() == Some(step.name()) {
            eprintln!("{PAUSE_BEFORE_ENV}: paused before {step} of order {order_id}");
            tracing::warn!(%order_id, %step, "paused ({PAUSE_BEFORE_ENV})");
            std::future::pending::<()>().await;
        }
    }
}

/// The carrier step in flight in `state`: one a batch just recorded (any
/// other is settled before anything is planned).
fn carrier_in_flight(state: &SagaState) -> Option<(Step, u32)> {
    state
        .steps
        .iter()
        .find(|record| record.status == StepStatus::Running && leaves_the_database(&record.step))
        .map(|record| (record.step.clone(), record.attempts))
}

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The room one saga driven takes in the run loop, given back when it ends
/// (or its task is aborted).
struct Room<'a>(&'a Orchestrator);

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.0.give_back(1);
    }
}
