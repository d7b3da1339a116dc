//! `GET /projections`: each projection's progress ([`projections::status`]:
//! head and lag computed from the event store, not from Kafka watermarks);
//! `GET /metrics`: the process's registry (`service::metrics`).

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use projections::status::ProjectionStatus;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Problem, Result};
use crate::extract::{Params, PathParam};
use crate::pagination::limit;
use crate::state::AppState;

/// A projection's progress, as `GET /projections` renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectionView {
    pub name: String,
    /// Highest global position applied.
    pub checkpoint: i64,
    /// Highest global position of the event store among the projection's
    /// stream types.
    pub head: i64,
    /// Events of the projection's stream types not yet applied.
    pub lag_events: i64,
    /// `up_to_date`, `catching_up`, or `degraded` while streams are parked.
    pub status: String,
    /// Streams parked by a poison event.
    pub parked_streams: i64,
    /// Events applied since the read models were created.
    pub events_applied: i64,
    /// Its rebuild (`purser projections rebuild`) not swapped in yet:
    /// running now, or interrupted; null when there is none.
    pub rebuild: Option<RebuildView>,
    /// A rebuild an operator requested over HTTP (`POST
    /// /projections/{name}/rebuild`), waiting for a worker process or
    /// running; null when there is none.
    pub rebuild_requested: Option<RebuildRequestView>,
}

/// A rebuild requested over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RebuildRequestView {
    /// The operator who asked (the token's `sub`).
    pub requested_by: String,
    pub requested_at: chrono::DateTime<chrono::Utc>,
    /// When a worker process started (or resumed) it; null while it waits.
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A projection's rebuild in progress, or interrupted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RebuildView {
    /// A process is rebuilding it now (it holds the rebuild's lock); false:
    /// interrupted, run `purser projections rebuild` again to resume.
    pub running: bool,
    /// `replay` (bulk replay of the log) or `catch_up` (what came meanwhile).
    pub phase: String,
    /// Events replayed so far, by every run of this rebuild.
    pub events_done: i64,
    /// Events of the projection's stream types in the store now: about what
    /// the rebuild replays in all (progress and ETA).
    pub events_total: i64,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When it last committed progress.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[utoipa::path(
    get, path = "/projections", tag = "projections",
    responses((status = 200, description = "Every projection's progress", body = [ProjectionView])),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn list_projections(State(state): State<AppState>) -> Result<Json<Vec<ProjectionView>>> {
    let statuses = statuses(&state.pool).await?;
    Ok(Json(
        statuses.into_iter().map(ProjectionView::from).collect(),
    ))
}

/// The progress of every projection ([`projections::status`]).
async fn statuses(pool: &PgPool) -> Result<Vec<ProjectionStatus>> {
    projections::status::all(pool).await.map_err(database)
}

impl From<ProjectionStatus> for ProjectionView {
    fn from(status: ProjectionStatus) -> Self {
        ProjectionView {
            name: status.name,
            checkpoint: status.checkpoint,
            head: status.head,
            lag_events: status.lag_events,
            status: status.health.as_str().to_owned(),
            parked_streams: status.parked_streams,
            events_applied: status.events_applied,
            rebuild: status.rebuild.map(|rebuild| RebuildView {
                running: rebuild.running,
                phase: rebuild.phase,
                events_done: rebuild.events_done,
                events_total: rebuild.events_total,
                started_at: rebuild.started_at,
                updated_at: rebuild.updated_at,
            }),
            rebuild_requested: status.requested.map(|request| RebuildRequestView {
                requested_by: request.requested_by,
                requested_at: request.requested_at,
                started_at: request.started_at,
            }),
        }
    }
}

/// A stream parked by a poison event, as `GET /projections/{name}/parked`
/// renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct ParkedView {
    pub stream_id: String,
    /// The version of the event that failed.
    pub version: i64,
    /// The event that failed.
    pub event_id: uuid::Uuid,
    /// Why it failed, the last time.
    pub error: String,
    /// How many times it was tried.
    pub attempts: i32,
    pub parked_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /projections/{name}/parked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParkedPage {
    /// The first `limit` parked streams, by stream id.
    pub items: Vec<ParkedView>,
    /// How many streams are parked in all.
    pub total: i64,
}

/// `?limit=` of `GET /projections/{name}/parked`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ParkedParams {
    /// How many, 1..=500 (default 50).
    #[param(format = Int64, minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// The streams a projection has parked, with the event, version and error
/// that parked each (what `purser projections status NAME` lists).
#[utoipa::path(
    get, path = "/projections/{name}/parked", tag = "projections",
    params(("name" = String, Path, description = "The projection: `accounts`, `inventory`, `orders` or `sagas`", pattern = "^[a-z]{1,32}$"), ParkedParams),
    responses(
        (status = 200, description = "Its parked streams, by stream id", body = ParkedPage),
        (status = 400, description = "`invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no projection of that name", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn list_parked(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    Params(params): Params<ParkedParams>,
) -> Result<Json<ParkedPage>> {
    let limit = limit(params.limit)?;
    let projection = projections::by_name(&name)
        .map_err(|_| ApiError::NotFound(format!("no projection is called {name:?}")))?;
    let name = projection.name();
    let items: Vec<ParkedView> = sqlx::query_as(
        "SELECT stream_id, version, event_id, error, attempts, parked_at          FROM read_models.parked WHERE projection = $1 ORDER BY stream_id LIMIT $2",
    )
    .bind(name)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM read_models.parked WHERE projection = $1")
            .bind(name)
            .fetch_one(&state.pool)
            .await?;
    Ok(Json(ParkedPage { items, total }))
}

/// The projections crate's errors here are the database's.
fn database(error: projections::Error) -> crate::error::ApiError {
    match error {
        projections::Error::Database(e) => e.into(),
        other => sqlx::Error::Protocol(other.to_string()).into(),
    }
}

/// The process's metrics, OpenMetrics text (operators only): the
/// projections' progress and sagas per state read from the database now,
/// and whatever else the process counts.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text exposition of the process's one registry", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    service::metrics::metrics(State(state.registry.clone())).await
}
