//! `inventory`: one row per SKU with its stock on hand and reserved, and its
//! catalog price (`unit_price` and `currency`, both null for an item created
//! before prices existed until it is priced).

use async_trait::async_trait;
use domain::{Aggregate, Inventory as InventoryAggregate, InventoryEvent, Price};
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};

use crate::projection::{expect_rows, stream_key, version_i64};
use crate::{ApplyError, Projection, Table};

/// Builds `read_models.inventory`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inventory;

impl Inventory {
    /// The projection's name, `inventory`.
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

    /// Set-based: one INSERT of the SKUs created in the batch, with their
    /// stock and price after all of the batch's events, and one UPDATE with
    /// the summed changes (and the last price set) of the other SKUs
    /// touched, whatever the number of events. Each row is written once.
    async fn apply_many(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &[&[&RecordedEvent]],
    ) -> Result<(), ApplyError> {
        let mut created = Columns::default();
        let mut changed = Columns::default();
        for events in streams {
            let Some(newest) = events.last() else {
                continue;
            };
            let sku = stream_key(newest)?;
            let (mut on_hand, mut reserved) = (0i64, 0i64);
            let mut name = None;
            // The price after the stream's events of the batch, if one of
            // them set it (a price, once set, is never unset).
            let mut price: Option<Price> = None;
            for (n, event) in events.iter().enumerate() {
                match event.decode::<InventoryEvent>()? {
                    // Only a slice's first event may create its SKU (one of
                    // an existing SKU fails to insert).
                    InventoryEvent::ItemCreated {
                        sku: created,
                        name: created_name,
                        quantity,
                        price: created_price,
                    } if n == 0 => {
                        if created.as_str() != sku {
                            return Err(ApplyError::Invalid(format!(
                                "ItemCreated for {created} in stream {}",
                                event.stream_id
                            )));
                        }
                        name = Some(created_name);
                        on_hand = i64::from(quantity);
                        price = created_price;
                    }
                    InventoryEvent::ItemCreated { .. } => {
                        return Err(ApplyError::Invalid(format!(
                            "ItemCreated {} of {}: the SKU exists already",
                            event.version, event.stream_id
                        )))
                    }
                    InventoryEvent::PriceChanged { price: changed } => price = Some(changed),
                    other => {
                        let (dh, dr) = deltas(&other);
                        on_hand += dh;
                        reserved += dr;
                    }
                }
            }
            let columns = if name.is_some() {
                &mut created
            } else {
                &mut changed
            };
            columns.skus.push(sku.to_owned());
            columns.names.extend(name);
            columns.on_hands.push(on_hand);
            columns.reserveds.push(reserved);
            columns
                .unit_prices
                .push(price.map(|p| p.unit_price.amount()));
            columns
                .currencies
                .push(price.map(|p| p.currency.to_string()));
            columns.versions.push(version_i64(newest)?);
            columns.at.push(newest.recorded_at);
        }
        if !created.skus.is_empty() {
            let result = sqlx::query(
                "INSERT INTO inventory \
                    (sku, name, on_hand, reserved, unit_price, currency, version, updated_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], \
                                      $5::bigint[], $6::text[], $7::bigint[], $8::timestamptz[]) \
                 ON CONFLICT (sku) DO NOTHING",
            )
            .bind(&created.skus)
            .bind(&created.names)
            .bind(&created.on_hands)
            .bind(&created.reserveds)
            .bind(&created.unit_prices)
            .bind(&created.currencies)
            .bind(&created.versions)
            .bind(&created.at)
            .execute(&mut **tx)
            .await?;
            expect_rows(
                result.rows_affected(),
                created.skus.len(),
                "inventory",
                streams,
            )?;
        }
        if !changed.skus.is_empty() {
            let result = sqlx::query(
                "UPDATE inventory AS i \
                 SET on_hand = i.on_hand + d.on_hand, reserved = i.reserved + d.reserved, \
                     unit_price = COALESCE(d.unit_price, i.unit_price), \
                     currency = COALESCE(d.currency, i.currency), \
                     version = d.version, updated_at = d.at \
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], \
                             $6::bigint[], $7::timestamptz[]) \
                    AS d (sku, on_hand, reserved, unit_price, currency, version, at) \
                 WHERE i.sku = d.sku",
            )
            .bind(&changed.skus)
            .bind(&changed.on_hands)
            .bind(&changed.reserveds)
            .bind(&changed.unit_prices)
            .bind(&changed.currencies)
            .bind(&changed.versions)
            .bind(&changed.at)
            .execute(&mut **tx)
            .await?;
            expect_rows(
                result.rows_affected(),
                changed.skus.len(),
                "inventory",
                streams,
            )?;
        }
        Ok(())
    }
}

/// The rows of one statement of [`Inventory::apply_many`], column by column:
/// the SKUs' stock and reservations (created SKUs) or their changes (the
/// others); `names` only for created SKUs; the price, where the batch set
/// one (null otherwise: unpriced when created, unchanged when updated).
#[derive(Default)]
struct Columns {
    skus: Vec<String>,
    names: Vec<String>,
    on_hands: Vec<i64>,
    reserveds: Vec<i64>,
    unit_prices: Vec<Option<i64>>,
    currencies: Vec<Option<String>>,
    versions: Vec<i64>,
    at: Vec<chrono::DateTime<chrono::Utc>>,
}

/// (on_hand, reserved) change of every event but the creation.
fn deltas(event: &InventoryEvent) -> (i64, i64) {
    match event {
        InventoryEvent::ItemCreated { .. } | InventoryEvent::PriceChanged { .. } => (0, 0),
        InventoryEvent::ItemRestocked { quantity } => (i64::from(*quantity), 0),
        InventoryEvent::StockReserved { quantity, .. } => (0, i64::from(*quantity)),
        InventoryEvent::ReservationReleased { quantity, .. } => (0, -i64::from(*quantity)),
        InventoryEvent::ReservationCommitted { quantity, .. } => {
            (-i64::from(*quantity), -i64::from(*quantity))
        }
    }
}
