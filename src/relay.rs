//! `purser relay`: publishes the event log to Kafka.

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Options of `purser relay`.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub kafka: kafka::KafkaConfig,
    #[command(flatten)]
    pub relay: kafka::RelayOptions,
}

/// `purser relay`: creates the topics (waiting for the broker if it is not
/// up yet), then publishes every event after the relay's checkpoint until
/// SIGTERM or ctrl-c; the batches in flight are finished first.
pub async fn run(global: &GlobalArgs, args: RelayArgs) -> Result<()> {
    let pool = db::connect(&global.database_url, 4).await?;
    migrations::run(&pool)
        .await
        .context("applying the migrations")?;
    let shutdown = CancellationToken::new();
    query_api::cancel_on_signal(shutdown.clone());
    let created = kafka::ensure_topics_retrying(&args.kafka, kafka::STREAM_TYPES, &shutdown)
        .await
        .with_context(|| format!("creating the topics at {}", args.kafka.brokers))?;
    if !created {
        return Ok(());
    }
    let relay =
        kafka::Relay::with_options(event_store::EventStore::new(pool), args.kafka, args.relay)
            .context("creating the Kafka producer")?;
    relay
        .run(shutdown)
        .await
        .context("relaying events to Kafka")
}
