//! Running one command: serialise per aggregate in this process, have the
//! repository load, decide (only for a caller the command's [`Rule`]
//! permits on the state it loaded: see [`crate::access`]) and append it (it retries conflicts, a bounded
//! number of times unless a version was pinned, and stores the idempotency
//! record in the same transaction as the events), and turn the outcome into
//! the HTTP answer.
//!
//! Under an `Idempotency-Key`, the record is the `Answer` itself (status
//! and JSON body): the first answer and every replay carry the same body.
//!
//! The fast path: commands to one aggregate run one at a time in this
//! process and decide on the state the previous one left behind
//! ([`event_store::AggregateCache`], bounded by
//! `PURSER_AGGREGATE_CACHE_SIZE`), appending with its version as the
//! expected one, which saves reading the stream; the append's version check
//! proves the state was current. If another process wrote meanwhile, the
//! append conflicts and the repository decides again on a fresh load, as it
//! does for a refusal or a no-op on the remembered state (they prove nothing
//! about its freshness).

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::{Aggregate, DomainError};
use event_store::{
    AggregateCache, EventStore, ExecuteError, ExecuteOptions, Executed, Metadata, Outcome,
    Repository, StreamId,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::access::{Guarded, GuardedCommand, Owned, Rule};
use crate::error::{problem_response, ApiError};
use crate::extract::{CommandMeta, IDEMPOTENT_REPLAYED};
use crate::metrics::{Conflict, Metrics};

/// What the Command API keeps under an `Idempotency-Key`: the answer it
/// sent, replayed as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    /// The answer to a command the domain decided: `success(outcome)`, or
    /// the problem it was refused with.
    fn of<A: Aggregate>(
        result: Result<&Outcome<A>, &A::Error>,
        success: impl Fn(&Outcome<A>) -> (StatusCode, serde_json::Value),
    ) -> Answer {
        match result {
            Ok(outcome) => {
                let (status, body) = success(outcome);
                Answer {
                    status: status.as_u16(),
                    body,
                }
            }
            Err(refusal) => {
                let problem = ApiError::domain(refusal);
                Answer {
                    status: problem.status().as_u16(),
                    body: problem.problem_json(),
                }
            }
        }
    }

    /// The answer as first sent: its status and body (problem+json for a
    /// refusal), and the `ETag` of the version it reported.
    pub(crate) fn respond(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        if status.is_client_error() || status.is_server_error() {
            problem_response(status, &self.body)
        } else {
            let version = self.body.get("version").and_then(serde_json::Value::as_u64);
            json_response(status, &self.body, version)
        }
    }

    /// The answer, replayed: as first sent, with `Idempotent-Replayed:
    /// true`.
    pub(crate) fn replay(&self) -> Response {
        let mut response = self.respond();
        response.headers_mut().insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
        response
    }
}

/// What a command of `A` came to: `A`'s outcome, decided through
/// [`Guarded`].
pub type CommandOutcome<A> = Outcome<Guarded<A>>;

/// Runs commands of one aggregate type.
pub struct Commands<A: Owned> {
    /// The repository, with the state each command left its aggregate in
    /// (the fast path).
    cache: AggregateCache<Guarded<A>>,
    metrics: Arc<Metrics>,
}

impl<A: Owned> Commands<A> {
    /// `max_retries`: re-decisions after a conflict before a 409.
    /// `remember` is how many aggregates' states are kept for the fast path
    /// (0: none).
    /// `snapshot_every`: a stream's state is saved every that many events
    /// and loaded from there (0: never).
    pub fn new(
        store: EventStore,
        max_retries: u32,
        remember: usize,
        snapshot_every: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let retries = Arc::clone(&metrics);
        let repository = Repository::new(store)
            .with_max_retries(max_retries)
            .with_snapshots(snapshot_every)
            .on_retry(move || retries.record_conflict(Conflict::Retried));
        Commands {
            cache: AggregateCache::new(repository, remember, metrics.caches()),
            metrics,
        }
    }

    /// The aggregate's state as folded from its stream (for a check that
    /// needs another aggregate than the command's).
    pub async fn load(&self, id: &str) -> Result<A::State, ApiError> {
        Ok(self.cache.repository().load(id).await?.state)
    }

    /// [`Commands::execute`] for an aggregate whose id the caller made just
    /// now (a new order's uuid v7): its stream cannot exist yet, so the
    /// command is decided on the initial state without reading it, and
    /// the append at version 0 proves it (a conflict reads the stream, and
    /// a refusal is decided again on a read, as on any remembered state).
    pub async fn execute_new<F>(
        &self,
        id: &str,
        command: A::Command,
        rule: Rule,
        meta: CommandMeta,
        success: F,
    ) -> Result<Response, ApiError>
    where
        F: Fn(&CommandOutcome<A>) -> (StatusCode, serde_json::Value) + Send + Sync,
    {
        self.run(id, command, rule, meta, success, true).await
    }

    /// Executes `command` on aggregate `id` for the caller in `meta`, if
    /// `rule` permits it on the aggregate's state (else `A`'s not-found
    /// refusal), and answers with `success(outcome)` (status and JSON body)
    /// or the problem the domain or the store refused it with. `success`
    /// also builds the answer stored under the idempotency key, so the
    /// first answer and every replay carry the same body.
    pub async fn execute<F>(
        &self,
        id: &str,
        command: A::Command,
        rule: Rule,
        meta: CommandMeta,
        success: F,
    ) -> Result<Response, ApiError>
    where
        F: Fn(&CommandOutcome<A>) -> (StatusCode, serde_json::Value) + Send + Sync,
    {
        self.run(id, command, rule, meta, success, false).await
    }

    /// [`Commands::execute`], on a new aggregate when `new`
    /// ([`Commands::execute_new`]).
    async fn run<F>(
        &self,
        id: &str,
        command: A::Command,
        rule: Rule,
        meta: CommandMeta,
        success: F,
        new: bool,
    ) -> Result<Response, ApiError>
    where
        F: Fn(&CommandOutcome<A>) -> (StatusCode, serde_json::Value) + Send + Sync,
    {
        let command = &GuardedCommand {
            caller: meta.caller.clone(),
            rule,
            command,
        };
        let stream = StreamId::of::<A>(id);
        let span = tracing::info_span!(
            "command",
            stream = %stream,
            idempotency_key = meta.idempotency.as_ref().map(|k| k.key.as_str()),
            if_match = meta.if_match,
            version = tracing::field::Empty,
            position = tracing::field::Empty,
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        event_store::trace::record_ids(&span);
        async move {
            let metrics = &self.metrics;
            let options = ExecuteOptions {
                expected_version: meta.if_match,
                metadata: Metadata {
                    correlation_id: Some(meta.request_id.clone()),
                    causation_id: meta.idempotency.as_ref().map(|k| k.key.clone()),
                    actor: Some(meta.caller.actor().to_owned()),
                    // This span's: the relay, the projections and the
                    // saga join the request's trace.
                    traceparent: event_store::trace::current_traceparent(),
                },
                idempotency: meta.idempotency,
            };
            let result = if new {
                self.cache
                    .execute_new(id, command, options, |result| Answer::of(result, &success))
                    .await
            } else {
                self.cache
                    .execute(id, command, options, |result| Answer::of(result, &success))
                    .await
            };

            let span = tracing::Span::current();
            match result {
                Ok(Executed::Done(outcome)) => {
                    metrics.record_appended(A::STREAM_TYPE, outcome.events.len());
                    span.record("version", outcome.version);
                    if let Some(position) = outcome.position {
                        span.record("position", position);
                    }
                    span.record("outcome", "done");
                    let (status, body) = success(&outcome);
                    Ok(json_response(status, &body, Some(outcome.version)))
                }
                Ok(Executed::Refused(error)) => {
                    span.record("outcome", error.code());
                    Err(ApiError::domain(&error))
                }
                Ok(Executed::Replayed(answer)) => {
                    span.record("outcome", "replayed");
                    metrics.record_replay();
                    Ok(answer.replay())
                }
                Err(error) => {
                    match error {
                        ExecuteError::ConflictRetriesExhausted { .. } => {
                            metrics.record_conflict(Conflict::Exhausted);
                        }
                        ExecuteError::PreconditionFailed { .. } => {
                            metrics.record_conflict(Conflict::PreconditionFailed);
                        }
                        _ => {}
                    }
                    span.record("outcome", "error");
                    Err(error.into())
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// A JSON answer, with `ETag: "<version>"` when there is a version.
fn json_response(status: StatusCode, body: &serde_json::Value, version: Option<u64>) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response();
    if let Some(version) = version {
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
            response.headers_mut().insert(header::ETAG, etag);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::PROBLEM_JSON;

    #[test]
    fn an_answer_is_kept_as_its_status_and_body() {
        let answer = Answer {
            status: 201,
            body: json!({"account_id": "a", "version": 1}),
        };
        let stored = serde_json::to_value(&answer).expect("serialise");
        // The shape migration 9 gave the answers stored before it.
        assert_eq!(
            stored,
            json!({"status": 201, "body": {"account_id": "a", "version": 1}})
        );
        assert_eq!(
            serde_json::from_value::<Answer>(stored).expect("deserialise"),
            answer
        );
    }

    #[test]
    fn a_replayed_answer_is_marked_and_keeps_its_status_body_and_etag() {
        let replayed = Answer {
            status: 200,
            body: json!({"version": 3}),
        }
        .replay();
        assert_eq!(replayed.status(), StatusCode::OK);
        assert_eq!(replayed.headers()[&IDEMPOTENT_REPLAYED], "true");
        assert_eq!(replayed.headers()[header::ETAG], "\"3\"");
        assert_eq!(replayed.headers()[header::CONTENT_TYPE], "application/json");

        let refusal = ApiError::validation("insufficient_funds", "not enough");
        let replayed = Answer {
            status: refusal.status().as_u16(),
            body: refusal.problem_json(),
        }
        .replay();
        assert_eq!(replayed.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(replayed.headers()[&IDEMPOTENT_REPLAYED], "true");
        assert_eq!(replayed.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(replayed.headers().get(header::ETAG).is_none());
    }
}
