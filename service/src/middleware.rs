//! Middleware both HTTP APIs put in front of their routes: the request id,
//! the request's span and load shedding.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultOnBodyChunk, DefaultOnEos, MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

use crate::problem::{Problem, PROBLEM_JSON};

/// The request id header.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id a client may choose.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether `id` may be used as a request id as the client sent it: 1 to 128
/// characters of `[A-Za-z0-9._:-]` (it ends up in logs and as the
/// correlation id of stored events).
pub fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh request id: a UUID v7.
pub fn fresh_request_id() -> HeaderValue {
    HeaderValue::try_from(uuid::Uuid::now_v7().to_string())
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// Keeps the client's `x-request-id` when it is valid, replaces it with a
/// fresh one otherwise (or when there is none), and sends it back on the
/// response. Everything below sees only a valid id. A 5xx problem gets it
/// in its body too (`request_id`): the cause is logged under it, never sent.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(&REQUEST_ID) {
        Some(id) if is_valid_request_id(id.as_bytes()) => id.clone(),
        _ => fresh_request_id(),
    };
    request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    let mut response = next.run(request).await;
    if response.status().is_server_error() && is_problem(&response) {
        response = with_request_id(response, &id).await;
    }
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    response
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
}

/// The problem with `request_id` set (a problem body is small; one that
/// cannot be read or is not an object is left as it was).
async fn with_request_id(response: Response, id: &HeaderValue) -> Response {
    const MAX_PROBLEM: usize = 64 * 1024;
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_PROBLEM).await {
        Ok(bytes) => bytes,
        Err(_) => return Response::from_parts(parts, axum::body::Body::empty()),
    };
    let rewritten = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut problem)) => {
            let id = String::from_utf8_lossy(id.as_bytes()).into_owned();
            problem.insert("request_id".to_owned(), serde_json::Value::String(id));
            serde_json::to_vec(&problem).ok()
        }
        _ => None,
    };
    let bytes = rewritten.map_or(bytes, Into::into);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The request span layer both APIs install: [`RequestSpan`] for each
/// request, closed by [`RequestEnd`].
pub fn request_trace_layer() -> TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    RequestSpan,
    (),
    RequestEnd,
    DefaultOnBodyChunk,
    DefaultOnEos,
    (),
> {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(RequestEnd)
        .on_failure(())
}

/// One span per request (`TraceLayer::make_span_with`): method, matched
/// route, path, request id; status and latency are recorded when the
/// response is ready ([`RequestEnd`]). A caller's W3C `traceparent` header
/// makes it a child of the caller's span, so a command or a read joins the
/// caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> Span {
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(crate::metrics::UNMATCHED_ROUTE, MatchedPath::as_str);
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            route,
            path = request.uri().path(),
            request_id,
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
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

/// Records status and latency on the request's span and logs its end
/// (`TraceLayer::on_response`).
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

/// 413 `payload_too_large` for a request whose `Content-Length` is over
/// `limit` (`from_fn_with_state(limit, content_length_limit)`): for routes
/// that never read a body. Installed on each route inside authentication
/// and the route's role check, so credentials (401) and role (403) are
/// answered first (the API guide's order); a route that reads its body enforces
/// the limit where it reads it (axum's `DefaultBodyLimit`).
pub async fn content_length_limit(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return payload_too_large(limit);
    }
    next.run(request).await
}

/// 413 `payload_too_large`.
pub fn payload_too_large(limit: usize) -> Response {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "Payload Too Large",
        format!("the request body is larger than the limit of {limit} bytes"),
    )
    .into_response()
}

/// How many requests a service handles at once: over it, 503 `overloaded`
/// at once (load shedding), so a burst never queues on the database pool.
/// `/health/*` is exempt: an overloaded service is alive.
#[derive(Debug, Clone)]
pub struct ConcurrencyCap {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConcurrencyCap {
    pub fn new(max: usize) -> Self {
        ConcurrencyCap {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests in flight now (health checks aside).
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

tokio::task_local! {
    /// The place under the [`ConcurrencyCap`] of the request whose handler
    /// runs in this task.
    static PLACE: std::sync::Mutex<Option<OwnedSemaphorePermit>>;
}

/// The request in flight leaves the [`ConcurrencyCap`]: its place is given
/// back now rather than when its response is made. For a request that
/// joins another set with a cap of its own: a `min_version` read that waits
/// for its wake-up, holding no connection, one of the Query API's
/// `--query-api-max-waiters`, which bound its re-reads too. The cap keeps
/// bursts off the database pool; counting those waits in it would shed
/// reads while the pool idles (2 000 reads a second, each 40 ms behind its
/// write, are 80 waits: the default cap), and shed new reads while a
/// batch's worth of woken waits re-read. Outside a request under
/// [`shed_load`], it does nothing.
pub fn leave_the_cap() {
    let _ = PLACE.try_with(|place| place.lock().expect("place lock").take());
}

/// The load-shedding middleware (`from_fn_with_state(cap, shed_load)`).
pub async fn shed_load(
    State(cap): State<ConcurrencyCap>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/health/") {
        return next.run(request).await;
    }
    match Arc::clone(&cap.permits).try_acquire_owned() {
        Ok(permit) => {
            // The place is given back when the response is made, or
            // before ([`leave_the_cap`]).
            let place = std::sync::Mutex::new(Some(permit));
            PLACE.scope(place, next.run(request)).await
        }
        Err(_) => {
            tracing::warn!(
                max = cap.max,
                "over the concurrency cap; shedding a request"
            );
            overloaded(&format!(
                "the service is handling its maximum of {} requests; retry later",
                cap.max
            ))
        }
    }
}

/// 503 `overloaded` with `Retry-After`.
pub fn overloaded(detail: &str) -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Service Unavailable",
        detail,
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_and_plain() {
        assert!(is_valid_request_id(b"abc-123_x.y:z"));
        assert!(is_valid_request_id(&[b'a'; 128]));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(b"has space"));
        assert!(!is_valid_request_id(b"a/b"));
        assert!(!is_valid_request_id("caf\u{e9}".as_bytes()));
        assert!(is_valid_request_id(fresh_request_id().as_bytes()));
    }
}
