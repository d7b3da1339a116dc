//! The handlers, one module per resource.

pub mod accounts;
pub mod health;
pub mod inventory;
pub mod orders;
pub mod projections;
pub mod sagas;

use std::future::Future;

use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, Result};
use crate::progress::Consistency;
use crate::state::AppState;

/// `?min_version=N&wait_ms=` of a single-entity read.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Wait until the entity's read model has applied this version (0: do
    /// not wait). A version is at most 2^63 - 1; above, 400 `invalid_query`.
    #[param(value_type = Option<i64>, format = Int64, minimum = 0, maximum = 9223372036854775807i64)]
    pub min_version: Option<u64>,
    /// How long to wait for `min_version`, in ms (default 2000, at most
    /// 10000; above, 400 `invalid_query`).
    #[param(value_type = Option<i64>, format = Int64, minimum = 0, maximum = 10000)]
    pub wait_ms: Option<u64>,
}

impl ReadParams {
    pub fn consistency(&self) -> Result<Consistency> {
        Consistency::new(self.min_version, self.wait_ms)
    }
}

/// Reads an entity (with the version its read model is at), honouring
/// `min_version`: without it a missing entity is a 404; with it, a missing
/// or older entity is waited for (woken when its event stream `stream`
/// moves in the read model), then a 503.
pub(crate) async fn read_entity<T, F, Fut>(
    state: &AppState,
    projection: &str,
    stream: &str,
    consistency: Consistency,
    not_found: impl FnOnce() -> String,
    mut read: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<(T, i64)>>>,
{
    match consistency.min_version {
        None => match read().await? {
            Some((entity, _)) => Ok(entity),
            None => Err(ApiError::NotFound(not_found())),
        },
        Some(min_version) => {
            let wanted = i64::try_from(min_version).unwrap_or(i64::MAX);
            state
                .progress
                .wait_for(projection, stream, min_version, consistency.wait, || {
                    let fetched = read();
                    async move {
                        Ok(fetched
                            .await?
                            .filter(|(_, version)| *version >= wanted)
                            .map(|(entity, _)| entity))
                    }
                })
                .await
        }
    }
}

/// The customer whose accounts, orders and sagas `caller` may see, or
/// `None` when it may see everyone's (an operator, or
/// `--insecure-no-auth`). A customer's view of another's entity is a
/// missing one: 404, or a `min_version` wait that times out.
pub(crate) fn owner_filter(caller: &auth::Caller) -> Option<uuid::Uuid> {
    if caller.is_operator() || caller.owns_everything() {
        None
    } else {
        // A verified caller without the operator role is a customer.
        Some(caller.customer_id().unwrap_or_else(uuid::Uuid::nil))
    }
}

/// A path UUID (hyphenated, as the document's pattern says), or 400
/// `invalid_id`.
pub(crate) fn parse_uuid(what: &str, raw: &str) -> Result<uuid::Uuid> {
    service::openapi::parse_uuid(raw)
        .ok_or_else(|| ApiError::InvalidId(format!("{raw:?} is not a valid {what} (a UUID)")))
}
