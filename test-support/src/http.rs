//! HTTP over a real socket: a client for a server on port 0, and the
//! assertions on answers both APIs share (RFC 9457 problems, JSON bodies).

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::eventually;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    pub http: reqwest::Client,
    /// `http://{address}`.
    pub base: String,
}

impl Client {
    pub fn new(address: SocketAddr) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: format!("http://{address}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET that must answer 200 with a request id; returns the JSON body
    /// (or the text, as a JSON string, when it is not JSON).
    pub async fn get(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.expect("request");
        let status = response.status();
        assert!(response.headers().contains_key("x-request-id"));
        let body = response.text().await.expect("body");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    }

    /// GETs `path` until `done` holds for its JSON body; returns that body.
    pub async fn get_until(
        &self,
        path: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let done = &done;
        eventually(
            &format!("GET {path} to get there"),
            within,
            Duration::from_millis(50),
            move || async move {
                let response = self
                    .http
                    .get(self.url(path))
                    .send()
                    .await
                    .expect("request sent");
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if done(&body) {
                    Ok(body)
                } else {
                    Err(body)
                }
            },
        )
        .await
    }

    /// POSTs a JSON body, with an `Idempotency-Key` if given; the status and
    /// the JSON body (`null` when there is none).
    pub async fn post(&self, path: &str, body: &Value, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Asserts a problem+json answer with `status` and `code`; returns its body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(
        response.status(),
        status,
        "unexpected status for an expected {code}"
    );
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with(PROBLEM_JSON),
        "content type {content_type:?} for {code}"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "problem: {body}");
    assert_eq!(body["status"], status.as_u16(), "problem: {body}");
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem without {field}: {body}");
    }
    body
}

/// The body of a successful JSON answer.
pub async fn assert_json(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let body = response.text().await.expect("body");
    assert_eq!(actual, status, "body: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

/// A place-order body in EUR, to Ana in Madrid (`country`), for a new
/// customer and account.
pub fn order_body(lines: Value) -> Value {
    order_body_for(Uuid::now_v7(), Uuid::now_v7(), lines, "ES")
}

/// A place-order body in EUR for `customer` on `account`, to Ana in Madrid,
/// `country`.
pub fn order_body_for(customer: Uuid, account: Uuid, lines: Value, country: &str) -> Value {
    json!({
        "customer_id": customer,
        "account_id": account,
        "currency": "EUR",
        "lines": lines,
        "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                             "postal_code": "28013", "country": country}
    })
}
