//! The middleware stack, outermost first: request id, trace span
//! (`service::middleware::RequestSpan`), request id propagation, metrics
//! (`service::metrics::record_requests`), problem+json for bare errors,
//! timeout, body limit.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, PROBLEM_JSON};
use crate::state::AppState;

/// The route label of a request that matched no route.
pub use service::metrics::UNMATCHED_ROUTE;

/// Answers 503 when the request takes longer than the configured timeout.
pub async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.request_timeout();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(limit).into_response(),
    }
}

/// Error responses made below the handlers (the body limit's 413, the
/// router's 404 and 405) get the problem+json shape too.
pub async fn problem_for_bare_errors(
    State(state): State<AppState>,
    response: Response,
) -> Response {
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_JSON));
    if !is_error || is_problem {
        return response;
    }
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
            limit: state.body_limit(),
        },
        StatusCode::METHOD_NOT_ALLOWED => ApiError::Status {
            status,
            detail: "this method is not allowed on this resource".to_owned(),
        },
        other => ApiError::Status {
            status: other,
            detail: other
                .canonical_reason()
                .unwrap_or("request failed")
                .to_ascii_lowercase(),
        },
    };
    let (parts, _body) = response.into_parts();
    let mut problem = error.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

/// The fallback: no such route.
pub async fn not_found(request: Request) -> ApiError {
    ApiError::Status {
        status: StatusCode::NOT_FOUND,
        detail: format!("no resource at {}", request.uri().path()),
    }
}
