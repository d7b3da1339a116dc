//! `sagas`: one row per order-fulfilment saga, with its steps.
//!
//! A saga's row is small and each event changes it in ways that depend on
//! what came before (which step needs attention, whether compensation
//! began), so the projection folds events in Rust over the stored row: a
//! batch reads every row it touches in one query, folds each stream's events
//! and writes the results back in one upsert.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{
    step_errors, Aggregate, CancellationReason, FulfilmentSaga, SagaEvent, SagaStatus, Step,
    StepStatus,
};
use event_store::RecordedEvent;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::projection::{expect_rows, stream_uuid, version_i64};
use crate::{ApplyError, Projection, Table};

/// Builds `read_models.sagas`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sagas;

impl Sagas {
    /// The projection's name, `sagas`.
    pub const NAME: &'static str = "sagas";
}

/// One step of a saga as `read_models.sagas.steps` holds it (a jsonb array
/// of these, in the order each step was first attempted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaStep {
    /// `reserve_stock`, `charge_payment`, `ship`, `release_stock`...
    pub name: String,
    /// The SKU of a per-line step (reserve, commit, release).
    pub sku: Option<String>,
    /// `running`, `succeeded`, `failed` or `refused`.
    pub status: StepStatus,
    /// Attempts started, in all.
    pub attempts: u32,
    /// When the first attempt started.
    pub started_at: DateTime<Utc>,
    /// When it succeeded or was refused; null while running or failed.
    pub finished_at: Option<DateTime<Utc>>,
    /// The code of the last failure or refusal (`insufficient_stock`,
    /// `carrier_unavailable`, `timeout`...), never a message.
    pub error: Option<String>,
}

impl SagaStep {
    fn is(&self, step: &Step) -> bool {
        self.name == step.name() && self.sku.as_deref() == step.sku().map(|s| s.as_str())
    }
}

/// A row of `read_models.sagas`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    order_id: Uuid,
    saga_id: Uuid,
    /// The order's customer: who may read the saga.
    customer_id: Uuid,
    state: SagaStatus,
    compensation_reason: Option<CancellationReason>,
    tracking_number: Option<String>,
    last_error: Option<String>,
    attention_step: Option<Step>,
    steps: Vec<SagaStep>,
    version: i64,
    started_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[async_trait]
impl Projection for Sagas {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &[FulfilmentSaga::STREAM_TYPE]
    }

    fn tables(&self) -> &'static [Table] {
        &[Table {
            name: "sagas",
            stream_key: "order_id",
        }]
    }

    /// Set-based: one SELECT of the rows touched, one upsert of their new
    /// state, whatever the number of events.
    async fn apply_many(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &[&[&RecordedEvent]],
    ) -> Result<(), ApplyError> {
        apply_streams(tx, streams).await
    }
}

async fn apply_streams(
    tx: &mut Transaction<'_, Postgres>,
    streams: &[&[&RecordedEvent]],
) -> Result<(), ApplyError> {
    let mut ids = Vec::with_capacity(streams.len());
    // A stream whose slice starts at version 1 has no row yet.
    let mut started = Vec::new();
    for events in streams {
        if let Some(first) = events.first() {
            ids.push(stream_uuid(first)?);
            if first.version > 1 {
                started.extend(ids.last().copied());
            }
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let mut stored = if started.is_empty() {
        HashMap::new()
    } else {
        load(tx, &started).await?
    };
    let mut rows = Vec::with_capacity(ids.len());
    for (events, order_id) in streams.iter().filter(|e| !e.is_empty()).zip(&ids) {
        let mut row = stored.remove(order_id);
        for event in events.iter() {
            row = Some(evolve(row, *order_id, event)?);
        }
        rows.extend(row);
    }
    save(tx, &rows, streams).await
}

/// A row as read back.
#[derive(sqlx::FromRow)]
struct Stored {
    order_id: Uuid,
    saga_id: Uuid,
    customer_id: Uuid,
    state: String,
    compensation_reason: Option<String>,
    tracking_number: Option<String>,
    last_error: Option<String>,
    attention_step: Option<Json<Step>>,
    steps: Json<Vec<SagaStep>>,
    version: i64,
    started_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<Stored> for Row {
    type Error = ApplyError;

    fn try_from(stored: Stored) -> Result<Row, ApplyError> {
        let invalid = |what: &str| {
            ApplyError::Invalid(format!(
                "saga {}: stored {what} is not valid",
                stored.order_id
            ))
        };
        let state = SagaStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == stored.state)
            .ok_or_else(|| invalid("state"))?;
        let compensation_reason = match &stored.compensation_reason {
            Some(reason) => Some(
                CancellationReason::ALL
                    .into_iter()
                    .find(|r| r.as_str() == reason)
                    .ok_or_else(|| invalid("compensation reason"))?,
            ),
            None => None,
        };
        Ok(Row {
            order_id: stored.order_id,
            saga_id: stored.saga_id,
            customer_id: stored.customer_id,
            state,
            compensation_reason,
            tracking_number: stored.tracking_number,
            last_error: stored.last_error,
            attention_step: stored.attention_step.map(|step| step.0),
            steps: stored.steps.0,
            version: stored.version,
            started_at: stored.started_at,
            updated_at: stored.updated_at,
        })
    }
}

/// The stored rows of these sagas.
async fn load(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Row>, ApplyError> {
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT order_id, saga_id, customer_id, state, compensation_reason, tracking_number, \
                last_error, attention_step, steps, version, started_at, updated_at \
         FROM sagas WHERE order_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    stored
        .into_iter()
        .map(|stored| Ok((stored.order_id, Row::try_from(stored)?)))
        .collect()
}

/// Writes `rows` (new and updated) in one statement. A row stored at the
/// same or a later version is left alone, and the count of rows written
/// then falls short: an error.
async fn save(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Row],
    streams: &[&[&RecordedEvent]],
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let result = sqlx::query(
        "INSERT INTO sagas AS s \
            (order_id, saga_id, state, compensation_reason, tracking_number, last_error, \
             attention_step, steps, version, started_at, updated_at, customer_id) \
         SELECT o, sg, st, r, t, e, a::jsonb, steps::jsonb, v, sa, ua, c \
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::bigint[], $10::timestamptz[], $11::timestamptz[], \
                     $12::uuid[]) \
            AS n (o, sg, st, r, t, e, a, steps, v, sa, ua, c) \
         ON CONFLICT (order_id) DO UPDATE SET \
            state = excluded.state, compensation_reason = excluded.compensation_reason, \
            tracking_number = excluded.tracking_number, last_error = excluded.last_error, \
            attention_step = excluded.attention_step, steps = excluded.steps, \
            version = excluded.version, updated_at = excluded.updated_at \
         WHERE s.version < excluded.version",
    )
    .bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.saga_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.compensation_reason.map(CancellationReason::as_str))
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.tracking_number.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.last_error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.attention_step.as_ref().map(to_json))
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| to_json(&r.steps)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.started_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.customer_id).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    expect_rows(result.rows_affected(), rows.len(), "saga", streams)
}

/// What the projection stores as jsonb (a `Step`, the steps), as text.
fn to_json<T: Serialize>(value: &T) -> String {
    // Plain data (strings, numbers, times): serialising cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// The row after `event` (`row` is `None` before the saga started).
fn evolve(row: Option<Row>, order_id: Uuid, event: &RecordedEvent) -> Result<Row, ApplyError> {
    let at = event.recorded_at;
    let version = version_i64(event)?;
    let decoded = event.decode::<SagaEvent>()?;
    match (row, decoded) {
        (None, SagaEvent::SagaStarted { saga_id, order }) => {
            if order.order_id.as_uuid() != order_id {
                return Err(ApplyError::Invalid(format!(
                    "SagaStarted for order {} in stream {}",
                    order.order_id, event.stream_id
                )));
            }
            Ok(Row {
                order_id,
                saga_id,
                customer_id: order.customer_id.as_uuid(),
                state: SagaStatus::Running,
                compensation_reason: None,
                tracking_number: None,
                last_error: None,
                attention_step: None,
                steps: Vec::new(),
                version,
                started_at: at,
                updated_at: at,
            })
        }
        (Some(_), SagaEvent::SagaStarted { .. }) => Err(ApplyError::Invalid(format!(
            "SagaStarted {version} of {}: the saga has started already",
            event.stream_id
        ))),
        (None, _) => Err(ApplyError::Invalid(format!(
            "{} {version} of {}: the saga has not started",
            event.event_type, event.stream_id
        ))),
        (Some(mut row), event) => {
            apply_event(&mut row, event, at);
            row.version = version;
            row.updated_at = at;
            Ok(row)
        }
    }
}

/// What an event after `SagaStarted` changes; mirrors the saga's own
/// `evolve`, with the times from `recorded_at`.
fn apply_event(row: &mut Row, event: SagaEvent, at: DateTime<Utc>) {
    match event {
        // Handled by `evolve`: only the first event of a stream starts it.
        SagaEvent::SagaStarted { .. } => {}
        SagaEvent::StepStarted { step, attempt, .. } => match row.step_mut(&step) {
            Some(record) => {
                record.status = StepStatus::Running;
                record.attempts = record.attempts.max(attempt);
                record.finished_at = None;
            }
            None => row.steps.push(SagaStep {
                name: step.name().to_owned(),
                sku: step.sku().map(|s| s.as_str().to_owned()),
                status: StepStatus::Running,
                attempts: attempt,
                started_at: at,
                finished_at: None,
                error: None,
            }),
        },
        SagaEvent::StepSucceeded {
            step,
            tracking_number,
        } => {
            if let Some(record) = row.step_mut(&step) {
                record.status = StepStatus::Succeeded;
                record.finished_at = Some(at);
            }
            if tracking_number.is_some() {
                row.tracking_number = tracking_number;
            }
        }
        // What the API shows of a failure is its code, never a message
        // (an older saga's free text is mapped to one).
        SagaEvent::StepFailed { step, error, .. } => {
            let error = step_errors::error_code(step.name(), &error);
            if let Some(record) = row.step_mut(&step) {
                record.status = StepStatus::Failed;
                record.finished_at = None;
                record.error = Some(error.clone());
            }
            row.last_error = Some(error);
        }
        SagaEvent::StepRefused { step, code, .. } => {
            let error = step_errors::error_code(step.name(), &code);
            if let Some(record) = row.step_mut(&step) {
                record.status = StepStatus::Refused;
                record.finished_at = Some(at);
                record.error = Some(error.clone());
            }
            row.last_error = Some(error);
        }
        SagaEvent::CompensationStarted { reason } => {
            row.state = SagaStatus::Compensating;
            row.compensation_reason = Some(reason);
        }
        SagaEvent::SagaCompleted => row.state = SagaStatus::Completed,
        SagaEvent::SagaCompensated => row.state = SagaStatus::Compensated,
        SagaEvent::SagaNeedsAttention { step, error } => {
            row.state = SagaStatus::NeedsAttention;
            row.last_error = Some(step_errors::error_code(step.name(), &error));
            row.attention_step = Some(step);
        }
        SagaEvent::SagaRetried => {
            row.state = if row.compensation_reason.is_some() {
                SagaStatus::Compensating
            } else {
                SagaStatus::Running
            };
            if let Some(step) = row.attention_step.take() {
                if let Some(record) = row.step_mut(&step) {
                    if record.status == StepStatus::Refused {
                        // Tried again: no longer a final refusal.
                        record.status = StepStatus::Failed;
                        record.finished_at = None;
                    }
                }
            }
        }
    }
}

impl Row {
    fn step_mut(&mut self, step: &Step) -> Option<&mut SagaStep> {
        self.steps.iter_mut().find(|r| r.is(step))
    }
}
