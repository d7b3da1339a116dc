//! Applying a planned batch: set-based through
//! [`Projection::apply_many`](crate::Projection::apply_many) first; if that
//! fails, event by event, each in a savepoint, to find and park the event
//! at fault.

use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};
use tracing::Instrument;

use super::plan::StreamPlan;
use super::record::park;
use super::{apply_error, event_span, version, Projector};
use crate::{BatchReport, Error, Result};

/// What a batch applied, for the record.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// `(transaction_id, position)` of the latest event applied.
    pub(super) last: (i64, i64),
    /// The streams that moved on, with their new version.
    pub(super) changed: Vec<(String, i64)>,
}

impl Applied {
    fn saw(&mut self, event: &RecordedEvent) {
        self.last = self.last.max((event.transaction_id as i64, event.position));
    }
}

impl Projector {
    /// The whole batch in one call of `apply_many`; `None` when it failed
    /// for a reason of an event (the caller rolls back and applies the
    /// batch one by one).
    pub(super) async fn apply_set_based(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        plans: &[StreamPlan<'_>],
        report: &mut BatchReport,
    ) -> Result<Option<Applied>> {
        let todos: Vec<Vec<&RecordedEvent>> = plans.iter().map(StreamPlan::todo).collect();
        let slices: Vec<&[&RecordedEvent]> = todos.iter().map(Vec::as_slice).collect();
        for event in todos.iter().flatten() {
            tracing::debug!(
                stream_id = %event.stream_id,
                version = event.version,
                event_id = %event.event_id,
                position = event.position,
                correlation_id = event.metadata.correlation_id.as_deref(),
                "applying"
            );
        }
        match self.projection.apply_many(tx, &slices).await {
            Ok(()) => {
                let mut applied = Applied::default();
                for (plan, todo) in plans.iter().zip(&todos) {
                    for event in todo {
                        applied.saw(event);
                    }
                    if let Some(newest) = todo.last() {
                        report.applied += todo.len() as u64;
                        applied
                            .changed
                            .push((plan.stream_id.to_owned(), version(newest)));
                    }
                }
                Ok(Some(applied))
            }
            Err(error) if error.is_transient() => {
                let first = todos.iter().find_map(|todo| todo.first());
                Err(match first {
                    Some(event) => apply_error(event, error),
                    None => Error::Database(sqlx::Error::Protocol(error.to_string())),
                })
            }
            // Find the event at fault, one by one.
            Err(error) => {
                tracing::warn!(error = %error, "batch failed to apply; applying it event by event");
                Ok(None)
            }
        }
    }

    /// Each event in a savepoint of its own, retried up to `max_attempts`
    /// times; an event that still fails parks its stream (its later events
    /// wait) and the other streams go on.
    pub(super) async fn apply_one_by_one(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        plans: &[StreamPlan<'_>],
        report: &mut BatchReport,
    ) -> Result<Applied> {
        let name = self.name();
        let mut applied = Applied::default();
        for plan in plans {
            let todo = plan.todo();
            let mut version_now = plan.from;
            for (i, event) in todo.iter().enumerate() {
                let span = event_span(name, event);
                let outcome = self
                    .apply_with_retries(tx, event)
                    .instrument(span.clone())
                    .await?;
                match outcome {
                    Ok(()) => {
                        version_now = version(event);
                        report.applied += 1;
                        applied.saw(event);
                    }
                    Err((error, _)) if error.is_transient() => {
                        return Err(apply_error(event, error));
                    }
                    Err((error, attempts)) => {
                        span.in_scope(|| {
                            tracing::error!(error = %error, attempts, "poison event: parking its stream")
                        });
                        park(tx, name, event, &error, attempts).await?;
                        report.parked.push(plan.stream_id.to_owned());
                        report.waiting += (todo.len() - i) as u64;
                        break;
                    }
                }
            }
            if version_now > plan.from {
                applied
                    .changed
                    .push((plan.stream_id.to_owned(), version_now));
            }
        }
        Ok(applied)
    }
}
