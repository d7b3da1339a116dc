//! The sweep that keeps `Idempotency-Key`s for `PURSER_IDEMPOTENCY_TTL`
//! (the API guide: "kept at least ... and purged after it"): every
//! `idempotency_sweep_every` (a minute), the keys older than the TTL are
//! deleted, [`PURGE_BATCH`] rows per statement until none is left, and
//! counted in `command_api_idempotency_keys_purged_total`. Every Command
//! API process sweeps; concurrent sweeps skip each other's rows.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Rows deleted per statement.
pub(crate) const PURGE_BATCH: u32 = 1000;

/// Purges expired idempotency keys of the state's store, on a timer.
pub(crate) struct IdempotencySweep {
    state: AppState,
    ttl: Duration,
    every: Duration,
}

impl IdempotencySweep {
    pub(crate) fn new(state: AppState, ttl: Duration, every: Duration) -> IdempotencySweep {
        IdempotencySweep { state, ttl, every }
    }

    /// Sweeps now and then every `every` until `shutdown` is cancelled.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.every.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // Each batch is one statement, atomic on its own: stopping
            // between two loses nothing.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.sweep() => {}
            }
        }
    }

    /// One sweep. A failure (the database is down) is logged and left to
    /// the next tick.
    pub(crate) async fn sweep(&self) {
        match self
            .state
            .store()
            .purge_idempotency(self.ttl, PURGE_BATCH)
            .await
        {
            Ok(purged) => {
                self.state.metrics().record_idempotency_purged(purged);
                if purged > 0 {
                    tracing::info!(purged, ttl = ?self.ttl, "purged expired idempotency keys");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot purge expired idempotency keys"),
        }
    }
}
