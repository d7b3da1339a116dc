//! `inventory`: one row per SKU with its stock on hand and reserved.

use async_trait::async_trait;
use domain::{Aggregate, Inventory as InventoryAggregate, InventoryEvent};
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};

use crate::projection::{expect_one_row, stream_key, version_i64};
use crate::{ApplyError, Projection};

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
                    "INSERT INTO read_models.inventory \
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
            InventoryEvent::ItemRestocked { quantity } => (i64::from(quantity), 0),
            InventoryEvent::StockReserved { quantity, .. } => (0, i64::from(quantity)),
            InventoryEvent::ReservationReleased { quantity, .. } => (0, -i64::from(quantity)),
            InventoryEvent::ReservationCommitted { quantity, .. } => {
                (-i64::from(quantity), -i64::from(quantity))
            }
        };
        let result = sqlx::query(
            "UPDATE read_models.inventory \
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
}
