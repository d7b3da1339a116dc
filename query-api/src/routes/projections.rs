//! `GET /projections`: each projection's progress ([`projections::status`]:
//! head and lag computed from the event store, not from Kafka watermarks);
//! `GET /metrics`: the process's registry (`service::metrics`).

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use projections::status::ProjectionStatus;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::error::Result;
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
                started_at: rebuild.started_at,
                updated_at: rebuild.updated_at,
            }),
        }
    }
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
