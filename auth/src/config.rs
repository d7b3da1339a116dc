//! The options every service flattens into its own, and what they build.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{
    AuthError, Caller, Error, KeyedLimiter, ProxyNet, Result, TrustedProxies, Verifier,
    DEFAULT_AUDIENCE, DEFAULT_ISSUER,
};

/// How a service authenticates its callers, and how fast each may go.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// JWKS file holding the public keys of the token issuer (an OpenID
    /// Connect provider's, or the one `purser auth init` writes).
    #[arg(long = "auth-jwks", env = "PURSER_AUTH_JWKS")]
    pub jwks: Option<PathBuf>,

    /// The `iss` every token must carry.
    #[arg(long = "auth-issuer", env = "PURSER_AUTH_ISSUER", default_value = DEFAULT_ISSUER)]
    pub issuer: String,

    /// The audience every token's `aud` must contain.
    #[arg(long = "auth-audience", env = "PURSER_AUTH_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,

    /// Serve without authentication: every request may do everything. For
    /// local experiments and benchmarks only.
    #[arg(
        long = "insecure-no-auth",
        env = "PURSER_INSECURE_NO_AUTH",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_no_auth: bool,

    #[command(flatten)]
    pub rate_limit: RateLimitConfig,

    #[command(flatten)]
    pub failed_auth: FailedAuthLimit,

    /// Proxies in front of the service (the gateway), as addresses or CIDR
    /// blocks, comma separated: a request from one of them is limited, on
    /// failed authentication, by the client address it forwards
    /// (`X-Forwarded-For`, else `X-Real-IP`), not by its own. Empty (the
    /// default): by the connection's peer, and those headers are ignored.
    #[arg(
        long = "trusted-proxies",
        env = "PURSER_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<ProxyNet>,
}

/// The token bucket of each caller.
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitConfig {
    /// Requests per second each caller (`sub`) may make; 0 turns the limit
    /// off.
    #[arg(
        long = "rate-limit-per-second",
        env = "PURSER_RATE_LIMIT_PER_SECOND",
        default_value_t = 200
    )]
    pub per_second: u32,

    /// Requests each caller may make in a burst; 0 turns the limit off.
    #[arg(
        long = "rate-limit-burst",
        env = "PURSER_RATE_LIMIT_BURST",
        default_value_t = 400
    )]
    pub burst: u32,
}

/// The limit on requests whose token fails, per client address: what makes
/// guessing tokens slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct FailedAuthLimit {
    /// Requests with a missing or bad token each client address may make
    /// per second; 0 turns the limit off.
    #[arg(
        id = "failed_auth_per_second",
        long = "failed-auth-per-second",
        env = "PURSER_FAILED_AUTH_PER_SECOND",
        default_value_t = crate::limits::FAILED_AUTH_PER_SECOND
    )]
    pub per_second: u32,

    /// Such requests each client address may make in a burst; 0 turns the
    /// limit off.
    #[arg(
        id = "failed_auth_burst",
        long = "failed-auth-burst",
        env = "PURSER_FAILED_AUTH_BURST",
        default_value_t = crate::limits::FAILED_AUTH_BURST
    )]
    pub burst: u32,
}

impl Default for FailedAuthLimit {
    fn default() -> Self {
        FailedAuthLimit {
            per_second: crate::limits::FAILED_AUTH_PER_SECOND,
            burst: crate::limits::FAILED_AUTH_BURST,
        }
    }
}

impl FailedAuthLimit {
    /// The per-address limiter these options describe.
    pub fn limiter(&self) -> KeyedLimiter<std::net::IpAddr> {
        KeyedLimiter::new(self.per_second, self.burst)
    }
}

impl RateLimitConfig {
    /// The per-caller limiter these options describe.
    pub fn caller_limiter(&self) -> KeyedLimiter<String> {
        KeyedLimiter::new(self.per_second, self.burst)
    }
}

impl AuthConfig {
    /// The proxies whose forwarded client address is believed.
    pub fn trusted_proxies(&self) -> TrustedProxies {
        TrustedProxies::new(self.trusted_proxies.iter().copied())
    }

    /// The authenticator these options describe: a [`Verifier`] of the
    /// JWKS, or, with `--insecure-no-auth`, everyone allowed everything
    /// (logged as a warning). Without either it refuses with
    /// [`Error::NoJwks`], whose message says what to do.
    pub fn authenticator(&self) -> Result<Authenticator> {
        if self.insecure_no_auth {
            tracing::warn!(
                "authentication is OFF (--insecure-no-auth): every request may do everything; \
                 for local experiments and benchmarks only"
            );
            return Ok(Authenticator::Insecure);
        }
        let path = self.jwks.as_deref().ok_or(Error::NoJwks)?;
        let verifier = Verifier::from_jwks_file(path, &self.issuer, &self.audience)?;
        tracing::info!(
            jwks = %path.display(),
            issuer = %self.issuer,
            audience = %self.audience,
            kids = ?verifier.key_ids().collect::<Vec<_>>(),
            "verifying bearer tokens"
        );
        Ok(Authenticator::Verify(Arc::new(verifier)))
    }
}

/// What a service asks who is calling. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Authenticator {
    Verify(Arc<Verifier>),
    /// `--insecure-no-auth`: every request is [`Caller::insecure_everything`].
    Insecure,
}

impl Authenticator {
    /// The caller behind an `Authorization` header (`None` when the request
    /// has none). Under `--insecure-no-auth` the header is not even read.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        match self {
            Authenticator::Verify(verifier) => verifier.verify(authorization),
            Authenticator::Insecure => Ok(Caller::insecure_everything()),
        }
    }

    pub fn is_insecure(&self) -> bool {
        matches!(self, Authenticator::Insecure)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::testing::Keys;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthConfig,
    }

    // One test touches the environment, so parallel tests never see
    // each other's variables.
    #[test]
    fn options_have_api_md_defaults_and_environment_variables() {
        let cli = Cli::try_parse_from(["test"]).unwrap();
        assert_eq!(cli.auth.jwks, None);
        assert_eq!(cli.auth.issuer, "purser-dev");
        assert_eq!(cli.auth.audience, "purser");
        assert!(!cli.auth.insecure_no_auth);
        assert_eq!(
            (cli.auth.rate_limit.per_second, cli.auth.rate_limit.burst),
            (200, 400)
        );
        assert_eq!(
            (cli.auth.failed_auth.per_second, cli.auth.failed_auth.burst),
            (20, 40)
        );
        assert!(!cli.auth.failed_auth.limiter().is_off());

        std::env::set_var("PURSER_INSECURE_NO_AUTH", "0");
        assert!(!Cli::try_parse_from(["test"]).unwrap().auth.insecure_no_auth);
        std::env::set_var("PURSER_INSECURE_NO_AUTH", "1");
        std::env::set_var("PURSER_AUTH_JWKS", "/etc/purser/jwks.json");
        std::env::set_var("PURSER_RATE_LIMIT_PER_SECOND", "0");
        let cli = Cli::try_parse_from([
            "test",
            "--auth-issuer",
            "https://id.example",
            "--failed-auth-per-second",
            "0",
        ]);
        std::env::remove_var("PURSER_INSECURE_NO_AUTH");
        std::env::remove_var("PURSER_AUTH_JWKS");
        std::env::remove_var("PURSER_RATE_LIMIT_PER_SECOND");
        let cli = cli.unwrap();
        assert!(cli.auth.insecure_no_auth);
        assert_eq!(cli.auth.jwks, Some(PathBuf::from("/etc/purser/jwks.json")));
        assert_eq!(cli.auth.issuer, "https://id.example");
        assert!(cli.auth.rate_limit.caller_limiter().is_off());
        assert!(cli.auth.failed_auth.limiter().is_off());
    }

    fn config(jwks: Option<PathBuf>, insecure_no_auth: bool) -> AuthConfig {
        AuthConfig {
            jwks,
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            insecure_no_auth,
            rate_limit: RateLimitConfig {
                per_second: 200,
                burst: 400,
            },
            failed_auth: FailedAuthLimit::default(),
            trusted_proxies: Vec::new(),
        }
    }

    #[test]
    fn without_a_jwks_the_service_refuses_to_start_unless_insecure() {
        let error = config(None, false).authenticator().unwrap_err();
        assert!(matches!(error, Error::NoJwks));
        assert!(error.to_string().contains("--insecure-no-auth"), "{error}");

        let insecure = config(None, true).authenticator().unwrap();
        assert!(insecure.is_insecure());
        assert_eq!(
            insecure.authenticate(None),
            Ok(Caller::insecure_everything())
        );
    }

    #[test]
    fn with_a_jwks_file_tokens_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, keys.jwks()).unwrap();
        let authenticator = config(Some(path), false).authenticator().unwrap();
        assert!(!authenticator.is_insecure());
        assert_eq!(
            authenticator.authenticate(None),
            Err(AuthError::Unauthenticated)
        );
        let token = keys.ed25519_token(&keys.claims("alice", &["operator"]));
        assert_eq!(
            authenticator.authenticate(Some(&format!("Bearer {token}"))),
            Ok(Caller::operator("alice"))
        );
    }

    #[test]
    fn a_missing_jwks_file_is_an_error_naming_it() {
        let error = config(Some("/nonexistent/jwks.json".into()), false)
            .authenticator()
            .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/jwks.json"),
            "{error}"
        );
    }
}
