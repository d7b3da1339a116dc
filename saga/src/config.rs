use std::time::Duration;

use rand::Rng;

use crate::CarrierConfig;

/// Tuning of the orchestrator: `purser saga` options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct SagaConfig {
    /// How long one attempt of a step may take (persisted as its deadline).
    #[arg(long = "saga-step-timeout-ms", env = "PURSER_SAGA_STEP_TIMEOUT_MS", default_value_t = DEFAULT.step_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub step_timeout_ms: u64,
    /// Attempts of a step (since the last operator retry) before the saga
    /// needs attention.
    #[arg(long = "saga-max-attempts", env = "PURSER_SAGA_MAX_ATTEMPTS", default_value_t = DEFAULT.max_attempts,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// First retry delay after a transient failure; doubles per attempt,
    /// with jitter.
    #[arg(
        long = "saga-backoff-ms",
        env = "PURSER_SAGA_BACKOFF_MS",
        default_value_t = DEFAULT.backoff_ms
    )]
    pub backoff_ms: u64,
    /// Longest retry delay.
    #[arg(
        long = "saga-backoff-max-ms",
        env = "PURSER_SAGA_BACKOFF_MAX_MS",
        default_value_t = DEFAULT.backoff_max_ms
    )]
    pub backoff_max_ms: u64,
    /// How long a claimed saga stays with this orchestrator without being
    /// renewed; another one takes it over after that (a crashed holder).
    #[arg(long = "saga-lease-ms", env = "PURSER_SAGA_LEASE_MS", default_value_t = DEFAULT.lease_ms,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub lease_ms: u64,
    /// Sagas driven at the same time.
    #[arg(long = "saga-concurrency", env = "PURSER_SAGA_CONCURRENCY", default_value_t = DEFAULT.concurrency,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// How often the work queue is looked at when nothing woke it.
    #[arg(long = "saga-poll-ms", env = "PURSER_SAGA_POLL_MS", default_value_t = DEFAULT.poll_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_ms: u64,
    /// The state of an item, an account, an order or a saga is saved every
    /// this many events of its stream (and when a load had to read more):
    /// loading costs the same however long the stream. 0: never.
    #[arg(
        id = "saga_snapshot_every",
        long = "saga-snapshot-every",
        env = "PURSER_SAGA_SNAPSHOT_EVERY",
        default_value_t = DEFAULT.snapshot_every
    )]
    pub snapshot_every: u64,
    // The carrier's own options (a doc comment here would be taken by
    // clap as help text).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub carrier: CarrierConfig,
}

/// The defaults, of the command line too.
const DEFAULT: SagaConfig = SagaConfig {
    step_timeout_ms: 5_000,
    max_attempts: 8,
    backoff_ms: 200,
    backoff_max_ms: 30_000,
    lease_ms: 30_000,
    concurrency: 32,
    poll_ms: 200,
    snapshot_every: 100,
    carrier: CarrierConfig::DEFAULT,
};

impl Default for SagaConfig {
    fn default() -> Self {
        DEFAULT
    }
}

impl SagaConfig {
    /// The delay before attempt `attempt + 1`: exponential from
    /// `backoff_ms`, capped, with "equal jitter" (half fixed, half random).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let full = self
            .backoff_ms
            .saturating_mul(1u64 << exponent)
            .min(self.backoff_max_ms);
        let half = full / 2;
        let jitter = if half > 0 {
            rand::rng().random_range(0..=half)
        } else {
            0
        };
        Duration::from_millis(half + jitter)
    }

    /// The lease taken for a step: long enough for the step's deadline.
    pub fn lease_for_step_ms(&self) -> u64 {
        self.lease_ms
            .max(self.step_timeout_ms.saturating_add(1_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let config = SagaConfig {
            backoff_ms: 100,
            backoff_max_ms: 1_000,
            ..SagaConfig::default()
        };
        for _ in 0..100 {
            let first = config.backoff(1).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let third = config.backoff(3).as_millis();
            assert!((200..=400).contains(&third), "{third}");
            let capped = config.backoff(30).as_millis();
            assert!((500..=1_000).contains(&capped), "{capped}");
        }
    }
}
