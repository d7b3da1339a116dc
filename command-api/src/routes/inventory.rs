//! `POST /inventory`, `/inventory/{sku}/restock`, `/inventory/{sku}/price`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use domain::{Inventory, InventoryCommand, Sku};

use crate::access::Rule;
use crate::commands::CommandOutcome;
use crate::dto::{
    path_sku, CreateItem, CreateItemRequest, ItemResponse, RestockRequest, SetPriceRequest,
};
use crate::error::{ApiError, Problem};
use crate::extract::{Command, PathParam};
use crate::state::AppState;

fn answer(
    status: StatusCode,
    sku: Sku,
) -> impl Fn(&CommandOutcome<Inventory>) -> (StatusCode, serde_json::Value) + Send + Sync {
    move |outcome| {
        let body = ItemResponse {
            sku: sku.as_str().to_owned(),
            version: outcome.version,
            position: outcome.position,
        };
        (
            status,
            serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// Creates an inventory item (one aggregate per SKU) with its price.
#[utoipa::path(
    post, path = "/inventory", tag = "inventory",
    request_body = CreateItemRequest,
    params(crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 201, description = "Created", body = ItemResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: a malformed SKU; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`item_already_exists`; `concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_name`, `invalid_quantity`, `invalid_amount` (a price not `> 0`), `invalid_currency`; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn create(
    State(state): State<AppState>,
    request: Command<CreateItemRequest>,
) -> Result<Response, ApiError> {
    let item = CreateItem::try_from(request.body)?;
    let sku = item.sku.clone();
    let command = InventoryCommand::Create {
        sku: item.sku,
        name: item.name,
        quantity: item.quantity,
        price: item.price,
    };
    state
        .inventory()
        .execute(
            sku.as_str(),
            command,
            Rule::Anyone,
            request.meta,
            answer(StatusCode::CREATED, sku.clone()),
        )
        .await
}

/// Adds stock.
#[utoipa::path(
    post, path = "/inventory/{sku}/restock", tag = "inventory",
    request_body = RestockRequest,
    params(("sku" = String, Path, description = "SKU, `[A-Z0-9-]{1,64}` (else 400 `invalid_id`)", pattern = "^[A-Z0-9-]{1,64}$"),
           crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 200, description = "Restocked", body = ItemResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: a malformed SKU; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`item_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_quantity`, `stock_overflow`; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn restock(
    State(state): State<AppState>,
    PathParam(sku): PathParam,
    request: Command<RestockRequest>,
) -> Result<Response, ApiError> {
    let sku = path_sku(&sku)?;
    let command = InventoryCommand::Restock {
        quantity: request.body.quantity()?,
    };
    state
        .inventory()
        .execute(
            sku.as_str(),
            command,
            Rule::Anyone,
            request.meta,
            answer(StatusCode::OK, sku.clone()),
        )
        .await
}

/// Sets the item's unit price (operators). Orders placed from now on are
/// at this price.
#[utoipa::path(
    post, path = "/inventory/{sku}/price", tag = "inventory",
    request_body = SetPriceRequest,
    params(("sku" = String, Path, description = "SKU, `[A-Z0-9-]{1,64}` (else 400 `invalid_id`)", pattern = "^[A-Z0-9-]{1,64}$"),
           crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 200, description = "Priced (setting the current price appends nothing)", body = ItemResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: a malformed SKU; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`item_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_amount` (not `> 0`), `invalid_currency`, `currency_required` (an item without a price needs one); `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn set_price(
    State(state): State<AppState>,
    PathParam(sku): PathParam,
    request: Command<SetPriceRequest>,
) -> Result<Response, ApiError> {
    let sku = path_sku(&sku)?;
    let (unit_price, currency) = request.body.parse()?;
    let command = InventoryCommand::SetPrice {
        unit_price,
        currency,
    };
    state
        .inventory()
        .execute(
            sku.as_str(),
            command,
            Rule::Anyone,
            request.meta,
            answer(StatusCode::OK, sku.clone()),
        )
        .await
}
