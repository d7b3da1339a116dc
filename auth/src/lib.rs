//! Identity and access for Purser's services (the API guide, "Identity and
//! access"; design decision 9).
//!
//! - [`Verifier`] turns an `Authorization` header into a [`Caller`] or an
//!   [`AuthError`] with a stable `code()`: bearer JWTs signed with EdDSA,
//!   RS256 or ES256 by a key of a JWKS picked by `kid`, the algorithm pinned
//!   by the key (never by the token's header).
//! - [`init_keys`] and [`issue_token`] are the development key pair and the
//!   tokens signed with it (`purser auth init`, `purser token`).
//! - [`KeyedLimiter`] is the abuse-limit building block: a token bucket per
//!   caller, and one per client address for failed authentication.
//! - [`TrustedProxies`] says whose `X-Forwarded-For` to believe (the
//!   gateway's), so the per-address limit keys on the real client.
//! - [`AuthConfig`] and [`RateLimitConfig`] are the services' options.
//!
//! No HTTP here: status codes and headers belong to the API crates, which
//! map [`AuthError::code`] and a limiter's retry-after onto their answers.

#![warn(unreachable_pub)]

mod caller;
mod config;
mod keys;
mod limits;
mod proxies;
mod verify;

pub use caller::{AuthError, Caller, Role, Subject};
pub use config::{AuthConfig, Authenticator, FailedAuthLimit, RateLimitConfig};
pub use keys::{init_keys, issue_token, InitKeys, JWKS_FILE, SIGNING_KEY_FILE};
pub use limits::KeyedLimiter;
pub use proxies::{ProxyNet, TrustedProxies};
pub use verify::Verifier;

/// The issuer tokens carry unless configured otherwise.
pub const DEFAULT_ISSUER: &str = "purser-dev";
/// The audience tokens carry unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "purser";
/// How far `exp` and `nbf` may be off the verifier's clock.
pub const LEEWAY_SECONDS: u64 = 60;

/// What can go wrong loading keys, writing them or signing a token (not
/// verifying one: that is an [`AuthError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read or write {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the JWKS is not valid JSON with a `keys` array")]
    JwksFormat(#[source] serde_json::Error),
    #[error("the JWKS has no key usable for EdDSA (Ed25519), RS256 or ES256 with a `kid`")]
    NoUsableKey,
    #[error("the signing key is not an Ed25519 private key in PKCS#8 PEM")]
    SigningKey,
    #[error("{0} exists without {1}: remove it, or put back the file that goes with it")]
    HalfKeyPair(std::path::PathBuf, std::path::PathBuf),
    #[error("invalid subject: {0}")]
    Subject(String),
    #[error("signing the token failed")]
    Signing(#[source] jsonwebtoken::errors::Error),
    #[error("PURSER_AUTH_JWKS is not set: give the JWKS file of the token issuer (`purser auth init --dir DIR` makes a development one), or start with --insecure-no-auth (PURSER_INSECURE_NO_AUTH=1) for local experiments only")]
    NoJwks,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod testing;
