//! The Query API's router driven without a socket, over a [`Harness`]'s
//! database.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use query_api::{router, AppState, Progress};
use tower::ServiceExt;

use crate::Harness;

/// An answer of the router, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON, `null` when it is not JSON.
    pub json: serde_json::Value,
    pub text: String,
}

impl Harness {
    /// The Query API's state over this database, polling progress every `poll`.
    pub fn state(&self, poll: Duration) -> AppState {
        AppState::new(self.db.pool.clone(), Progress::new(poll))
    }

    /// One GET through the router, no socket.
    pub async fn get(&self, uri: &str) -> Response {
        self.get_with(self.state(Duration::from_millis(50)), uri)
            .await
    }

    /// [`Harness::get`] with this state.
    pub async fn get_with(&self, state: AppState, uri: &str) -> Response {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        send(state, request).await
    }
}

/// One request through the router, no socket.
pub async fn send(state: AppState, request: Request<Body>) -> Response {
    send_with(state, service::auth::Access::insecure(), request).await
}

/// One request through the router as `access` lets callers in.
pub async fn send_with(
    state: AppState,
    access: service::auth::Access,
    request: Request<Body>,
) -> Response {
    let response = router(state, access)
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Response {
        status,
        headers,
        json,
        text,
    }
}

/// Asserts an RFC 9457 problem with `status` and `code`.
pub fn assert_problem(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status.as_u16(), status, "{}", response.text);
    assert_eq!(
        response.headers.get("content-type").expect("content type"),
        "application/problem+json",
        "{}",
        response.text
    );
    assert_eq!(response.json["status"], status);
    assert_eq!(response.json["code"], code, "{}", response.text);
    assert!(response.json["type"].is_string() && response.json["title"].is_string());
    assert!(response.json["detail"].is_string());
}
