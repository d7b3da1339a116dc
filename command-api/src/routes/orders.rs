//! `POST /orders`, `/orders/{id}/cancel`.

use auth::Caller;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use domain::{AccountId, BankAccount, OrderCommand, OrderId};
use uuid::Uuid;

use crate::access::{Owned, Rule};
use crate::dto::{
    customer_for, path_uuid, CancelOrderRequest, OrderPlacedResponse, OrderResponse, PlaceOrder,
    PlaceOrderRequest,
};
use crate::error::{ApiError, Problem};
use crate::extract::{Command, PathParam};
use crate::state::AppState;

/// Places an order at the catalog's prices: looks each SKU's price up in
/// the event store, then appends `OrderPlaced`; the fulfilment saga runs
/// asynchronously from there.
#[utoipa::path(
    post, path = "/orders", tag = "orders",
    request_body = PlaceOrderRequest,
    params(crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 202, description = "Placed; the saga takes it from here", body = OrderPlacedResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: customer_id or account_id not a uuid, or a malformed SKU; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not a customer, or another customer's customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`account_not_found`: no such account, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version (a new order is at version 0)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_sku`, `item_not_priced`, `currency_mismatch`, `price_changed` (a line's unit_price is not the catalog's), `invalid_order` (a SKU twice, or a total past i64), `invalid_quantity`, `invalid_amount`, `invalid_currency`, `invalid_country`, `invalid_address`; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`saga_backlog`: PURSER_SAGA_BACKLOG_LIMIT orders already wait for their saga to start; nothing appended, retry after Retry-After seconds", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    extensions(("x-purser-roles" = json!(["customer"])))
)]
pub async fn place(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Command<PlaceOrderRequest>,
) -> Result<Response, ApiError> {
    let order = PlaceOrder::try_from(request.body)?;
    let customer_id = customer_for(&caller, order.customer_id)?;
    // Before any work: an order the sagas cannot start soon is not taken.
    state.backlog().admit().await?;
    charged_account_is_the_callers(&state, &caller, order.account_id).await?;
    let order_id = OrderId::new(Uuid::now_v7());
    let command = OrderCommand::Place {
        order_id,
        customer_id,
        account_id: order.account_id,
        currency: order.currency,
        lines: state.catalog().price(order.lines).await?,
        shipping_address: order.shipping_address,
    };
    state
        .orders()
        // Its id was made just now: its stream is not read.
        .execute_new(
            &order_id.to_string(),
            command,
            // A new order, of the caller's own account (checked above).
            Rule::Anyone,
            request.meta,
            move |outcome| {
                let body = OrderPlacedResponse {
                    order_id: order_id.as_uuid(),
                    status: "placed".to_owned(),
                    version: outcome.version,
                    position: outcome.position,
                };
                (
                    StatusCode::ACCEPTED,
                    serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
                )
            },
        )
        .await
}

/// Asks to cancel an order; honoured at any point before shipping.
#[utoipa::path(
    post, path = "/orders/{id}/cancel", tag = "orders",
    request_body = CancelOrderRequest,
    params(("id" = Uuid, Path, description = "Order id"),
           crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 202, description = "Cancellation requested", body = OrderResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: the order id is not a uuid; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`order_not_found`: no such order, or (a customer) not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`order_not_cancellable` once shipped, `invalid_reason`; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer", "operator"])))
)]
pub async fn cancel(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    request: Command<CancelOrderRequest>,
) -> Result<Response, ApiError> {
    let order_id = OrderId::new(path_uuid("order id", &id)?);
    let command = OrderCommand::RequestCancellation {
        reason: request.body.reason()?,
    };
    state
        .orders()
        .execute(
            &order_id.to_string(),
            command,
            Rule::OwnerOrOperator,
            request.meta,
            move |outcome| {
                let body = OrderResponse {
                    order_id: order_id.as_uuid(),
                    version: outcome.version,
                    position: outcome.position,
                };
                (
                    StatusCode::ACCEPTED,
                    serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
                )
            },
        )
        .await
}

/// The account an order is charged to must be the caller's: checked on the
/// command side, from the account aggregate (never a read model), and
/// refused exactly as a missing account is (404 `account_not_found`), before
/// the order exists. An account's owner never changes once it is opened, so
/// the answer cannot go stale before the order is appended.
async fn charged_account_is_the_callers(
    state: &AppState,
    caller: &Caller,
    account_id: AccountId,
) -> Result<(), ApiError> {
    if caller.owns_everything() {
        // `--insecure-no-auth`: the saga declines what is not payable.
        return Ok(());
    }
    let account = state.accounts().load(&account_id.to_string()).await?;
    if Rule::Owner.permits::<BankAccount>(caller, &account) {
        Ok(())
    } else {
        Err(ApiError::domain(&BankAccount::not_found()))
    }
}
