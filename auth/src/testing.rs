//! Real keys for the tests: a fresh Ed25519 and P-256 key per test, and a
//! committed RSA key (ring cannot generate RSA keys), with the JWKS that
//! publishes all three and helpers that sign claims with each.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::keys::SigningKey;

const RSA_PEM: &str = include_str!("../tests/fixtures/rsa-2048.pem");
pub(crate) const RSA_KID: &str = "rsa-test";
pub(crate) const EC_KID: &str = "ec-test";

pub(crate) struct Keys {
    pub(crate) ed: SigningKey,
    pub(crate) ec_pkcs8: Vec<u8>,
    ec_public: Vec<u8>,
    rsa_der: Vec<u8>,
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Keys {
    pub(crate) fn new() -> Keys {
        let rng = ring::rand::SystemRandom::new();
        let ed = SigningKey::generate().unwrap();
        let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let ec_public = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &ec_pkcs8, &rng)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let rsa_der = pem::parse(RSA_PEM).unwrap().into_contents();
        Keys {
            ed,
            ec_pkcs8,
            ec_public,
            rsa_der,
        }
    }

    pub(crate) fn ed_kid(&self) -> String {
        self.ed.kid()
    }

    /// The RSA key's public JWK (n, e), as an issuer would publish it.
    pub(crate) fn rsa_jwk(&self) -> serde_json::Value {
        let pair = RsaKeyPair::from_der(&self.rsa_der).unwrap();
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        serde_json::json!({
            "kty": "RSA",
            "kid": RSA_KID,
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&public.n),
            "e": URL_SAFE_NO_PAD.encode(&public.e),
        })
    }

    /// The RSA public key as PKCS#1 DER: what an attacker would use as an
    /// HMAC secret.
    pub(crate) fn rsa_public_der(&self) -> Vec<u8> {
        RsaKeyPair::from_der(&self.rsa_der)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec()
    }

    pub(crate) fn ec_jwk(&self) -> serde_json::Value {
        // Uncompressed point: 0x04, x, y.
        let (x, y) = self.ec_public[1..].split_at(32);
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": EC_KID,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        })
    }

    /// A JWKS with the three keys.
    pub(crate) fn jwks(&self) -> String {
        serde_json::json!({ "keys": [self.ed.jwk(), self.rsa_jwk(), self.ec_jwk()] }).to_string()
    }

    /// Claims that pass: default issuer and audience, valid for an hour.
    pub(crate) fn claims(&self, sub: &str, roles: &[&str]) -> serde_json::Value {
        serde_json::json!({
            "iss": "purser-dev",
            "aud": "purser",
            "sub": sub,
            "roles": roles,
            "iat": now(),
            "exp": now() + 3600,
        })
    }

    pub(crate) fn ed25519_token(&self, claims: &serde_json::Value) -> String {
        sign(
            Algorithm::EdDSA,
            &self.ed_kid(),
            &EncodingKey::from_ed_der(self.ed.pkcs8()),
            claims,
        )
    }

    pub(crate) fn rsa_token(&self, claims: &serde_json::Value) -> String {
        sign(
            Algorithm::RS256,
            RSA_KID,
            &EncodingKey::from_rsa_der(&self.rsa_der),
            claims,
        )
    }

    pub(crate) fn ec_token(&self, claims: &serde_json::Value) -> String {
        sign(
            Algorithm::ES256,
            EC_KID,
            &EncodingKey::from_ec_der(&self.ec_pkcs8),
            claims,
        )
    }
}

pub(crate) fn sign(
    algorithm: Algorithm,
    kid: &str,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Base64url of a JSON value: a hand-made header or payload.
pub(crate) fn segment(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}
