//! RFC 9457 problem details: the body of every error the HTTP APIs answer
//! with. 4xx details describe what was wrong with the request; 5xx details
//! are generic (each API logs the cause inside the request's span, so with
//! its request id, and never sends it) and carry that `request_id`
//! ([`crate::middleware::request_id`] adds it).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `Retry-After` (seconds) sent with every 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// An RFC 9457 problem details object, as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI reference identifying the problem type: `urn:purser:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable machine-readable code, e.g. `insufficient_funds`.
    pub code: String,
    /// For `GET /health/ready`: the state of each check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub checks: Option<serde_json::Map<String, serde_json::Value>>,
    /// On a 5xx: the request's id (also its `x-request-id`), under which the
    /// cause was logged; quote it when reporting the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Problem {
    /// A problem of type `urn:purser:problem:<code>`.
    pub fn new(
        status: StatusCode,
        code: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            problem_type: format!("urn:purser:problem:{code}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            checks: None,
            request_id: None,
        }
    }

    /// With the state of each check (`GET /health/ready`).
    pub fn with_checks(
        mut self,
        checks: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Self {
        self.checks = checks;
        self
    }

    /// The status as an HTTP status (500 if the number is not one).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The problem answered to a request: its body as `body` renders it (the
    /// problem itself, or the JSON value an idempotency record stored), and
    /// a `Retry-After` when the status is 503.
    pub fn respond(&self, body: &impl Serialize) -> Response {
        let status = self.status_code();
        let mut response = problem_response(status, body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.respond(&self)
    }
}

/// A response with `body` as its problem+json body (no other header).
pub fn problem_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_503_says_when_to_retry_and_others_do_not() {
        let unavailable = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "Timeout",
            "too slow",
        )
        .into_response();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.headers()[header::RETRY_AFTER], "1");
        assert_eq!(unavailable.headers()[header::CONTENT_TYPE], PROBLEM_JSON);

        let missing =
            Problem::new(StatusCode::NOT_FOUND, "not_found", "Not Found", "no").into_response();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn the_body_has_the_rfc_9457_members_and_the_code() {
        let problem = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "insufficient_funds",
            "Insufficient funds",
            "the balance is 5",
        );
        let body = serde_json::to_value(&problem).expect("serialisable");
        assert_eq!(
            body,
            serde_json::json!({
                "type": "urn:purser:problem:insufficient_funds",
                "title": "Insufficient funds",
                "status": 422,
                "detail": "the balance is 5",
                "code": "insufficient_funds",
            })
        );
    }
}
