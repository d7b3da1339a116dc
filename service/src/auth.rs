//! The authentication layer both APIs install (the API guide, "Identity and
//! access"): every protected route needs a valid bearer token, the verified
//! [`Caller`] goes into the request's extensions (`Extension<Caller>` in a
//! handler), and the per-caller and per-address abuse limits answer 429.
//!
//! A router installs [`authenticate`] with `route_layer` over its protected
//! routes only (the open ones, `/health/*`, `/openapi.json`, the console,
//! are added after it), and [`customer_only`] / [`operator_only`] as a
//! `route_layer` of a single route for its role. So a request is answered
//! 401 before 403, and 403 before anything its handler checks (shape,
//! existence, ownership).
//!
//! [`BearerSecurity`] declares the scheme in an OpenAPI document.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use auth::{
    AuthConfig, AuthError, Authenticator, Caller, KeyedLimiter, RateLimitConfig, Role,
    TrustedProxies,
};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::OpenApi;

use crate::problem::Problem;

/// The name of the bearer scheme in the OpenAPI documents.
pub const BEARER_SCHEME: &str = "bearer";

/// How a service decides who is calling and how fast each may go. Cheap to
/// clone (the limiters are shared).
#[derive(Debug, Clone)]
pub struct Access {
    authenticator: Authenticator,
    callers: Arc<KeyedLimiter<String>>,
    failed: Arc<KeyedLimiter<IpAddr>>,
    /// Whose `X-Forwarded-For` / `X-Real-IP` names the client.
    proxies: Arc<TrustedProxies>,
}

impl Access {
    /// Verifies tokens with `authenticator`, limits each caller as
    /// `rate_limit` says and failed authentication per client address.
    /// Under `--insecure-no-auth` every request is one caller, so neither
    /// limit applies.
    pub fn new(authenticator: Authenticator, rate_limit: &RateLimitConfig) -> Access {
        if authenticator.is_insecure() {
            return Access::insecure();
        }
        Access {
            authenticator,
            callers: Arc::new(rate_limit.caller_limiter()),
            failed: Arc::new(KeyedLimiter::failed_authentication()),
            proxies: Arc::new(TrustedProxies::default()),
        }
    }

    /// What the options describe; refuses without a JWKS unless insecure
    /// (the error says what to do).
    pub fn from_config(config: &AuthConfig) -> auth::Result<Access> {
        let mut access = Access::new(config.authenticator()?, &config.rate_limit)
            .with_trusted_proxies(config.trusted_proxies());
        if !access.authenticator.is_insecure() {
            access.failed = Arc::new(config.failed_auth.limiter());
        }
        Ok(access)
    }

    /// Everyone may do everything ([`Caller::insecure_everything`]), no
    /// limits: `--insecure-no-auth`, and the test harnesses that say so.
    pub fn insecure() -> Access {
        Access {
            authenticator: Authenticator::Insecure,
            callers: Arc::new(KeyedLimiter::off()),
            failed: Arc::new(KeyedLimiter::off()),
            proxies: Arc::new(TrustedProxies::default()),
        }
    }

    /// With another per-address limit on failed authentication.
    pub fn with_failed_authentication_limit(mut self, limiter: KeyedLimiter<IpAddr>) -> Access {
        self.failed = Arc::new(limiter);
        self
    }

    /// Believing the client address these proxies forward (behind the
    /// gateway, every connection's peer is the gateway).
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Access {
        self.proxies = Arc::new(proxies);
        self
    }

    pub fn is_insecure(&self) -> bool {
        self.authenticator.is_insecure()
    }

    /// The caller behind a request's `Authorization` header, or why it is
    /// refused (401, or 429 when the client address or the caller is over
    /// its limit).
    pub fn caller(&self, request: &Request) -> Result<Caller, Refusal> {
        let verified = match request.headers().get(header::AUTHORIZATION) {
            None => self.authenticator.authenticate(None),
            Some(value) => match value.to_str() {
                Ok(value) => self.authenticator.authenticate(Some(value)),
                Err(_) => Err(AuthError::InvalidToken(
                    "the Authorization header is not UTF-8".to_owned(),
                )),
            },
        };
        match verified {
            Ok(caller) => match self.callers.check_caller(&caller) {
                Ok(()) => Ok(caller),
                Err(retry_after) => {
                    tracing::info!(caller = caller.subject(), "caller over its rate limit");
                    Err(Refusal::RateLimited(retry_after))
                }
            },
            Err(error) => {
                let address = client_address(request, &self.proxies);
                if let Err(retry_after) = self.failed.check(&address) {
                    tracing::info!(%address, "failed authentication over the limit");
                    return Err(Refusal::RateLimited(retry_after));
                }
                tracing::info!(reason = %error, "authentication failed");
                Err(Refusal::Unauthorized(error))
            }
        }
    }
}

/// Why a request gets no further than authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401 with `WWW-Authenticate: Bearer`.
    Unauthorized(AuthError),
    /// 429 with `Retry-After` (seconds).
    RateLimited(u64),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(error) => unauthorized(&error),
            Refusal::RateLimited(retry_after) => rate_limited(retry_after),
        }
    }
}

/// The client's address: the connection's peer (unspecified when the
/// server was not started with connect info, as in router tests), or, when
/// the peer is a trusted proxy, the client it forwards for
/// ([`TrustedProxies::client_address`]).
fn client_address(request: &Request, proxies: &TrustedProxies) -> IpAddr {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    if proxies.is_empty() {
        return peer;
    }
    let headers = request.headers();
    let forwarded_for = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok());
    let real_ip = headers.get(X_REAL_IP).and_then(|value| value.to_str().ok());
    proxies.client_address(peer, forwarded_for, real_ip)
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_REAL_IP: &str = "x-real-ip";

/// The middleware of every protected route: the request goes on with its
/// [`Caller`] in its extensions, or is answered 401 / 429.
pub async fn authenticate(
    State(access): State<Access>,
    mut request: Request,
    next: Next,
) -> Response {
    match access.caller(&request) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// A route only customers may use (403 for anyone else).
pub async fn customer_only(request: Request, next: Next) -> Response {
    require(Role::Customer, request, next).await
}

/// A route only operators may use (403 for anyone else).
pub async fn operator_only(request: Request, next: Next) -> Response {
    require(Role::Operator, request, next).await
}

async fn require(role: Role, request: Request, next: Next) -> Response {
    let allowed = request
        .extensions()
        .get::<Caller>()
        .is_some_and(|caller| caller.has_role(role));
    if allowed {
        next.run(request).await
    } else {
        forbidden(&format!("only the {} role may do this", role.as_str()))
    }
}

/// 401 with `WWW-Authenticate: Bearer` and the error's code. The reason is
/// never sent (it is logged).
pub fn unauthorized(error: &AuthError) -> Response {
    let (detail, challenge) = match error {
        AuthError::Unauthenticated => (
            "this request needs an `Authorization: Bearer <token>` header",
            "Bearer",
        ),
        AuthError::InvalidToken(_) => (
            "the bearer token is not valid here",
            "Bearer error=\"invalid_token\"",
        ),
    };
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        error.code(),
        "Unauthorized",
        detail,
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// 403 `forbidden`: a valid caller whose role may not do this.
pub fn forbidden(detail: &str) -> Response {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail).into_response()
}

/// 429 `rate_limited` with `Retry-After` in seconds.
pub fn rate_limited(retry_after: u64) -> Response {
    let mut response = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too Many Requests",
        format!("too many requests; retry after {retry_after} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// A development key pair (`purser auth init` in a directory) and tokens
/// signed with it, for tests and local setups.
#[derive(Debug, Clone)]
pub struct DevKeys {
    jwks: std::path::PathBuf,
    signing_key_pem: String,
}

impl DevKeys {
    /// Makes (or reuses) the key pair in `dir`.
    pub fn init(dir: &std::path::Path) -> auth::Result<DevKeys> {
        let keys = auth::init_keys(dir)?;
        let signing_key_pem =
            std::fs::read_to_string(&keys.signing_key).map_err(|source| auth::Error::Io {
                path: keys.signing_key.clone(),
                source,
            })?;
        Ok(DevKeys {
            jwks: keys.jwks,
            signing_key_pem,
        })
    }

    /// The JWKS file (`PURSER_AUTH_JWKS`).
    pub fn jwks(&self) -> &std::path::Path {
        &self.jwks
    }

    /// The options of a service verifying these keys' tokens.
    pub fn config(&self, rate_limit: RateLimitConfig) -> AuthConfig {
        AuthConfig {
            jwks: Some(self.jwks.clone()),
            issuer: auth::DEFAULT_ISSUER.to_owned(),
            audience: auth::DEFAULT_AUDIENCE.to_owned(),
            insecure_no_auth: false,
            rate_limit,
            failed_auth: auth::FailedAuthLimit::default(),
            trusted_proxies: Vec::new(),
        }
    }

    /// [`Access`] verifying these keys' tokens, with `rate_limit` per
    /// caller.
    pub fn access(&self, rate_limit: RateLimitConfig) -> Access {
        Access::from_config(&self.config(rate_limit)).expect("the JWKS just written loads")
    }

    /// A token for `subject`, valid for an hour, default issuer and
    /// audience.
    pub fn token(&self, subject: &auth::Subject) -> String {
        auth::issue_token(
            &self.signing_key_pem,
            subject,
            std::time::Duration::from_secs(3600),
            auth::DEFAULT_ISSUER,
            auth::DEFAULT_AUDIENCE,
        )
        .expect("the key just written signs")
    }

    pub fn customer_token(&self, customer_id: uuid::Uuid) -> String {
        self.token(&auth::Subject::Customer(customer_id))
    }

    pub fn operator_token(&self, name: &str) -> String {
        self.token(&auth::Subject::Operator(name.to_owned()))
    }

    /// The signing key's PEM (to sign hand-made tokens).
    pub fn signing_key_pem(&self) -> &str {
        &self.signing_key_pem
    }
}

/// Whether a path is open (no token): `/health/*`, `/openapi.json`, the
/// console's page and assets (its live feed, `/console/events`, is not).
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/health/")
        || matches!(
            path,
            "/openapi.json" | "/console" | "/console/console.js" | "/console/console.css"
        )
}

/// Declares the bearer scheme (JWT) in an OpenAPI document, and the
/// security requirement on every operation of a path that is not open.
/// The answers that follow from it (401, 403, 429) are written in by
/// [`crate::openapi::render`].
pub struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, document: &mut OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT from the token issuer (`purser token` in development). Its \
                         `roles` claim holds `customer` and/or `operator`; each operation \
                         says which it needs (`x-purser-roles`). A customer acts only on \
                         what it owns: anything else answers as missing (404).",
                    ))
                    .build(),
            ),
        );
        for (path, item) in document.paths.paths.iter_mut() {
            if is_open_path(path) {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
                &mut item.head,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .security
                    .get_or_insert_with(Vec::new)
                    .push(SecurityRequirement::new(
                        BEARER_SCHEME,
                        Vec::<String>::new(),
                    ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::middleware::{from_fn, from_fn_with_state};
    use axum::routing::get;
    use axum::{Extension, Router};
    use tower::ServiceExt as _;

    use super::*;

    async fn whoami(Extension(caller): Extension<Caller>) -> String {
        caller.subject().to_owned()
    }

    fn app(access: Access) -> Router {
        Router::new()
            .route("/mine", get(whoami))
            .route("/shop", get(whoami).route_layer(from_fn(operator_only)))
            .route_layer(from_fn_with_state(access, authenticate))
            .route("/health/live", get(|| async { "ok" }))
    }

    async fn call(app: &Router, path: &str, authorization: Option<&[u8]>) -> Response {
        let mut request = Request::get(path);
        if let Some(value) = authorization {
            request = request.header(
                header::AUTHORIZATION,
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        app.clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn code(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        body["code"].as_str().unwrap_or_default().to_owned()
    }

    fn verifying() -> (tempfile::TempDir, Access, String) {
        let dir = tempfile::tempdir().unwrap();
        let keys = DevKeys::init(dir.path()).unwrap();
        let access = keys.access(RateLimitConfig {
            per_second: 1,
            burst: 2,
        });
        let token = keys.customer_token(uuid::Uuid::new_v4());
        (dir, access, token)
    }

    #[tokio::test]
    async fn open_routes_need_no_token_and_protected_ones_do() {
        let (_dir, access, token) = verifying();
        let app = app(access);
        assert_eq!(
            call(&app, "/health/live", None).await.status(),
            StatusCode::OK
        );

        let missing = call(&app, "/mine", None).await;
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(code(missing).await, "unauthenticated");

        let garbage = call(&app, "/mine", Some(b"Bearer \xff\xfe")).await;
        assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);
        assert!(garbage.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(code(garbage).await, "invalid_token");

        let bearer = format!("Bearer {token}");
        let mine = call(&app, "/mine", Some(bearer.as_bytes())).await;
        assert_eq!(mine.status(), StatusCode::OK);
        let shop = call(&app, "/shop", Some(bearer.as_bytes())).await;
        assert_eq!(shop.status(), StatusCode::FORBIDDEN);
        assert_eq!(code(shop).await, "forbidden");
        // The burst of 2 is spent: the third request is limited.
        let limited = call(&app, "/mine", Some(bearer.as_bytes())).await;
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            limited.headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        assert_eq!(code(limited).await, "rate_limited");
    }

    #[tokio::test]
    async fn insecure_access_lets_everyone_do_everything() {
        let app = app(Access::insecure());
        for _ in 0..1000 {
            let response = call(&app, "/shop", None).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn failed_authentication_is_limited_per_address() {
        let (_dir, access, _token) = verifying();
        let app = app(access.with_failed_authentication_limit(KeyedLimiter::new(1, 3)));
        let statuses: Vec<StatusCode> = futures_statuses(&app, 5).await;
        assert_eq!(&statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
        assert_eq!(statuses[4], StatusCode::TOO_MANY_REQUESTS);
    }

    async fn futures_statuses(app: &Router, n: usize) -> Vec<StatusCode> {
        let mut statuses = Vec::new();
        for _ in 0..n {
            statuses.push(call(app, "/mine", Some(b"Bearer nonsense")).await.status());
        }
        statuses
    }
}
