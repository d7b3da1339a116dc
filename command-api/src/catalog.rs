//! The catalog as the command side sees it: each SKU's current price, read
//! by folding its inventory stream from the event store (never a read
//! model's copy, which may lag), so that an order is placed at the price in
//! force when it is decided (the API guide "Inventory"). The facts go into the
//! command; the order's decider stays pure (design decision 1).

use domain::{CatalogPrice, Inventory, LineToPlace};
use event_store::{EventStore, Repository};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::dto::RequestedLine;
use crate::error::ApiError;

/// How many SKUs of one order are loaded at once.
const CONCURRENT_LOADS: usize = 8;

/// Reads prices from the inventory streams.
#[derive(Clone)]
pub struct Catalog {
    repository: Repository<Inventory>,
}

impl Catalog {
    /// Loads from a snapshot of each stream taken every `snapshot_every`
    /// events (0: folds every stream from its start).
    pub fn new(store: EventStore, snapshot_every: u64) -> Catalog {
        Catalog {
            repository: Repository::new(store).with_snapshots(snapshot_every),
        }
    }

    /// `lines`, each with what the catalog holds for its SKU now.
    #[tracing::instrument(skip_all, fields(lines = lines.len()), err)]
    pub async fn price(&self, lines: Vec<RequestedLine>) -> Result<Vec<LineToPlace>, ApiError> {
        stream::iter(lines)
            .map(|line| async move {
                let catalog = self.look_up(&line).await?;
                Ok::<_, ApiError>(LineToPlace {
                    sku: line.sku,
                    quantity: line.quantity,
                    expected_price: line.expected_price,
                    catalog,
                })
            })
            .buffered(CONCURRENT_LOADS)
            .try_collect()
            .await
    }

    async fn look_up(&self, line: &RequestedLine) -> Result<CatalogPrice, ApiError> {
        let loaded = self.repository.load(line.sku.as_str()).await?;
        Ok(loaded.state.catalog_price())
    }
}
