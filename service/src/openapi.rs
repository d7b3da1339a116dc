//! What both OpenAPI documents say beyond each handler's annotations, the
//! same way in both: the rules the shared middleware enforces on every
//! operation, written into the document utoipa generates from the code
//! ([`render`] is what `GET /openapi.json` serves).
//!
//! - Every string of `format: uuid` gets the pattern of the only form the
//!   servers accept (hyphenated, 36 characters).
//! - Every operation takes an optional `x-request-id` header, and every
//!   answer carries one (the client's when it is 1 to 128 characters of
//!   `[A-Za-z0-9._:-]`, else a fresh one).
//! - A protected operation (one with a security requirement, from
//!   [`crate::auth::BearerSecurity`]) answers 401 and 429, and 403 unless
//!   both roles may call it; its roles ([`ROLES`], an extension each
//!   handler's annotation sets) are repeated in its description.
//! - An operation with a request body answers 400 and 415; every operation
//!   may answer 413 (a body over the limit) and 503 (load shedding, the
//!   request timeout).
//! - Every problem answer's schema is the `Problem` schema with its
//!   `status` fixed and its `code` one of the codes the answer can carry:
//!   those its description names in backticks (`` `insufficient_funds` ``),
//!   and those the shared middleware adds for its status ([`CODES`] lists
//!   them per answer, as an extension).
//! - `Retry-After` (429, 503), `WWW-Authenticate` (401), `ETag` and
//!   `Idempotent-Replayed` are described as the servers send them.

use serde_json::{json, Map, Value};

use crate::problem::PROBLEM_JSON;

/// A uuid as the servers accept it: hyphenated, either case.
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// An `x-request-id` the servers keep (others are replaced).
pub const REQUEST_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// The operation extension naming the roles that may call it.
pub const ROLES: &str = "x-purser-roles";

/// The response extension listing the codes a problem answer can carry.
pub const CODES: &str = "x-purser-codes";

/// The roles of a token.
const ALL_ROLES: [&str; 2] = ["customer", "operator"];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Parses a uuid in the one form the servers accept: hyphenated (36
/// characters, either case), as [`UUID_PATTERN`] says. The simple, braced
/// and urn forms `uuid` also reads are refused.
pub fn parse_uuid(text: &str) -> Option<uuid::Uuid> {
    if text.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(text).ok()
}

/// The document as served: utoipa's, with the shared rules written in.
pub fn render(document: &utoipa::openapi::OpenApi) -> Value {
    complete(serde_json::to_value(document).unwrap_or(Value::Null))
}

/// [`render`] on the document as JSON.
fn complete(mut doc: Value) -> Value {
    strict_uuids(&mut doc);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                if METHODS.contains(&method.as_str()) {
                    if let Some(operation) = operation.as_object_mut() {
                        complete_operation(method, operation);
                    }
                }
            }
        }
    }
    doc
}

/// Adds the uuid pattern to every `format: uuid` string schema.
fn strict_uuids(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("format").and_then(Value::as_str) == Some("uuid")
                && !map.contains_key("pattern")
            {
                map.insert("pattern".into(), UUID_PATTERN.into());
            }
            map.values_mut().for_each(strict_uuids);
        }
        Value::Array(items) => items.iter_mut().for_each(strict_uuids),
        _ => {}
    }
}

fn header(description: &str, schema: Value) -> Value {
    json!({ "description": description, "schema": schema })
}

fn complete_operation(method: &str, operation: &mut Map<String, Value>) {
    let secured = operation
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let roles: Vec<String> = operation
        .get(ROLES)
        .and_then(Value::as_array)
        .map(|roles| {
            roles
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_else(|| ALL_ROLES.iter().map(|r| (*r).to_owned()).collect());
    let has_body = operation.contains_key("requestBody");

    // The request id, which every operation takes.
    let parameters = operation
        .entry("parameters")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Some(parameters) = parameters.as_array_mut() {
        parameters.push(json!({
            "name": "x-request-id",
            "in": "header",
            "required": false,
            "description": "The request's id, for logs and the events it appends: kept when it \
                            is 1 to 128 characters of `[A-Za-z0-9._:-]`, replaced by a fresh \
                            one otherwise; sent back on the answer.",
            "schema": { "type": "string" }
        }));
    }

    if secured {
        let who = roles.join(" or ");
        let line = format!("Needs a bearer token with the role {who}.");
        let description = match operation.get("description").and_then(Value::as_str) {
            Some(text) if !text.is_empty() => format!("{text}\n\n{line}"),
            _ => line,
        };
        operation.insert("description".into(), description.into());
    }

    let responses = operation
        .entry("responses")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(responses) = responses.as_object_mut() else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| problem_response(description));
    };
    // Every route refuses a body over the limit, one that takes none too.
    add(
        "413",
        "`payload_too_large`: the body is larger than the limit.",
    );
    if has_body {
        add("400", "The request is malformed.");
        add(
            "415",
            "`unsupported_media_type`: the body is not declared as JSON.",
        );
    }
    if secured {
        add(
            "401",
            "`unauthenticated` (no token) or `invalid_token`, with `WWW-Authenticate: Bearer`.",
        );
        if ALL_ROLES
            .iter()
            .any(|r| !roles.iter().any(|have| have == r))
        {
            add("403", "`forbidden`: the caller's role may not do this.");
        }
        add("429", "`rate_limited`, with `Retry-After` (seconds).");
    }
    add(
        "503",
        "`overloaded` or `timeout`: the service is at capacity or the request took too long; \
         with `Retry-After` (seconds).",
    );

    for (status, response) in responses.iter_mut() {
        if let Some(response) = response.as_object_mut() {
            complete_response(method, status, has_body, response);
        }
    }
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

/// The codes the shared middleware and extractors add to an answer of
/// `status`.
fn generic_codes(status: &str, has_body: bool) -> &'static [&'static str] {
    match status {
        "401" => &["unauthenticated", "invalid_token"],
        "403" => &["forbidden"],
        "413" => &["payload_too_large"],
        "415" => &["unsupported_media_type"],
        "429" => &["rate_limited"],
        "503" => &["overloaded", "timeout", "service_unavailable"],
        "400" if has_body => &["malformed_json", "invalid_body", "invalid_header"],
        _ => &[],
    }
}

/// The codes a description names in backticks: lowercase words of
/// `[a-z0-9_]`.
fn described_codes(description: &str) -> Vec<String> {
    description
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| {
            word.starts_with(|c: char| c.is_ascii_lowercase())
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

fn complete_response(
    method: &str,
    status: &str,
    has_body: bool,
    response: &mut Map<String, Value>,
) {
    let headers = response
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(headers) = headers.as_object_mut() {
        headers.insert(
            "x-request-id".into(),
            header(
                "The request's id: the client's own when valid, else a fresh one.",
                json!({ "type": "string", "pattern": REQUEST_ID_PATTERN }),
            ),
        );
        if status == "429" || status == "503" {
            headers.insert(
                "Retry-After".into(),
                header(
                    "Seconds to wait before retrying.",
                    json!({ "type": "string", "pattern": "^[0-9]+$" }),
                ),
            );
        }
        if status == "401" {
            headers.insert(
                "WWW-Authenticate".into(),
                header(
                    "The bearer challenge.",
                    json!({ "type": "string", "pattern": "^Bearer" }),
                ),
            );
        }
        if let Some(etag) = headers.get_mut("ETag").and_then(Value::as_object_mut) {
            etag.insert(
                "schema".into(),
                json!({ "type": "string", "pattern": "^\"[0-9]+\"$" }),
            );
        }
        if method == "post" {
            headers.insert(
                "Idempotent-Replayed".into(),
                header(
                    "`true` when this is the stored answer to an earlier request with the \
                     same `Idempotency-Key`.",
                    json!({ "type": "string", "enum": ["true"] }),
                ),
            );
        }
    }

    let description = response
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(problem) = response
        .get_mut("content")
        .and_then(Value::as_object_mut)
        .and_then(|content| content.get_mut(PROBLEM_JSON))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut codes = described_codes(&description);
    for code in generic_codes(status, has_body) {
        if !codes.iter().any(|c| c == code) {
            codes.push((*code).to_owned());
        }
    }
    let Ok(number) = status.parse::<u16>() else {
        return;
    };
    let mut fixed = json!({ "status": { "const": number } });
    if !codes.is_empty() {
        fixed["code"] = json!({ "enum": codes });
    }
    problem.insert(
        "schema".into(),
        json!({
            "allOf": [
                { "$ref": "#/components/schemas/Problem" },
                { "type": "object", "properties": fixed }
            ]
        }),
    );
    if !codes.is_empty() {
        response.insert(CODES.into(), json!(codes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyphenated_uuids() {
        let id = "0191d0c2-7a3e-7cc1-9a41-3f1f0d5b2a10";
        assert!(parse_uuid(id).is_some());
        assert!(parse_uuid(&id.to_ascii_uppercase()).is_some());
        assert!(parse_uuid(&id.replace('-', "")).is_none());
        assert!(parse_uuid(&format!("{{{id}}}")).is_none());
        assert!(parse_uuid(&format!("urn:uuid:{id}")).is_none());
        assert!(parse_uuid("0191d0c2-7a3e-7cc1-9a41-3f1f0d5b2a1g").is_none());
    }

    #[test]
    fn codes_are_the_backticked_lowercase_words() {
        assert_eq!(
            described_codes("`insufficient_funds`, `account_closed` (see `If-Match`)"),
            ["insufficient_funds", "account_closed"]
        );
        assert!(described_codes("nothing here").is_empty());
    }

    #[test]
    fn operations_get_the_shared_answers() {
        let document = json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/things/{id}": {
                    "post": {
                        "security": [{"bearer": []}],
                        ROLES: ["operator"],
                        "parameters": [{"name": "id", "in": "path", "required": true,
                                        "schema": {"type": "string", "format": "uuid"}}],
                        "requestBody": {"content": {"application/json": {"schema": {}}}},
                        "responses": {
                            "200": {"description": "ok", "headers": {"ETag": {"schema": {"type": "string"}}}},
                            "404": {"description": "`thing_not_found`",
                                    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                        }
                    }
                }
            }
        });
        let rendered = complete(document);
        let operation = &rendered["paths"]["/things/{id}"]["post"];
        assert_eq!(
            operation["parameters"][0]["schema"]["pattern"],
            UUID_PATTERN
        );
        assert_eq!(operation["parameters"][1]["name"], "x-request-id");
        let responses = &operation["responses"];
        for status in ["400", "401", "403", "413", "415", "429", "503"] {
            assert!(responses.get(status).is_some(), "{status} missing");
        }
        assert_eq!(responses["404"][CODES], json!(["thing_not_found"]));
        assert_eq!(
            responses["404"]["content"][PROBLEM_JSON]["schema"]["allOf"][1]["properties"]["status"]
                ["const"],
            404
        );
        assert_eq!(
            responses["401"][CODES],
            json!(["unauthenticated", "invalid_token"])
        );
        assert!(responses["503"]["headers"].get("Retry-After").is_some());
        assert_eq!(
            responses["200"]["headers"]["ETag"]["schema"]["pattern"],
            "^\"[0-9]+\"$"
        );
        assert!(operation["description"]
            .as_str()
            .unwrap()
            .contains("role operator"));
    }
}
