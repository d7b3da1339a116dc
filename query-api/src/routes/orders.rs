//! `GET /orders/{id}` and `GET /orders`.

use auth::Caller;
use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{owner_filter, parse_uuid, read_entity, ReadParams};
use crate::error::{ApiError, Problem, Result};
use crate::extract::{Params, PathParam};
use crate::pagination::{decode_cursor, limit, page};
use crate::state::AppState;

const PROJECTION: &str = projections::Orders::NAME;

/// The order statuses of the API guide.
pub const STATUSES: &[&str] = &["placed", "reserved", "paid", "shipped", "cancelled"];

/// An order as the read model holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub account_id: Uuid,
    pub currency: String,
    /// `placed`, `reserved`, `paid`, `shipped` or `cancelled`.
    pub status: String,
    #[sqlx(skip)]
    pub lines: Vec<OrderLineView>,
    /// Minor units.
    pub total: i64,
    /// `out_of_stock`, `payment_declined`, `shipping_failed` or
    /// `customer_request` once cancelled.
    pub cancellation_reason: Option<String>,
    pub tracking_number: Option<String>,
    /// The order stream's version this row reflects.
    pub version: i64,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct OrderLineView {
    pub sku: String,
    pub quantity: i64,
    pub unit_price: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    /// Pass as `after` for the next page; null on the last one.
    pub next: Option<String>,
}

/// An order status, as `GET /orders?status=` takes it.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OrderStatusName {
    Placed,
    Reserved,
    Paid,
    Shipped,
    Cancelled,
}

/// `?customer_id=&status=&limit=&after=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderParams {
    /// Only this customer's orders (a customer: its own only, else 403).
    #[param(value_type = Option<String>, format = Uuid)]
    pub customer_id: Option<String>,
    /// Only orders in this status.
    #[param(inline, value_type = Option<OrderStatusName>)]
    pub status: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(format = Int64, minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next` of the previous page (else 400 `invalid_cursor`).
    #[param(
        pattern = "^(3[0-9]|[46][1-6]){8}2d(3[0-9]|[46][1-6]){4}2d(3[0-9]|[46][1-6]){4}2d(3[0-9]|[46][1-6]){4}2d(3[0-9]|[46][1-6]){12}$"
    )]
    pub after: Option<String>,
}

const COLUMNS: &str = "order_id, customer_id, account_id, currency, status, total, \
                       cancellation_reason, tracking_number, version, placed_at, updated_at";

#[utoipa::path(
    get, path = "/orders/{id}", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id"), ReadParams),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "`invalid_id` (not a uuid), `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such order, or (a customer) not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`min_version_timeout`: min_version not reached within wait_ms", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer", "operator"])))
)]
pub async fn get_order(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam,
    Params(params): Params<ReadParams>,
) -> Result<Json<OrderView>> {
    let order_id = parse_uuid("order id", &id)?;
    let consistency = params.consistency()?;
    let mut order = read_entity(
        &state,
        PROJECTION,
        &format!("order-{order_id}"),
        consistency,
        || format!("no order {order_id}"),
        || fetch_order(&state.pool, order_id, owner_filter(&caller)),
    )
    .await?;
    attach_lines(&state.pool, std::slice::from_mut(&mut order)).await?;
    Ok(Json(order))
}

#[utoipa::path(
    get, path = "/orders", tag = "orders",
    params(OrderParams),
    responses(
        (status = 200, description = "Orders by id (placement order for v7 ids)", body = OrderPage),
        (status = 400, description = "`invalid_query`, `invalid_cursor`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: a customer asked for another customer's orders", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer", "operator"])))
)]
pub async fn list_orders(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Params(params): Params<OrderParams>,
) -> Result<Json<OrderPage>> {
    let limit = limit(params.limit)?;
    let customer_id =
        match &params.customer_id {
            Some(raw) => Some(service::openapi::parse_uuid(raw).ok_or_else(|| {
                ApiError::InvalidQuery(format!("customer_id {raw:?} is not a UUID"))
            })?),
            None => None,
        };
    // A customer lists its own orders; asking for another's is 403.
    let customer_id = match (owner_filter(&caller), customer_id) {
        (None, filter) => filter,
        (Some(own), None) => Some(own),
        (Some(own), Some(asked)) if asked == own => Some(own),
        (Some(_), Some(_)) => {
            return Err(ApiError::Status {
                status: axum::http::StatusCode::FORBIDDEN,
                detail: "a customer lists only its own orders".to_owned(),
            })
        }
    };
    let status = match &params.status {
        Some(raw) if STATUSES.contains(&raw.as_str()) => Some(raw.as_str()),
        Some(raw) => {
            return Err(ApiError::InvalidQuery(format!(
                "status {raw:?} is not one of {}",
                STATUSES.join(", ")
            )))
        }
        None => None,
    };
    let after = match &params.after {
        Some(cursor) => Some(decode_cursor(cursor, service::openapi::parse_uuid)?),
        None => None,
    };
    let rows: Vec<OrderView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.orders \
         WHERE ($1::uuid IS NULL OR customer_id = $1) \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::uuid IS NULL OR order_id > $3) \
         ORDER BY order_id LIMIT $4"
    ))
    .bind(customer_id)
    .bind(status)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let (mut items, next) = page(rows, limit, |o| o.order_id.to_string());
    attach_lines(&state.pool, &mut items).await?;
    Ok(Json(OrderPage { items, next }))
}

/// The order, if `owner` (when given) placed it.
async fn fetch_order(
    pool: &PgPool,
    order_id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<(OrderView, i64)>> {
    let order: Option<OrderView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.orders \
         WHERE order_id = $1 AND ($2::uuid IS NULL OR customer_id = $2)"
    ))
    .bind(order_id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(order.map(|o| {
        let version = o.version;
        (o, version)
    }))
}

/// Fills in the lines of `orders` with one query.
async fn attach_lines(pool: &PgPool, orders: &mut [OrderView]) -> Result<()> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.order_id).collect();
    let lines: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
        "SELECT order_id, sku, quantity, unit_price FROM read_models.order_lines \
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    for (order_id, sku, quantity, unit_price) in lines {
        if let Some(order) = orders.iter_mut().find(|o| o.order_id == order_id) {
            order.lines.push(OrderLineView {
                sku,
                quantity,
                unit_price,
            });
        }
    }
    Ok(())
}
