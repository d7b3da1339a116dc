//! `inventory`: one row per SKU with its stock on hand and reserved.

use async_trait::async_trait;
use domain::{Aggregate, Inventory as InventoryAggregate, InventoryEvent};
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};

use crate::projection::{expect_one_row, expect_rows, stream_key, version_i64};
use crate::{ApplyError, Projection, Table};

/// Builds `read_models.inventory`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inventory;

impl Inventory {
    pub const NAME: &'static str = "inventory";
}

#[async_trait]
impl Projection for Inventory {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &[InventoryAggregate::STREAM_TYPE]
    }

    fn tables(&self) -> &'static [Table] {
        &[Table {
            name: "inventory",
            stream_key: "sku",
        }]
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let sku = stream_key(event)?;
        let version = version_i64(event)?;
        // (on_hand delta, reserved delta) for every event but the creation.
        let (on_hand, reserved) = match event.decode::<InventoryEvent>()? {
            InventoryEvent::ItemCreated {
                sku: created,
                name,
                quantity,
            } => {
                if created.as_str() != sku {
                    return Err(ApplyError::Invalid(format!(
                        "ItemCreated for {created} in stream {}",
                        event.stream_id
                    )));
                }
                let result = sqlx::query(
                    "INSERT INTO inventory \
                        (sku, name, on_hand, reserved, version, updated_at) \
                     VALUES ($1, $2, $3, 0, $4, $5) \
                     ON CONFLICT (sku) DO NOTHING",
                )
                .bind(sku)
                .bind(name)
                .bind(i64::from(quantity))
                .bind(version)
                .bind(event.recorded_at)
                .execute(&mut **tx)
                .await?;
                return expect_one_row(result, event, "inventory");
            }
            other => deltas(&other),
        };
        let result = sqlx::query(
            "UPDATE inventory \
             SET on_hand = on_hand + $2, reserved = reserved + $3, version = $4, updated_at = $5 \
             WHERE sku = $1",
        )
        .bind(sku)
        .bind(on_hand)
        .bind(reserved)
        .bind(version)
        .bind(event.recorded_at)
        .execute(&mut **tx)
        .await?;
        expect_one_row(result, event, "inventory")
    }

    /// Set-based: one INSERT for the SKUs created and one UPDATE with the
    /// summed changes of every SKU touched, whatever the number of events.
    async fn apply_many(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &[&[&RecordedEvent]],
    ) -> Result<(), ApplyError> {
        let (mut c_skus, mut c_names, mut c_on_hand, mut c_versions, mut c_at) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut skus, mut on_hands, mut reserveds, mut versions, mut at) =
            (vec![], vec![], vec![], vec![], vec![]);
        for events in streams {
            let Some(newest) = events.last() else {
                continue;
            };
            let sku = stream_key(newest)?;
            let (mut on_hand, mut reserved) = (0i64, 0i64);
            for event in events.iter() {
                match event.decode::<InventoryEvent>()? {
                    InventoryEvent::ItemCreated {
                        sku: created,
                        name,
                        quantity,
                    } => {
                        if created.as_str() != sku {
                            return Err(ApplyError::Invalid(format!(
                                "ItemCreated for {created} in stream {}",
                                event.stream_id
                            )));
                        }
                        c_skus.push(sku.to_owned());
                        c_names.push(name);
                        c_on_hand.push(i64::from(quantity));
                        c_versions.push(version_i64(event)?);
                        c_at.push(event.recorded_at);
                    }
                    other => {
                        let (dh, dr) = deltas(&other);
                        on_hand += dh;
                        reserved += dr;
                    }
                }
            }
            skus.push(sku.to_owned());
            on_hands.push(on_hand);
            reserveds.push(reserved);
            versions.push(version_i64(newest)?);
            at.push(newest.recorded_at);
        }
        if !c_skus.is_empty() {
            let result = sqlx::query(
                "INSERT INTO inventory (sku, name, on_hand, reserved, version, updated_at) \
                 SELECT s, n, q, 0, v, t \
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::timestamptz[]) \
                    AS c (s, n, q, v, t) \
                 ON CONFLICT (sku) DO NOTHING",
            )
            .bind(&c_skus)
            .bind(&c_names)
            .bind(&c_on_hand)
            .bind(&c_versions)
            .bind(&c_at)
            .execute(&mut **tx)
            .await?;
            expect_rows(result.rows_affected(), c_skus.len(), "created inventory")?;
        }
        if !skus.is_empty() {
            let result = sqlx::query(
                "UPDATE inventory AS i \
                 SET on_hand = i.on_hand + d.on_hand, reserved = i.reserved + d.reserved, \
                     version = d.version, updated_at = d.at \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::timestamptz[]) \
                    AS d (sku, on_hand, reserved, version, at) \
                 WHERE i.sku = d.sku",
            )
            .bind(&skus)
            .bind(&on_hands)
            .bind(&reserveds)
            .bind(&versions)
            .bind(&at)
            .execute(&mut **tx)
            .await?;
            expect_rows(result.rows_affected(), skus.len(), "inventory")?;
        }
        Ok(())
    }
}

/// (on_hand, reserved) change of every event but the creation.
fn deltas(event: &InventoryEvent) -> (i64, i64) {
    match event {
        InventoryEvent::ItemCreated { .. } => (0, 0),
        InventoryEvent::ItemRestocked { quantity } => (i64::from(*quantity), 0),
        InventoryEvent::StockReserved { quantity, .. } => (0, i64::from(*quantity)),
        InventoryEvent::ReservationReleased { quantity, .. } => (0, -i64::from(*quantity)),
        InventoryEvent::ReservationCommitted { quantity, .. } => {
            (-i64::from(*quantity), -i64::from(*quantity))
        }
    }
}
