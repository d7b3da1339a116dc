//! Idempotency records: what a command came to, stored under the caller's
//! key in `event_store.idempotency` (in the same transaction as the
//! command's events, or alone for a refusal or a no-op) and handed back
//! when the key comes again.
//!
//! The record is the caller's own serialisable type, stored as JSON: the
//! Command API keeps the answer it sent, the saga what a step's command did.
//! This module only stores and finds it, by key, checking the request's
//! fingerprint.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::PgExecutor;

use crate::{Error, Result};

/// An idempotency key with the fingerprint of the request that carried it
/// (a hash of method, path and body, computed by the caller), in the scope
/// of whoever sent it: the same key in two scopes is two keys. A key comes
/// back with the same fingerprint (a repeat: answered from its record) or
/// with another one ([`Error::IdempotencyKeyReused`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Whose key it is: the Command API's caller (its `sub`), `saga` for
    /// the saga's steps.
    pub scope: String,
    /// The key the caller sent.
    pub key: String,
    /// What identifies the request that carried it: the same key with another fingerprint is a reuse.
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// A key `key` of `scope`, carried by the request with `fingerprint`.
    pub fn new(
        scope: impl Into<String>,
        key: impl Into<String>,
        fingerprint: impl Into<String>,
    ) -> Self {
        IdempotencyKey {
            scope: scope.into(),
            key: key.into(),
            fingerprint: fingerprint.into(),
        }
    }
}

/// A record as stored: its JSON.
pub(crate) fn encode<R: Serialize>(record: &R) -> Result<serde_json::Value> {
    serde_json::to_value(record).map_err(|source| Error::Json {
        what: "idempotency record",
        source,
    })
}

/// Stores `record` under `key`. `true` when stored, `false` when the key
/// exists (after waiting for a concurrent writer of the same key to
/// finish).
pub(crate) async fn insert<'e>(
    executor: impl PgExecutor<'e>,
    key: &IdempotencyKey,
    record: &serde_json::Value,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO event_store.idempotency (scope, key, fingerprint, record) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(&key.fingerprint)
    .bind(record)
    .execute(executor)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The record stored under `key`: `Ok(None)` for an unknown key,
/// [`Error::IdempotencyKeyReused`] when the fingerprint differs (whatever
/// the record), [`Error::Json`] when it is not an `R`.
pub(crate) async fn find<'e, R: DeserializeOwned>(
    executor: impl PgExecutor<'e>,
    key: &IdempotencyKey,
) -> Result<Option<R>> {
    let row: Option<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT fingerprint, record FROM event_store.idempotency \
             WHERE scope = $1 AND key = $2",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .fetch_optional(executor)
    .await?;
    let Some((fingerprint, record)) = row else {
        return Ok(None);
    };
    if fingerprint != key.fingerprint {
        return Err(Error::IdempotencyKeyReused);
    }
    serde_json::from_value(record)
        .map(Some)
        .map_err(|source| Error::Json {
            what: "idempotency record",
            source,
        })
}
