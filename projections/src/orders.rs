//! `orders`: one row per order, with its lines.

use async_trait::async_trait;
use domain::{Aggregate, Order, OrderEvent};
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};

use crate::projection::{expect_one_row, stream_uuid, version_i64};
use crate::{ApplyError, Projection};

/// Builds `read_models.orders` and `read_models.order_lines`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Orders;

impl Orders {
    pub const NAME: &'static str = "orders";
}

#[async_trait]
impl Projection for Orders {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &[Order::STREAM_TYPE]
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let order_id = stream_uuid(event)?;
        let version = version_i64(event)?;
        let change = match event.decode::<OrderEvent>()? {
            OrderEvent::OrderPlaced {
                order_id: placed,
                customer_id,
                account_id,
                currency,
                lines,
                total,
                ..
            } => {
                if placed.as_uuid() != order_id {
                    return Err(ApplyError::Invalid(format!(
                        "OrderPlaced for {placed} in stream {}",
                        event.stream_id
                    )));
                }
                let result = sqlx::query(
                    "INSERT INTO read_models.orders \
                        (order_id, customer_id, account_id, currency, status, total, version, \
                         placed_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'placed', $5, $6, $7, $7) \
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order_id)
                .bind(customer_id.as_uuid())
                .bind(account_id.as_uuid())
                .bind(currency.as_str())
                .bind(i64::from(total))
                .bind(version)
                .bind(event.recorded_at)
                .execute(&mut **tx)
                .await?;
                expect_one_row(result, event, "order")?;

                let mut line_no = Vec::with_capacity(lines.len());
                let mut skus = Vec::with_capacity(lines.len());
                let mut quantities = Vec::with_capacity(lines.len());
                let mut prices = Vec::with_capacity(lines.len());
                for (i, line) in (1i32..).zip(&lines) {
                    line_no.push(i);
                    skus.push(line.sku.as_str().to_owned());
                    quantities.push(i64::from(line.quantity));
                    prices.push(i64::from(line.unit_price));
                }
                sqlx::query(
                    "INSERT INTO read_models.order_lines \
                        (order_id, line_no, sku, quantity, unit_price) \
                     SELECT $1, * FROM unnest($2::int[], $3::text[], $4::bigint[], $5::bigint[])",
                )
                .bind(order_id)
                .bind(line_no)
                .bind(skus)
                .bind(quantities)
                .bind(prices)
                .execute(&mut **tx)
                .await?;
                return Ok(());
            }
            OrderEvent::OrderReserved => Change::status("reserved"),
            OrderEvent::OrderPaid => Change::status("paid"),
            OrderEvent::OrderShipped { tracking_number } => Change {
                tracking_number: Some(tracking_number),
                ..Change::status("shipped")
            },
            // The request is recorded in the stream; the read model shows the
            // outcome (`OrderCancelled`) once the saga has decided.
            OrderEvent::CancellationRequested { .. } => Change::default(),
            OrderEvent::OrderCancelled { reason } => Change {
                cancellation_reason: Some(reason.as_str()),
                ..Change::status("cancelled")
            },
        };
        let result = sqlx::query(
            "UPDATE read_models.orders \
             SET status = coalesce($2, status), \
                 tracking_number = coalesce($3, tracking_number), \
                 cancellation_reason = coalesce($4, cancellation_reason), \
                 version = $5, updated_at = $6 \
             WHERE order_id = $1",
        )
        .bind(order_id)
        .bind(change.status)
        .bind(change.tracking_number)
        .bind(change.cancellation_reason)
        .bind(version)
        .bind(event.recorded_at)
        .execute(&mut **tx)
        .await?;
        expect_one_row(result, event, "order")
    }
}

/// What an event after `OrderPlaced` changes on the order row.
#[derive(Default)]
struct Change {
    status: Option<&'static str>,
    tracking_number: Option<String>,
    cancellation_reason: Option<&'static str>,
}

impl Change {
    fn status(status: &'static str) -> Self {
        Change {
            status: Some(status),
            ..Change::default()
        }
    }
}
