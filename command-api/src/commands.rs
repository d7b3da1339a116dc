//! Running one command: serialise per aggregate in this process, load,
//! decide and append through the event store (the idempotent response is
//! stored in the same transaction as the events), retry conflicts a bounded
//! number of times unless a version was pinned, and turn the outcome into
//! the HTTP answer.
//!
//! The fast path: the state a command left behind is remembered (under the
//! aggregate's in-process lock). The next command without an idempotency
//! key decides on it and appends with the remembered version as the
//! expected one, saving the read of the stream; the append's version check
//! proves the state was current. If another process wrote meanwhile, the
//! append conflicts and the command takes the normal path (load, decide,
//! append). Only decisions that append take the fast path: a refusal or a
//! no-op proves nothing about freshness, so it is always decided on a
//! fresh load.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::{Aggregate, DomainError};
use event_store::{
    EventStore, ExecuteError, ExecuteOptions, Executed, ExpectedVersion, Metadata, NewEvent,
    Outcome, Repository, StoredResponse, StreamId,
};
use tracing::Instrument;

use crate::error::{problem_response, ApiError};
use crate::extract::{CommandMeta, IDEMPOTENT_REPLAYED};
use crate::lock::{StreamLocks, Stripe};
use crate::metrics::{Conflict, Metrics};

/// The last state a command of this process left an aggregate in.
#[derive(Debug, Clone)]
struct Known<S> {
    state: S,
    version: u64,
}

/// Runs commands of one aggregate type.
pub struct Commands<A: Aggregate> {
    store: EventStore,
    repository: Repository<A>,
    locks: StreamLocks<Known<A::State>>,
    max_retries: u32,
}

impl<A: Aggregate> Commands<A> {
    /// `remember` is how many aggregates' states each of the lock's stripes
    /// keeps for the fast path (0: none; the lock has 1,024 stripes).
    pub fn new(store: EventStore, max_retries: u32, remember: usize) -> Self {
        Commands {
            // Retries are counted and bounded here, one attempt per call.
            repository: Repository::new(store.clone()).with_max_retries(0),
            store,
            locks: StreamLocks::new(remember),
            max_retries,
        }
    }

    /// Executes `command` on aggregate `id` and answers with
    /// `success(outcome)` (status and JSON body) or the problem the domain or
    /// the store refused it with. `success` also builds the answer stored
    /// under the idempotency key, so the first answer and every replay carry
    /// the same body.
    pub async fn execute<F>(
        &self,
        metrics: &Metrics,
        id: &str,
        command: &A::Command,
        meta: CommandMeta,
        success: F,
    ) -> Result<Response, ApiError>
    where
        F: Fn(&Outcome<A>) -> (StatusCode, serde_json::Value) + Send + Sync,
    {
        let stream = StreamId::of::<A>(id);
        let span = tracing::info_span!(
            "command",
            stream = %stream,
            idempotency_key = meta.idempotency.as_ref().map(|k| k.key.as_str()),
            if_match = meta.if_match,
            version = tracing::field::Empty,
            position = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        async move {
            let metadata = Metadata {
                correlation_id: Some(meta.request_id.clone()),
                causation_id: meta.idempotency.as_ref().map(|k| k.key.clone()),
                actor: meta.actor.clone(),
            };
            let mut stripe = self.locks.lock(stream.as_str()).await;

            let mut result = None;
            if meta.idempotency.is_none() {
                result = self
                    .execute_on_known(
                        &mut stripe,
                        &stream,
                        command,
                        meta.if_match,
                        &metadata,
                        metrics,
                    )
                    .await?;
            }
            let result = match result {
                Some(outcome) => Ok(Executed::Done(outcome)),
                None => {
                    self.execute_fresh(id, command, &meta, metadata, &success, metrics)
                        .await
                }
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
                    stripe.insert(
                        stream.as_str(),
                        Known {
                            state: outcome.state.clone(),
                            version: outcome.version,
                        },
                    );
                    let (status, body) = success(&outcome);
                    Ok(json_response(status, &body, Some(outcome.version)))
                }
                Ok(Executed::Refused(error)) => {
                    span.record("outcome", error.code());
                    Err(ApiError::domain(&error))
                }
                Ok(Executed::Replayed(stored)) => {
                    span.record("outcome", "replayed");
                    metrics.record_replay();
                    Ok(replay_response(&stored))
                }
                Err(error) => {
                    span.record("outcome", "error");
                    stripe.remove(stream.as_str());
                    Err(error)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The fast path: decide on the remembered state and append at its
    /// version. `None` when there is nothing remembered, the decision
    /// appends nothing, or the append found the stream moved on.
    async fn execute_on_known(
        &self,
        stripe: &mut Stripe<Known<A::State>>,
        stream: &StreamId,
        command: &A::Command,
        if_match: Option<u64>,
        metadata: &Metadata,
        metrics: &Metrics,
    ) -> Result<Option<Outcome<A>>, ApiError> {
        let Some(known) = stripe.get(stream.as_str()) else {
            return Ok(None);
        };
        if if_match.is_some_and(|expected| expected != known.version) {
            // Settle it on a fresh load: 412, or the memory was stale.
            return Ok(None);
        }
        let events = match A::decide(&known.state, command) {
            Ok(events) if !events.is_empty() => events,
            _ => return Ok(None),
        };
        let version = known.version;
        let new_events: Vec<NewEvent> = events.iter().map(NewEvent::from_domain).collect();
        match self
            .store
            .append(
                stream,
                ExpectedVersion::Exact(version),
                &new_events,
                metadata,
            )
            .await
        {
            Ok(appended) => {
                let state = A::fold(known.state.clone(), &events);
                Ok(Some(Outcome {
                    state,
                    version: appended.version,
                    position: Some(appended.position),
                    events,
                }))
            }
            Err(event_store::Error::Conflict { .. }) => {
                // Another process wrote: decide again on a fresh load.
                metrics.record_conflict(Conflict::Retried);
                stripe.remove(stream.as_str());
                Ok(None)
            }
            Err(error) => {
                stripe.remove(stream.as_str());
                Err(error.into())
            }
        }
    }

    /// The normal path: the repository loads, decides and appends (with the
    /// idempotency record); conflicts are retried up to `max_retries` times
    /// unless `If-Match` pinned the version.
    async fn execute_fresh<F>(
        &self,
        id: &str,
        command: &A::Command,
        meta: &CommandMeta,
        metadata: Metadata,
        success: &F,
        metrics: &Metrics,
    ) -> Result<Executed<A>, ApiError>
    where
        F: Fn(&Outcome<A>) -> (StatusCode, serde_json::Value) + Send + Sync,
    {
        let respond = |result: Result<&Outcome<A>, &A::Error>| match result {
            Ok(outcome) => {
                let (status, body) = success(outcome);
                StoredResponse {
                    status: status.as_u16(),
                    body,
                }
            }
            Err(error) => {
                let problem = ApiError::domain(error);
                StoredResponse {
                    status: problem.status().as_u16(),
                    body: problem.problem_json(),
                }
            }
        };
        let mut attempt = 0;
        loop {
            let options = ExecuteOptions {
                expected_version: meta.if_match,
                metadata: metadata.clone(),
                idempotency: meta.idempotency.clone(),
            };
            match self
                .repository
                .execute(id, command, options, &respond)
                .await
            {
                Ok(executed) => return Ok(executed),
                Err(ExecuteError::ConflictRetriesExhausted { .. })
                    if attempt < self.max_retries =>
                {
                    attempt += 1;
                    metrics.record_conflict(Conflict::Retried);
                    tracing::debug!(attempt, "concurrency conflict, deciding again");
                }
                Err(ExecuteError::ConflictRetriesExhausted { .. }) => {
                    metrics.record_conflict(Conflict::Exhausted);
                    return Err(ApiError::Conflict {
                        attempts: attempt + 1,
                    });
                }
                Err(error @ ExecuteError::PreconditionFailed { .. }) => {
                    metrics.record_conflict(Conflict::PreconditionFailed);
                    return Err(error.into());
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// A JSON answer, with `ETag: "<version>"` when there is a version.
pub(crate) fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    version: Option<u64>,
) -> Response {
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

/// A stored answer, replayed: its status and body, `Idempotent-Replayed:
/// true`, and the `ETag` of the version it reported.
pub(crate) fn replay_response(stored: &StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = if status.is_client_error() || status.is_server_error() {
        problem_response(status, &stored.body)
    } else {
        let version = stored
            .body
            .get("version")
            .and_then(serde_json::Value::as_u64);
        json_response(status, &stored.body, version)
    };
    response.headers_mut().insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    response
}
