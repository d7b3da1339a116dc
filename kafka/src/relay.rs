//! The relay: tails the event store gap-safely and publishes every event to
//! Kafka, advancing its checkpoint only after the broker acknowledged.

use std::time::Duration;

use event_store::{Checkpoint, EventStore, Subscription};
use tokio_util::sync::CancellationToken;

use crate::{EventPublisher, KafkaConfig, Result};

/// Name of the relay's checkpoint in `event_store.checkpoints`.
pub const CHECKPOINT_NAME: &str = "relay";

/// How long a batch in progress may take to finish after shutdown was asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// First pause after a failed batch; it doubles up to `max_backoff_ms`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Tuning of the relay (the `purser relay` command line).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RelayOptions {
    /// Events read from the store and published per batch.
    #[arg(long = "relay-batch-size", env = "RELAY_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// How long the broker may take to acknowledge a message before the batch
    /// fails and is published again.
    #[arg(
        long = "relay-delivery-timeout-ms",
        env = "RELAY_DELIVERY_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub delivery_timeout_ms: u64,
    /// How long one step waits for new events (woken by the store's
    /// notifications) before it reports [`RelayOutcome::Idle`].
    #[arg(
        long = "relay-idle-wait-ms",
        env = "RELAY_IDLE_WAIT_MS",
        default_value_t = 1000
    )]
    pub idle_wait_ms: u64,
    /// Longest pause between retries while the broker or the store fails.
    #[arg(
        long = "relay-max-backoff-ms",
        env = "RELAY_MAX_BACKOFF_MS",
        default_value_t = 10_000
    )]
    pub max_backoff_ms: u64,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            delivery_timeout_ms: 30_000,
            idle_wait_ms: 1000,
            max_backoff_ms: 10_000,
        }
    }
}

impl RelayOptions {
    fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    fn idle_wait(&self) -> Duration {
        Duration::from_millis(self.idle_wait_ms)
    }
}

/// What one step of the relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// `events` were acknowledged by the broker and the checkpoint saved.
    Published {
        /// How many events the batch had.
        events: usize,
        /// The checkpoint saved after them.
        checkpoint: Checkpoint,
    },
    /// Nothing new in the store within the idle wait.
    Idle,
}

/// Publishes the event log to Kafka (DESIGN.md point 4).
///
/// Each step takes the next batch after the checkpoint from a gap-safe
/// [`Subscription`] of the store (waiting a little for one if there is none
/// yet), publishes it, waits for every acknowledgement and only then saves
/// the checkpoint. A failed step saves nothing and rewinds the subscription
/// to the saved checkpoint, so the batch is published again by a later step:
/// delivery is at-least-once, and consumers drop what they have already
/// applied.
pub struct Relay {
    store: EventStore,
    config: KafkaConfig,
    options: RelayOptions,
    publisher: EventPublisher,
    /// The saved checkpoint, loaded on the first step.
    checkpoint: Option<Checkpoint>,
    /// Reads on from `checkpoint`; rebuilt from it after a failure.
    subscription: Option<Subscription>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .field("options", &self.options)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay with the default [`RelayOptions`].
    pub fn new(store: EventStore, config: KafkaConfig) -> Result<Self> {
        Self::with_options(store, config, RelayOptions::default())
    }

    /// A relay tuned by `options`.
    pub fn with_options(
        store: EventStore,
        config: KafkaConfig,
        options: RelayOptions,
    ) -> Result<Self> {
        let publisher = EventPublisher::new(&config, options.delivery_timeout())?;
        Ok(Self {
            store,
            config,
            options,
            publisher,
            checkpoint: None,
            subscription: None,
        })
    }

    /// The checkpoint this relay last loaded or saved (`None` before the
    /// first step).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint
    }

    /// One step: publishes the next batch after the checkpoint and saves the
    /// checkpoint once every event of it is acknowledged.
    #[tracing::instrument(
        skip_all,
        fields(from_transaction, from_position, events, to_position),
        err
    )]
    pub async fn process_batch(&mut self) -> Result<RelayOutcome> {
        let result = self.step().await;
        if result.is_err() {
            // Read again from the saved checkpoint next time.
            self.subscription = None;
        }
        result
    }

    async fn step(&mut self) -> Result<RelayOutcome> {
        let span = tracing::Span::current();
        let from = match self.checkpoint {
            Some(checkpoint) => checkpoint,
            None => {
                let saved = self.store.load_checkpoint(CHECKPOINT_NAME).await?;
                self.checkpoint = Some(saved);
                saved
            }
        };
        span.record("from_transaction", from.transaction_id);
        span.record("from_position", from.position);
        let idle_wait = self.options.idle_wait();
        let max = self.options.batch_size as usize;
        let subscription = self.subscription.get_or_insert_with(|| {
            self.store
                .subscribe(from)
                .with_poll_interval(idle_wait.min(Subscription::DEFAULT_POLL_INTERVAL))
        });
        // Cancel-safe: on timeout the subscription has not moved.
        let Ok(events) = tokio::time::timeout(idle_wait, subscription.next_batch(max)).await else {
            return Ok(RelayOutcome::Idle);
        };
        let events = events?;
        let Some(last) = events.last() else {
            return Ok(RelayOutcome::Idle);
        };
        let to = last.checkpoint();
        span.record("events", events.len());
        span.record("to_position", to.position);

        if let Err(error) = self.publisher.publish(&events).await {
            if let Some(fatal) = self.publisher.fatal_error() {
                tracing::warn!(%fatal, "producer failed fatally; starting a new one");
                self.publisher =
                    EventPublisher::new(&self.config, self.options.delivery_timeout())?;
            }
            return Err(error);
        }
        self.store.save_checkpoint(CHECKPOINT_NAME, to).await?;
        self.checkpoint = Some(to);
        tracing::debug!(
            events = events.len(),
            position = to.position,
            "batch relayed"
        );
        Ok(RelayOutcome::Published {
            events: events.len(),
            checkpoint: to,
        })
    }

    /// Runs steps until `shutdown` is cancelled: back to back while all is
    /// well, and with exponential backoff while the broker or the
    /// store fails (nothing is lost meanwhile: the events wait in the store).
    /// A batch in progress at shutdown gets a few seconds to finish.
    #[tracing::instrument(skip_all, fields(prefix = %self.config.topic_prefix))]
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!("relay started");
        let max_backoff = Duration::from_millis(self.options.max_backoff_ms).max(MIN_BACKOFF);
        let mut backoff = MIN_BACKOFF;
        loop {
            let outcome = {
                let step = self.process_batch();
                tokio::pin!(step);
                tokio::select! {
                    outcome = &mut step => Some(outcome),
                    () = shutdown.cancelled() => {
                        if tokio::time::timeout(SHUTDOWN_GRACE, step).await.is_err() {
                            tracing::warn!("batch unfinished at shutdown; it will be published again");
                        }
                        None
                    }
                }
            };
            let pause = match outcome {
                None => break,
                Some(Ok(_)) => {
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "relay step failed");
                    let pause = backoff;
                    backoff = (backoff * 2).min(max_backoff);
                    pause
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => break,
            }
        }
        tracing::info!("relay stopped");
        self.publisher.flush(SHUTDOWN_GRACE)
    }
}
