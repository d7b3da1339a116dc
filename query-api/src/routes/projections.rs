//! `GET /projections` and `GET /metrics`: each projection's progress
//! ([`projections::status`]: head and lag computed from the event store, not
//! from Kafka watermarks), and (`/metrics`) the sagas per state.

use std::fmt::Write as _;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
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
    responses((status = 200, description = "Every projection's progress", body = [ProjectionView]))
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

#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"))
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response> {
    let views = statuses(&state.pool).await?;
    let sagas = crate::routes::sagas::counts_by_state(&state.pool).await?;
    let now = Instant::now();
    let rates: Vec<f64> = {
        let mut samples = state
            .applied_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        views
            .iter()
            .map(|v| {
                let previous = samples.insert(v.name.clone(), (now, v.events_applied));
                match previous {
                    Some((then, applied)) if now > then => {
                        (v.events_applied - applied).max(0) as f64 / (now - then).as_secs_f64()
                    }
                    _ => 0.0,
                }
            })
            .collect()
    };
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(usize) -> String| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (i, v) in views.iter().enumerate() {
            let _ = writeln!(out, "{name}{{projection=\"{}\"}} {}", v.name, value(i));
        }
    };
    family(
        "purser_projection_lag_events",
        "gauge",
        "Events of the projection's stream types in the event store not yet applied.",
        &|i| views[i].lag_events.to_string(),
    );
    family(
        "purser_projection_checkpoint_position",
        "gauge",
        "Highest global event-store position the projection has applied.",
        &|i| views[i].checkpoint.to_string(),
    );
    family(
        "purser_projection_head_position",
        "gauge",
        "Highest global event-store position among the projection's stream types.",
        &|i| views[i].head.to_string(),
    );
    family(
        "purser_projection_events_applied_total",
        "counter",
        "Events applied to the read model.",
        &|i| views[i].events_applied.to_string(),
    );
    family(
        "purser_projection_apply_rate",
        "gauge",
        "Events applied per second since the previous scrape.",
        &|i| format!("{:.3}", rates[i]),
    );
    family(
        "purser_projection_rebuild_running",
        "gauge",
        "1 while a rebuild of the projection runs.",
        &|i| u8::from(views[i].rebuild.as_ref().is_some_and(|r| r.running)).to_string(),
    );
    family(
        "purser_projection_rebuild_events_done",
        "gauge",
        "Events replayed by the projection's rebuild not swapped in yet (0 without one).",
        &|i| {
            views[i]
                .rebuild
                .as_ref()
                .map_or(0, |r| r.events_done)
                .to_string()
        },
    );
    family(
        "purser_projection_parked_streams",
        "gauge",
        "Streams parked by a poison event (their later events wait).",
        &|i| views[i].parked_streams.to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP purser_sagas Order-fulfilment sagas per state, from the sagas read model."
    );
    let _ = writeln!(out, "# TYPE purser_sagas gauge");
    for (saga_state, count) in sagas {
        let _ = writeln!(out, "purser_sagas{{state=\"{saga_state}\"}} {count}");
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response())
}
