//! `purser project`: the projection workers that build the read models.

use anyhow::{Context, Result};
use service::metrics::Registry;
use service::{Component, Components};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{db, relay, GlobalArgs};

/// Connections the projection workers use.
pub const POOL_SIZE: u32 = 10;

/// Where `purser project` serves its admin listener by default.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:8084";

/// Options of `purser project`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: kafka::KafkaConfig,
    #[command(flatten)]
    pub workers: WorkerArgs,
    #[command(flatten)]
    pub admin: crate::metrics::AdminArgs,
}

/// The workers' own options (`purser serve` has them too).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Projections to run, comma separated (default: all of accounts,
    /// inventory, orders, sagas).
    #[arg(
        id = "projection_names",
        long = "projections",
        env = "PURSER_PROJECTIONS",
        value_delimiter = ','
    )]
    pub projections: Vec<String>,
    /// Most events applied per database transaction.
    #[arg(id = "projection_batch_size", long = "projection-batch-size", env = "PURSER_PROJECTION_BATCH_SIZE",
          default_value_t = projections::DEFAULT_BATCH_SIZE as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Attempts before an event that fails to apply parks its stream.
    #[arg(id = "projection_max_attempts", long = "projection-max-attempts", env = "PURSER_PROJECTION_MAX_ATTEMPTS", default_value_t = projections::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Events per transaction of a rebuild requested over HTTP (`POST
    /// /projections/{name}/rebuild`), run by this process: the window folded
    /// in memory, as `purser projections rebuild --batch-size`.
    #[arg(long = "rebuild-batch-size", env = "PURSER_REBUILD_BATCH_SIZE",
          default_value_t = projections::rebuild::DEFAULT_BATCH_SIZE as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rebuild_batch_size: u32,
    /// At most this many events per second in a rebuild requested over
    /// HTTP (default: no limit), as `purser projections rebuild --max-rate`.
    #[arg(long = "rebuild-max-rate", env = "PURSER_REBUILD_MAX_RATE", value_name = "EVENTS_PER_SECOND",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rebuild_max_rate: Option<u64>,
}

/// The projection workers as a component: one worker per projection until
/// shutdown; the batch in hand is finished first.
pub struct Workers {
    store: event_store::EventStore,
    kafka: kafka::KafkaConfig,
    projections: Vec<String>,
    config: projections::WorkerConfig,
    ready: service::ReadyFlag,
    metrics: projections::metrics::WorkerMetrics,
    /// How the rebuilds requested over HTTP run.
    rebuild: projections::rebuild::RebuildOptions,
}

impl Workers {
    /// Registers their metrics in the process's `registry`, with the
    /// projections' progress (consumer lag, parked streams: from the
    /// database at each scrape) unless the process shows it already.
    pub fn build(
        kafka: kafka::KafkaConfig,
        args: WorkerArgs,
        pool: PgPool,
        registry: &Registry,
    ) -> Result<Workers> {
        // Unknown names fail here, before anything runs.
        for name in &args.projections {
            projections::by_name(name)?;
        }
        let metrics = projections::metrics::WorkerMetrics::new();
        registry.register(|r| metrics.register(r));
        crate::metrics::register_projection_status(registry, &pool);
        Ok(Workers {
            metrics,
            store: event_store::EventStore::new(pool),
            kafka,
            projections: args.projections,
            config: projections::WorkerConfig {
                batch_size: args.batch_size as usize,
                max_attempts: args.max_attempts,
                ..projections::WorkerConfig::default()
            },
            ready: service::ReadyFlag::detached(),
            rebuild: projections::rebuild::RebuildOptions {
                batch_size: args.rebuild_batch_size as usize,
                max_events_per_second: args.rebuild_max_rate,
                max_attempts: args.max_attempts,
                restart: false,
            },
        })
    }

    /// Set once every projection run here has a worker consuming that has
    /// applied what the event store held when it joined its group.
    pub fn with_ready(mut self, ready: service::ReadyFlag) -> Workers {
        self.ready = ready;
        self
    }
}

/// Sets `ready` once each of `names` is ready ([`projections::readiness`]).
async fn watch_readiness(
    pool: PgPool,
    names: Vec<&'static str>,
    ready: service::ReadyFlag,
    shutdown: CancellationToken,
) {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match projections::readiness::check(&pool, &names).await {
            Ok(each) if each.iter().all(|(_, r)| r.is_ready()) => {
                ready.set();
                return;
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "readiness of the projections"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

impl Component for Workers {
    type Error = anyhow::Error;

    fn name(&self) -> &'static str {
        "projection workers"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        // Started before the broker, the workers wait for it.
        if !relay::wait_for_topics(&self.kafka, &shutdown).await? {
            return Ok(());
        }
        let names: Vec<&'static str> = if self.projections.is_empty() {
            projections::names()
        } else {
            projections::names()
                .into_iter()
                .filter(|n| self.projections.iter().any(|p| p == n))
                .collect()
        };
        let watcher = tokio::spawn(watch_readiness(
            self.store.pool().clone(),
            names,
            self.ready,
            shutdown.child_token(),
        ));
        // The rebuilds operators request over HTTP run here, beside the
        // workers of the same projections.
        let requests = projections::requests::RequestRunner::new(
            self.store.clone(),
            &self.projections,
            self.rebuild,
        )?;
        let stop_requests = shutdown.child_token();
        let requests = tokio::spawn(requests.run(stop_requests.clone()));
        let ran = projections::run_workers_with(
            &self.projections,
            self.store,
            &self.kafka,
            self.config,
            self.metrics,
            shutdown.clone(),
        )
        .await
        .context("running the projection workers");
        watcher.abort();
        // A requested rebuild commits its batch and stops.
        stop_requests.cancel();
        let _ = requests.await;
        ran
    }
}

/// `purser project`.
pub async fn run(global: &GlobalArgs, args: Args, shutdown: CancellationToken) -> Result<()> {
    // Bad Kafka settings are refused before anything starts.
    args.kafka.validate()?;
    let pool = db::open(global, POOL_SIZE).await?;
    let registry = Registry::new();
    crate::metrics::register_pool(&registry, &pool);
    let admin = crate::saga::admin(args.admin.or(DEFAULT_ADMIN_ADDR), &registry).await?;
    let workers = Workers::build(args.kafka, args.workers, pool.clone(), &registry)?;
    let mut components = Components::new(shutdown);
    components.spawn(workers);
    components.spawn(admin);
    let stopped = components.wait().await;
    pool.close().await;
    Ok(stopped?)
}
