//! The development key pair and the tokens signed with it: what
//! `purser auth init` and `purser token` do. Production tokens come from an
//! OpenID Connect provider whose JWKS is exported to a file; this is only
//! one issuer among others, holding an Ed25519 key.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SecureRandom as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::Serialize;

use crate::{Error, Result, Subject};

/// The private key's file name in the directory of [`init_keys`].
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
/// The public JWKS's file name in the directory of [`init_keys`].
pub const JWKS_FILE: &str = "jwks.json";

/// What [`init_keys`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitKeys {
    pub signing_key: PathBuf,
    pub jwks: PathBuf,
    /// Whether the signing key was written now (else it was there).
    pub created_signing_key: bool,
    /// Whether the JWKS was written now (else it was there).
    pub created_jwks: bool,
}

/// Makes `dir` hold an Ed25519 key pair: `signing-key.pem` (PKCS#8 PEM,
/// mode 0600) and `jwks.json` (its public key as a JWK with `kid`,
/// `alg: EdDSA`, `use: sig`). Existing files are left alone; a missing
/// `jwks.json` is derived from an existing key, but a `jwks.json` without
/// its key is refused (a new key would not match it).
pub fn init_keys(dir: &Path) -> Result<InitKeys> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_path = dir.join(SIGNING_KEY_FILE);
    let jwks_path = dir.join(JWKS_FILE);
    let (has_key, has_jwks) = (key_path.exists(), jwks_path.exists());
    if has_jwks && !has_key {
        return Err(Error::HalfKeyPair(jwks_path, key_path));
    }
    let key = if has_key {
        let pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        SigningKey::from_pem(&pem)?
    } else {
        let key = SigningKey::generate()?;
        write_new(&key_path, key.to_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
        key
    };
    if !has_jwks {
        let jwks = serde_json::json!({ "keys": [key.jwk()] });
        let text = format!("{jwks:#}\n");
        write_new(&jwks_path, text.as_bytes(), 0o644).map_err(io(&jwks_path))?;
    }
    Ok(InitKeys {
        signing_key: key_path,
        jwks: jwks_path,
        created_signing_key: !has_key,
        created_jwks: !has_jwks,
    })
}

/// A token for `subject` valid for `ttl` from now, signed with EdDSA by the
/// Ed25519 key in `signing_key_pem` (PKCS#8 PEM), its header's `kid` the
/// key's (as [`init_keys`] writes it in the JWKS).
pub fn issue_token(
    signing_key_pem: &str,
    subject: &Subject,
    ttl: Duration,
    issuer: &str,
    audience: &str,
) -> Result<String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        aud: &'a str,
        sub: String,
        roles: [&'static str; 1],
        iat: u64,
        nbf: u64,
        exp: u64,
    }
    let key = SigningKey::from_pem(signing_key_pem)?;
    let (sub, role) = match subject {
        Subject::Customer(id) => (id.to_string(), "customer"),
        Subject::Operator(name) => {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(Error::Subject(format!("operator name {name:?}")));
            }
            (name.clone(), "operator")
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        iss: issuer,
        aud: audience,
        sub,
        roles: [role],
        iat: now,
        nbf: now,
        exp: now.saturating_add(ttl.as_secs()),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(key.pkcs8()))
        .map_err(Error::Signing)
}

/// An Ed25519 private key as PKCS#8 DER, and its public key.
pub(crate) struct SigningKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

/// PKCS#8 v1 (RFC 8410) for an Ed25519 seed: the DER up to the 32-byte
/// seed. v1 is what OpenSSL writes and every library reads.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl SigningKey {
    pub(crate) fn generate() -> Result<SigningKey> {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| Error::SigningKey)?;
        let mut pkcs8 = PKCS8_V1_ED25519_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        SigningKey::from_pkcs8(pkcs8)
    }

    pub(crate) fn from_pem(text: &str) -> Result<SigningKey> {
        let pem = pem::parse(text).map_err(|_| Error::SigningKey)?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(Error::SigningKey);
        }
        SigningKey::from_pkcs8(pem.into_contents())
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<SigningKey> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|_| Error::SigningKey)?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(SigningKey { pkcs8, public })
    }

    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.pkcs8.clone()))
    }

    /// The RFC 7638 thumbprint of the public JWK: stable for the key, and
    /// what any tool computes from the JWKS.
    pub(crate) fn kid(&self) -> String {
        let x = URL_SAFE_NO_PAD.encode(&self.public);
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    pub(crate) fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(&self.public),
            "kid": self.kid(),
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// Writes a file that must not exist yet, created with `mode` (so a
/// private key is never readable by others, not even for a moment).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use uuid::Uuid;

    use super::*;
    use crate::{Caller, Verifier};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_keys_writes_a_private_key_only_its_owner_reads_and_a_public_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("nested/keys");
        let outcome = init_keys(&keys_dir).unwrap();
        assert!(outcome.created_signing_key && outcome.created_jwks);
        assert_eq!(outcome.signing_key, keys_dir.join("signing-key.pem"));
        assert_eq!(mode(&outcome.signing_key), 0o600);
        assert_eq!(mode(&outcome.jwks) & 0o200, 0o200);
        let pem = std::fs::read_to_string(&outcome.signing_key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let jwks: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&outcome.jwks).unwrap()).unwrap();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(
            (&jwk["kty"], &jwk["crv"]),
            (&"OKP".into(), &"Ed25519".into())
        );
        assert_eq!((&jwk["alg"], &jwk["use"]), (&"EdDSA".into(), &"sig".into()));
        assert_eq!(jwk["kid"], SigningKey::from_pem(&pem).unwrap().kid());
        assert!(
            jwk.get("d").is_none(),
            "the private part stays out of the JWKS"
        );
    }

    #[test]
    fn init_keys_leaves_existing_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_keys(dir.path()).unwrap();
        let pem = std::fs::read(&first.signing_key).unwrap();
        let jwks = std::fs::read(&first.jwks).unwrap();
        let again = init_keys(dir.path()).unwrap();
        assert!(!again.created_signing_key && !again.created_jwks);
        assert_eq!(std::fs::read(&first.signing_key).unwrap(), pem);
        assert_eq!(std::fs::read(&first.jwks).unwrap(), jwks);

        // A lost JWKS is derived again from the key, the same one.
        std::fs::remove_file(&first.jwks).unwrap();
        let derived = init_keys(dir.path()).unwrap();
        assert!(!derived.created_signing_key && derived.created_jwks);
        assert_eq!(std::fs::read(&first.jwks).unwrap(), jwks);

        // A JWKS without its key: a new key would not match it.
        std::fs::remove_file(&first.signing_key).unwrap();
        assert!(matches!(init_keys(dir.path()), Err(Error::HalfKeyPair(..))));
        assert!(!first.signing_key.exists());
    }

    #[test]
    fn issued_tokens_verify_against_the_jwks_init_keys_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = init_keys(dir.path()).unwrap();
        let pem = std::fs::read_to_string(&outcome.signing_key).unwrap();
        let verifier = Verifier::from_jwks_file(&outcome.jwks, "purser-dev", "purser").unwrap();
        let hour = Duration::from_secs(3600);
        let customer = Uuid::new_v4();
        let token = issue_token(
            &pem,
            &Subject::Customer(customer),
            hour,
            "purser-dev",
            "purser",
        )
        .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(
            Some(header.kid.unwrap()),
            verifier.key_ids().next().map(str::to_owned)
        );
        assert_eq!(
            verifier.verify(Some(&format!("Bearer {token}"))),
            Ok(Caller::customer(customer))
        );
        let subject = Subject::Operator("alice".into());
        let token = issue_token(&pem, &subject, hour, "purser-dev", "purser").unwrap();
        assert_eq!(
            verifier.verify(Some(&format!("Bearer {token}"))),
            Ok(Caller::operator("alice"))
        );
        // Issuer and audience are the ones asked for.
        let other = issue_token(&pem, &subject, hour, "elsewhere", "purser").unwrap();
        assert!(verifier.verify(Some(&format!("Bearer {other}"))).is_err());
        let elsewhere = Verifier::from_jwks_file(&outcome.jwks, "elsewhere", "shop").unwrap();
        let token = issue_token(&pem, &subject, hour, "elsewhere", "shop").unwrap();
        assert!(elsewhere.verify(Some(&format!("Bearer {token}"))).is_ok());
    }

    #[test]
    fn issue_token_refuses_a_bad_key_or_operator_name() {
        let dir = tempfile::tempdir().unwrap();
        let pem = std::fs::read_to_string(init_keys(dir.path()).unwrap().signing_key).unwrap();
        let hour = Duration::from_secs(3600);
        for name in ["", "line\nbreak"] {
            let subject = Subject::Operator(name.into());
            assert!(matches!(
                issue_token(&pem, &subject, hour, "purser-dev", "purser"),
                Err(Error::Subject(_))
            ));
        }
        let rsa = include_str!("../tests/fixtures/rsa-2048.pem");
        for key in ["", "not a pem", rsa] {
            let subject = Subject::Operator("alice".into());
            assert!(matches!(
                issue_token(key, &subject, hour, "purser-dev", "purser"),
                Err(Error::SigningKey)
            ));
        }
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        // RFC 8037, appendix A.3: the thumbprint of its Ed25519 example key.
        let seed = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let mut pkcs8 = PKCS8_V1_ED25519_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        let key = SigningKey::from_pkcs8(pkcs8).unwrap();
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
