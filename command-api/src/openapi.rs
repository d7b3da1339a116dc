//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::OpenApi as Document;
use utoipa::{IntoParams, OpenApi};

use service::auth::BearerSecurity;

use crate::dto;
use crate::error::Problem;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Purser Command API",
        description = "Commands for accounts, inventory and orders, and the operators' saga retry and projection rebuild, unpark and reset. Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`; each answer lists the codes it can carry (`x-purser-codes`). Each operation names the roles that may call it (`x-purser-roles`); a customer acts only on what it owns: another customer's account or order answers as a missing one (404)."
    ),
    paths(
        routes::accounts::open,
        routes::accounts::deposit,
        routes::accounts::withdraw,
        routes::accounts::close,
        routes::inventory::create,
        routes::inventory::restock,
        routes::inventory::set_price,
        routes::orders::place,
        routes::orders::cancel,
        routes::sagas::retry,
        routes::projections::rebuild,
        routes::projections::unpark,
        routes::projections::reset,
        routes::health::live,
        routes::health::ready,
        routes::health::metrics,
        openapi_json,
    ),
    components(schemas(
        Problem,
        dto::OpenAccountRequest,
        dto::MoneyRequest,
        dto::CloseAccountRequest,
        dto::AccountResponse,
        dto::CreateItemRequest,
        dto::RestockRequest,
        dto::SetPriceRequest,
        dto::ItemResponse,
        dto::PlaceOrderRequest,
        dto::OrderLineRequest,
        dto::ShippingAddressRequest,
        dto::CancelOrderRequest,
        dto::OrderPlacedResponse,
        dto::OrderResponse,
        dto::RetrySagaRequest,
        dto::SagaRetriedResponse,
        dto::RebuildProjectionRequest,
        dto::RebuildRequestedResponse,
        dto::UnparkProjectionRequest,
        dto::UnparkedResponse,
        dto::UnparkedStream,
        dto::ResetProjectionRequest,
        dto::ResetResponse,
        routes::health::Health,
    )),
    tags(
        (name = "accounts", description = "Bank accounts"),
        (name = "inventory", description = "Stock and price per SKU"),
        (name = "orders", description = "Orders; fulfilment runs asynchronously"),
        (name = "sagas", description = "Operator actions on order-fulfilment sagas"),
        (name = "projections", description = "Operator actions on the read models: rebuild, unpark, reset"),
        (name = "health", description = "Health, metrics, this document"),
    ),
    modifiers(&BearerSecurity)
)]
pub struct ApiDoc;

/// The document.
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// `Idempotency-Key`, accepted by every `POST`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// 1 to 255 visible ASCII characters (else 400 `invalid_header`). A
    /// repeat by the same caller with the same request gets the stored
    /// answer (`Idempotent-Replayed: true`); with another request, 422
    /// `idempotency_key_reused`.
    #[param(rename = "Idempotency-Key", value_type = String, required = false,
            pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255)]
    #[allow(dead_code)]
    idempotency_key: Option<String>,
}

/// `If-Match`, accepted by every command.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatchHeader {
    /// `"<version>"` (also `W/"<version>"` or a bare number; `*` pins
    /// nothing; anything else 400 `invalid_header`): append only at that
    /// version, else 412 `version_mismatch`.
    #[param(rename = "If-Match", value_type = String, required = false,
            pattern = "^(\\*|(W/)?\"[0-9]{1,19}\"|[0-9]{1,19})$")]
    #[allow(dead_code)]
    if_match: Option<String>,
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(service::openapi::render(&document()))
}
