//! The read side: `purser project` (projection workers) and
//! `purser query-api`.

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Options of `purser project`.
#[derive(Debug, clap::Args)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub kafka: kafka::KafkaConfig,
    /// Projections to run, comma separated (default: all of accounts,
    /// inventory, orders, sagas).
    #[arg(
        long = "projections",
        env = "PURSER_PROJECTIONS",
        value_delimiter = ','
    )]
    pub projections: Vec<String>,
    /// Most events applied per database transaction.
    #[arg(long = "projection-batch-size", env = "PROJECTION_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Attempts before an event that fails to apply parks its stream.
    #[arg(long = "projection-max-attempts", env = "PROJECTION_MAX_ATTEMPTS", default_value_t = projections::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Instead of running the workers: un-park this stream (e.g.
    /// `account-0191...`) in the selected projections that follow its type,
    /// apply its waiting events from the event store, and exit.
    #[arg(long = "unpark", value_name = "STREAM_ID")]
    pub unpark: Option<String>,
}

/// `purser project`: one worker per projection until SIGTERM or ctrl-c; the
/// batch in hand is finished first.
pub async fn run_project(global: &GlobalArgs, args: ProjectArgs) -> Result<()> {
    let pool = db::connect(&global.database_url, 10).await?;
    migrations::run(&pool)
        .await
        .context("applying the migrations")?;
    if let Some(stream_id) = &args.unpark {
        return unpark(event_store::EventStore::new(pool), &args, stream_id).await;
    }
    let shutdown = CancellationToken::new();
    query_api::cancel_on_signal(shutdown.clone());
    // Started before the broker, the workers wait for it.
    let ready = kafka::ensure_topics_retrying(&args.kafka, kafka::STREAM_TYPES, &shutdown)
        .await
        .with_context(|| format!("creating the topics at {}", args.kafka.brokers))?;
    if !ready {
        return Ok(());
    }
    let config = projections::WorkerConfig {
        batch_size: args.batch_size as usize,
        max_attempts: args.max_attempts,
        ..projections::WorkerConfig::default()
    };
    projections::run_workers(
        &args.projections,
        event_store::EventStore::new(pool),
        &args.kafka,
        config,
        shutdown,
    )
    .await
    .context("running the projection workers")
}

/// `purser query-api`: serves until SIGTERM or ctrl-c, then finishes the
/// requests in flight.
pub async fn run_query_api(global: &GlobalArgs, config: query_api::QueryApiConfig) -> Result<()> {
    let pool = db::connect(&global.database_url, 20).await?;
    migrations::run(&pool)
        .await
        .context("applying the migrations")?;
    let application = query_api::Application::build(&config, pool)
        .await
        .with_context(|| format!("binding the query API to {}", config.addr))?;
    let shutdown = CancellationToken::new();
    query_api::cancel_on_signal(shutdown.clone());
    application
        .run_until_stopped(shutdown)
        .await
        .context("serving the query API")
}

/// `purser project --unpark STREAM_ID`.
async fn unpark(store: event_store::EventStore, args: &ProjectArgs, stream_id: &str) -> Result<()> {
    let selected = if args.projections.is_empty() {
        projections::all()
    } else {
        args.projections
            .iter()
            .map(|name| projections::by_name(name))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut followed = false;
    for projection in selected {
        let follows = projection.stream_types().iter().any(|t| {
            stream_id
                .strip_prefix(t)
                .is_some_and(|rest| rest.starts_with('-'))
        });
        if !follows {
            continue;
        }
        followed = true;
        let name = projection.name();
        let report = projections::Projector::new(projection, store.clone())
            .with_max_attempts(args.max_attempts)
            .unpark(stream_id)
            .await
            .with_context(|| format!("un-parking {stream_id} in {name}"))?;
        if report.parked.is_empty() {
            println!(
                "{name}: {stream_id} applied {} waiting events",
                report.applied
            );
        } else {
            println!(
                "{name}: {stream_id} applied {} events and is parked again",
                report.applied
            );
        }
    }
    anyhow::ensure!(
        followed,
        "no selected projection follows the stream {stream_id}"
    );
    Ok(())
}
