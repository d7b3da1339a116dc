//! `POST /sagas/{order_id}/retry`: an operator resumes a saga that needs
//! attention. The command only appends `SagaRetried` to the saga's stream;
//! the orchestrator, which consumes the saga topic, picks the saga up again.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use domain::{OrderId, SagaCommand};

use crate::access::Rule;
use crate::dto::{path_uuid, RetrySagaRequest, SagaRetriedResponse};
use crate::error::{ApiError, Problem};
use crate::extract::{Command, PathParam};
use crate::state::AppState;

/// Retries a saga in `needs_attention`: the step that stopped it gets a
/// fresh retry budget.
#[utoipa::path(
    post, path = "/sagas/{order_id}/retry", tag = "sagas",
    request_body = RetrySagaRequest,
    params(("order_id" = Uuid, Path, description = "The saga's order id"),
           crate::openapi::IdempotencyKeyHeader, crate::openapi::IfMatchHeader),
    responses(
        (status = 202, description = "Retried; the orchestrator resumes the saga", body = SagaRetriedResponse,
         headers(("ETag" = String, description = "\"<version>\" of the saga stream"))),
        (status = 400, description = "`invalid_id`: the order id is not a uuid; or a malformed body or header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`saga_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`concurrency_conflict`: concurrent writers won every retry", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "`version_mismatch`: `If-Match` is not the current version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`saga_not_retryable`: the saga does not need attention; `idempotency_key_reused`: this key was used for another request", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn retry(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    request: Command<RetrySagaRequest>,
) -> Result<Response, ApiError> {
    let order_id = OrderId::new(path_uuid("order id", &id)?);
    state
        .sagas()
        .execute(
            &order_id.to_string(),
            SagaCommand::Retry,
            Rule::Anyone,
            // The operator's name is the `actor` of `SagaRetried`.
            request.meta,
            move |outcome| {
                let body = SagaRetriedResponse {
                    order_id: order_id.as_uuid(),
                    saga_id: outcome.state.saga_id,
                    state: outcome.state.status.as_str().to_owned(),
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
