//! The gateway: a real nginx running `deploy/nginx/purser.conf.template` as
//! `scripts/lib.sh` renders it (with the development certificate the script
//! makes), on free ports, in front of real `purser command-api` and
//! `purser query-api` processes or of addresses where nothing listens.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use test_support::{eventually, TestDatabase};
use tokio::process::{Child, Command};
use uuid::Uuid;

use test_support::gateway::{free_port, Gateway, Settings};

use crate::{DEADLINE, PURSER};

const REQUEST_ID: &str = "x-request-id";

/// A `purser` service process on a free port, killed on drop.
struct Service {
    _child: Child,
    port: u16,
    /// The key pair whose JWKS the service verifies tokens with.
    _keys: tempfile::TempDir,
}

impl Service {
    async fn start(db: &TestDatabase, args: &[&str]) -> Service {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let keys = tempfile::tempdir().expect("temporary directory");
        auth::init_keys(keys.path()).expect("auth init");
        let child = Command::new(PURSER)
            .args(args)
            .arg(&address)
            .args(["--database-url", &db.url])
            .env("RUST_LOG", "warn")
            .env("PURSER_AUTH_JWKS", keys.path().join(auth::JWKS_FILE))
            .env_remove("PURSER_INSECURE_NO_AUTH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("purser starts");
        let client = client();
        let live = format!("http://{address}/health/live");
        eventually(
            "the service to be live",
            DEADLINE,
            Duration::from_millis(50),
            || {
                let request = client.get(&live).send();
                async move {
                    match request.await {
                        Ok(response) if response.status() == StatusCode::OK => Ok(()),
                        Ok(response) => Err(response.status().to_string()),
                        Err(error) => Err(error.to_string()),
                    }
                }
            },
        )
        .await;
        Service {
            _child: child,
            port,
            _keys: keys,
        }
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// A client whose requests come from `address` (another loopback address is
/// another client to the gateway).
fn client_from(address: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(address))
        .build()
        .expect("client")
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .expect("x-request-id on every answer")
        .to_str()
        .expect("ASCII")
        .to_owned()
}

/// Checks a gateway answer is the problem+json of `status`, with an
/// x-request-id; returns the request id.
async fn assert_problem(response: reqwest::Response, status: StatusCode) -> String {
    problem_of(response, status).await.0
}

/// [`assert_problem`], returning the request id and the problem's `code`.
async fn problem_of(response: reqwest::Response, status: StatusCode) -> (String, String) {
    assert_eq!(response.status(), status);
    let headers = response.headers().clone();
    assert_eq!(
        headers.get(CONTENT_TYPE).map(|v| v.to_str().unwrap()),
        Some("application/problem+json")
    );
    let id = request_id(&headers);
    let body: serde_json::Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status.as_u16());
    for field in ["type", "title", "detail", "code"] {
        assert!(body[field].is_string(), "{field} in {body}");
    }
    if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
        assert_eq!(
            headers.get("retry-after").map(|v| v.to_str().unwrap()),
            Some("1"),
            "Retry-After on {status}"
        );
    }
    (id, body["code"].as_str().unwrap_or_default().to_owned())
}

/// The upstream address(es) nginx tried, from a log line.
fn upstream(line: &str) -> &str {
    let start = line.find("upstream=").expect("upstream field") + "upstream=".len();
    let end = line[start..]
        .find(" upstream_status=")
        .expect("upstream_status field");
    &line[start..start + end]
}

#[tokio::test]
async fn methods_reach_their_service_through_http_and_tls_and_a_dead_instance_is_skipped() {
    let db = TestDatabase::create().await;
    let command = Service::start(&db, &["command-api", "--bind"]).await;
    let query = Service::start(&db, &["query-api", "--query-api-addr"]).await;
    // Each service has a second instance that is down.
    let gateway = Gateway::start(Settings::to(
        vec![free_port(), command.port],
        vec![free_port(), query.port],
    ))
    .await;
    let client = client();
    let command_at = format!("127.0.0.1:{}", command.port);
    let query_at = format!("127.0.0.1:{}", query.port);

    // GET and HEAD go to the Query API; without a client id, the gateway
    // makes one, passes it on, and the service answers with it.
    for method in [Method::GET, Method::HEAD] {
        for _ in 0..3 {
            let response = client
                .request(method.clone(), gateway.url("/health/live"))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::OK, "{method}");
            let id = request_id(response.headers());
            assert_eq!(id.len(), 32, "nginx's $request_id: {id}");
            let line = gateway.log_line(&id).await;
            assert!(
                upstream(&line).ends_with(&query_at),
                "{method} went to the Query API: {line}"
            );
            assert!(!upstream(&line).contains(&command_at), "{line}");
            assert!(line.contains("upstream_response_time="), "{line}");
            assert!(!line.ends_with("upstream_response_time=-"), "{line}");
        }
    }

    // POST goes to the Command API, with the client's request id and its
    // Authorization header passed through.
    for n in 0..3 {
        let id = format!("gateway-test.{n}:{}", Uuid::new_v4());
        let response = client
            .post(gateway.url("/accounts"))
            .header(REQUEST_ID, &id)
            .header("authorization", "Bearer not-a-real-token")
            .json(&serde_json::json!({ "currency": "EUR", "customer_id": Uuid::now_v7() }))
            .send()
            .await
            .expect("request");
        // 201, or 401 where the Command API verifies tokens.
        assert!(
            matches!(response.status().as_u16(), 201 | 401),
            "the Command API answered: {}",
            response.status()
        );
        assert_eq!(
            request_id(response.headers()),
            id,
            "the service got the client's id"
        );
        let line = gateway.log_line(&id).await;
        assert!(
            upstream(&line).ends_with(&command_at),
            "POST went to the Command API: {line}"
        );
        assert!(!upstream(&line).contains(&query_at), "{line}");
    }

    // Any other method is the gateway's 405.
    for method in [Method::PUT, Method::DELETE, Method::PATCH] {
        let response = client
            .request(method, gateway.url("/accounts"))
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.headers().get("allow").map(|v| v.to_str().unwrap()),
            Some("GET, HEAD, POST")
        );
        assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    }

    // TLS with the development certificate (curl: the tests' reqwest is
    // built without TLS).
    let url = format!("https://127.0.0.1:{}/health/live", gateway.https);
    let cert = gateway.dir.join("cert.pem");
    let trusted = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&cert)
        .arg(&url)
        .output()
        .await
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&trusted.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let untrusted = Command::new("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(&url)
        .output()
        .await
        .expect("curl");
    assert!(
        !untrusted.status.success(),
        "an unknown certificate is refused"
    );
}

#[tokio::test]
async fn a_service_down_is_a_502_problem_with_a_request_id() {
    let gateway = Gateway::start(Settings::to(vec![free_port()], vec![free_port()])).await;
    let client = client();
    let response = client
        .get(gateway.url("/accounts/whatever"))
        .send()
        .await
        .expect("request");
    assert_problem(response, StatusCode::BAD_GATEWAY).await;
    let response = client
        .post(gateway.url("/accounts"))
        .header(REQUEST_ID, "client-chosen-1")
        .json(&serde_json::json!({ "currency": "EUR" }))
        .send()
        .await
        .expect("request");
    let id = assert_problem(response, StatusCode::BAD_GATEWAY).await;
    assert_eq!(id, "client-chosen-1");
    // An id that is not 1 to 128 of [A-Za-z0-9._:-] is replaced.
    let response = client
        .post(gateway.url("/accounts"))
        .header(REQUEST_ID, "not valid!")
        .json(&serde_json::json!({ "currency": "EUR" }))
        .send()
        .await
        .expect("request");
    let id = assert_problem(response, StatusCode::BAD_GATEWAY).await;
    assert_eq!(id.len(), 32, "a fresh id: {id}");
}

#[tokio::test]
async fn bodies_over_64_kib_are_a_413_problem_and_never_reach_a_service() {
    let gateway = Gateway::start(Settings::to(vec![free_port()], vec![free_port()])).await;
    let client = client();
    let response = client
        .post(gateway.url("/accounts"))
        .header(CONTENT_TYPE, "application/json")
        .body(vec![b' '; 64 * 1024 + 1])
        .send()
        .await
        .expect("request");
    let id = assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    let line = gateway.log_line(&id).await;
    assert_eq!(upstream(&line), "-", "no service was asked: {line}");

    // 64 KiB exactly goes on (here to a service that is down).
    let response = client
        .post(gateway.url("/accounts"))
        .header(CONTENT_TYPE, "application/json")
        .body(vec![b' '; 64 * 1024])
        .send()
        .await
        .expect("request");
    assert_problem(response, StatusCode::BAD_GATEWAY).await;
}

#[tokio::test]
async fn requests_over_an_address_rate_are_a_429_problem_and_other_addresses_go_on() {
    let gateway = Gateway::start(Settings {
        rate: "1r/m",
        burst: 2,
        ..Settings::to(vec![free_port()], vec![free_port()])
    })
    .await;
    let limited = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = limited
            .get(gateway.url("/health/live"))
            .send()
            .await
            .expect("request");
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            // The services' code for "slow down": one code, whoever limits.
            let (_, code) = problem_of(response, StatusCode::TOO_MANY_REQUESTS).await;
            assert_eq!(code, "rate_limited");
        }
    }
    // One request and a burst of two pass (to a service that is down).
    assert_eq!(statuses, [502, 502, 502, 429, 429, 429]);

    // Another address has a rate of its own.
    let other = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let response = other
        .get(gateway.url("/health/live"))
        .send()
        .await
        .expect("request");
    assert_problem(response, StatusCode::BAD_GATEWAY).await;
}
