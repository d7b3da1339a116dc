//! Real keys for the HTTP tests of both APIs: a development key pair in a
//! temporary directory, good tokens for customers and operators, and every
//! kind of bad token the contract says is refused.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use service::auth::{Access, DevKeys};
use uuid::Uuid;

pub use auth::RateLimitConfig;

/// A key pair that lives as long as the value.
pub struct Keys {
    pub keys: DevKeys,
    _dir: tempfile::TempDir,
}

/// Per-caller limits high enough never to matter in a test.
pub fn generous() -> RateLimitConfig {
    RateLimitConfig {
        per_second: 10_000,
        burst: 10_000,
    }
}

impl Default for Keys {
    fn default() -> Keys {
        Keys::new()
    }
}

impl Keys {
    /// A fresh key pair in a temporary directory.
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = DevKeys::init(dir.path()).expect("auth init");
        Keys { keys, _dir: dir }
    }

    /// [`Access`] verifying these keys' tokens with `rate_limit`.
    pub fn access(&self, rate_limit: RateLimitConfig) -> Access {
        self.keys.access(rate_limit)
    }

    pub fn customer(&self, id: Uuid) -> String {
        self.keys.customer_token(id)
    }

    pub fn operator(&self, name: &str) -> String {
        self.keys.operator_token(name)
    }

    fn kid(&self) -> String {
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(self.keys.jwks()).expect("jwks"))
                .expect("jwks json");
        jwks["keys"][0]["kid"].as_str().expect("kid").to_owned()
    }

    fn public_key(&self) -> Vec<u8> {
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(self.keys.jwks()).expect("jwks"))
                .expect("jwks json");
        URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["x"].as_str().expect("x"))
            .expect("base64 x")
    }

    fn encoding_key(&self) -> EncodingKey {
        let der = pem::parse(self.keys.signing_key_pem()).expect("PEM");
        EncodingKey::from_ed_der(der.contents())
    }

    /// `claims` signed with the real key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid());
        let key = self.encoding_key();
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// Claims that pass, for `sub` with `roles`.
    pub fn claims(&self, sub: &str, roles: &[&str]) -> Value {
        json!({
            "iss": auth::DEFAULT_ISSUER,
            "aud": auth::DEFAULT_AUDIENCE,
            "sub": sub,
            "roles": roles,
            "iat": now(),
            "exp": now() + 3600,
        })
    }

    /// Every kind of bad token, named.
    pub fn bad_tokens(&self) -> Vec<(&'static str, String)> {
        let operator = self.claims("alice", &["operator"]);
        let with = |key: &str, value: Value| {
            let mut claims = operator.clone();
            claims[key] = value;
            self.sign(&claims)
        };
        let good = self.sign(&operator);
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut raised = operator.clone();
        raised["sub"] = json!("mallory");
        let tampered_payload = URL_SAFE_NO_PAD.encode(raised.to_string());
        parts[1] = &tampered_payload;
        let tampered = parts.join(".");

        let mut unknown_kid = Header::new(Algorithm::EdDSA);
        unknown_kid.kid = Some("nobody-knows-this-kid".to_owned());
        let key = self.encoding_key();
        let unknown_kid = jsonwebtoken::encode(&unknown_kid, &operator, &key).expect("sign");

        let none_header = json!({"alg": "none", "typ": "JWT", "kid": self.kid()});
        let alg_none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(none_header.to_string()),
            URL_SAFE_NO_PAD.encode(operator.to_string())
        );

        let mut hmac = Header::new(Algorithm::HS256);
        hmac.kid = Some(self.kid());
        let hs256 = jsonwebtoken::encode(
            &hmac,
            &operator,
            &EncodingKey::from_secret(&self.public_key()),
        )
        .expect("sign");
        let hs256_jwks = jsonwebtoken::encode(
            &hmac,
            &operator,
            &EncodingKey::from_secret(std::fs::read(self.keys.jwks()).expect("jwks").as_slice()),
        )
        .expect("sign");

        vec![
            ("expired", with("exp", json!(now() - 3600))),
            ("not yet valid", with("nbf", json!(now() + 3600))),
            ("wrong issuer", with("iss", json!("https://evil.example"))),
            ("wrong audience", with("aud", json!("someone-else"))),
            ("tampered payload", tampered),
            ("unknown kid", unknown_kid),
            ("alg none", alg_none),
            ("HS256 with the public key", hs256),
            ("HS256 with the JWKS", hs256_jwks),
            (
                "customer sub not a UUID",
                self.sign(&self.claims("alice", &["customer"])),
            ),
            ("not a JWT", "garbage".to_owned()),
        ]
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Asserts a 401 with `WWW-Authenticate: Bearer...` and `code`.
pub async fn assert_unauthorized(response: reqwest::Response, code: &str, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge:?}");
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["code"], code, "{what}: {body}");
}
