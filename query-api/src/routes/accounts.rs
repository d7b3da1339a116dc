//! `GET /accounts/{id}` and `GET /accounts/{id}/transactions`.

use auth::Caller;
use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{owner_filter, parse_uuid, read_entity, ReadParams};
use crate::error::{Problem, Result};
use crate::extract::{Params, PathParam};
use crate::pagination::{decode_cursor, limit, page};
use crate::progress::Consistency;
use crate::state::AppState;

const PROJECTION: &str = projections::Accounts::NAME;

/// A bank account as the read model holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct AccountView {
    pub account_id: Uuid,
    pub customer_id: Uuid,
    pub currency: String,
    /// Minor units.
    pub balance: i64,
    /// `open` or `closed`.
    pub status: String,
    /// The account stream's version this row reflects.
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// One ledger entry: a balance-changing event of the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct TransactionView {
    /// The account stream's version of the event (increasing, with gaps).
    pub seq: i64,
    /// `deposit`, `withdrawal`, `charge` or `refund`.
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    /// The order of a charge or refund.
    pub order_id: Option<Uuid>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionPage {
    pub items: Vec<TransactionView>,
    /// Pass as `after` for the next page; null on the last one.
    pub next: Option<String>,
}

/// `?limit=&after=` (and `min_version`, `wait_ms` on the account).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TransactionParams {
    /// Page size, 1..=500 (default 50).
    #[param(format = Int64, minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next` of the previous page (else 400 `invalid_cursor`).
    #[param(pattern = "^(3[0-9]){1,19}$")]
    pub after: Option<String>,
    /// Wait until the account's read model has applied this version (0:
    /// do not wait; at most 2^63 - 1).
    #[param(value_type = Option<i64>, format = Int64, minimum = 0, maximum = 9223372036854775807i64)]
    pub min_version: Option<u64>,
    /// How long to wait for `min_version`, in ms (default 2000, at most 10000).
    #[param(value_type = Option<i64>, format = Int64, minimum = 0, maximum = 10000)]
    pub wait_ms: Option<u64>,
}

#[utoipa::path(
    get, path = "/accounts/{id}", tag = "accounts",
    params(("id" = Uuid, Path, description = "Account id"), ReadParams),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 400, description = "`invalid_id` (not a uuid), `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such account, or (a customer) not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`min_version_timeout`: min_version not reached within wait_ms", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer", "operator"])))
)]
pub async fn get_account(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam,
    Params(params): Params<ReadParams>,
) -> Result<Json<AccountView>> {
    let account_id = parse_uuid("account id", &id)?;
    let consistency = params.consistency()?;
    let account = read_account(&state, account_id, owner_filter(&caller), consistency).await?;
    Ok(Json(account))
}

#[utoipa::path(
    get, path = "/accounts/{id}/transactions", tag = "accounts",
    params(("id" = Uuid, Path, description = "Account id"), TransactionParams),
    responses(
        (status = 200, description = "The account's ledger, oldest first", body = TransactionPage),
        (status = 400, description = "`invalid_id` (not a uuid), `invalid_query`, `invalid_cursor`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such account, or (a customer) not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`min_version_timeout`: min_version not reached within wait_ms", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer", "operator"])))
)]
pub async fn list_transactions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam,
    Params(params): Params<TransactionParams>,
) -> Result<Json<TransactionPage>> {
    let account_id = parse_uuid("account id", &id)?;
    let limit = limit(params.limit)?;
    let after = match &params.after {
        // Up to 19 digits, as the pattern says; past i64, nothing is after.
        Some(cursor) => decode_cursor(cursor, |key| {
            (key.len() <= 19 && key.bytes().all(|b| b.is_ascii_digit()))
                .then(|| key.parse::<u64>().ok())
                .flatten()
                .map(|seq| i64::try_from(seq).unwrap_or(i64::MAX))
        })?,
        None => 0,
    };
    let consistency = Consistency::new(params.min_version, params.wait_ms)?;
    read_account(&state, account_id, owner_filter(&caller), consistency).await?;
    let rows: Vec<TransactionView> = sqlx::query_as(
        "SELECT seq, kind, amount, balance_after, order_id, at \
         FROM read_models.account_transactions \
         WHERE account_id = $1 AND seq > $2 \
         ORDER BY seq LIMIT $3",
    )
    .bind(account_id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let (items, next) = page(rows, limit, |t| t.seq.to_string());
    Ok(Json(TransactionPage { items, next }))
}

/// The account, if `owner` (when given) owns it.
async fn read_account(
    state: &AppState,
    account_id: Uuid,
    owner: Option<Uuid>,
    consistency: Consistency,
) -> Result<AccountView> {
    read_entity(
        state,
        PROJECTION,
        &format!("account-{account_id}"),
        consistency,
        || format!("no account {account_id}"),
        || fetch_account(&state.pool, account_id, owner),
    )
    .await
}

async fn fetch_account(
    pool: &PgPool,
    account_id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<(AccountView, i64)>> {
    let account: Option<AccountView> = sqlx::query_as(
        "SELECT account_id, customer_id, currency, balance, status, version, updated_at \
         FROM read_models.accounts \
         WHERE account_id = $1 AND ($2::uuid IS NULL OR customer_id = $2)",
    )
    .bind(account_id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(account.map(|a| {
        let version = a.version;
        (a, version)
    }))
}
