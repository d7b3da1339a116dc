//! The read side on a [`Harness`]: projectors over its store, waits until
//! the projections caught up, snapshots of the read models.

use std::sync::Arc;
use std::time::Duration;

use projections::{Projection, Projector};

use crate::{eventually, Harness};

impl Harness {
    pub fn projector(&self, projection: impl Projection) -> Projector {
        Projector::new(Arc::new(projection), self.store.clone())
    }

    /// The projector of the projection called `name`.
    pub fn projector_named(&self, name: &str) -> Projector {
        Projector::new(
            projections::by_name(name).expect("a projection of that name"),
            self.store.clone(),
        )
    }

    /// Applies everything in the store to every projection.
    pub async fn project_all(&self) {
        let events = self.all_events().await;
        for projection in projections::all() {
            Projector::new(projection, self.store.clone())
                .apply_batch(&events)
                .await
                .expect("apply");
        }
    }

    /// Waits until the projections named have applied exactly every event
    /// of their stream types: the events of those types, less the events
    /// applied as the bookkeeping counts them (a rebuild's replayed ones,
    /// then each stream's row beyond its base), is 0 for each; not below
    /// either, which the Query API's lag would not show. `what` names the
    /// wait in the failure (with a seed, say).
    pub async fn caught_up(&self, names: &[&str], what: &str, within: Duration) {
        let pool = &self.db.pool;
        let followed: Vec<(&str, Vec<&str>)> = projections::all()
            .iter()
            .filter(|p| names.contains(&p.name()))
            .map(|p| (p.name(), p.stream_types().to_vec()))
            .collect();
        let followed = &followed;
        eventually(
            what,
            within,
            Duration::from_millis(100),
            move || async move {
                let mut off = Vec::new();
                for (name, types) in followed {
                    let unapplied: i64 = sqlx::query_scalar(
                        "SELECT (SELECT count(*) FROM event_store.events WHERE stream_type = ANY($2)) \
                              - coalesce((SELECT replayed_events FROM read_models.projection_status \
                                          WHERE projection = $1), 0) \
                              - coalesce((SELECT sum(version - base) FROM read_models.applied \
                                          WHERE projection = $1), 0)::bigint",
                    )
                    .bind(name)
                    .bind(types)
                    .fetch_one(pool)
                    .await
                    .expect("unapplied events");
                    if unapplied != 0 {
                        off.push((*name, unapplied));
                    }
                }
                if off.is_empty() {
                    Ok(())
                } else {
                    Err(off)
                }
            },
        )
        .await;
    }

    /// Every row of the read models (and the applied versions, however they
    /// are recorded) as text, in a
    /// stable order: two projections that converged give equal snapshots.
    pub async fn snapshot(&self) -> Vec<String> {
        let mut rows = Vec::new();
        for (table, order) in [
            ("read_models.accounts", "account_id"),
            ("read_models.account_transactions", "account_id, seq"),
            ("read_models.inventory", "sku"),
            ("read_models.orders", "order_id"),
            ("read_models.order_lines", "order_id, line_no"),
            ("read_models.parked", "projection, stream_id"),
        ] {
            let text: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT t::text FROM {table} AS t ORDER BY {order}"
            ))
            .fetch_all(&self.db.pool)
            .await
            .expect("snapshot");
            rows.extend(text.into_iter().map(|t| format!("{table} {t}")));
        }
        for projection in projections::all() {
            let name = projection.name();
            let applied =
                projections::applied_versions(&self.db.pool, name, projection.stream_types())
                    .await
                    .expect("applied versions");
            rows.extend(
                applied
                    .into_iter()
                    .map(|(stream, version)| format!("applied {name} {stream} {version}")),
            );
        }
        rows
    }
}
