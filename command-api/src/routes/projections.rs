//! The operator's commands on projections: `POST
//! /projections/{name}/rebuild`, `/unpark`, `/reset` (what `purser
//! projections rebuild|unpark|reset` do, over HTTP).
//!
//! A rebuild runs in the projection workers' process, never in the request:
//! the request is recorded ([`projections::requests`]) and answered 202;
//! its progress shows in the Query API's `GET /projections`. An unpark and a
//! reset are short and run here. None appends to the event store; the
//! operator's `sub` is recorded as who asked for a rebuild, and logged as the
//! `actor` of each command. Each honours an `Idempotency-Key` like every
//! command (see `once` below).

use std::future::Future;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::ErrorKind;
use serde::Serialize;

use crate::commands::Answer;
use crate::dto::{
    stream_id, RebuildProjectionRequest, RebuildRequestedResponse, ResetProjectionRequest,
    ResetResponse, UnparkProjectionRequest, UnparkedResponse, UnparkedStream,
};
use crate::error::{database_error, ApiError, Problem};
use crate::extract::{Command, CommandMeta, PathParam};
use crate::state::AppState;

/// The projection called `name`, or 404 `projection_not_found`.
fn projection(name: &str) -> Result<std::sync::Arc<dyn projections::Projection>, ApiError> {
    projections::by_name(name).map_err(|_| ApiError::Domain {
        kind: ErrorKind::NotFound,
        code: "projection_not_found",
        detail: format!(
            "no projection is called {name:?} (known: {})",
            projections::names().join(", ")
        ),
    })
}

/// What the projections crate refused or failed with, as an answer.
fn refusal(error: projections::Error) -> ApiError {
    match error {
        projections::Error::UnknownProjection(name) => match projection(&name) {
            Err(not_found) => not_found,
            Ok(_) => ApiError::internal(format!("projection {name} is known and unknown")),
        },
        projections::Error::RebuildRunning(name) => ApiError::Domain {
            kind: ErrorKind::AlreadyExists,
            code: "rebuild_running",
            detail: format!("a rebuild of {name} is already requested or running"),
        },
        projections::Error::Database(source) => database_error(source),
        projections::Error::Store(event_store::Error::Database(source)) => database_error(source),
        other => ApiError::internal(other),
    }
}

/// Asks for a rebuild of the projection's read model from the event store,
/// into shadow tables swapped in at the end (the Query API serves the old
/// ones meanwhile). A projection worker process runs it, the same resumable
/// rebuild as `purser projections rebuild`: a rebuild that was interrupted
/// is resumed. Its progress is the `rebuild` of `GET /projections` on the
/// Query API.
#[utoipa::path(
    post, path = "/projections/{name}/rebuild", tag = "projections",
    request_body = RebuildProjectionRequest,
    params(("name" = String, Path, description = "The projection: `accounts`, `inventory`, `orders` or `sagas` (else 404 `projection_not_found`)",
            pattern = "^[a-z]{1,32}$"), crate::openapi::IdempotencyKeyHeader),
    responses(
        (status = 202, description = "Requested; a projection worker process runs it", body = RebuildRequestedResponse),
        (status = 404, description = "`projection_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`rebuild_running`: a rebuild of this projection is already requested or running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn rebuild(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    request: Command<RebuildProjectionRequest>,
) -> Result<Response, ApiError> {
    let RebuildProjectionRequest {} = request.body;
    once(&state, &request.meta, async {
        let name = projection(&name)?.name();
        let actor = request.meta.caller.actor();
        let recorded = projections::requests::request_rebuild(
            state.store().pool(),
            name,
            actor,
            &request.meta.request_id,
        )
        .await
        .map_err(refusal)?;
        let body = RebuildRequestedResponse {
            projection: recorded.projection,
            requested_by: recorded.requested_by,
            requested_at: recorded.requested_at,
        };
        Ok((StatusCode::ACCEPTED, body))
    })
    .await
}

/// Un-parks the projection's parked streams (`{}`), or one (`{"stream_id":
/// ...}`), and applies their waiting events from the event store; a stream
/// whose event still fails is parked again. A stream that is not parked is
/// left alone (nothing in `streams`).
#[utoipa::path(
    post, path = "/projections/{name}/unpark", tag = "projections",
    request_body = UnparkProjectionRequest,
    params(("name" = String, Path, description = "The projection: `accounts`, `inventory`, `orders` or `sagas` (else 404 `projection_not_found`)",
            pattern = "^[a-z]{1,32}$"), crate::openapi::IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Un-parked", body = UnparkedResponse),
        (status = 400, description = "`invalid_id`: `stream_id` is not a stream id; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`projection_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn unpark(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    request: Command<UnparkProjectionRequest>,
) -> Result<Response, ApiError> {
    once(&state, &request.meta, async {
        let only = request
            .body
            .stream_id
            .as_deref()
            .map(stream_id)
            .transpose()?;
        let projection = projection(&name)?;
        let name = projection.name();
        let pool = state.store().pool();
        let parked = projections::status::parked_streams(pool, name)
            .await
            .map_err(refusal)?;
        let projector = projections::Projector::new(projection, state.store().clone());
        let mut streams = Vec::new();
        for stream in parked {
            if only.is_some_and(|only| only != stream.stream_id) {
                continue;
            }
            let report = projector.unpark(&stream.stream_id).await.map_err(refusal)?;
            tracing::info!(
                projection = name,
                stream_id = %stream.stream_id,
                applied = report.applied,
                parked_again = !report.parked.is_empty(),
                actor = request.meta.caller.actor(),
                "stream un-parked"
            );
            streams.push(UnparkedStream {
                stream_id: stream.stream_id,
                applied: report.applied,
                parked_again: !report.parked.is_empty(),
            });
        }
        let body = UnparkedResponse {
            projection: name.to_owned(),
            streams,
        };
        Ok((StatusCode::OK, body))
    })
    .await
}

/// Empties the projection's read model: its tables, applied versions,
/// parked streams, status and any interrupted rebuild. The live workers then
/// fill only the streams that get new events; a rebuild refills everything.
/// The body repeats the projection's name, so a reset is never a slip.
#[utoipa::path(
    post, path = "/projections/{name}/reset", tag = "projections",
    request_body = ResetProjectionRequest,
    params(("name" = String, Path, description = "The projection: `accounts`, `inventory`, `orders` or `sagas` (else 404 `projection_not_found`)",
            pattern = "^[a-z]{1,32}$"), crate::openapi::IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Reset: the read model is empty", body = ResetResponse),
        (status = 404, description = "`projection_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`rebuild_running`: a rebuild of this projection is running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`confirmation_mismatch`: `confirm` is not the projection's name; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn reset(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    request: Command<ResetProjectionRequest>,
) -> Result<Response, ApiError> {
    once(&state, &request.meta, async {
        let projection = projection(&name)?;
        let name = projection.name();
        if request.body.confirm != name {
            return Err(ApiError::validation(
                "confirmation_mismatch",
                format!("confirm must be the projection's name, {name:?}"),
            ));
        }
        projections::operations::reset(projection.as_ref(), state.store())
            .await
            .map_err(refusal)?;
        tracing::info!(
            projection = name,
            actor = request.meta.caller.actor(),
            "projection reset"
        );
        let body = ResetResponse {
            projection: name.to_owned(),
            reset: true,
        };
        Ok((StatusCode::OK, body))
    })
    .await
}

/// Runs an operator's command at most once per `Idempotency-Key` (API.md:
/// every `POST` accepts one): a later request by the same caller with the
/// same key and body gets the first answer back, with
/// `Idempotent-Replayed: true`, and does nothing. None of these commands
/// appends events, so the answer is stored on its own once the command ran.
///
/// What is stored: a success, and a refusal that stays true (404, 422). A
/// 409 (a rebuild is running; it ends) and a failure are not, so the same
/// key asks again. Two requests with one key at the same moment may both
/// run, and both answer with the answer stored first: each of these
/// commands is harmless twice (a second rebuild request is refused while
/// the first stands; unparking or resetting again leaves what once does).
async fn once<T, F>(state: &AppState, meta: &CommandMeta, command: F) -> Result<Response, ApiError>
where
    T: Serialize,
    F: Future<Output = Result<(StatusCode, T), ApiError>>,
{
    let Some(key) = &meta.idempotency else {
        let (status, body) = command.await?;
        return Ok((status, Json(body)).into_response());
    };
    if let Some(first) = state.store().find_record::<Answer>(key).await? {
        return Ok(first.replay());
    }
    let (answer, refused) = match command.await {
        Ok((status, body)) => {
            let body = serde_json::to_value(body).map_err(ApiError::internal)?;
            let status = status.as_u16();
            (Answer { status, body }, None)
        }
        Err(refusal) if lasting(&refusal) => {
            let status = refusal.status().as_u16();
            let body = refusal.problem_json();
            (Answer { status, body }, Some(refusal))
        }
        Err(other) => return Err(other),
    };
    match state.store().store_record(key, &answer).await? {
        Some(first) => Ok(first.replay()),
        None => match refused {
            Some(refusal) => Err(refusal),
            None => Ok(answer.respond()),
        },
    }
}

/// A refusal that a repeat of the same request would meet again.
fn lasting(refusal: &ApiError) -> bool {
    matches!(
        refusal.status(),
        StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY
    )
}
