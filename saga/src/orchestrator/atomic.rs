//! Steps that are commands on this database, in one transaction (design
//! decision 11): each step's events and its record in the saga's stream
//! (`StepStarted` and its outcome) commit together or not at all. No
//! idempotency key is needed: the saga's stream, appended at the version
//! the steps were planned on, lets exactly one orchestrator's transaction
//! commit, and a crash before the commit leaves nothing of it behind, so
//! it is simply planned again.
//!
//! # Several steps, one commit
//!
//! When the saga's policy, on the state the prepared steps leave, asks for
//! another step on this database, that step joins the same transaction
//! (at most [`MAX_BATCH`]): a saga's reservations, its marks and its charge
//! commit once, with the carrier's attempt after them (the driver calls the
//! carrier once it commits), and the carrier's outcome commits with the
//! steps after it (mark shipped, commit the stock, complete). Every step
//! keeps its own `StepStarted` and outcome in the saga's stream. A batch
//! takes the turn of a later step's aggregate only if it is free right away
//! (or its stripe is the batch's already): sagas whose lines come in
//! different orders never wait for each other. A batch whose first step
//! had to wait for its aggregate's turn (a hot item) is that step alone, so
//! that the turn is handed on at once. It ends before a step that
//! does not come out cleanly (its turn taken, a failure, a refusal or no-op
//! it cannot settle yet), after a refusal (the driver goes on to
//! compensate) and after a step `PURSER_SAGA_PAUSE_AFTER` names; with a
//! `BeforeStep` hook, after its first step (the hook is called by the
//! driver before each step, with the ones before it committed).
//!
//! Every step is decided before the transaction begins, and its appends
//! are made after: the transaction id is assigned at its first write, and
//! every version it appends at must have committed before that (see
//! `event_store::Appends`). A later step whose append is rejected (the
//! version moved, the database refused it) aborts the transaction, which
//! is written again without it and the steps after it; the driver then
//! plans that step anew. Only the first step's own failure is the
//! attempt's: a version conflict decides it again on a fresh load (at most
//! [`COMMAND_RETRIES`] times); a transient failure (the database refusing
//! its events, the step's deadline) commits `StepStarted` and `StepFailed`
//! alone, so the attempt counts and its retry time is persisted.

use std::time::{Duration, Instant};

use chrono::Utc;
use domain::{
    next_action, step_errors, Action, Aggregate, FulfilmentSaga, SagaCommand, SagaEvent, SagaState,
    Situation, Step,
};
use event_store::{
    Appends, ExpectedVersion, Metadata, NewEvent, StreamAppend, StreamId, StreamsRejected,
};
use tracing::Instrument as _;

use super::commands::{store_error_code, Append, Decided, Held, Known, Remembered, Workspace};
use super::steps::StepResult;
use super::{Current, Orchestrator, COMMAND_RETRIES, STEP_SCOPE};
use crate::Result;

/// Most steps on this database in one transaction.
const MAX_BATCH: usize = 16;

/// Whether `step` leaves the database (the carrier): only those keep the
/// record-before-act protocol.
pub(super) fn leaves_the_database(step: &Step) -> bool {
    matches!(step, Step::Ship | Step::CancelShipment)
}

/// One part of a batch: a step with its record, or a record of the saga's
/// alone (a carrier's outcome, the saga's completion).
struct Prepared {
    /// The step and what it came to.
    step: Option<(Step, StepResult)>,
    /// The saga's record without a step.
    record: Option<SagaCommand>,
    saga_events: Vec<SagaEvent>,
    /// The saga once `saga_events` are appended.
    saga_after: SagaState,
    append: Option<Append>,
    /// The aggregate's state once `append` commits.
    after: Option<(StreamId, String, Known)>,
}

/// Steps prepared for one transaction, and the aggregates' turns they hold
/// until it commits.
struct Batch<'a> {
    /// The saga as committed: where the batch's saga append goes.
    base: Current,
    held: Vec<Held<'a>>,
    prepared: Vec<Prepared>,
    /// Its first step waited for its aggregate's turn.
    contended: bool,
}

impl<'a> Batch<'a> {
    fn new(base: &Current) -> Self {
        Batch {
            base: base.clone(),
            held: Vec::new(),
            prepared: Vec::new(),
            contended: false,
        }
    }

    /// The saga as the prepared steps leave it.
    fn state(&self) -> &SagaState {
        self.prepared
            .last()
            .map_or(&self.base.state, |prepared| &prepared.saga_after)
    }

    fn steps(&self) -> usize {
        self.prepared.iter().filter(|p| p.step.is_some()).count()
    }

    /// The prepared steps that append, in the order of their streams' ids
    /// (a stream's own appends in version order): two batches that write
    /// the same streams lock them in the same order, and never wait for
    /// each other in a cycle.
    fn writes(&self) -> Vec<usize> {
        let mut writes: Vec<usize> = (0..self.prepared.len())
            .filter(|&i| self.prepared[i].append.is_some())
            .collect();
        writes.sort_by_key(|&i| {
            self.prepared[i]
                .append
                .as_ref()
                .map(|append| append.stream.as_str().to_owned())
        });
        writes
    }

    /// What the batch appends to the saga's stream: the saga's start first,
    /// when it commits with the batch, then what each step records.
    fn saga_events(&self) -> Vec<NewEvent> {
        self.base
            .unsaved
            .iter()
            .chain(
                self.prepared
                    .iter()
                    .flat_map(|prepared| &prepared.saga_events),
            )
            .map(NewEvent::from_domain)
            .collect()
    }

    /// What was remembered of `stream` proved stale: not to be put back.
    fn stale(&mut self, stream: &StreamId) {
        if let Some(held) = self.held_turn(stream) {
            held.known = None;
        }
    }
}

impl<'a> Workspace<'a> for Batch<'a> {
    fn latest(&self, stream: &StreamId) -> Option<&Known> {
        self.prepared.iter().rev().find_map(|prepared| {
            prepared
                .after
                .as_ref()
                .filter(|(of, _, _)| of == stream)
                .map(|(_, _, known)| known)
        })
    }

    fn held_turn(&mut self, stream: &StreamId) -> Option<&mut Held<'a>> {
        self.held.iter_mut().find(|held| &held.stream == stream)
    }

    fn holds_stripe(&self, stream_type: &str, stripe: usize) -> bool {
        self.held
            .iter()
            .any(|held| held.stream.stream_type() == stream_type && held.stripe == stripe)
    }

    fn hold(&mut self, held: Held<'a>) {
        self.held.push(held);
    }

    fn contended(&mut self) {
        self.contended = true;
    }

    fn starts_the_saga(&self) -> bool {
        !self.base.unsaved.is_empty()
    }
}

/// How preparing a step for a batch went.
enum Added {
    Yes,
    /// Not in this batch (its aggregate's turn taken, or a decision the
    /// next transaction settles).
    No,
    /// The saga is not where the step was planned: it moved.
    LostRace,
    /// A transient failure: code recorded, detail logged.
    Failed {
        code: &'static str,
        detail: String,
    },
}

/// How writing a batch went.
enum Written {
    /// Every append made, the transaction open, to commit.
    Open(Appends),
    /// Every append made and committed (one statement of its own).
    Committed,
    /// The saga moved meanwhile: nothing written.
    LostRace,
    /// The first step's append was rejected: nothing written.
    FirstFailed(event_store::Error),
}

/// One stream's appends in a batch written at once: the steps' (their
/// indexes in the batch) one after the other.
struct Merged<'b> {
    stream: &'b StreamId,
    expected: u64,
    events: Vec<(&'b NewEvent, &'b Metadata)>,
    steps: Vec<usize>,
}

/// How writing a batch in one statement went.
enum AtOnce {
    Written(Written),
    /// A later step's stream moved on: the batch, without it, to write.
    Again,
    /// The statement failed as a whole: to write one append at a time.
    Failed(String),
}

/// How an attempt's transaction was prepared.
enum Ready {
    Open(Appends),
    Committed,
    LostRace,
    Failed { code: &'static str, detail: String },
}

impl Orchestrator {
    /// Attempt `attempt` of `step` (a command on this database) in one
    /// transaction, with the steps on this database that follow it, within
    /// the step's deadline. `None` when the saga moved meanwhile (another
    /// orchestrator recorded something first): nothing of this attempt
    /// committed.
    pub(super) async fn step_in_one_transaction(
        &self,
        current: &Current,
        step: Step,
        attempt: u32,
        deadline_ms: i64,
        cancellation_requested: bool,
    ) -> Result<Option<Current>> {
        let span = super::step_span(current, &step, attempt);
        self.step_traced(current, step, attempt, deadline_ms, cancellation_requested)
            .instrument(span)
            .await
    }

    async fn step_traced(
        &self,
        current: &Current,
        step: Step,
        attempt: u32,
        deadline_ms: i64,
        cancellation_requested: bool,
    ) -> Result<Option<Current>> {
        let started = Instant::now();
        let mut batch = Batch::new(current);
        let attempted = self
            .prepare_first(
                &mut batch,
                &step,
                attempt,
                deadline_ms,
                cancellation_requested,
            )
            .await;
        let (code, detail) = match attempted {
            Ok(Ready::Open(appends)) => {
                self.pause_in(&batch).await;
                match appends.commit().await {
                    Ok(()) => return Ok(Some(self.written(&batch, started))),
                    // Committed or not: the saga's stream tells (the record
                    // of the failure below conflicts if it did).
                    Err(error) => (store_error_code(&error), error.to_string()),
                }
            }
            Ok(Ready::Committed) => return Ok(Some(self.written(&batch, started))),
            Ok(Ready::LostRace) => return Ok(None),
            Ok(Ready::Failed { code, detail }) => (code, detail),
            Err(error) => (step_errors::UNAVAILABLE, error.to_string()),
        };
        // Nothing of the command committed: the attempt is recorded as
        // failed, with its retry time.
        // The detail (a driver's message...) stays in the log; the saga
        // records the code, which is what the API shows.
        let retry = self.inner.config.backoff(attempt);
        tracing::warn!(%step, attempt, code, error = %detail, ?retry, "step failed; retrying");
        let result = StepResult::Transient { code, detail };
        let start = SagaCommand::StartStep {
            step: step.clone(),
            attempt,
            deadline_ms,
        };
        let Some(mut events) = decide_saga(&current.state, &start) else {
            return Ok(None);
        };
        let running = FulfilmentSaga::fold(current.state.clone(), &events);
        let failed = SagaCommand::FailStep {
            step: step.clone(),
            attempt,
            error: code.to_owned(),
            retry_at_ms: Utc::now().timestamp_millis() + super::drive::millis(retry),
        };
        let Some(step_failed) = decide_saga(&running, &failed) else {
            return Ok(None);
        };
        events.extend(step_failed);
        let Some(next) = self.append_saga_alone(current, &events).await? else {
            return Ok(None);
        };
        self.count_outcome(&step, &result, started.elapsed());
        Ok(Some(next))
    }

    /// Records `command` (a carrier's outcome) in the saga's stream, in
    /// one transaction with the steps on this database that follow it.
    /// `None` when the saga moved meanwhile.
    pub(super) async fn record_with_next_steps(
        &self,
        current: &Current,
        command: SagaCommand,
        cancellation_requested: bool,
    ) -> Result<Option<Current>> {
        let started = Instant::now();
        let mut batch = Batch::new(current);
        if !self.add_record(&mut batch, command) {
            return Ok(None);
        }
        self.extend(&mut batch, cancellation_requested).await;
        if batch.steps() == 0 {
            // Records of the saga's alone: one append, no transaction.
            let events: Vec<SagaEvent> = batch
                .prepared
                .iter()
                .flat_map(|prepared| prepared.saga_events.iter().cloned())
                .collect();
            let appended = self.append_saga_alone(current, &events).await?;
            return Ok(appended.map(|_| self.committed(&batch, started)));
        }
        match self.write(&mut batch).await? {
            Written::Open(appends) => {
                self.pause_in(&batch).await;
                appends.commit().await?;
                Ok(Some(self.written(&batch, started)))
            }
            Written::Committed => Ok(Some(self.written(&batch, started))),
            Written::LostRace => Ok(None),
            Written::FirstFailed(error) => Err(error.into()),
        }
    }

    /// Prepares `step` (deciding it again after each conflict of its own)
    /// and the steps after it, and writes them, leaving the transaction
    /// open. The step is decided within its deadline, and the batch
    /// written within a step's timeout from then (a `BeforeStep` hook may
    /// hold a batch up between the two).
    async fn prepare_first<'a>(
        &'a self,
        batch: &mut Batch<'a>,
        step: &Step,
        attempt: u32,
        deadline_ms: i64,
        cancellation_requested: bool,
    ) -> Result<Ready> {
        let timeout = self.inner.config.step_timeout_ms;
        let timed_out = || Ready::Failed {
            code: step_errors::TIMEOUT,
            detail: format!("no answer before the step's deadline ({timeout} ms)"),
        };
        for _ in 0..=COMMAND_RETRIES {
            batch.prepared.clear();
            let left = u64::try_from(deadline_ms - Utc::now().timestamp_millis()).unwrap_or(0);
            let prepared = tokio::time::timeout(
                Duration::from_millis(left),
                self.prepare_step(batch, step, attempt, deadline_ms, true),
            )
            .await;
            match prepared {
                Ok(Added::Yes) => {}
                Ok(Added::LostRace) => return Ok(Ready::LostRace),
                Ok(Added::Failed { code, detail }) => return Ok(Ready::Failed { code, detail }),
                Ok(Added::No) => {
                    return Ok(Ready::Failed {
                        code: step_errors::INTERNAL_ERROR,
                        detail: format!("{step} could not be decided"),
                    })
                }
                Err(_elapsed) => return Ok(timed_out()),
            }
            self.extend(batch, cancellation_requested).await;
            let written =
                tokio::time::timeout(Duration::from_millis(timeout), self.write(batch)).await;
            match written {
                Ok(written) => match written? {
                    Written::Open(appends) => return Ok(Ready::Open(appends)),
                    Written::Committed => return Ok(Ready::Committed),
                    Written::LostRace => return Ok(Ready::LostRace),
                    Written::FirstFailed(event_store::Error::Conflict { .. }) => {
                        tracing::debug!(%step, "the step's aggregate moved; deciding again");
                        self.inner.metrics.conflict_retried();
                    }
                    Written::FirstFailed(error) => {
                        return Ok(Ready::Failed {
                            code: store_error_code(&error),
                            detail: error.to_string(),
                        })
                    }
                },
                Err(_elapsed) => return Ok(timed_out()),
            }
        }
        Ok(Ready::Failed {
            code: step_errors::CONCURRENCY_CONFLICT,
            detail: format!(
                "the step's aggregate moved {} times in a row",
                COMMAND_RETRIES + 1
            ),
        })
    }

    /// Adds to the batch what the saga's policy asks for next on the state
    /// it leaves, while that is a step on this database that comes out
    /// cleanly (or the saga's completion, which ends it).
    async fn extend<'a>(&'a self, batch: &mut Batch<'a>, cancellation_requested: bool) {
        let config = &self.inner.config;
        while batch.steps() < MAX_BATCH {
            let ended = batch.prepared.last().is_some_and(|last| {
                last.step.as_ref().is_some_and(|(step, result)| {
                    matches!(result, StepResult::Refused { .. }) || self.pauses_after(step)
                })
            });
            if ended {
                return;
            }
            let now_ms = Utc::now().timestamp_millis();
            let situation = Situation {
                now_ms,
                cancellation_requested,
                max_attempts: config.max_attempts,
            };
            match next_action(batch.state(), &situation) {
                // A `BeforeStep` hook sees the saga with every step before
                // it committed, and may hold it up for long: holding the
                // batch's aggregates' turns meanwhile would hold up every
                // other saga on them. With one, each step is its own
                // transaction, after its hook.
                Action::Attempt { .. } if self.inner.before_step.is_some() => return,
                Action::Attempt { step, attempt } if leaves_the_database(&step) => {
                    // Recorded before it is carried out: the driver calls
                    // the carrier once this commits.
                    let deadline_ms = now_ms + config.step_timeout_ms as i64;
                    let start = SagaCommand::StartStep {
                        step,
                        attempt,
                        deadline_ms,
                    };
                    self.add_record(batch, start);
                    return;
                }
                // Other sagas wait for the first step's aggregate (a hot
                // item): it is handed on as soon as that step commits.
                Action::Attempt { .. } if batch.contended => return,
                Action::Attempt { step, attempt } => {
                    let deadline_ms = now_ms + config.step_timeout_ms as i64;
                    // A span of its own for each step of a batch (its
                    // decision: the batch's write and commit are the first
                    // step's), so that what its command causes joins its
                    // trace.
                    let span = super::step_span(&batch.base, &step, attempt);
                    let added = tokio::time::timeout(
                        Duration::from_millis(config.step_timeout_ms),
                        self.prepare_step(batch, &step, attempt, deadline_ms, false)
                            .instrument(span),
                    )
                    .await;
                    if !matches!(added, Ok(Added::Yes)) {
                        return;
                    }
                }
                Action::Complete => {
                    self.add_record(batch, SagaCommand::Complete);
                    return;
                }
                Action::FinishCompensation => {
                    self.add_record(batch, SagaCommand::FinishCompensation);
                    return;
                }
                _ => return,
            }
        }
    }

    /// Decides attempt `attempt` of `step` on the state the batch leaves
    /// and adds it, with its record. Its aggregate's turn is waited for
    /// when `wait` (the batch's first step), else taken only if free.
    async fn prepare_step<'a>(
        &'a self,
        batch: &mut Batch<'a>,
        step: &Step,
        attempt: u32,
        deadline_ms: i64,
        wait: bool,
    ) -> Added {
        let start = SagaCommand::StartStep {
            step: step.clone(),
            attempt,
            deadline_ms,
        };
        let Some(step_started) = decide_saga(batch.state(), &start) else {
            return Added::LostRace;
        };
        let running = FulfilmentSaga::fold(batch.state().clone(), &step_started);
        let metadata = self.command_metadata(&batch.base, step);
        let (result, append, after) = match self
            .decide_step(batch, &running, step, &metadata, wait)
            .await
        {
            Decided::Busy | Decided::Unsettled => return Added::No,
            Decided::Step {
                result: StepResult::Transient { code, detail },
                ..
            } => return Added::Failed { code, detail },
            Decided::Step {
                result,
                append,
                after,
            } => (result, append, after),
        };
        let outcome = match &result {
            StepResult::Done { tracking_number } => SagaCommand::SucceedStep {
                step: step.clone(),
                tracking_number: tracking_number.clone(),
            },
            StepResult::Refused { code, error } => SagaCommand::RefuseStep {
                step: step.clone(),
                code: code.clone(),
                error: error.clone(),
            },
            StepResult::Transient { .. } => unreachable!("returned above"),
        };
        let Some(step_ended) = decide_saga(&running, &outcome) else {
            return Added::LostRace;
        };
        let saga_after = FulfilmentSaga::fold(running, &step_ended);
        let mut saga_events = step_started;
        saga_events.extend(step_ended);
        batch.prepared.push(Prepared {
            step: Some((step.clone(), result)),
            record: None,
            saga_events,
            saga_after,
            append,
            after,
        });
        Added::Yes
    }

    /// Adds a record of the saga's alone; `false` when the saga refuses it
    /// (it moved).
    fn add_record(&self, batch: &mut Batch<'_>, command: SagaCommand) -> bool {
        let Some(saga_events) = decide_saga(batch.state(), &command) else {
            return false;
        };
        let saga_after = FulfilmentSaga::fold(batch.state().clone(), &saga_events);
        batch.prepared.push(Prepared {
            step: None,
            record: Some(command),
            saga_events,
            saga_after,
            append: None,
            after: None,
        });
        true
    }

    /// Writes the batch: every append in one statement, committed as it
    /// ends ([`event_store::EventStore::append_to_streams`]), or, when a pause before the
    /// commit is asked for, in a transaction left open
    /// ([`Appends::append_to_streams`]); a stream's appends of several
    /// steps, one after the other, as one. A later step's stream
    /// found moved on: it is written again without that step and the ones
    /// after it. The statement failing as a whole (a concurrent writer in
    /// flight on one of the versions, the database refusing the events):
    /// written again one append at a time, which tells whose append it
    /// was.
    async fn write(&self, batch: &mut Batch<'_>) -> Result<Written> {
        loop {
            match self.write_at_once(batch).await? {
                AtOnce::Written(written) => return Ok(written),
                AtOnce::Again => {}
                AtOnce::Failed(error) => {
                    tracing::debug!(%error, "the batch's statement failed; writing its appends one at a time");
                    return self.write_one_by_one(batch).await;
                }
            }
        }
    }

    async fn write_at_once(&self, batch: &mut Batch<'_>) -> Result<AtOnce> {
        let saga_stream = StreamId::of::<FulfilmentSaga>(batch.base.order_id);
        let saga_metadata = self.saga_metadata(&batch.base);
        let writes = batch.writes();
        // Each stream once: its steps' appends, one after the other.
        let mut merged: Vec<Merged<'_>> = Vec::new();
        for &i in &writes {
            let Some(append) = &batch.prepared[i].append else {
                continue;
            };
            let events = append.events.iter().map(|event| (event, &append.metadata));
            match merged.last_mut() {
                Some(last) if last.stream == &append.stream => {
                    if last.expected + last.events.len() as u64 != append.expected {
                        // Not one after the other: one at a time tells.
                        return Ok(AtOnce::Failed(
                            "two appends to one stream with a gap".to_owned(),
                        ));
                    }
                    last.events.extend(events);
                    last.steps.push(i);
                }
                _ => merged.push(Merged {
                    stream: &append.stream,
                    expected: append.expected,
                    events: events.collect(),
                    steps: vec![i],
                }),
            }
        }
        let saga_events = batch.saga_events();
        let saga_events: Vec<(&NewEvent, &Metadata)> = saga_events
            .iter()
            .map(|event| (event, &saga_metadata))
            .collect();
        let mut streams: Vec<StreamAppend<'_>> = merged
            .iter()
            .map(|merged| StreamAppend {
                stream: merged.stream,
                expected: merged.expected,
                events: &merged.events,
            })
            .collect();
        streams.push(StreamAppend {
            stream: &saga_stream,
            expected: batch.base.version,
            events: &saga_events,
        });
        let saga_item = merged.len();
        // A statement of its own commits as it ends: one round trip holding
        // the batch's aggregates (a hot item), where a transaction takes
        // three. In a transaction only to stand still before its commit
        // (`PURSER_SAGA_PAUSE_AFTER`).
        let mut appends = match self.inner.pause_after {
            Some(_) => Some(self.inner.store.begin().await?),
            None => None,
        };
        let appended = match appends.as_mut() {
            Some(appends) => appends.append_to_streams(&streams).await,
            None => self.inner.store.append_to_streams(&streams).await,
        };
        let rejected = match appended {
            Ok(appended) => {
                let positions: Vec<(Vec<usize>, i64)> = merged
                    .iter()
                    .zip(&appended)
                    .map(|(merged, appended)| (merged.steps.clone(), appended.position))
                    .collect();
                for (steps, position) in positions {
                    for i in steps {
                        if let Some((_, _, known)) = &mut batch.prepared[i].after {
                            known.state.set_position(position);
                        }
                    }
                }
                return Ok(AtOnce::Written(match appends {
                    Some(appends) => Written::Open(appends),
                    None => Written::Committed,
                }));
            }
            Err(StreamsRejected::Failed(error)) => return Ok(AtOnce::Failed(error.to_string())),
            Err(StreamsRejected::Conflicts(conflicts)) => conflicts,
        };
        drop(appends);
        if rejected.iter().any(|(item, _)| *item == saga_item) {
            return Ok(AtOnce::Written(Written::LostRace));
        }
        // The earliest step whose stream moved on, and every one after it,
        // are left out; what each moved stream remembered is stale.
        let mut first: Option<(usize, event_store::Error)> = None;
        let mut stale = Vec::new();
        for (item, error) in rejected {
            let Some(merged) = merged.get(item) else {
                continue;
            };
            stale.push(merged.stream.clone());
            let i = merged.steps.iter().copied().min().unwrap_or(usize::MAX);
            if first.as_ref().is_none_or(|(earliest, _)| i < *earliest) {
                first = Some((i, error));
            }
        }
        for stream in &stale {
            batch.stale(stream);
        }
        let Some((i, error)) = first else {
            return Ok(AtOnce::Failed("a rejection without its stream".to_owned()));
        };
        if i == 0 {
            return Ok(AtOnce::Written(Written::FirstFailed(error)));
        }
        self.inner.metrics.conflict_retried();
        tracing::debug!(%error, at = i, "a later step of the batch was rejected; writing the ones before it");
        batch.prepared.truncate(i);
        Ok(AtOnce::Again)
    }

    /// [`Orchestrator::write`] one append at a time: the steps' appends,
    /// then the saga's. A later step's rejected append aborts it; it is
    /// written again without that step and the ones after it.
    async fn write_one_by_one(&self, batch: &mut Batch<'_>) -> Result<Written> {
        let saga_stream = StreamId::of::<FulfilmentSaga>(batch.base.order_id);
        let saga_metadata = self.saga_metadata(&batch.base);
        loop {
            let writes = batch.writes();
            let mut appends = self.inner.store.begin().await?;
            let mut rejected = None;
            for i in writes {
                let prepared = &mut batch.prepared[i];
                let Some(append) = &prepared.append else {
                    continue;
                };
                match appends
                    .append(
                        &append.stream,
                        ExpectedVersion::Exact(append.expected),
                        &append.events,
                        &append.metadata,
                    )
                    .await
                {
                    Ok(appended) => {
                        if let Some((_, _, known)) = &mut prepared.after {
                            known.state.set_position(appended.position);
                        }
                    }
                    Err(error) => {
                        rejected = Some((i, append.stream.clone(), error));
                        break;
                    }
                }
            }
            // `Appends::append` rolled the transaction back.
            if let Some((i, stream, error)) = rejected {
                let conflict = matches!(error, event_store::Error::Conflict { .. });
                if conflict {
                    batch.stale(&stream);
                }
                if i == 0 {
                    return Ok(Written::FirstFailed(error));
                }
                if conflict {
                    self.inner.metrics.conflict_retried();
                }
                tracing::debug!(%error, at = i, "a later step of the batch was rejected; writing the ones before it");
                batch.prepared.truncate(i);
                continue;
            }
            let saga_events = batch.saga_events();
            return match appends
                .append(
                    &saga_stream,
                    ExpectedVersion::Exact(batch.base.version),
                    &saga_events,
                    &saga_metadata,
                )
                .await
            {
                Ok(_) => Ok(Written::Open(appends)),
                Err(event_store::Error::Conflict { .. }) => Ok(Written::LostRace),
                Err(error) => Ok(Written::FirstFailed(error)),
            };
        }
    }

    /// With [`super::PAUSE_AFTER_ENV`] naming one of the batch's steps,
    /// stands still for ever before its commit.
    async fn pause_in(&self, batch: &Batch<'_>) {
        for (step, _) in batch.prepared.iter().filter_map(|p| p.step.as_ref()) {
            self.pause_if_asked(batch.base.order_id, step).await;
        }
    }

    fn pauses_after(&self, step: &Step) -> bool {
        self.inner.pause_after.as_deref() == Some(step.name())
    }

    /// After the commit of the batch's transaction (the saga's start with
    /// it, if unsaved): [`Orchestrator::committed`].
    fn written(&self, batch: &Batch<'_>, started: Instant) -> Current {
        if !batch.base.unsaved.is_empty() {
            self.started(batch.base.order_id);
        }
        self.committed(batch, started)
    }

    /// After the batch's commit: what its appends left is remembered (and
    /// what it took and did not change is put back), its outcomes counted;
    /// the saga as it now is.
    fn committed(&self, batch: &Batch<'_>, started: Instant) -> Current {
        for held in &batch.held {
            if let Some(known) = batch.latest(&held.stream).or(held.known.as_ref()) {
                self.remember(&held.id, known.state.clone());
            }
        }
        let latency = started.elapsed();
        let metrics = &self.inner.metrics;
        for prepared in &batch.prepared {
            if let Some((step, result)) = &prepared.step {
                self.count_outcome(step, result, latency);
            }
            match prepared.record {
                Some(SagaCommand::Complete) => {
                    metrics.completed();
                    tracing::info!("saga completed");
                }
                Some(SagaCommand::FinishCompensation) => {
                    metrics.compensated();
                    tracing::info!("saga compensated");
                }
                _ => {}
            }
        }
        let appended: usize = batch.base.unsaved.len()
            + batch
                .prepared
                .iter()
                .map(|p| p.saga_events.len())
                .sum::<usize>();
        Current::saved(
            batch.base.order_id,
            batch.state().clone(),
            batch.base.version + appended as u64,
            batch.base.metadata.clone(),
        )
    }

    fn remember(&self, id: &str, state: Remembered) {
        let inner = &self.inner;
        match state {
            Remembered::Order(loaded) => inner.orders.remember(id, loaded),
            Remembered::Account(loaded) => inner.accounts.remember(id, loaded),
            Remembered::Item(loaded) => inner.inventory.remember(id, loaded),
        }
    }

    /// The metadata of the saga's own events.
    fn saga_metadata(&self, current: &Current) -> Metadata {
        Metadata {
            actor: Some(STEP_SCOPE.to_owned()),
            ..current.metadata.clone()
        }
    }

    /// The metadata of the events `step`'s command appends.
    fn command_metadata(&self, current: &Current, step: &Step) -> Metadata {
        let saga_metadata = self.saga_metadata(current);
        Metadata {
            causation_id: Some(format!("saga-{}:{step}", current.order_id)),
            // The step's span: what the command causes joins its trace.
            traceparent: event_store::trace::current_traceparent()
                .or_else(|| saga_metadata.traceparent.clone()),
            ..saga_metadata
        }
    }

    /// Appends `events` to the saga's stream alone. `None` when it moved.
    pub(super) async fn append_saga_alone(
        &self,
        current: &Current,
        events: &[SagaEvent],
    ) -> Result<Option<Current>> {
        let new_events: Vec<NewEvent> = current
            .unsaved
            .iter()
            .chain(events)
            .map(NewEvent::from_domain)
            .collect();
        match self
            .inner
            .store
            .append(
                &StreamId::of::<FulfilmentSaga>(current.order_id),
                ExpectedVersion::Exact(current.version),
                &new_events,
                &self.saga_metadata(current),
            )
            .await
        {
            Ok(appended) => {
                if !current.unsaved.is_empty() {
                    self.started(current.order_id);
                }
                Ok(Some(Current::saved(
                    current.order_id,
                    FulfilmentSaga::fold(current.state.clone(), events),
                    appended.version,
                    current.metadata.clone(),
                )))
            }
            Err(event_store::Error::Conflict { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    fn count_outcome(&self, step: &Step, result: &StepResult, latency: Duration) {
        let metrics = &self.inner.metrics;
        match result {
            StepResult::Done { .. } => {
                metrics.step(step.name(), "succeeded", latency);
                tracing::debug!(%step, ?latency, "step succeeded");
            }
            StepResult::Refused { code, error } => {
                metrics.step(step.name(), "refused", latency);
                tracing::info!(%step, %code, %error, "step refused");
                if step.is_compensation() || step.refusal_reason().is_none() {
                    metrics.needs_attention();
                }
            }
            StepResult::Transient { .. } => metrics.step(step.name(), "failed", latency),
        }
    }
}

/// The saga's events for `command` on `state`; `None` when it refuses (the
/// saga is not where the step was planned: it moved).
fn decide_saga(state: &SagaState, command: &SagaCommand) -> Option<Vec<SagaEvent>> {
    match FulfilmentSaga::decide(state, command) {
        Ok(events) if !events.is_empty() => Some(events),
        Ok(_) => None,
        Err(refusal) => {
            tracing::warn!(?command, %refusal, "saga refused a record; looking again");
            None
        }
    }
}
