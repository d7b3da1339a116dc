//! `orders`: one row per order, with its lines.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Aggregate, Order, OrderEvent};
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::projection::{expect_rows, stream_uuid, version_i64};
use crate::{ApplyError, Projection, Table};

/// Builds `read_models.orders` and `read_models.order_lines`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Orders;

impl Orders {
    /// The projection's name, `orders`.
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

    fn tables(&self) -> &'static [Table] {
        &[
            Table {
                name: "orders",
                stream_key: "order_id",
            },
            Table {
                name: "order_lines",
                stream_key: "order_id",
            },
        ]
    }

    /// Set-based: one INSERT for the orders placed, one for their lines and
    /// one UPDATE for the final state of every order touched.
    async fn apply_many(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &[&[&RecordedEvent]],
    ) -> Result<(), ApplyError> {
        let mut placed = Placed::default();
        let mut lines = Lines::default();
        let mut last = Last::default();
        for events in streams {
            let Some(newest) = events.last() else {
                continue;
            };
            let order_id = stream_uuid(newest)?;
            let mut change = Change::default();
            for event in events.iter() {
                let next = match event.decode::<OrderEvent>()? {
                    OrderEvent::OrderPlaced {
                        order_id: id,
                        customer_id,
                        account_id,
                        currency,
                        lines: order_lines,
                        total,
                        ..
                    } => {
                        if id.as_uuid() != order_id {
                            return Err(ApplyError::Invalid(format!(
                                "OrderPlaced for {id} in stream {}",
                                event.stream_id
                            )));
                        }
                        placed.ids.push(order_id);
                        placed.customers.push(customer_id.as_uuid());
                        placed.accounts.push(account_id.as_uuid());
                        placed.currencies.push(currency.as_str().to_owned());
                        placed.totals.push(i64::from(total));
                        placed.versions.push(version_i64(event)?);
                        placed.at.push(event.recorded_at);
                        for (line_no, line) in (1i32..).zip(&order_lines) {
                            lines.orders.push(order_id);
                            lines.line_no.push(line_no);
                            lines.skus.push(line.sku.as_str().to_owned());
                            lines.quantities.push(i64::from(line.quantity));
                            lines.prices.push(i64::from(line.unit_price));
                        }
                        continue;
                    }
                    other => change_of(other),
                };
                // Later events override earlier ones, field by field, as
                // the UPDATE's coalesce would event after event.
                change = Change {
                    status: next.status.or(change.status),
                    tracking_number: next.tracking_number.or(change.tracking_number),
                    cancellation_reason: next.cancellation_reason.or(change.cancellation_reason),
                };
            }
            last.ids.push(order_id);
            last.statuses.push(change.status);
            last.tracking.push(change.tracking_number);
            last.reasons.push(change.cancellation_reason);
            last.versions.push(version_i64(newest)?);
            last.at.push(newest.recorded_at);
        }
        if !placed.ids.is_empty() {
            let result = sqlx::query(
                "INSERT INTO orders \
                    (order_id, customer_id, account_id, currency, status, total, version, \
                     placed_at, updated_at) \
                 SELECT o, c, a, cur, 'placed', t, v, at, at \
                 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], \
                             $6::bigint[], $7::timestamptz[]) AS p (o, c, a, cur, t, v, at) \
                 ON CONFLICT (order_id) DO NOTHING",
            )
            .bind(&placed.ids)
            .bind(&placed.customers)
            .bind(&placed.accounts)
            .bind(&placed.currencies)
            .bind(&placed.totals)
            .bind(&placed.versions)
            .bind(&placed.at)
            .execute(&mut **tx)
            .await?;
            expect_rows(result.rows_affected(), placed.ids.len(), "order", streams)?;
        }
        if !lines.orders.is_empty() {
            sqlx::query(
                "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price) \
                 SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::bigint[], $5::bigint[])",
            )
            .bind(&lines.orders)
            .bind(&lines.line_no)
            .bind(&lines.skus)
            .bind(&lines.quantities)
            .bind(&lines.prices)
            .execute(&mut **tx)
            .await?;
        }
        if !last.ids.is_empty() {
            let result = sqlx::query(
                "UPDATE orders AS o \
                 SET status = coalesce(l.status, o.status), \
                     tracking_number = coalesce(l.tracking_number, o.tracking_number), \
                     cancellation_reason = coalesce(l.reason, o.cancellation_reason), \
                     version = l.version, updated_at = l.at \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                             $6::timestamptz[]) AS l (order_id, status, tracking_number, reason, version, at) \
                 WHERE o.order_id = l.order_id",
            )
            .bind(&last.ids)
            .bind(&last.statuses)
            .bind(&last.tracking)
            .bind(&last.reasons)
            .bind(&last.versions)
            .bind(&last.at)
            .execute(&mut **tx)
            .await?;
            expect_rows(result.rows_affected(), last.ids.len(), "order", streams)?;
        }
        Ok(())
    }
}

/// What an event after `OrderPlaced` changes on the order row.
fn change_of(event: OrderEvent) -> Change {
    match event {
        OrderEvent::OrderPlaced { .. } => Change::default(),
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
    }
}

/// Columns of the orders placed by a batch.
#[derive(Default)]
struct Placed {
    ids: Vec<Uuid>,
    customers: Vec<Uuid>,
    accounts: Vec<Uuid>,
    currencies: Vec<String>,
    totals: Vec<i64>,
    versions: Vec<i64>,
    at: Vec<DateTime<Utc>>,
}

/// Columns of their lines.
#[derive(Default)]
struct Lines {
    orders: Vec<Uuid>,
    line_no: Vec<i32>,
    skus: Vec<String>,
    quantities: Vec<i64>,
    prices: Vec<i64>,
}

/// The state each order of a batch ends in (`None`: unchanged).
#[derive(Default)]
struct Last {
    ids: Vec<Uuid>,
    statuses: Vec<Option<&'static str>>,
    tracking: Vec<Option<String>>,
    reasons: Vec<Option<&'static str>>,
    versions: Vec<i64>,
    at: Vec<DateTime<Utc>>,
}

/// What an event after `OrderPlaced` changes on the order row.
#[derive(Debug, Default)]
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
