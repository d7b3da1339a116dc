//! `GET /projections` and `GET /metrics`: each projection's progress, with
//! head and lag computed from the event store (not from Kafka watermarks),
//! and (`/metrics`) the sagas per state.

use std::fmt::Write as _;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::error::Result;
use crate::state::AppState;

/// A projection's progress.
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
    Ok(Json(projection_views(&state.pool).await?))
}

/// Progress of every projection.
pub async fn projection_views(pool: &PgPool) -> Result<Vec<ProjectionView>> {
    let mut views = Vec::new();
    for projection in projections::all() {
        views.push(projection_view(pool, projection.name(), projection.stream_types()).await?);
    }
    Ok(views)
}

/// A projection's checkpoint, head, lag, parked streams and events applied
/// (`$1` the projection, `$2` its stream types). Stream versions are
/// contiguous from 1, so the events not yet applied are the events of these
/// types minus the versions applied (those a rebuild's replayed checkpoint
/// covers, and beyond them the rows of `applied`, migration 0007): no
/// per-stream grouping of the log. The
/// count and the head come from one index-only scan of the types' entries in
/// `events_stream_type_transaction_position_idx` (migration 0005), not from
/// the table. Public for the test of its plan.
pub const PROGRESS_SQL: &str = "\
SELECT
    coalesce((SELECT last_position FROM read_models.projection_status WHERE projection = $1), 0),
    log.head,
    greatest(log.events
             - coalesce((SELECT replayed_events FROM read_models.projection_status
                         WHERE projection = $1), 0)
             - coalesce((SELECT sum(version - base) FROM read_models.applied
                         WHERE projection = $1), 0),
             0)::bigint,
    (SELECT count(*) FROM read_models.parked WHERE projection = $1),
    coalesce((SELECT events_applied FROM read_models.projection_status WHERE projection = $1), 0)
FROM (SELECT count(*) AS events, coalesce(max(position), 0) AS head
      FROM event_store.events WHERE stream_type = ANY($2)) AS log";

async fn projection_view(
    pool: &PgPool,
    name: &str,
    stream_types: &[&str],
) -> Result<ProjectionView> {
    let types: Vec<String> = stream_types.iter().map(|t| (*t).to_owned()).collect();
    let (checkpoint, head, lag_events, parked_streams, events_applied): (i64, i64, i64, i64, i64) =
        sqlx::query_as(PROGRESS_SQL)
            .bind(name)
            .bind(&types)
            .fetch_one(pool)
            .await?;
    let rebuild = match projections::operations::rebuild_state(pool, name)
        .await
        .map_err(database)?
    {
        Some(state) => Some(RebuildView {
            running: projections::rebuild::is_running(pool, name)
                .await
                .map_err(database)?,
            phase: state.phase,
            events_done: state.events_done,
            started_at: state.started_at,
            updated_at: state.updated_at,
        }),
        None => None,
    };
    let status = if parked_streams > 0 {
        "degraded"
    } else if lag_events > 0 {
        "catching_up"
    } else {
        "up_to_date"
    };
    Ok(ProjectionView {
        name: name.to_owned(),
        checkpoint,
        head,
        lag_events,
        status: status.to_owned(),
        parked_streams,
        events_applied,
        rebuild,
    })
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
    let views = projection_views(&state.pool).await?;
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
