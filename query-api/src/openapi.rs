//! The OpenAPI 3.1 document, generated from the handlers and types.

use service::auth::BearerSecurity;
use utoipa::OpenApi;

use crate::console;
use crate::error::Problem;
use crate::routes::accounts::{AccountView, TransactionPage, TransactionView};
use crate::routes::health::Health;
use crate::routes::inventory::{InventoryPage, InventoryView};
use crate::routes::orders::{OrderLineView, OrderPage, OrderView};
use crate::routes::projections::{
    ParkedPage, ParkedView, ProjectionView, RebuildRequestView, RebuildView,
};
use crate::routes::sagas::{SagaCounts, SagaPage, SagaStepView, SagaView};
use crate::routes::{accounts, health, inventory, orders, projections, sagas};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Purser Query API",
        description = "Read models of Purser, eventually consistent; single-entity reads accept \
                       `min_version` to read one's own writes. Errors are RFC 9457 problem \
                       details. A customer token reads only what its customer owns (anything \
                       else answers as missing, 404); an operator reads everything."
    ),
    paths(
        accounts::get_account,
        accounts::list_transactions,
        inventory::get_item,
        inventory::list_items,
        orders::get_order,
        orders::list_orders,
        sagas::get_saga,
        sagas::list_sagas,
        sagas::saga_counts,
        projections::list_projections,
        projections::list_parked,
        console::page,
        console::script,
        console::style,
        console::events,
        projections::metrics,
        health::live,
        health::ready,
        openapi_json,
    ),
    components(schemas(
        AccountView, TransactionView, TransactionPage, InventoryView, InventoryPage,
        OrderView, OrderLineView, OrderPage, SagaView, SagaStepView, SagaPage, SagaCounts, ProjectionView, RebuildView,
        RebuildRequestView, ParkedView, ParkedPage, Health, Problem
    )),
    tags(
        (name = "accounts", description = "Bank accounts and their ledgers"),
        (name = "inventory", description = "Stock per SKU"),
        (name = "orders", description = "Orders and their lines"),
        (name = "sagas", description = "Order-fulfilment sagas and their steps"),
        (name = "projections", description = "Read-model progress"),
        (name = "operations", description = "Health and metrics"),
        (name = "console", description = "The operator console: its page and assets (open), and its live feed (operators)"),
    ),
    modifiers(&BearerSecurity)
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(service::openapi::render(&ApiDoc::openapi()))
}
