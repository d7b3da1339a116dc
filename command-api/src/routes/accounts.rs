//! `POST /accounts`, `/accounts/{id}/deposits`, `/withdrawals`, `/close`.

use auth::Caller;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use domain::{AccountCommand, AccountId, BankAccount};
use uuid::Uuid;

use crate::access::Rule;
use crate::commands::CommandOutcome;
use crate::dto::{
    customer_for, path_uuid, AccountResponse, CloseAccountRequest, MoneyRequest, OpenAccount,
    OpenAccountRequest,
};
use crate::error::{ApiError, Problem};
use crate::extract::{Command, PathParam};
use crate::state::AppState;

fn answer(
    status: StatusCode,
    account_id: AccountId,
) -> impl Fn(&CommandOutcome<BankAccount>) -> (StatusCode, serde_json::Value) + Send + Sync {
    move |outcome| {
        let body = AccountResponse {
            account_id: account_id.as_uuid(),
            version: outcome.version,
            position: outcome.position,
        };
        (
            status,
            serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
        )
    }
}

fn account_id(PathParam(id): &PathParam) -> Result<AccountId, ApiError> {
    path_uuid("account id", id).map(AccountId::new)
}

/// Opens an account.
#[utoipa::path(
    post, path = "/accounts", tag = "accounts",
    request_body = OpenAccountRequest,
    params(crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 201, description = "Opened", body = AccountResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: customer_id or account_id is not a uuid; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: not a customer, or another customer's customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`account_already_exists`; `concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_currency`; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer"])))
)]
pub async fn open(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Command<OpenAccountRequest>,
) -> Result<Response, ApiError> {
    let open = OpenAccount::try_from(request.body)?;
    let customer_id = customer_for(&caller, open.customer_id)?;
    let account_id = open
        .account_id
        .unwrap_or_else(|| AccountId::new(Uuid::now_v7()));
    let command = AccountCommand::Open {
        account_id,
        customer_id,
        currency: open.currency,
    };
    state
        .accounts()
        .execute(
            &account_id.to_string(),
            command,
            // Its owner is the caller; an id that is taken is taken.
            Rule::Anyone,
            request.meta,
            answer(StatusCode::CREATED, account_id),
        )
        .await
}

/// Deposits money.
#[utoipa::path(
    post, path = "/accounts/{id}/deposits", tag = "accounts",
    request_body = MoneyRequest,
    params(("id" = Uuid, Path, description = "Account id"),
           crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 200, description = "Deposited", body = AccountResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: the account id is not a uuid; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`account_not_found`: no such account, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_amount`, `account_closed`, `balance_overflow`; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer"])))
)]
pub async fn deposit(
    State(state): State<AppState>,
    id: PathParam,
    request: Command<MoneyRequest>,
) -> Result<Response, ApiError> {
    let account_id = account_id(&id)?;
    let command = AccountCommand::Deposit {
        amount: request.body.amount()?,
    };
    state
        .accounts()
        .execute(
            &account_id.to_string(),
            command,
            Rule::Owner,
            request.meta,
            answer(StatusCode::OK, account_id),
        )
        .await
}

/// Withdraws money.
#[utoipa::path(
    post, path = "/accounts/{id}/withdrawals", tag = "accounts",
    request_body = MoneyRequest,
    params(("id" = Uuid, Path, description = "Account id"),
           crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 200, description = "Withdrawn", body = AccountResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: the account id is not a uuid; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`account_not_found`: no such account, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`insufficient_funds`, `invalid_amount`, `account_closed`; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer"])))
)]
pub async fn withdraw(
    State(state): State<AppState>,
    id: PathParam,
    request: Command<MoneyRequest>,
) -> Result<Response, ApiError> {
    let account_id = account_id(&id)?;
    let command = AccountCommand::Withdraw {
        amount: request.body.amount()?,
    };
    state
        .accounts()
        .execute(
            &account_id.to_string(),
            command,
            Rule::Owner,
            request.meta,
            answer(StatusCode::OK, account_id),
        )
        .await
}

/// Closes an account (only at a zero balance).
#[utoipa::path(
    post, path = "/accounts/{id}/close", tag = "accounts",
    request_body = CloseAccountRequest,
    params(("id" = Uuid, Path, description = "Account id"),
           crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 200, description = "Closed", body = AccountResponse,
         headers(("ETag" = String, description = "\"<version>\""))),
        (status = 400, description = "`invalid_id`: the account id is not a uuid; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`account_not_found`: no such account, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`account_not_empty` (a balance is left), `account_closed`; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer"])))
)]
pub async fn close(
    State(state): State<AppState>,
    id: PathParam,
    request: Command<CloseAccountRequest>,
) -> Result<Response, ApiError> {
    let account_id = account_id(&id)?;
    state
        .accounts()
        .execute(
            &account_id.to_string(),
            AccountCommand::Close,
            Rule::Owner,
            request.meta,
            answer(StatusCode::OK, account_id),
        )
        .await
}
