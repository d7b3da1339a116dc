//! Extractors: every malformed request becomes an [`ApiError`] with the same
//! problem+json shape as everything else.

use auth::Caller;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// `Idempotency-Key`.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// `Idempotent-Replayed`, set to `true` on a replayed answer.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// `x-request-id`.
pub use service::middleware::REQUEST_ID;

/// The longest `Idempotency-Key` accepted.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;

/// A command request: its headers, parsed, and its JSON body, deserialised
/// into `T` (a request DTO that rejects unknown fields).
#[derive(Debug)]
pub struct Command<T> {
    pub meta: CommandMeta,
    pub body: T,
}

/// What every command carries besides its body.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    /// The request id (`x-request-id`, set by the middleware when the client
    /// sent none); it becomes the events' correlation id.
    pub request_id: String,
    /// `If-Match: "<version>"`.
    pub if_match: Option<u64>,
    /// `Idempotency-Key` with the request's fingerprint, in the caller's
    /// scope (its `sub`): two callers' same key is two keys.
    pub idempotency: Option<event_store::IdempotencyKey>,
    /// Who acts: the verified caller the authentication layer put in the
    /// request's extensions. Its `sub` is the `actor` of every event the
    /// command appends, and it decides what the caller owns.
    pub caller: Caller,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Command<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let caller = caller(&parts)?;
        let request_id = request_id(&parts.headers);
        let if_match = if_match(&parts.headers)?;
        let key = idempotency_key(&parts.headers)?;
        check_content_type(&parts.headers)?;
        let method = parts.method.clone();
        let path = parts.uri.path().to_owned();
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|rejection| body_rejection(rejection, state.body_limit()))?;
        let body = parse_json(&bytes)?;
        let idempotency = key.map(|key| event_store::IdempotencyKey {
            scope: caller.subject().to_owned(),
            key,
            fingerprint: fingerprint(&method, &path, &bytes),
        });
        Ok(Command {
            meta: CommandMeta {
                request_id,
                if_match,
                idempotency,
                caller,
            },
            body,
        })
    }
}

/// The caller the authentication layer verified. A command route outside
/// that layer is a bug, answered 500 rather than run without a caller.
fn caller(parts: &Parts) -> Result<Caller, ApiError> {
    parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
        ApiError::internal("a command route without the authentication layer: no caller")
    })
}

/// A path parameter as a string; the handler parses it into a domain id.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParam(value))
            .map_err(|rejection| ApiError::InvalidId(rejection.body_text()))
    }
}

/// The request id the middleware guarantees; lossy if the client sent bytes
/// that are not UTF-8.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// The most digits a version in `If-Match` may have (every such number
/// fits in a `u64`).
pub const IF_MATCH_MAX_DIGITS: usize = 19;

/// `If-Match: "<version>"` (a weak `W/"<version>"` or a bare number are
/// accepted too; `*` pins nothing): exactly the document's pattern
/// `^(\*|(W/)?"[0-9]{1,19}"|[0-9]{1,19})$`.
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all(header::IF_MATCH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = || ApiError::InvalidHeader("If-Match must be a single \"<version>\"".to_owned());
    if values.next().is_some() {
        return Err(invalid());
    }
    let text = value.to_str().map_err(|_| invalid())?;
    if text == "*" {
        return Ok(None);
    }
    let (weak, tag) = match text.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let digits = match tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner,
        None if !weak => tag,
        None => return Err(invalid()),
    };
    let valid = (1..=IF_MATCH_MAX_DIGITS).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return Err(invalid());
    }
    digits.parse::<u64>().map(Some).map_err(|_| invalid())
}

/// `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::InvalidHeader(format!(
            "Idempotency-Key must be a single value of 1 to {IDEMPOTENCY_KEY_MAX_LEN} visible ASCII characters"
        ))
    };
    if values.next().is_some() {
        return Err(invalid());
    }
    let bytes = value.as_bytes();
    let valid = (1..=IDEMPOTENCY_KEY_MAX_LEN).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(invalid());
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A body declared as something other than JSON is refused; a body without
/// a content type is read as JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .map_err(|_| ApiError::UnsupportedMediaType)?
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json =
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

fn body_rejection(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::MalformedJson(format!(
            "the request body could not be read: {}",
            rejection.body_text()
        ))
    }
}

/// Parses a JSON object body. An empty body counts as `{}` (`POST
/// .../close`). Syntax errors are `malformed_json`; a body of the wrong
/// shape (not an object, wrong types, unknown or missing fields) is
/// `invalid_body`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        Some(b'{') => bytes,
        // serde's derived structs would also take a JSON array, by position.
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            return Err(ApiError::InvalidBody(
                "the request body must be a JSON object".to_owned(),
            ))
        }
        Some(_) => bytes,
    };
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => ApiError::InvalidBody(error.to_string()),
        serde_json::error::Category::Io
        | serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof => ApiError::MalformedJson(error.to_string()),
    })
}

/// sha256 over method, path and body bytes, hex: what makes "the same
/// request" for an idempotency key.
pub fn fingerprint(method: &Method, path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(name: &HeaderName, values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(
                name.clone(),
                HeaderValue::from_bytes(value).expect("valid header bytes"),
            );
        }
        map
    }

    #[test]
    fn if_match_forms() {
        let parse = |v: &[u8]| if_match(&headers(&header::IF_MATCH, &[v]));
        assert_eq!(parse(b"\"3\"").ok(), Some(Some(3)));
        assert_eq!(parse(b"W/\"3\"").ok(), Some(Some(3)));
        assert_eq!(parse(b"7").ok(), Some(Some(7)));
        assert_eq!(parse(b"*").ok(), Some(None));
        assert_eq!(
            parse(b"\"9999999999999999999\"").ok(),
            Some(Some(9_999_999_999_999_999_999))
        );
        for bad in [
            &b"\"\""[..],
            b"\"-1\"",
            b"\"x\"",
            b"\"99999999999999999999999\"",
            b"\"10000000000000000000\"",
            b"W/7",
            b"\"7",
            b" \"7\"",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(if_match(&headers(&header::IF_MATCH, &[b"\"1\"", b"\"2\""])).is_err());
        assert_eq!(if_match(&HeaderMap::new()).ok(), Some(None));
    }

    #[test]
    fn idempotency_key_is_1_to_255_visible_ascii() {
        let parse = |v: &[u8]| idempotency_key(&headers(&IDEMPOTENCY_KEY, &[v]));
        assert_eq!(parse(b"abc-123").ok(), Some(Some("abc-123".to_owned())));
        assert!(parse(&[b'k'; 255]).is_ok());
        assert!(parse(&[b'k'; 256]).is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"has space").is_err());
        assert!(parse(b"tab\there").is_err());
        assert!(parse(&[0xC3, 0xA9]).is_err());
    }

    #[test]
    fn json_errors_are_classified() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            amount: i64,
        }
        assert!(matches!(
            parse_json::<Body>(b"{\"amount\":"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"{\"amount\":\"1\"}"),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"{\"amount\":1,\"x\":2}"),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b""),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b" [5]"),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"5"),
            Err(ApiError::InvalidBody(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"<x/>"),
            Err(ApiError::MalformedJson(_))
        ));
        assert_eq!(
            parse_json::<Body>(b"{\"amount\":5}").map(|b| b.amount).ok(),
            Some(5)
        );
    }

    #[test]
    fn fingerprint_covers_method_path_and_body() {
        let a = fingerprint(&Method::POST, "/accounts/1/deposits", b"{\"amount\":1}");
        assert_eq!(a.len(), 64);
        assert_eq!(
            a,
            fingerprint(&Method::POST, "/accounts/1/deposits", b"{\"amount\":1}")
        );
        assert_ne!(
            a,
            fingerprint(&Method::POST, "/accounts/2/deposits", b"{\"amount\":1}")
        );
        assert_ne!(
            a,
            fingerprint(&Method::POST, "/accounts/1/deposits", b"{\"amount\":2}")
        );
        assert_ne!(
            a,
            fingerprint(&Method::PUT, "/accounts/1/deposits", b"{\"amount\":1}")
        );
    }
}
