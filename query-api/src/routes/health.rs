//! `GET /health/live` and `GET /health/ready`.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, Problem, Result};
use crate::state::AppState;

/// How long the readiness check waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `live` or `ready`.
    pub status: String,
    /// The state of each check (`ok`).
    #[schema(value_type = Object)]
    pub checks: serde_json::Map<String, serde_json::Value>,
}

#[utoipa::path(
    get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process runs", body = Health))
)]
pub async fn live() -> Json<Health> {
    Json(Health {
        status: "live".to_owned(),
        checks: serde_json::Map::new(),
    })
}

#[utoipa::path(
    get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "The database answers, and every projection has a worker consuming that has applied what the event store held when it joined (in purser serve, every component is ready too)", body = Health),
        (status = 503, description = "`service_unavailable`: a check failed; checks says which (database, each projection: no_worker or catching_up, each component of the process)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>> {
    let check = tokio::time::timeout(
        READY_TIMEOUT,
        projections::readiness::check(&state.pool, &state.projections),
    )
    .await;
    let mut checks = serde_json::Map::new();
    let projections = match check {
        Ok(Ok(projections)) => projections,
        failed => {
            let error = match failed {
                Ok(Err(error)) => error.to_string(),
                _ => format!("no answer within {READY_TIMEOUT:?}"),
            };
            tracing::warn!(error, "readiness: database check failed");
            checks.insert("database".to_owned(), "unreachable".into());
            return Err(ApiError::Unavailable {
                detail: "the database is unreachable".to_owned(),
                checks: Some(checks),
            });
        }
    };
    checks.insert("database".to_owned(), "ok".into());
    let mut waiting = Vec::new();
    let mut each = serde_json::Map::new();
    for (name, readiness) in projections {
        if !readiness.is_ready() {
            waiting.push(format!("projection {name} ({})", readiness.as_str()));
        }
        each.insert(name, readiness.as_str().into());
    }
    checks.insert("projections".to_owned(), each.into());
    if let Some(process) = &state.readiness {
        let mut components = serde_json::Map::new();
        for (name, ready) in process.components() {
            if !ready {
                waiting.push(name.to_owned());
            }
            components.insert(
                name.to_owned(),
                if ready { "ok" } else { "starting" }.into(),
            );
        }
        checks.insert("components".to_owned(), components.into());
        for (name, shown) in process.details() {
            checks.insert(name.to_owned(), shown.into());
        }
    }
    if waiting.is_empty() {
        Ok(Json(Health {
            status: "ready".to_owned(),
            checks,
        }))
    } else {
        Err(ApiError::Unavailable {
            detail: format!("not ready: {}", waiting.join(", ")),
            checks: Some(checks),
        })
    }
}
