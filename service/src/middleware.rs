//! Middleware both HTTP APIs put in front of their routes: the request id
//! and load shedding.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::problem::Problem;

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
/// response. Everything below sees only a valid id.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(&REQUEST_ID) {
        Some(id) if is_valid_request_id(id.as_bytes()) => id.clone(),
        _ => fresh_request_id(),
    };
    request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    response
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
            let response = next.run(request).await;
            drop(permit);
            response
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
