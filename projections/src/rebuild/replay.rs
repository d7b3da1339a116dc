//! Phase 3: the bulk replay, a window of events per transaction through
//! [`Projection::apply_many`](crate::Projection::apply_many), read ahead by
//! a reader task.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use event_store::RecordedEvent;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use super::catch_up::horizon;
use super::writes::Writes;
use super::{Phase, Rebuild, State, HORIZON_POLL, READ_CHUNK};
use crate::projector::park;
use crate::{ApplyError, Error, Result};

impl Rebuild {
    /// Phase 3: the bulk replay, a window per transaction, reading the next
    /// window while the current one is applied.
    pub(super) async fn replay(
        &self,
        state: &mut State,
        start: u64,
        started: Instant,
        resumed_from: u64,
        shutdown: &CancellationToken,
        report: &mut (dyn FnMut(Phase, &State) + Send),
    ) -> Result<()> {
        let mut parked: HashSet<String> = sqlx::query_scalar(&format!(
            "SELECT stream_id FROM {}.parked WHERE projection = $1",
            self.shadow
        ))
        .bind(self.name())
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .collect();
        // A throttled rebuild writes about a second's worth per transaction,
        // not a burst of a whole window and then a long pause.
        let window = match self.options.max_events_per_second {
            Some(rate) => self
                .options
                .batch_size
                .min(usize::try_from(rate).unwrap_or(usize::MAX).max(1)),
            None => self.options.batch_size,
        };
        let chunk = i64::try_from(window.min(READ_CHUNK)).unwrap_or(i64::MAX);
        // The reader reads the log in chunks, ahead of the apply; it ends
        // after a short read taken once every transaction older than the
        // rebuild had finished (see `catch_up`). Each chunk says whether it
        // was a short read: the log's head, where a window is applied
        // without waiting for more.
        // Room for a whole window: the next one is read while this one applies.
        let (sender, mut chunks) = tokio::sync::mpsc::channel::<Result<(Vec<RecordedEvent>, bool)>>(
            window.div_ceil(READ_CHUNK.min(window)) + 1,
        );
        let reader = {
            let store = self.store.clone();
            let types = self.types;
            let mut after = state.checkpoint;
            tokio::spawn(async move {
                loop {
                    let read = async {
                        let passed = horizon(store.pool()).await? >= start;
                        let events = store.read_all_of_types(after, types, chunk).await?;
                        Ok::<_, Error>((events, passed))
                    }
                    .await;
                    let (events, passed) = match read {
                        Ok(read) => read,
                        Err(error) => {
                            let _ = sender.send(Err(error)).await;
                            return;
                        }
                    };
                    let short = (events.len() as i64) < chunk;
                    if events.is_empty() && !passed {
                        tokio::time::sleep(HORIZON_POLL).await;
                        continue;
                    }
                    if let Some(event) = events.last() {
                        after = event.checkpoint();
                    }
                    if sender.send(Ok((events, short))).await.is_err() || (short && passed) {
                        return;
                    }
                }
            })
        };
        let _abort_reader = AbortOnDrop(reader);
        // A window of up to `batch_size` events, folded and written in one
        // transaction: a row that several of its events change is written
        // once per window, not once per chunk read.
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut ended = false;
        while !ended {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Err(self.interrupted(state)),
                next = chunks.recv() => next,
            };
            let at_head = match next {
                Some(chunk) => {
                    let (chunk, short) = chunk?;
                    if events.is_empty() {
                        events = chunk;
                    } else {
                        events.extend(chunk);
                    }
                    short
                }
                None => {
                    ended = true;
                    true
                }
            };
            // Whole windows; at the head (or the end), what there is.
            while !events.is_empty() && (events.len() >= window || at_head) {
                let rest = events.split_off(window.min(events.len()));
                self.replay_batch(&events, &mut parked, state).await?;
                events = rest;
                report(Phase::Replay, state);
                self.throttle(started, state.events_done - resumed_from, shutdown)
                    .await;
                if shutdown.is_cancelled() {
                    return Err(self.interrupted(state));
                }
            }
        }
        Ok(())
    }

    /// Sleeps as long as the throttle asks (or until `shutdown`).
    async fn throttle(&self, started: Instant, done: u64, shutdown: &CancellationToken) {
        let Some(rate) = self.options.max_events_per_second.filter(|r| *r > 0) else {
            return;
        };
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(ahead) => {}
            }
        }
    }

    /// One replay batch and its checkpoint, in one transaction.
    async fn replay_batch(
        &self,
        events: &[RecordedEvent],
        parked: &mut HashSet<String>,
        state: &mut State,
    ) -> Result<()> {
        let projector = self.projector();
        let mut conn = self.pool().acquire().await?;
        // In the log's order, each stream's events are its next versions.
        let mut streams: BTreeMap<&str, Vec<&RecordedEvent>> = BTreeMap::new();
        for event in events.iter().filter(|e| !parked.contains(&e.stream_id)) {
            streams.entry(&event.stream_id).or_default().push(event);
        }
        let slices: Vec<&[&RecordedEvent]> = streams.values().map(Vec::as_slice).collect();

        let mut tx = conn.begin().await?;
        projector.enter(&mut tx).await?;
        let mut before = Writes::take(&mut tx).await?;
        match self.projection.apply_many(&mut tx, &slices).await {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Err(error_of(events, error)),
            Err(error) => {
                tracing::warn!(projection = self.name(), error = %error, "replay batch failed; applying it event by event");
                tx.rollback().await?;
                tx = conn.begin().await?;
                projector.enter(&mut tx).await?;
                before = Writes::take(&mut tx).await?;
                for (stream_id, events) in &streams {
                    for event in events {
                        match projector.apply_with_retries(&mut tx, event).await? {
                            Ok(()) => {}
                            Err((error, _)) if error.is_transient() => {
                                return Err(error_of(std::slice::from_ref(*event), error))
                            }
                            Err((error, attempts)) => {
                                tracing::error!(projection = self.name(), stream_id, event_id = %event.event_id, error = %error, attempts, "poison event: parking its stream in the rebuild");
                                park(&mut tx, self.name(), event, &error, attempts).await?;
                                parked.insert((*stream_id).to_owned());
                                break;
                            }
                        }
                    }
                }
            }
        }
        self.check_live_untouched(&mut tx, &before).await?;
        let next = self.advance(&mut tx, state, events).await?;
        tx.commit().await?;
        *state = next;
        Ok(())
    }
}

/// Aborts the reader task when the replay returns, however it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn error_of(events: &[RecordedEvent], source: ApplyError) -> Error {
    match events.first() {
        Some(event) => Error::Apply {
            stream_id: event.stream_id.clone(),
            event_id: event.event_id,
            source,
        },
        None => Error::Database(sqlx::Error::Protocol(source.to_string())),
    }
}
