//! `GET /inventory/{sku}` and `GET /inventory`.

use axum::extract::State;
use axum::Json;
use domain::Sku;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use super::{read_entity, ReadParams};
use crate::error::{ApiError, Problem, Result};
use crate::extract::{Params, PathParam};
use crate::pagination::{decode_cursor, limit, page};
use crate::state::AppState;

const PROJECTION: &str = projections::Inventory::NAME;

/// A SKU's stock and price as the read model holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct InventoryView {
    pub sku: String,
    pub name: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
    /// The catalog price of one unit in minor units (`> 0`); null for an
    /// item created before prices existed, until an operator prices it.
    pub unit_price: Option<i64>,
    /// ISO 4217 code of `unit_price`; null when it is.
    #[schema(example = "EUR")]
    pub currency: Option<String>,
    /// The SKU stream's version this row reflects.
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InventoryPage {
    pub items: Vec<InventoryView>,
    /// Pass as `after` for the next page; null on the last one.
    pub next: Option<String>,
}

/// `?limit=&after=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InventoryParams {
    /// Page size, 1..=500 (default 50).
    #[param(format = Int64, minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next` of the previous page (else 400 `invalid_cursor`).
    #[param(pattern = "^(3[0-9]|4[1-9a-f]|5[0-9a]|2d){1,64}$")]
    pub after: Option<String>,
}

const COLUMNS: &str =
    "sku, name, on_hand, reserved, on_hand - reserved AS available, unit_price, currency, version";

#[utoipa::path(
    get, path = "/inventory/{sku}", tag = "inventory",
    params(("sku" = String, Path, description = "SKU, [A-Z0-9-]{1,64} (else 400 `invalid_id`)", pattern = "^[A-Z0-9-]{1,64}$"), ReadParams),
    responses(
        (status = 200, description = "The SKU's stock and price", body = InventoryView),
        (status = 400, description = "`invalid_id` (a malformed SKU), `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such SKU", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`min_version_timeout`: min_version not reached within wait_ms", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer", "operator"])))
)]
pub async fn get_item(
    State(state): State<AppState>,
    PathParam(raw): PathParam,
    Params(params): Params<ReadParams>,
) -> Result<Json<InventoryView>> {
    let sku = Sku::parse(&raw)
        .map_err(|e| ApiError::InvalidId(format!("{raw:?} is not a valid SKU: {e}")))?;
    let consistency = params.consistency()?;
    let item = read_entity(
        &state,
        PROJECTION,
        &format!("inventory-{sku}"),
        consistency,
        || format!("no inventory item {sku}"),
        || fetch_item(&state.pool, sku.as_str()),
    )
    .await?;
    Ok(Json(item))
}

#[utoipa::path(
    get, path = "/inventory", tag = "inventory",
    params(InventoryParams),
    responses(
        (status = 200, description = "Inventory items by SKU", body = InventoryPage),
        (status = 400, description = "`invalid_query`, `invalid_cursor`", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer", "operator"])))
)]
pub async fn list_items(
    State(state): State<AppState>,
    Params(params): Params<InventoryParams>,
) -> Result<Json<InventoryPage>> {
    let limit = limit(params.limit)?;
    let after = match &params.after {
        Some(cursor) => Some(decode_cursor(cursor, |key| Sku::parse(key).ok())?),
        None => None,
    };
    let rows: Vec<InventoryView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.inventory \
         WHERE ($1::text IS NULL OR sku > $1) ORDER BY sku LIMIT $2"
    ))
    .bind(after.as_ref().map(Sku::as_str))
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let (items, next) = page(rows, limit, |i| i.sku.clone());
    Ok(Json(InventoryPage { items, next }))
}

async fn fetch_item(pool: &PgPool, sku: &str) -> Result<Option<(InventoryView, i64)>> {
    let item: Option<InventoryView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.inventory WHERE sku = $1"
    ))
    .bind(sku)
    .fetch_optional(pool)
    .await?;
    Ok(item.map(|i| {
        let version = i.version;
        (i, version)
    }))
}
