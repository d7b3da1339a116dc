//! A projection worker: a Kafka consumer group member feeding a [`Projector`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::EventStore;
use kafka::{Delivered, EventConsumer, KafkaConfig};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::metrics::WorkerMetrics;
use crate::{BatchReport, Projection, Projector, Result, DEFAULT_MAX_ATTEMPTS};

/// Default most events per batch of a worker.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// Tuning of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Most events taken from Kafka per batch (one database transaction).
    pub batch_size: usize,
    /// How long one batch waits for its first message.
    pub poll_wait: Duration,
    /// Attempts before a failing event parks its stream.
    pub max_attempts: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: DEFAULT_BATCH_SIZE,
            poll_wait: Duration::from_millis(500),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// The consumer group of a projection: `{prefix}.projection.{name}`.
pub fn group_id(kafka: &KafkaConfig, projection: &str) -> String {
    format!("{}.projection.{projection}", kafka.topic_prefix)
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No message arrived within `poll_wait`.
    Idle,
    /// A batch was applied and its offsets committed.
    Applied(BatchReport),
}

/// A batch whose effects are committed to the database but whose Kafka
/// offsets are not yet: pass it to [`Worker::commit`].
#[derive(Debug)]
#[must_use = "offsets are committed by Worker::commit"]
pub struct AppliedBatch {
    deliveries: Vec<Delivered>,
    /// What the projector did with the batch.
    pub report: BatchReport,
}

impl AppliedBatch {
    /// The Kafka messages of the batch, whose offsets are still to commit.
    pub fn deliveries(&self) -> &[Delivered] {
        &self.deliveries
    }
}

/// A worker's row in `read_models.workers`.
struct Membership {
    id: uuid::Uuid,
    joined: bool,
    seen: Instant,
}

impl Membership {
    fn new() -> Self {
        Membership {
            id: uuid::Uuid::now_v7(),
            joined: false,
            seen: Instant::now(),
        }
    }

    /// Joins once the group gave the worker partitions, then refreshes the
    /// row every [`crate::readiness::HEARTBEAT`].
    async fn keep(&mut self, worker: &Worker) -> Result<()> {
        let pool = worker.projector.store().pool();
        if !self.joined {
            if worker.assignment()?.is_empty() {
                return Ok(());
            }
            let head =
                crate::readiness::joined(pool, worker.projector.projection().as_ref(), self.id)
                    .await?;
            tracing::info!(
                projection = worker.projector.name(),
                member = %self.id,
                start_head = head,
                "projection worker consuming"
            );
            self.joined = true;
            self.seen = Instant::now();
        } else if self.seen.elapsed() >= crate::readiness::HEARTBEAT {
            crate::readiness::heartbeat(pool, worker.projector.name(), self.id).await?;
            self.seen = Instant::now();
        }
        Ok(())
    }
}

/// Consumes the projection's topics in its consumer group and applies what it
/// receives. Kafka offsets are committed after the database commit and are
/// only a hint: a redelivered event is a duplicate and changes nothing.
pub struct Worker {
    projector: Projector,
    consumer: EventConsumer,
    config: WorkerConfig,
    /// A batch that failed to apply (transient error), retried before
    /// anything new is fetched.
    pending: Option<Vec<Delivered>>,
    metrics: WorkerMetrics,
}

impl Worker {
    /// Joins the projection's consumer group (subscribing to its topics).
    pub fn new(
        projection: Arc<dyn Projection>,
        store: EventStore,
        kafka: &KafkaConfig,
        config: WorkerConfig,
    ) -> Result<Self> {
        let consumer = EventConsumer::new(
            kafka,
            &group_id(kafka, projection.name()),
            projection.stream_types(),
        )?;
        let projector = Projector::new(projection, store).with_max_attempts(config.max_attempts);
        Ok(Worker {
            projector,
            consumer,
            config,
            pending: None,
            metrics: WorkerMetrics::default(),
        })
    }

    /// Counts its batches in `metrics` (the process's).
    pub fn with_metrics(mut self, metrics: WorkerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The projector it feeds.
    pub fn projector(&self) -> &Projector {
        &self.projector
    }

    /// The partitions this worker holds now, as `(topic, partition)`.
    pub fn assignment(&self) -> Result<Vec<(String, i32)>> {
        Ok(self.consumer.assignment()?)
    }

    /// Fetches a batch (or retries the pending one) and applies it in one
    /// database transaction. `Ok(None)` when nothing arrived in time.
    #[tracing::instrument(skip_all, fields(projection = self.projector.name()), err)]
    pub async fn apply_next_batch(&mut self) -> Result<Option<AppliedBatch>> {
        let deliveries = match self.pending.take() {
            Some(pending) => pending,
            None => {
                self.consumer
                    .next_batch(self.config.batch_size, self.config.poll_wait)
                    .await?
            }
        };
        if deliveries.is_empty() {
            return Ok(None);
        }
        for d in &deliveries {
            tracing::trace!(
                topic = %d.topic,
                partition = d.partition,
                offset = d.offset,
                stream_id = %d.event.stream_id,
                position = d.event.position,
                "delivered"
            );
        }
        let started = Instant::now();
        let span = batch_span(self.projector.name(), &deliveries);
        match self
            .projector
            .apply_batch(deliveries.iter().map(|d| &d.event))
            .instrument(span)
            .await
        {
            Ok(report) => {
                self.metrics.applied(
                    self.projector.name(),
                    deliveries.len(),
                    &report,
                    started.elapsed(),
                );
                Ok(Some(AppliedBatch { deliveries, report }))
            }
            Err(error) => {
                self.metrics.failed(self.projector.name());
                self.pending = Some(deliveries);
                Err(error)
            }
        }
    }

    /// Commits the Kafka offsets of a batch already committed to the database.
    pub fn commit(&self, batch: &AppliedBatch) -> Result<()> {
        self.consumer.commit(&batch.deliveries)?;
        Ok(())
    }

    /// One step: fetch, apply (database commit), commit offsets.
    pub async fn process_batch(&mut self) -> Result<Outcome> {
        match self.apply_next_batch().await? {
            None => Ok(Outcome::Idle),
            Some(batch) => {
                if let Err(error) = self.commit(&batch) {
                    // Offsets are a hint: the events are applied, a
                    // redelivery is skipped as a duplicate.
                    tracing::warn!(error = %error, "cannot commit offsets");
                }
                tracing::debug!(report = ?batch.report, "batch applied");
                Ok(Outcome::Applied(batch.report))
            }
        }
    }

    /// Runs until `shutdown` is cancelled, finishing the batch in hand.
    /// Failures are logged and retried with backoff.
    ///
    /// Once the consumer group has given it partitions, the worker records
    /// itself as a member with the store's head at that moment, and keeps
    /// its row fresh ([`crate::readiness`]); it deletes the row when it
    /// stops.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        const MIN_BACKOFF: Duration = Duration::from_millis(100);
        const MAX_BACKOFF: Duration = Duration::from_secs(5);
        let mut backoff = MIN_BACKOFF;
        let mut member = Membership::new();
        tracing::info!(
            projection = self.projector.name(),
            "projection worker started"
        );
        while !shutdown.is_cancelled() {
            match self.process_batch().await {
                Ok(_) => backoff = MIN_BACKOFF,
                Err(error) => {
                    tracing::warn!(projection = self.projector.name(), error = %error, ?backoff, "batch failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if let Err(error) = member.keep(&self).await {
                tracing::warn!(projection = self.projector.name(), %error, "cannot record the worker's membership");
            }
        }
        if member.joined {
            let pool = self.projector.store().pool();
            if let Err(error) = crate::readiness::left(pool, self.projector.name(), member.id).await
            {
                tracing::warn!(projection = self.projector.name(), %error, "cannot remove the worker's membership");
            }
        }
        tracing::info!(
            projection = self.projector.name(),
            "projection worker stopped"
        );
        Ok(())
    }
}

/// The span of one batch, when tracing is on: a child of the publish span
/// of its first traced event (the request's trace), linked to the others'.
fn batch_span(projection: &str, deliveries: &[Delivered]) -> tracing::Span {
    if !event_store::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "projection batch",
        projection,
        events = deliveries.len(),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let mut parents = deliveries.iter().filter_map(|d| {
        d.traceparent
            .as_deref()
            .or(d.event.metadata.traceparent.as_deref())
    });
    if let Some(first) = parents.next() {
        event_store::trace::set_parent(&span, first);
    }
    for other in parents.take(64) {
        event_store::trace::add_link(&span, other);
    }
    event_store::trace::record_ids(&span);
    span
}
