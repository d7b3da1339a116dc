//! The middleware stack, outermost first: request id, trace span, request id
//! propagation, metrics (`service::metrics::record_requests`), problem+json for bare errors, timeout, body limit.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::trace::{MakeSpan, OnResponse};
use tracing::Span;

use crate::error::{ApiError, PROBLEM_JSON};
use crate::extract::REQUEST_ID;
use crate::state::AppState;

/// The route label of a request that matched no route.
pub use service::metrics::UNMATCHED_ROUTE;

fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
}

/// One span per request: method, matched route, request id; status and
/// latency are recorded when the response is ready.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> Span {
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            route = route_of(request),
            path = request.uri().path(),
            request_id,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // A caller's W3C trace context: the request joins its trace.
        if let Some(parent) = request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
        {
            event_store::trace::set_parent(&span, parent);
        }
        event_store::trace::record_ids(&span);
        span
    }
}

/// Records status and latency on the span and logs the request's end.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestEnd;

impl<B> OnResponse<B> for RequestEnd {
    fn on_response(self, response: &axum::http::Response<B>, latency: Duration, span: &Span) {
        let status = response.status().as_u16();
        span.record("status", status);
        span.record("latency_ms", latency.as_secs_f64() * 1000.0);
        if response.status().is_server_error() {
            tracing::warn!(status, "request failed");
        } else {
            tracing::info!(status, "request finished");
        }
    }
}

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
