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
        (status = 200, description = "The database is reachable", body = Health),
        (status = 503, description = "A check failed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>> {
    let check = tokio::time::timeout(
        READY_TIMEOUT,
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool),
    )
    .await;
    let failure = match check {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("no answer within {READY_TIMEOUT:?}")),
    };
    let mut checks = serde_json::Map::new();
    match failure {
        None => {
            checks.insert("database".to_owned(), "ok".into());
            Ok(Json(Health {
                status: "ready".to_owned(),
                checks,
            }))
        }
        Some(error) => {
            tracing::warn!(error, "readiness: database check failed");
            checks.insert("database".to_owned(), "unreachable".into());
            Err(ApiError::Unavailable {
                detail: "the database is unreachable".to_owned(),
                checks: Some(checks),
            })
        }
    }
}
