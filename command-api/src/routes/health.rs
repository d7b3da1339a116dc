//! `GET /health/live`, `GET /health/ready`, `GET /metrics`.

use std::time::Duration;

use axum::extract::State;

use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// How long the readiness check waits for the database.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer of the health checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    /// The state of each check (`ok`).
    #[schema(value_type = Object)]
    pub checks: serde_json::Map<String, serde_json::Value>,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: serde_json::Map::new(),
    })
}

/// 200 when the database answers (and, in `purser serve`, every other
/// component of the process is ready), else 503 naming the failed check.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "`service_unavailable`: a dependency is down, or (purser serve) a component is not ready; checks names it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let check = tokio::time::timeout(
        DATABASE_CHECK_TIMEOUT,
        sqlx::query("SELECT 1")
            // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
            .persistent(false)
            .execute(state.store().pool()),
    )
    .await;
    let failure: Option<Box<dyn std::error::Error + Send + Sync>> = match check {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(Box::new(error)),
        Err(elapsed) => Some(Box::new(elapsed)),
    };
    let mut checks = serde_json::Map::new();
    if let Some(source) = failure {
        checks.insert("database".to_owned(), "failed".into());
        return Err(ApiError::Unavailable {
            detail: "check failed: database".to_owned(),
            checks: Some(checks),
            source: Some(source),
        });
    }
    checks.insert("database".to_owned(), "ok".into());
    let components = state.readiness().components();
    if components.is_empty() {
        return Ok(Json(Health {
            status: "ok",
            checks,
        }));
    }
    let mut each = serde_json::Map::new();
    for (name, ready) in &components {
        each.insert(
            (*name).to_owned(),
            if *ready { "ok" } else { "starting" }.into(),
        );
    }
    checks.insert("components".to_owned(), each.into());
    for (name, shown) in state.readiness().details() {
        checks.insert(name.to_owned(), shown.into());
    }
    let pending = state.readiness().pending();
    if pending.is_empty() {
        Ok(Json(Health {
            status: "ok",
            checks,
        }))
    } else {
        Err(ApiError::Unavailable {
            detail: format!("not ready: {}", pending.join(", ")),
            checks: Some(checks),
            source: None,
        })
    }
}

/// The process's metrics, OpenMetrics text (operators only).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "OpenMetrics text exposition of the process's one registry", body = String,
               content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
    extensions(("x-purser-roles" = json!(["operator"]))))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    service::metrics::metrics(State(state.metrics().registry().clone())).await
}
