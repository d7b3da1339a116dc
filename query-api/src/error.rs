//! One error type for every failure the Query API answers with, rendered as
//! RFC 9457 problem details (`application/problem+json`). 5xx details are
//! generic: the cause is logged inside the request's span (with its request
//! id), never sent.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
pub use service::{Problem, PROBLEM_JSON};

/// Everything the Query API can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A path id is not a valid id or SKU (400 `invalid_id`).
    #[error("{0}")]
    InvalidId(String),
    /// A query parameter is malformed or unknown (400 `invalid_query`).
    #[error("{0}")]
    InvalidQuery(String),
    /// `after` is not a cursor this API gave out (400 `invalid_cursor`).
    #[error("{0}")]
    InvalidCursor(String),
    /// No such entity in the read model (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The read model did not reach `min_version` within `wait_ms` (503
    /// `min_version_timeout`).
    #[error("the read model did not reach version {min_version} within {waited:?}; retry later")]
    MinVersionTimeout { min_version: u64, waited: Duration },
    /// The request did not finish in time (503 `timeout`).
    #[error("the request did not complete within {0:?}")]
    Timeout(Duration),
    /// Too many requests at once (503 `overloaded`).
    #[error("{0}")]
    Overloaded(String),
    /// A dependency is down (503 `service_unavailable`).
    #[error("{detail}")]
    Unavailable {
        detail: String,
        checks: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// The database failed: 503 if it is unreachable, 500 otherwise; the
    /// cause is logged, never sent.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Any other HTTP-level status (unknown route, wrong method...).
    #[error("{detail}")]
    Status { status: StatusCode, detail: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidId(_) | ApiError::InvalidQuery(_) | ApiError::InvalidCursor(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MinVersionTimeout { .. }
            | ApiError::Timeout(_)
            | ApiError::Overloaded(_)
            | ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(e) if is_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Status { status, .. } => *status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidId(_) => "invalid_id",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::InvalidCursor(_) => "invalid_cursor",
            ApiError::NotFound(_) => "not_found",
            ApiError::MinVersionTimeout { .. } => "min_version_timeout",
            ApiError::Timeout(_) => "timeout",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unavailable { .. } => "service_unavailable",
            ApiError::Database(e) if is_unavailable(e) => "service_unavailable",
            ApiError::Database(_) => "internal_error",
            ApiError::Status { status, .. } => match *status {
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::NOT_FOUND => "not_found",
                StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                s if s.is_server_error() => "internal_error",
                _ => "bad_request",
            },
        }
    }

    /// The problem details sent for this error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let code = self.code();
        let detail = match self {
            ApiError::Database(e) if is_unavailable(e) => "the database is unavailable".to_owned(),
            ApiError::Database(_) => {
                "the server failed to handle the request; it has been logged under the request id"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let checks = match self {
            ApiError::Unavailable { checks, .. } => checks.clone(),
            _ => None,
        };
        let title = status.canonical_reason().unwrap_or("Error");
        Problem::new(status, code, title, detail).with_checks(checks)
    }

    fn log(&self) {
        match self {
            ApiError::Database(e) => {
                tracing::error!(error = %e, error_debug = ?e, "database error")
            }
            ApiError::Unavailable { detail, .. } => tracing::warn!(detail, "unavailable"),
            ApiError::Timeout(limit) => tracing::warn!(?limit, "request timed out"),
            ApiError::Overloaded(detail) => tracing::warn!(detail, "overloaded"),
            ApiError::MinVersionTimeout {
                min_version,
                waited,
            } => {
                tracing::info!(min_version, ?waited, "min_version wait timed out");
            }
            _ => {}
        }
    }
}

/// Connection-level failures: the database is down or out of connections.
fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        self.problem().into_response()
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;
