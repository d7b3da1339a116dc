//! One error type for every failure the Command API answers with, rendered as
//! RFC 9457 problem details (`application/problem+json`).
//!
//! 4xx details describe what was wrong with the request. 5xx details are
//! generic: the cause is logged (inside the request's span, so with its
//! request id) and never sent.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::{DomainError, ErrorKind};
pub use service::{problem_response, Problem, PROBLEM_JSON};

/// Everything the Command API can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON (400 `malformed_json`).
    #[error("{0}")]
    MalformedJson(String),
    /// The JSON does not have the command's shape: wrong types, unknown or
    /// missing fields (400 `invalid_body`).
    #[error("{0}")]
    InvalidBody(String),
    /// An id (path or body) is not a valid id (400 `invalid_id`).
    #[error("{0}")]
    InvalidId(String),
    /// A request header is malformed (400 `invalid_header`).
    #[error("{0}")]
    InvalidHeader(String),
    /// The body is not declared as JSON (415 `unsupported_media_type`).
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// The body exceeds the limit (413 `payload_too_large`).
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A well-formed value outside what the domain accepts: a zero amount, a
    /// malformed SKU, too many order lines... (422 with a specific code).
    #[error("{detail}")]
    Validation { code: &'static str, detail: String },
    /// The domain refused the command (404, 409 or 422 with the domain's code).
    #[error("{detail}")]
    Domain {
        kind: ErrorKind,
        code: &'static str,
        detail: String,
    },
    /// `If-Match` did not match the aggregate's version (412 `version_mismatch`).
    #[error("If-Match expected version {expected}, but the aggregate is at version {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// Concurrent writers kept winning through every retry (409 `concurrency_conflict`).
    #[error(
        "the aggregate was modified concurrently {attempts} times in a row; retry the request"
    )]
    Conflict { attempts: u32 },
    /// The `Idempotency-Key` was used before for another request (422 `idempotency_key_reused`).
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// Too many orders wait for their saga to start (503 `saga_backlog`,
    /// `Retry-After`): a new order is not accepted.
    #[error("{orders} orders wait for their saga to start (the limit is {limit}); retry later")]
    Backlogged { orders: u64, limit: u64 },
    /// The request did not finish in time (503 `timeout`).
    #[error("the request did not complete within {0:?}")]
    Timeout(Duration),
    /// A dependency is down (503 `service_unavailable`); the source is logged.
    #[error("{detail}")]
    Unavailable {
        detail: String,
        checks: Option<serde_json::Map<String, serde_json::Value>>,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A bug or an unexpected failure (500 `internal_error`); the source is
    /// logged, never sent.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Any other HTTP-level status (unknown route, wrong method...).
    #[error("{detail}")]
    Status { status: StatusCode, detail: String },
}

impl ApiError {
    /// A domain refusal, mapped by its kind.
    pub fn domain<E: DomainError>(error: &E) -> ApiError {
        ApiError::Domain {
            kind: error.kind(),
            code: error.code(),
            detail: error.to_string(),
        }
    }

    /// A 422 for a value the domain does not accept.
    pub fn validation(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::Validation {
            code,
            detail: detail.into(),
        }
    }

    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ApiError {
        ApiError::Internal(error.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::InvalidBody(_)
            | ApiError::InvalidId(_)
            | ApiError::InvalidHeader(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation { .. } | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Domain { kind, .. } => match kind {
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::AlreadyExists => StatusCode::CONFLICT,
                ErrorKind::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Timeout(_) | ApiError::Unavailable { .. } | ApiError::Backlogged { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Status { status, .. } => *status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidId(_) => "invalid_id",
            ApiError::InvalidHeader(_) => "invalid_header",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Validation { code, .. } | ApiError::Domain { code, .. } => code,
            ApiError::VersionMismatch { .. } => "version_mismatch",
            ApiError::Conflict { .. } => "concurrency_conflict",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::Timeout(_) => "timeout",
            ApiError::Backlogged { .. } => "saga_backlog",
            ApiError::Unavailable { .. } => "service_unavailable",
            ApiError::Internal(_) => "internal_error",
            ApiError::Status { status, .. } => status_code_name(*status),
        }
    }

    /// The problem details sent for this error. For 5xx the detail is
    /// generic; `ApiError::log` records the cause.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let code = self.code();
        let detail = match self {
            ApiError::Internal(_) => {
                "the server failed to handle the request; it has been logged under the request id"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let checks = match self {
            ApiError::Unavailable { checks, .. } => checks.clone(),
            _ => None,
        };
        Problem::new(status, code, title(code), detail).with_checks(checks)
    }

    /// The problem as a JSON value (what an idempotency record stores).
    pub fn problem_json(&self) -> serde_json::Value {
        serde_json::to_value(self.problem()).unwrap_or(serde_json::Value::Null)
    }

    /// Logs server-side failures with their cause (inside the request span,
    /// so with its request id).
    fn log(&self) {
        match self {
            ApiError::Internal(source) => {
                tracing::error!(error = %source, error_debug = ?source, "internal error");
            }
            ApiError::Unavailable {
                detail,
                source: Some(source),
                ..
            } => {
                tracing::error!(error = %source, detail, "dependency unavailable");
            }
            ApiError::Unavailable { detail, .. } => tracing::warn!(detail, "unavailable"),
            ApiError::Timeout(limit) => tracing::warn!(?limit, "request timed out"),
            ApiError::Backlogged { orders, limit } => {
                tracing::warn!(orders, limit, "order refused: saga backlog");
            }
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    /// The problem's body is rendered from its JSON value, as an idempotency
    /// record stores it, so a replay is the same bytes as the first answer.
    fn into_response(self) -> Response {
        self.log();
        self.problem().respond(&self.problem_json())
    }
}

impl From<event_store::Error> for ApiError {
    fn from(error: event_store::Error) -> Self {
        match error {
            event_store::Error::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            event_store::Error::Conflict { .. } => ApiError::Conflict { attempts: 1 },
            event_store::Error::Database(source) => database_error(source),
            other => ApiError::internal(other),
        }
    }
}

impl<E: DomainError> From<event_store::ExecuteError<E>> for ApiError {
    fn from(error: event_store::ExecuteError<E>) -> Self {
        match error {
            event_store::ExecuteError::PreconditionFailed { expected, actual } => {
                ApiError::VersionMismatch { expected, actual }
            }
            event_store::ExecuteError::ConflictRetriesExhausted { attempts } => {
                ApiError::Conflict { attempts }
            }
            event_store::ExecuteError::Store(error) => error.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// Connection-level database failures are a dependency being down (503);
/// anything else is a bug (500).
pub(crate) fn database_error(source: sqlx::Error) -> ApiError {
    match source {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => ApiError::Unavailable {
            detail: "the database is unavailable".to_owned(),
            checks: None,
            source: Some(Box::new(source)),
        },
        other => ApiError::internal(other),
    }
}

/// `insufficient_funds` -> `Insufficient funds`.
fn title(code: &str) -> String {
    let mut title = code.replace('_', " ");
    if let Some(first) = title.get(0..1) {
        let upper = first.to_ascii_uppercase();
        title.replace_range(0..1, &upper);
    }
    title
}

/// A code for a bare HTTP status (`not_found`, `method_not_allowed`...).
pub(crate) fn status_code_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PRECONDITION_FAILED => "precondition_failed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request_header_fields_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
        s if s.is_server_error() => "internal_error",
        _ => "http_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_humanised_codes() {
        assert_eq!(title("insufficient_funds"), "Insufficient funds");
        assert_eq!(title(""), "");
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let error = ApiError::internal("relation \"event_store.events\" does not exist");
        let problem = error.problem();
        assert_eq!(problem.status, 500);
        assert_eq!(problem.code, "internal_error");
        assert!(!problem.detail.contains("relation"), "{}", problem.detail);
    }

    #[test]
    fn database_outages_are_503_without_details() {
        let error = database_error(sqlx::Error::PoolTimedOut);
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
        let problem = error.problem();
        assert_eq!(problem.detail, "the database is unavailable");
        let response = error.into_response();
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
        assert_eq!(
            response.headers()[axum::http::header::CONTENT_TYPE],
            PROBLEM_JSON
        );
    }
}
