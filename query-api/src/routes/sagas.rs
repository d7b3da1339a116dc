//! `GET /sagas/{order_id}` and `GET /sagas`.

use auth::Caller;
use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use domain::{step_errors, SagaStatus};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{owner_filter, parse_uuid, read_entity, ReadParams};
use crate::error::{ApiError, Problem, Result};
use crate::extract::{Params, PathParam};
use crate::pagination::{decode_cursor, limit, page};
use crate::state::AppState;

const PROJECTION: &str = projections::Sagas::NAME;

/// An order-fulfilment saga as the read model holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct SagaView {
    pub saga_id: Uuid,
    pub order_id: Uuid,
    /// `running`, `compensating`, `completed`, `compensated` or
    /// `needs_attention`.
    pub state: String,
    /// Every step, in the order it was first attempted (compensations
    /// included).
    #[sqlx(json)]
    pub steps: Vec<SagaStepView>,
    /// `out_of_stock`, `payment_declined`, `shipping_failed` or
    /// `customer_request` once compensation began.
    pub compensation_reason: Option<String>,
    pub tracking_number: Option<String>,
    /// The code of the last failure or refusal (`insufficient_funds`,
    /// `carrier_unavailable`, `timeout`...); while the saga needs attention,
    /// why. Never a message.
    pub error: Option<String>,
    /// The saga stream's version this row reflects.
    pub version: i64,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SagaStepView {
    /// `reserve_stock`, `mark_reserved`, `charge_payment`, `mark_paid`,
    /// `ship`, `mark_shipped`, `commit_stock`, or a compensation:
    /// `cancel_shipment`, `refund_payment`, `release_stock`, `cancel_order`.
    pub name: String,
    /// The SKU of a per-line step (`reserve_stock`, `commit_stock`,
    /// `release_stock`).
    pub sku: Option<String>,
    /// `running`, `succeeded`, `failed` (a transient failure, retried) or
    /// `refused`.
    pub status: String,
    /// Attempts started.
    pub attempts: u32,
    /// When the first attempt started.
    pub started_at: DateTime<Utc>,
    /// When it succeeded or was refused.
    pub finished_at: Option<DateTime<Utc>>,
    /// The code of the last failure or refusal: the refusing aggregate's
    /// (`insufficient_funds`, `insufficient_stock`, `account_closed`...), the
    /// carrier's (`shipment_refused`), or a transient one (`timeout`,
    /// `carrier_unavailable`, `carrier_timeout`, `carrier_circuit_open`,
    /// `unavailable`, `concurrency_conflict`, `internal_error`). Never a
    /// message.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SagaPage {
    pub items: Vec<SagaView>,
    /// Pass as `after` for the next page; null on the last one.
    pub next: Option<String>,
}

/// A saga state, as `GET /sagas?state=` takes it.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum SagaStateName {
    Running,
    Compensating,
    Completed,
    Compensated,
    NeedsAttention,
}

/// `?state=&limit=&after=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SagaParams {
    /// Only sagas in this state.
    #[param(inline, value_type = Option<SagaStateName>)]
    pub state: Option<String>,
    /// Page size, 1..=500 (default 50).
    #[param(format = Int64, minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next` of the previous page (else 400 `invalid_cursor`).
    #[param(
        pattern = "^(3[0-9]|[46][1-6]){8}2d(3[0-9]|[46][1-6]){4}2d(3[0-9]|[46][1-6]){4}2d(3[0-9]|[46][1-6]){4}2d(3[0-9]|[46][1-6]){12}$"
    )]
    pub after: Option<String>,
}

const COLUMNS: &str = "saga_id, order_id, state, steps, compensation_reason, tracking_number, \
                       last_error AS error, version, started_at, updated_at";

#[utoipa::path(
    get, path = "/sagas/{order_id}", tag = "sagas",
    params(("order_id" = Uuid, Path, description = "The saga's order id"), ReadParams),
    responses(
        (status = 200, description = "The order's fulfilment saga", body = SagaView),
        (status = 400, description = "`invalid_id` (not a uuid), `invalid_query`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no saga for this order, or (a customer) not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`min_version_timeout`: min_version not reached within wait_ms", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["customer", "operator"])))
)]
pub async fn get_saga(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(id): PathParam,
    Params(params): Params<ReadParams>,
) -> Result<Json<SagaView>> {
    let order_id = parse_uuid("order id", &id)?;
    let consistency = params.consistency()?;
    let saga = read_entity(
        &state,
        PROJECTION,
        &format!("saga-{order_id}"),
        consistency,
        || format!("no saga for order {order_id}"),
        || fetch_saga(&state.pool, order_id, owner_filter(&caller)),
    )
    .await?;
    Ok(Json(saga))
}

#[utoipa::path(
    get, path = "/sagas", tag = "sagas",
    params(SagaParams),
    responses(
        (status = 200, description = "Sagas by order id (placement order for v7 ids)", body = SagaPage),
        (status = 400, description = "`invalid_query`, `invalid_cursor`", body = Problem, content_type = "application/problem+json"),
    ),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn list_sagas(
    State(state): State<AppState>,
    Params(params): Params<SagaParams>,
) -> Result<Json<SagaPage>> {
    let limit = limit(params.limit)?;
    let saga_state = match &params.state {
        Some(raw) => Some(parse_state(raw)?),
        None => None,
    };
    let after = match &params.after {
        Some(cursor) => Some(decode_cursor(cursor, service::openapi::parse_uuid)?),
        None => None,
    };
    let rows: Vec<SagaView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.sagas \
         WHERE ($1::text IS NULL OR state = $1) \
           AND ($2::uuid IS NULL OR order_id > $2) \
         ORDER BY order_id LIMIT $3"
    ))
    .bind(saga_state)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let rows = rows.into_iter().map(SagaView::with_codes).collect();
    let (items, next) = page(rows, limit, |s| s.order_id.to_string());
    Ok(Json(SagaPage { items, next }))
}

/// How many sagas are in each state (every state, 0 included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SagaCounts {
    pub running: i64,
    pub compensating: i64,
    pub completed: i64,
    pub compensated: i64,
    pub needs_attention: i64,
}

/// How many sagas are in each state, as the sagas read model has them.
#[utoipa::path(
    get, path = "/sagas/counts", tag = "sagas",
    responses((status = 200, description = "Sagas per state", body = SagaCounts)),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn saga_counts(State(state): State<AppState>) -> Result<Json<SagaCounts>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM read_models.sagas GROUP BY state")
            .fetch_all(&state.pool)
            .await?;
    let count = |name: &str| {
        rows.iter()
            .find(|(state, _)| state == name)
            .map_or(0, |(_, n)| *n)
    };
    Ok(Json(SagaCounts {
        running: count(SagaStatus::Running.as_str()),
        compensating: count(SagaStatus::Compensating.as_str()),
        completed: count(SagaStatus::Completed.as_str()),
        compensated: count(SagaStatus::Compensated.as_str()),
        needs_attention: count(SagaStatus::NeedsAttention.as_str()),
    }))
}

/// A saga state of the API guide, or 400.
fn parse_state(raw: &str) -> Result<&'static str> {
    SagaStatus::ALL
        .into_iter()
        .map(SagaStatus::as_str)
        .find(|s| *s == raw)
        .ok_or_else(|| {
            let names: Vec<&str> = SagaStatus::ALL
                .into_iter()
                .map(SagaStatus::as_str)
                .collect();
            ApiError::InvalidQuery(format!("state {raw:?} is not one of {}", names.join(", ")))
        })
}

/// The saga, if `owner` (when given) placed its order: decided from the
/// saga's own row (`customer_id`, the order's customer from `SagaStarted`).
async fn fetch_saga(
    pool: &PgPool,
    order_id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<(SagaView, i64)>> {
    let saga: Option<SagaView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.sagas WHERE order_id = $1 \
         AND ($2::uuid IS NULL OR customer_id = $2)"
    ))
    .bind(order_id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(saga.map(|s| {
        let version = s.version;
        (s.with_codes(), version)
    }))
}

impl SagaView {
    /// Every `error` as a code: a row the projection wrote before it
    /// recorded codes may hold an old free-text message, which is never
    /// shown (the API guide: a saga step's `error` is a stable code).
    fn with_codes(mut self) -> SagaView {
        for step in &mut self.steps {
            if let Some(error) = &step.error {
                step.error = Some(step_errors::error_code(&step.name, error));
            }
        }
        if let Some(error) = &self.error {
            self.error = Some(step_errors::error_code("", error));
        }
        self
    }
}

/// Sagas per state, every state of the API guide included (for `/metrics`).
pub async fn counts_by_state(pool: &PgPool) -> Result<Vec<(&'static str, i64)>> {
    let counted: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM read_models.sagas GROUP BY state")
            .fetch_all(pool)
            .await?;
    Ok(SagaStatus::ALL
        .into_iter()
        .map(|s| {
            let n = counted
                .iter()
                .find(|(state, _)| state == s.as_str())
                .map_or(0, |(_, n)| *n);
            (s.as_str(), n)
        })
        .collect())
}
