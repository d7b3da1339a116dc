//! The relay's metrics (`prometheus-client`), registered by the process
//! that runs it in its one registry: events published, batches, broker
//! errors, whether this relay is the active one, and how far the relay's
//! checkpoint is behind the store's head (read from the database when
//! scraped, so a standby shows it too).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use event_store::EventStore;

use crate::relay::CHECKPOINT_NAME;
use crate::Result;

/// Most events counted behind the head (a bound on the scrape's cost).
const MAX_COUNTED: i64 = 1_000_000;

/// Cheap to clone: clones count together.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    published: Counter,
    batches: Counter,
    broker_errors: Counter,
    failures: Counter,
    active: Gauge,
    behind_events: Gauge,
    behind_seconds: Gauge<f64, AtomicU64>,
}

impl RelayMetrics {
    pub fn new() -> RelayMetrics {
        RelayMetrics::default()
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "purser_relay_events_published",
            "Events the broker acknowledged (rate() of it is the publish rate)",
            self.published.clone(),
        );
        r.register(
            "purser_relay_batches_published",
            "Batches the broker acknowledged and whose checkpoint was saved",
            self.batches.clone(),
        );
        r.register(
            "purser_relay_broker_errors",
            "Produce requests the broker failed or did not acknowledge in time",
            self.broker_errors.clone(),
        );
        r.register(
            "purser_relay_step_failures",
            "Relay steps that failed (broker or store) and were retried with backoff",
            self.failures.clone(),
        );
        r.register(
            "purser_relay_active",
            "1 while this relay holds the relay lock and publishes",
            self.active.clone(),
        );
        r.register(
            "purser_relay_events_behind",
            "Events in the store after the relay's saved checkpoint (counted up to a million)",
            self.behind_events.clone(),
        );
        r.register(
            "purser_relay_seconds_behind",
            "Age of the oldest event not relayed yet (0 when caught up)",
            self.behind_seconds.clone(),
        );
    }

    pub(crate) fn published(&self, events: usize) {
        self.published.inc_by(events as u64);
        self.batches.inc();
    }

    pub(crate) fn broker_error(&self) {
        self.broker_errors.inc();
    }

    pub(crate) fn step_failed(&self) {
        self.failures.inc();
    }

    pub(crate) fn set_active(&self, active: bool) {
        self.active.set(i64::from(active));
    }

    /// Reads how far the saved checkpoint is behind the store's head.
    pub async fn refresh(&self, store: &EventStore) -> Result<()> {
        let checkpoint = store.load_checkpoint(CHECKPOINT_NAME).await?;
        let (events, seconds): (i64, f64) = sqlx::query_as(
            "SELECT count(*), \
                    coalesce(extract(epoch FROM now() - min(recorded_at)), 0)::float8 \
             FROM (SELECT recorded_at FROM event_store.events \
                   WHERE (transaction_id, position) > ($1::text::xid8, $2) LIMIT $3) AS behind",
        )
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.position)
        .bind(MAX_COUNTED)
        .fetch_one(store.pool())
        .await
        .map_err(event_store::Error::from)?;
        self.behind_events.set(events);
        self.behind_seconds.set(seconds.max(0.0));
        Ok(())
    }
}
