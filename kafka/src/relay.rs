//! The relay: tails the event store gap-safely and publishes every event to
//! Kafka, advancing its checkpoint only after the broker acknowledged.

use std::collections::VecDeque;
use std::time::Duration;

use event_store::{Checkpoint, EventStore, RawRecordedEvent, Subscription};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::leadership::{Leadership, Lease, RELAY_LOCK_KEY, STANDBY_RETRY};
use crate::message::{Encoder, Messages};
use crate::metrics::RelayMetrics;
use crate::publisher::Pending;
use crate::{Error, EventPublisher, KafkaConfig, Result};

/// Name of the relay's checkpoint in `event_store.checkpoints`.
pub const CHECKPOINT_NAME: &str = "relay";

/// How long a batch in progress may take to finish after shutdown was asked.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// First pause after a failed batch; it doubles up to `max_backoff_ms`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Tuning of the relay (the `purser relay` command line).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RelayOptions {
    /// Most events read from the store and published per batch. Large
    /// batches make large produce requests, which a broker takes much faster
    /// while the relay catches up; at a steady pace batches are small anyway.
    #[arg(long = "relay-batch-size", env = "PURSER_RELAY_BATCH_SIZE", default_value_t = DEFAULT.batch_size,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// How long the broker may take to acknowledge a message before the batch
    /// fails and is published again.
    #[arg(
        long = "relay-delivery-timeout-ms",
        env = "PURSER_RELAY_DELIVERY_TIMEOUT_MS",
        default_value_t = DEFAULT.delivery_timeout_ms
    )]
    pub delivery_timeout_ms: u64,
    /// How long one step waits for new events (woken by the store's
    /// notifications) before it reports [`RelayOutcome::Idle`].
    #[arg(
        long = "relay-idle-wait-ms",
        env = "PURSER_RELAY_IDLE_WAIT_MS",
        default_value_t = DEFAULT.idle_wait_ms
    )]
    pub idle_wait_ms: u64,
    /// Batches handed to the producer before the oldest one is acknowledged
    /// (each is checkpointed, in order, once all of its events are).
    #[arg(long = "relay-max-in-flight", env = "PURSER_RELAY_MAX_IN_FLIGHT", default_value_t = DEFAULT.max_in_flight,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Longest pause between retries while the broker or the store fails.
    #[arg(
        long = "relay-max-backoff-ms",
        env = "PURSER_RELAY_MAX_BACKOFF_MS",
        default_value_t = DEFAULT.max_backoff_ms
    )]
    pub max_backoff_ms: u64,
}

/// The defaults, of the command line too.
const DEFAULT: RelayOptions = RelayOptions {
    batch_size: 5000,
    delivery_timeout_ms: 30_000,
    idle_wait_ms: 1000,
    max_in_flight: 4,
    max_backoff_ms: 10_000,
};

impl Default for RelayOptions {
    fn default() -> Self {
        DEFAULT
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

/// Whether a relay publishes: only the one holding the relay lock does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRole {
    /// Not running: [`Relay::run`] has not tried to take the lock yet, or
    /// has returned.
    Stopped,
    /// Waiting for the relay lock: another relay is active (or the
    /// database cannot be reached).
    Standby,
    /// Holding the relay lock and publishing.
    Active,
}

/// How a term as the active relay ended.
enum TermEnd {
    /// Shutdown was asked; the lease is still held.
    Shutdown,
    /// The lock connection failed: another relay may already be active.
    Lost,
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

/// Publishes the event log to Kafka (design decision 4).
///
/// Batches come, in the store's gap-safe `(transaction_id, position)` order,
/// from a [`Subscription`] running in a task of its own a few batches ahead.
/// Up to `max_in_flight` batches are handed to the producer before the
/// oldest is acknowledged, so the broker always has work; a batch's
/// checkpoint is saved only once every event of it, and of every batch
/// before it, is acknowledged. A failure saves nothing more: the relay
/// forgets what is in flight and reads again from the saved checkpoint, so
/// those events are published again by a later step. Delivery is
/// at-least-once (a consumer can see a duplicate, or, after a failure, a
/// stream version before the one preceding it arrives again), and consumers
/// drop what they have already applied.
pub struct Relay {
    store: EventStore,
    config: KafkaConfig,
    options: RelayOptions,
    publisher: EventPublisher,
    /// The saved checkpoint, loaded on the first step.
    checkpoint: Option<Checkpoint>,
    /// Reads on from `checkpoint`; rebuilt from it after a failure.
    reader: Option<Reader>,
    /// Batches sent and not yet acknowledged, oldest first.
    in_flight: VecDeque<InFlight>,
    /// A step is under way (still set at the next step: it was dropped).
    interrupted: bool,
    /// Whether [`Relay::run`] holds the relay lock.
    role: watch::Sender<RelayRole>,
    metrics: RelayMetrics,
}

/// A batch handed to the producer.
struct InFlight {
    /// How many events it has.
    events: usize,
    /// The checkpoint after its last event.
    to: Checkpoint,
    pending: Pending,
}

/// A batch read and encoded, ready for the producer.
struct Batch {
    messages: Messages,
    /// The checkpoint after its last event.
    to: Checkpoint,
}

impl Batch {
    fn encode(encoder: &mut Encoder, events: Vec<RawRecordedEvent>) -> Result<Option<Batch>> {
        let Some(to) = events.last().map(RawRecordedEvent::checkpoint) else {
            return Ok(None);
        };
        let mut messages = Messages::with_capacity(events.len());
        for event in events {
            encoder.encode(event, &mut messages)?;
        }
        Ok(Some(Batch { messages, to }))
    }
}

/// Two tasks ahead of the publisher: one reads batches from a
/// [`Subscription`], the other encodes them, so reading the next batch
/// overlaps with encoding this one (and both with waiting for the broker).
struct Reader {
    batches: mpsc::Receiver<Result<Batch>>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Reader {
    fn spawn(
        store: &EventStore,
        config: &KafkaConfig,
        from: Checkpoint,
        options: &RelayOptions,
    ) -> Reader {
        let max = options.batch_size as usize;
        let poll = options.idle_wait().min(Subscription::DEFAULT_POLL_INTERVAL);
        // Each stage holds one batch and has one more waiting: enough to
        // keep ahead of the broker, and little memory.
        let (read_sender, mut read) = mpsc::channel::<Result<Vec<RawRecordedEvent>>>(1);
        let (sender, batches) = mpsc::channel(1);
        let mut subscription = store.subscribe(from).with_poll_interval(poll);
        let reading = tokio::spawn(
            async move {
                loop {
                    let events = subscription.next_raw_batch(max).await.map_err(Error::from);
                    let failed = events.is_err();
                    if read_sender.send(events).await.is_err() || failed {
                        break;
                    }
                }
            }
            .instrument(tracing::debug_span!("relay_reader")),
        );
        let mut encoder = Encoder::new(config);
        let encoding = tokio::spawn(
            async move {
                while let Some(events) = read.recv().await {
                    let batch = match events.and_then(|events| Batch::encode(&mut encoder, events))
                    {
                        Ok(None) => continue,
                        Ok(Some(batch)) => Ok(batch),
                        Err(error) => Err(error),
                    };
                    let failed = batch.is_err();
                    if sender.send(batch).await.is_err() || failed {
                        break;
                    }
                }
            }
            .instrument(tracing::debug_span!("relay_encoder")),
        );
        Reader {
            batches,
            tasks: [reading, encoding],
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
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
            reader: None,
            in_flight: VecDeque::new(),
            interrupted: false,
            role: watch::Sender::new(RelayRole::Stopped),
            metrics: RelayMetrics::default(),
        })
    }

    /// Counts what it does in `metrics` (the process's).
    pub fn with_metrics(mut self, metrics: RelayMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn set_role(&self, role: RelayRole) -> RelayRole {
        self.metrics.set_active(role == RelayRole::Active);
        self.role.send_replace(role)
    }

    /// Whether this relay is active or standing by, as [`Relay::run`] goes
    /// (a relay stepped by hand with [`Relay::process_batch`] takes no lock
    /// and stays [`RelayRole::Stopped`] here).
    pub fn role(&self) -> watch::Receiver<RelayRole> {
        self.role.subscribe()
    }

    /// The checkpoint this relay last loaded or saved (`None` before the
    /// first step).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint
    }

    /// One step: hands new batches to the producer while there is room,
    /// then waits for the oldest batch in flight to be acknowledged and saves
    /// its checkpoint. Waits up to the idle wait for new events when nothing
    /// is in flight, and reports [`RelayOutcome::Idle`] if none came.
    #[tracing::instrument(
        skip_all,
        fields(from_transaction, from_position, in_flight, events, to_position),
        err
    )]
    ///
    /// Cancel-safe: if the future is dropped before it completes, the next
    /// step forgets what was in flight and reads again from the saved
    /// checkpoint (nothing is lost; some events may be published twice).
    pub async fn process_batch(&mut self) -> Result<RelayOutcome> {
        self.recover_if_interrupted();
        let result = self.step().await;
        self.interrupted = false;
        if result.is_err() {
            self.rewind();
        }
        result
    }

    /// Forgets what is in flight: the next step reads again from the saved
    /// checkpoint.
    fn rewind(&mut self) {
        self.in_flight.clear();
        self.reader = None;
    }

    /// Marks a step as started; rewinds first if the previous one was
    /// dropped midway (a later batch's checkpoint must never be saved
    /// while an earlier one's acknowledgements were abandoned).
    fn recover_if_interrupted(&mut self) {
        if std::mem::replace(&mut self.interrupted, true) {
            tracing::debug!("previous step was interrupted; reading again from the checkpoint");
            self.rewind();
        }
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
        let reader = self
            .reader
            .get_or_insert_with(|| Reader::spawn(&self.store, &self.config, from, &self.options));

        while self.in_flight.len() < self.options.max_in_flight as usize {
            let next = if self.in_flight.is_empty() {
                match tokio::time::timeout(self.options.idle_wait(), reader.batches.recv()).await {
                    Err(_elapsed) => return Ok(RelayOutcome::Idle),
                    Ok(batch) => batch,
                }
            } else {
                match reader.batches.try_recv() {
                    Ok(batch) => Some(batch),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            let Batch { messages, to } = next.ok_or(Error::ReaderStopped)??;
            let events = messages.len();
            let pending = self.publisher.send(messages).await.inspect_err(|_| {
                self.metrics.broker_error();
            })?;
            self.in_flight.push_back(InFlight {
                events,
                to,
                pending,
            });
        }
        span.record("in_flight", self.in_flight.len());
        match self.complete_oldest().await? {
            Some(outcome) => Ok(outcome),
            None => Ok(RelayOutcome::Idle),
        }
    }

    /// Waits for the oldest batch in flight and saves its checkpoint.
    async fn complete_oldest(&mut self) -> Result<Option<RelayOutcome>> {
        let Some(InFlight {
            events,
            to,
            pending,
        }) = self.in_flight.pop_front()
        else {
            return Ok(None);
        };
        let span = tracing::Span::current();
        span.record("events", events);
        span.record("to_position", to.position);
        if let Err(error) = pending.wait().await {
            self.metrics.broker_error();
            if let Some(fatal) = self.publisher.fatal_error() {
                tracing::warn!(%fatal, "producer failed fatally; starting a new one");
                self.publisher =
                    EventPublisher::new(&self.config, self.options.delivery_timeout())?;
            }
            return Err(error);
        }
        self.store.save_checkpoint(CHECKPOINT_NAME, to).await?;
        self.checkpoint = Some(to);
        self.metrics.published(events);
        tracing::debug!(events, position = to.position, "batch relayed");
        Ok(Some(RelayOutcome::Published {
            events,
            checkpoint: to,
        }))
    }

    /// Waits for every batch in flight and saves the checkpoint after them.
    async fn finish(&mut self) -> Result<()> {
        self.recover_if_interrupted();
        let result = async {
            while self.complete_oldest().await?.is_some() {}
            Ok(())
        }
        .await;
        self.interrupted = false;
        if result.is_err() {
            self.rewind();
        }
        result
    }

    /// Publishes while this relay is the active one, until `shutdown` is
    /// cancelled (design decision 12).
    ///
    /// A relay first takes the relay lock, a PostgreSQL advisory lock held on
    /// a connection of its own; while another relay holds it, this one
    /// stands by and tries again every second. The active relay runs steps
    /// back to back while all is well, and with exponential backoff while the
    /// broker or the store fails (nothing is lost meanwhile: the events wait
    /// in the store). If its lock connection fails it stops publishing at
    /// once: the step in progress is dropped, the producer with whatever it
    /// still had queued is discarded, and the relay stands by again; a
    /// standby that takes over reads from the saved checkpoint. A batch in
    /// progress at shutdown gets a few seconds to finish, then the lock is
    /// released. Failures are logged and retried, never returned.
    #[tracing::instrument(skip_all, fields(prefix = %self.config.topic_prefix))]
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!("relay started");
        let mut leadership = Leadership::new(self.store.pool(), RELAY_LOCK_KEY);
        loop {
            let Some(lease) = self.take_lock(&mut leadership, &shutdown).await else {
                break;
            };
            self.set_role(RelayRole::Active);
            tracing::info!(
                active = true,
                "relay active: holding the relay lock, publishing"
            );
            let end = self.publish_while_held(&lease, &shutdown).await;
            match end {
                TermEnd::Lost => {
                    self.set_role(RelayRole::Standby);
                    tracing::warn!(active = false, "relay lock lost: stopped publishing");
                    self.forget()?;
                    // A standby gets the first chance to take over.
                    tokio::select! {
                        () = tokio::time::sleep(STANDBY_RETRY) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                TermEnd::Shutdown => {
                    self.stop().await;
                    lease.release().await;
                    break;
                }
            }
        }
        self.set_role(RelayRole::Stopped);
        tracing::info!("relay stopped");
        Ok(())
    }

    /// Tries every [`STANDBY_RETRY`] until the relay lock is taken (`Some`)
    /// or `shutdown` is cancelled (`None`), standing by meanwhile.
    async fn take_lock(
        &self,
        leadership: &mut Leadership,
        shutdown: &CancellationToken,
    ) -> Option<Lease> {
        let mut failing = false;
        loop {
            let attempt = tokio::select! {
                attempt = leadership.try_acquire() => attempt,
                () = shutdown.cancelled() => return None,
            };
            match attempt {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => {
                    failing = false;
                    if self.set_role(RelayRole::Standby) != RelayRole::Standby {
                        tracing::info!(
                            active = false,
                            "relay standby: another relay holds the relay lock; trying again every second"
                        );
                    }
                }
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, "cannot reach the database to take the relay lock; retrying");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(STANDBY_RETRY) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// After the lock was lost: forgets the checkpoint and what is in flight
    /// (the next term reads the saved checkpoint again), and replaces the
    /// producer so that nothing it still had queued goes out.
    fn forget(&mut self) -> Result<()> {
        self.rewind();
        self.checkpoint = None;
        self.interrupted = false;
        let fresh = EventPublisher::new(&self.config, self.options.delivery_timeout())?;
        let old = std::mem::replace(&mut self.publisher, fresh);
        // Dropping a producer purges its queue, then blocks briefly.
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }

    /// Runs steps until shutdown or until `lease` is lost.
    async fn publish_while_held(&mut self, lease: &Lease, shutdown: &CancellationToken) -> TermEnd {
        let max_backoff = Duration::from_millis(self.options.max_backoff_ms).max(MIN_BACKOFF);
        let mut backoff = MIN_BACKOFF;
        loop {
            if lease.is_lost() {
                return TermEnd::Lost;
            }
            let outcome = {
                let step = self.process_batch();
                tokio::pin!(step);
                tokio::select! {
                    biased;
                    () = lease.lost() => return TermEnd::Lost,
                    outcome = &mut step => outcome,
                    () = shutdown.cancelled() => {
                        tokio::select! {
                            biased;
                            () = lease.lost() => return TermEnd::Lost,
                            finished = tokio::time::timeout(SHUTDOWN_GRACE, step) => if finished.is_err() {
                                tracing::warn!("step unfinished at shutdown; its batch will be published again");
                            },
                        }
                        return TermEnd::Shutdown;
                    }
                }
            };
            let pause = match outcome {
                Ok(_) => {
                    backoff = MIN_BACKOFF;
                    continue;
                }
                Err(error) => {
                    self.metrics.step_failed();
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "relay step failed");
                    let pause = backoff;
                    backoff = (backoff * 2).min(max_backoff);
                    pause
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = lease.lost() => return TermEnd::Lost,
                () = shutdown.cancelled() => return TermEnd::Shutdown,
            }
        }
    }

    /// At shutdown, still holding the lock: waits a little for the batches
    /// in flight and saves the checkpoint after them.
    async fn stop(&mut self) {
        match tokio::time::timeout(SHUTDOWN_GRACE, self.finish()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "batches in flight at shutdown failed; they will be published again")
            }
            Err(_elapsed) => tracing::warn!(
                "batches in flight at shutdown unacknowledged; they will be published again"
            ),
        }
        // Only messages of abandoned batches can be left; they are
        // published again from the checkpoint by the next relay anyway.
        if let Err(error) = self.publisher.flush(SHUTDOWN_GRACE) {
            tracing::warn!(%error, "messages left unsent at shutdown");
        }
    }
}
