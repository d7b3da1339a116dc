//! Bearer token verification against a JWKS.
//!
//! Each usable key of the JWKS is loaded with the one algorithm its key type
//! implies (OKP/Ed25519: EdDSA, RSA: RS256, EC/P-256: ES256), and a token is
//! checked only with the key its `kid` names and only with that key's
//! algorithm: a token whose header asks for anything else (HS256 signed
//! with the public key as the secret, `none`) fails. Symmetric (`oct`) keys
//! are never loaded.
//!
//! A token that verified is remembered by its text until it expires
//! ([`Verified`]): a client sends the same token with every request until
//! it renews it, and checking a signature (tens of microseconds for
//! Ed25519, more for RSA) on each one cost a quarter of the Command API's
//! throughput (BENCHMARKS.md, "Authentication and rate limiting"). The
//! text, signature included, is the key, so a token that differs in any
//! byte is verified afresh; a refused token is never remembered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::{AuthError, Caller, Error, Result, LEEWAY_SECONDS};

/// Checks `Authorization` headers against the keys of a JWKS, an issuer
/// and an audience. Cheap to share (`Arc`) across requests.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, PinnedKey>,
    verified: Arc<Mutex<Verified>>,
}

/// Most tokens remembered as verified: far more than the callers active
/// at once, each at most [`MAX_REMEMBERED_TOKEN`] bytes, so a few MiB.
const REMEMBERED_TOKENS: usize = 4096;

/// Longer tokens are verified on every request rather than remembered.
const MAX_REMEMBERED_TOKEN: usize = 2048;

/// Tokens that verified, by their text, with the caller they stand for and
/// their `exp`. Bounded: when full, the expired ones go, and if that frees
/// nothing, all of them (they are verified again on their next use).
#[derive(Default)]
struct Verified {
    tokens: HashMap<String, (Caller, u64)>,
}

impl Verified {
    /// The caller of `token` if it verified before: `Some(Ok)` while its
    /// `exp` (with the leeway) has not passed at `now`, `Some(Err)` once it
    /// has (a token's claims never change, so that is final).
    fn recall(&mut self, token: &str, now: u64) -> Option<Result<Caller, AuthError>> {
        let (caller, expires) = self.tokens.get(token)?;
        if expires.saturating_add(LEEWAY_SECONDS) < now {
            self.tokens.remove(token);
            return Some(Err(AuthError::invalid("ExpiredSignature")));
        }
        Some(Ok(caller.clone()))
    }

    fn remember(&mut self, token: &str, caller: &Caller, expires: u64, now: u64) {
        if token.len() > MAX_REMEMBERED_TOKEN {
            return;
        }
        if self.tokens.len() >= REMEMBERED_TOKENS {
            self.tokens
                .retain(|_, (_, expires)| expires.saturating_add(LEEWAY_SECONDS) >= now);
            if self.tokens.len() >= REMEMBERED_TOKENS {
                self.tokens.clear();
            }
        }
        self.tokens
            .insert(token.to_owned(), (caller.clone(), expires));
    }
}

/// A key and the validation (algorithm, issuer, audience, leeway) that
/// goes with it.
#[derive(Clone)]
struct PinnedKey {
    key: DecodingKey,
    validation: Validation,
}

/// The claims Purser reads; `iss`, `aud`, `exp` and `nbf` are checked by
/// `jsonwebtoken` through the [`Validation`].
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    /// Required and checked by the validation; kept to remember the token
    /// until then.
    exp: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        formatter
            .debug_struct("Verifier")
            .field("kids", &kids)
            .finish()
    }
}

impl Verifier {
    /// Loads the JWKS file at `path`.
    pub fn from_jwks_file(path: &Path, issuer: &str, audience: &str) -> Result<Verifier> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Verifier::from_jwks_str(&text, issuer, audience)
    }

    /// Loads a JWKS document. Keys Purser cannot use (no `kid`, `use`
    /// other than `sig`, symmetric, another curve, an `alg` other than the
    /// one the key type implies) are skipped with a warning; a JWKS with
    /// no usable key at all is refused.
    pub fn from_jwks_str(jwks: &str, issuer: &str, audience: &str) -> Result<Verifier> {
        // Each key on its own, so that one key of a kind `jsonwebtoken`
        // does not know (an OIDC provider's encryption key) does not make
        // the whole set unreadable.
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let set: RawSet = serde_json::from_str(jwks).map_err(Error::JwksFormat)?;
        let mut keys = HashMap::new();
        for raw in set.keys {
            let kid = raw
                .get("kid")
                .and_then(|kid| kid.as_str())
                .map(str::to_owned);
            match serde_json::from_value::<Jwk>(raw)
                .map_err(|error| error.to_string())
                .and_then(|jwk| pin(&jwk, issuer, audience))
            {
                Ok((kid, pinned)) => {
                    keys.insert(kid, pinned);
                }
                Err(reason) => tracing::warn!(?kid, reason, "JWKS key skipped"),
            }
        }
        if keys.is_empty() {
            return Err(Error::NoUsableKey);
        }
        Ok(Verifier {
            keys,
            verified: Arc::default(),
        })
    }

    /// The `kid`s of the keys in use.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The caller an `Authorization` header stands for: `None` is
    /// [`AuthError::Unauthenticated`], anything but a valid `Bearer` token
    /// [`AuthError::InvalidToken`].
    pub fn verify(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        self.verify_at(authorization, unix_now())
    }

    /// [`Verifier::verify`] with the clock at `now` (seconds since the
    /// epoch) for a token remembered as verified; a token verified afresh is
    /// checked against the real clock.
    fn verify_at(&self, authorization: Option<&str>, now: u64) -> Result<Caller, AuthError> {
        let header = authorization.ok_or(AuthError::Unauthenticated)?;
        let token = bearer_token(header)?;
        if let Some(known) = self.remembered().recall(token, now) {
            return known;
        }
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|error| AuthError::invalid(format!("header: {error}")))?
            .kid
            .ok_or_else(|| AuthError::invalid("no kid"))?;
        let pinned = self
            .keys
            .get(&kid)
            .ok_or_else(|| AuthError::invalid(format!("unknown kid {kid:?}")))?;
        let claims = jsonwebtoken::decode::<Claims>(token, &pinned.key, &pinned.validation)
            .map_err(|error| AuthError::invalid(error.to_string()))?
            .claims;
        let caller = Caller::from_claims(claims.sub, &claims.roles)?;
        self.remembered().remember(token, &caller, claims.exp, now);
        Ok(caller)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Verified> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or_else(|| AuthError::invalid("not a Bearer authorization"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::invalid("not a Bearer authorization"));
    }
    let token = token.trim_start();
    if token.is_empty() {
        return Err(AuthError::invalid("empty bearer token"));
    }
    Ok(token)
}

/// A JWK with its `kid`, its decoding key and the validation that pins its
/// algorithm; or why Purser does not use it.
fn pin(jwk: &Jwk, issuer: &str, audience: &str) -> Result<(String, PinnedKey), String> {
    let kid = jwk.common.key_id.clone().ok_or("no kid")?;
    if let Some(usage) = &jwk.common.public_key_use {
        if *usage != PublicKeyUse::Signature {
            return Err(format!("use {usage:?} is not sig"));
        }
    }
    let (algorithm, declared) = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, KeyAlgorithm::EdDSA)
        }
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, KeyAlgorithm::RS256),
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are never used".into()),
        _ => return Err("unsupported key type or curve".into()),
    };
    if let Some(alg) = jwk.common.key_algorithm {
        if alg != declared {
            return Err(format!("alg {alg:?} is not {declared:?}"));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|error| error.to_string())?;
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    Ok((kid, PinnedKey { key, validation }))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::testing::{now, segment, sign, Keys, EC_KID, RSA_KID};

    fn verifier(keys: &Keys) -> Verifier {
        Verifier::from_jwks_str(&keys.jwks(), "purser-dev", "purser").unwrap()
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn check(verifier: &Verifier, token: &str) -> Result<Caller, AuthError> {
        verifier.verify(Some(&bearer(token)))
    }

    fn assert_invalid(verifier: &Verifier, token: &str, what: &str) {
        match check(verifier, token) {
            Err(error @ AuthError::InvalidToken(_)) => assert_eq!(error.code(), "invalid_token"),
            other => panic!("{what}: expected invalid_token, got {other:?}"),
        }
    }

    #[test]
    fn eddsa_rs256_and_es256_tokens_are_accepted() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let customer = Uuid::new_v4();
        let claims = keys.claims(&customer.to_string(), &["customer"]);
        for token in [
            keys.ed25519_token(&claims),
            keys.rsa_token(&claims),
            keys.ec_token(&claims),
        ] {
            assert_eq!(check(&verifier, &token), Ok(Caller::customer(customer)));
        }
        let operator = keys.ec_token(&keys.claims("alice", &["operator"]));
        assert_eq!(check(&verifier, &operator), Ok(Caller::operator("alice")));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_aud_may_be_an_array() {
        let keys = Keys::new();
        let mut claims = keys.claims("alice", &["operator"]);
        claims["aud"] = json!(["billing", "purser"]);
        let token = keys.ed25519_token(&claims);
        let caller = verifier(&keys).verify(Some(&format!("bearer  {token}")));
        assert_eq!(caller, Ok(Caller::operator("alice")));
    }

    #[test]
    fn expiry_and_not_before_are_checked_with_60_seconds_of_leeway() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let with = |field: &str, value: i64| {
            let mut claims = keys.claims("alice", &["operator"]);
            claims[field] = json!(value);
            keys.ed25519_token(&claims)
        };
        // 58, not 59: the second may tick between signing and checking.
        assert!(check(&verifier, &with("exp", now() - 58)).is_ok());
        assert!(check(&verifier, &with("nbf", now() + 59)).is_ok());
        for seconds in [61, 62, 3600] {
            assert_invalid(&verifier, &with("exp", now() - seconds), "expired");
            assert_invalid(&verifier, &with("nbf", now() + seconds), "not yet valid");
        }
    }

    #[test]
    fn wrong_or_missing_registered_claims_are_refused() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let cases: [(&str, serde_json::Value); 6] = [
            ("iss", json!("someone-else")),
            ("aud", json!("other")),
            ("aud", json!(["other", "another"])),
            ("exp", json!(null)),
            ("sub", json!(null)),
            ("exp", json!("tomorrow")),
        ];
        for (field, value) in cases {
            let mut claims = keys.claims("alice", &["operator"]);
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(field);
            } else {
                claims[field] = value.clone();
            }
            assert_invalid(
                &verifier,
                &keys.ed25519_token(&claims),
                &format!("{field} {value}"),
            );
        }
        let mut no_iss = keys.claims("alice", &["operator"]);
        no_iss.as_object_mut().unwrap().remove("iss");
        assert_invalid(&verifier, &keys.rsa_token(&no_iss), "no iss");
        let mut no_aud = keys.claims("alice", &["operator"]);
        no_aud.as_object_mut().unwrap().remove("aud");
        assert_invalid(&verifier, &keys.ec_token(&no_aud), "no aud");
    }

    #[test]
    fn bad_subjects_and_roles_are_refused() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let mut no_roles = keys.claims("alice", &[]);
        no_roles.as_object_mut().unwrap().remove("roles");
        let cases = [
            keys.claims("alice", &["customer"]),
            keys.claims("not-a-uuid", &["customer", "operator"]),
            keys.claims(&Uuid::new_v4().to_string(), &[]),
            keys.claims(&Uuid::new_v4().to_string(), &["customer", "admin"]),
            no_roles,
        ];
        for claims in cases {
            assert_invalid(&verifier, &keys.ed25519_token(&claims), &claims.to_string());
        }
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let claims = keys.claims(&Uuid::new_v4().to_string(), &["customer"]);
        let mut forged = claims.clone();
        forged["sub"] = json!(Uuid::new_v4().to_string());
        for token in [
            keys.ed25519_token(&claims),
            keys.rsa_token(&claims),
            keys.ec_token(&claims),
        ] {
            let parts: Vec<&str> = token.split('.').collect();
            let tampered = format!("{}.{}.{}", parts[0], segment(&forged), parts[2]);
            assert_invalid(&verifier, &tampered, "tampered payload");
            // The untouched token is fine: the tampering is what fails.
            assert!(check(&verifier, &token).is_ok());
        }
    }

    #[test]
    fn a_token_remembered_as_verified_is_refused_once_it_expires() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let mut claims = keys.claims("alice", &["operator"]);
        let expires = now() + 120;
        claims["exp"] = json!(expires);
        let token = keys.ed25519_token(&claims);
        let header = bearer(&token);
        assert_eq!(check(&verifier, &token), Ok(Caller::operator("alice")));
        let expires = u64::try_from(expires).unwrap();
        // Remembered: within the leeway after `exp` it still stands...
        assert_eq!(
            verifier.verify_at(Some(&header), expires + LEEWAY_SECONDS),
            Ok(Caller::operator("alice"))
        );
        // ...past it, it is refused without being verified again (the real
        // clock, which a fresh verification uses, would accept it).
        assert!(matches!(
            verifier.verify_at(Some(&header), expires + LEEWAY_SECONDS + 1),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn a_token_that_differs_from_a_remembered_one_in_any_part_is_verified_afresh() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let claims = keys.claims(&Uuid::new_v4().to_string(), &["customer"]);
        let mut forged = claims.clone();
        forged["sub"] = json!(Uuid::new_v4().to_string());
        let token = keys.ed25519_token(&claims);
        assert!(check(&verifier, &token).is_ok());
        let parts: Vec<&str> = token.split('.').collect();
        let payload = format!("{}.{}.{}", parts[0], segment(&forged), parts[2]);
        assert_invalid(&verifier, &payload, "tampered payload");
        let mut signature = parts[2].to_owned();
        let last = if signature.ends_with('A') { "B" } else { "A" };
        signature.replace_range(signature.len() - 1.., last);
        let resigned = format!("{}.{}.{signature}", parts[0], parts[1]);
        assert_invalid(&verifier, &resigned, "tampered signature");
        assert!(check(&verifier, &token).is_ok());
    }

    #[test]
    fn tokens_remembered_are_bounded() {
        let mut verified = Verified::default();
        let caller = Caller::operator("alice");
        let now = 1_000;
        for n in 0..REMEMBERED_TOKENS * 2 + 1 {
            verified.remember(&format!("token-{n}"), &caller, now + 3600, now);
            assert!(verified.tokens.len() <= REMEMBERED_TOKENS);
        }
        verified.remember(
            &"x".repeat(MAX_REMEMBERED_TOKEN + 1),
            &caller,
            now + 3600,
            now,
        );
        assert!(verified
            .recall(&"x".repeat(MAX_REMEMBERED_TOKEN + 1), now)
            .is_none());
        // Full of expired tokens: those go first, the live ones stay.
        let mut verified = Verified::default();
        for n in 0..REMEMBERED_TOKENS - 1 {
            verified.remember(&format!("old-{n}"), &caller, 10, 10);
        }
        verified.remember("live", &caller, now + 3600, now);
        verified.remember("another", &caller, now + 3600, now);
        assert_eq!(verified.tokens.len(), 2);
        assert!(matches!(verified.recall("live", now), Some(Ok(_))));
    }

    #[test]
    fn unknown_or_missing_kids_are_refused() {
        let keys = Keys::new();
        let claims = keys.claims("alice", &["operator"]);
        // Signed by a key the JWKS does not hold, under a kid it does not know
        // and under one it does.
        let stranger = Keys::new();
        let verifier = verifier(&keys);
        assert_invalid(&verifier, &stranger.ed25519_token(&claims), "unknown kid");
        let impostor = sign(
            Algorithm::EdDSA,
            &keys.ed_kid(),
            &EncodingKey::from_ed_der(stranger.ed.pkcs8()),
            &claims,
        );
        assert_invalid(&verifier, &impostor, "known kid, other key");
        let no_kid = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_der(keys.ed.pkcs8()),
        )
        .unwrap();
        assert_invalid(&verifier, &no_kid, "no kid");
    }

    #[test]
    fn alg_none_is_refused() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let claims = keys.claims("alice", &["operator"]);
        for kid in [keys.ed_kid(), RSA_KID.to_owned()] {
            for alg in ["none", "None", "NONE"] {
                let header = segment(&json!({ "alg": alg, "typ": "JWT", "kid": kid }));
                let unsigned = format!("{header}.{}.", segment(&claims));
                assert_invalid(&verifier, &unsigned, alg);
            }
        }
    }

    #[test]
    fn hmac_signed_with_the_public_key_is_refused() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let claims = keys.claims("alice", &["operator"]);
        let jwks = keys.jwks();
        let ed_public = base64url_decode(keys.ed.jwk()["x"].as_str().unwrap());
        let secrets: [(String, Vec<u8>); 4] = [
            (keys.ed_kid(), ed_public),
            (keys.ed_kid(), jwks.clone().into_bytes()),
            (RSA_KID.to_owned(), keys.rsa_public_der()),
            (EC_KID.to_owned(), keys.ec_jwk().to_string().into_bytes()),
        ];
        for (kid, secret) in secrets {
            for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                let token = sign(algorithm, &kid, &EncodingKey::from_secret(&secret), &claims);
                assert_invalid(&verifier, &token, &format!("{algorithm:?} {kid}"));
            }
        }
    }

    #[test]
    fn a_header_that_asks_for_another_algorithm_than_the_keys_is_refused() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        let claims = keys.claims("alice", &["operator"]);
        // An ES256 signature presented under the RSA key's kid.
        let mixed = sign(
            Algorithm::ES256,
            RSA_KID,
            &EncodingKey::from_ec_der(&keys.ec_pkcs8),
            &claims,
        );
        assert_invalid(&verifier, &mixed, "ES256 under an RSA kid");
    }

    #[test]
    fn missing_or_malformed_authorization_is_refused() {
        let keys = Keys::new();
        let verifier = verifier(&keys);
        assert_eq!(verifier.verify(None), Err(AuthError::Unauthenticated));
        assert_eq!(AuthError::Unauthenticated.code(), "unauthenticated");
        let token = keys.ed25519_token(&keys.claims("alice", &["operator"]));
        for header in [
            format!("Basic {token}"),
            format!("Token {token}"),
            token.clone(),
            "Bearer".to_owned(),
            "Bearer ".to_owned(),
            "".to_owned(),
            "Bearer not.a.jwt".to_owned(),
            "Bearer x".to_owned(),
        ] {
            match verifier.verify(Some(&header)) {
                Err(AuthError::InvalidToken(_)) => {}
                other => panic!("{header:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn unusable_jwks_keys_are_skipped_and_a_set_without_usable_ones_is_refused() {
        let keys = Keys::new();
        let mut ed_without_kid = keys.ed.jwk();
        ed_without_kid.as_object_mut().unwrap().remove("kid");
        let mut rsa_for_encryption = keys.rsa_jwk();
        rsa_for_encryption["use"] = json!("enc");
        let mut rsa_for_ps256 = keys.rsa_jwk();
        rsa_for_ps256["alg"] = json!("PS256");
        let unusable = [
            json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" }),
            json!({ "kty": "X448", "kid": "weird" }),
            ed_without_kid,
            rsa_for_encryption,
            rsa_for_ps256,
        ];
        let only_unusable = json!({ "keys": unusable }).to_string();
        assert!(matches!(
            Verifier::from_jwks_str(&only_unusable, "purser-dev", "purser"),
            Err(Error::NoUsableKey)
        ));
        let mut mixed = unusable.to_vec();
        mixed.push(keys.ec_jwk());
        let verifier = Verifier::from_jwks_str(
            &json!({ "keys": mixed }).to_string(),
            "purser-dev",
            "purser",
        )
        .unwrap();
        assert_eq!(verifier.key_ids().collect::<Vec<_>>(), [EC_KID]);
        // The oct key is not there to verify an HS256 token with.
        let hs = sign(
            Algorithm::HS256,
            "hmac",
            &EncodingKey::from_secret(b"secret"),
            &keys.claims("alice", &["operator"]),
        );
        assert_invalid(&verifier, &hs, "HS256 under an oct kid");
        assert!(matches!(
            Verifier::from_jwks_str("{}", "purser-dev", "purser"),
            Err(Error::JwksFormat(_))
        ));
    }

    fn base64url_decode(text: &str) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .unwrap()
    }
}
