//! Running one command: serialise per aggregate in this process, load,
//! decide and append through the event store's repository (which stores the
//! idempotent response in the same transaction), retry conflicts a bounded
//! number of times unless a version was pinned, and turn the outcome into
//! the HTTP answer.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use domain::{Aggregate, DomainError};
use event_store::{
    ExecuteError, ExecuteOptions, Executed, Metadata, Outcome, Repository, StoredResponse, StreamId,
};
use tracing::Instrument;

use crate::error::{problem_response, ApiError};
use crate::extract::{CommandMeta, IDEMPOTENT_REPLAYED};
use crate::metrics::Conflict;
use crate::state::AppState;

/// Executes `command` on aggregate `id` and answers with `success(outcome)`
/// (status and JSON body) or the problem the domain or the store refused it
/// with. `success` also builds the answer stored under the idempotency key,
/// so the first answer and every replay are byte-for-byte the same body.
pub(crate) async fn execute<A, F>(
    state: &AppState,
    repository: &Repository<A>,
    id: &str,
    command: &A::Command,
    meta: CommandMeta,
    success: F,
) -> Result<Response, ApiError>
where
    A: Aggregate,
    F: Fn(&Outcome<A>) -> (StatusCode, serde_json::Value) + Send + Sync,
{
    let stream = StreamId::of::<A>(id);
    let span = tracing::info_span!(
        "execute",
        stream = %stream,
        idempotency_key = meta.idempotency.as_ref().map(|k| k.key.as_str()),
        if_match = meta.if_match,
        version = tracing::field::Empty,
        position = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    async move {
        let metrics = state.metrics();
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

        let _serialised = state.locks().lock(stream.as_str()).await;
        let mut attempt = 0;
        let result = loop {
            let options = ExecuteOptions {
                expected_version: meta.if_match,
                metadata: Metadata {
                    correlation_id: Some(meta.request_id.clone()),
                    causation_id: meta.idempotency.as_ref().map(|k| k.key.clone()),
                    actor: None,
                },
                idempotency: meta.idempotency.clone(),
            };
            match repository.execute(id, command, options, &respond).await {
                Err(ExecuteError::ConflictRetriesExhausted { .. })
                    if attempt < state.max_retries() =>
                {
                    attempt += 1;
                    metrics.record_conflict(Conflict::Retried);
                    tracing::debug!(attempt, "concurrency conflict, re-reading");
                }
                other => break other,
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
                match &error {
                    ExecuteError::PreconditionFailed { .. } => {
                        metrics.record_conflict(Conflict::PreconditionFailed);
                    }
                    ExecuteError::ConflictRetriesExhausted { .. } => {
                        metrics.record_conflict(Conflict::Exhausted);
                    }
                    _ => {}
                }
                span.record("outcome", "error");
                let mut error = ApiError::from(error);
                if let ApiError::Conflict { attempts } = &mut error {
                    *attempts = attempt + 1;
                }
                Err(error)
            }
        }
    }
    .instrument(span)
    .await
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
