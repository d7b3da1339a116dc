//! `purser relay`: publishes the event log to Kafka.

use anyhow::{Context, Result};
use service::Component;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Connections the relay uses.
pub const POOL_SIZE: u32 = 4;

/// Options of `purser relay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: kafka::KafkaConfig,
    #[command(flatten)]
    pub relay: kafka::RelayOptions,
}

/// The relay as a component: creates the topics (waiting for the broker if
/// it is not up yet), then publishes every event after its checkpoint until
/// shutdown; the batches in flight are finished first.
pub struct Relay {
    relay: kafka::Relay,
    kafka: kafka::KafkaConfig,
    ready: service::ReadyFlag,
}

impl Relay {
    pub fn build(args: Args, pool: PgPool) -> Result<Relay> {
        let relay = kafka::Relay::with_options(
            event_store::EventStore::new(pool),
            args.kafka.clone(),
            args.relay,
        )
        .context("creating the Kafka producer")?;
        Ok(Relay {
            relay,
            kafka: args.kafka,
            ready: service::ReadyFlag::detached(),
        })
    }

    /// Set once the relay knows its role: active (publishing), or standing
    /// by because another relay is.
    pub fn with_ready(mut self, ready: service::ReadyFlag) -> Relay {
        self.ready = ready;
        self
    }
}

impl Component for Relay {
    type Error = anyhow::Error;

    fn name(&self) -> &'static str {
        "relay"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<()> {
        if !wait_for_topics(&self.kafka, &shutdown).await? {
            return Ok(());
        }
        let mut role = self.relay.role();
        let ready = self.ready;
        tokio::spawn(async move {
            if role
                .wait_for(|role| *role != kafka::RelayRole::Stopped)
                .await
                .is_ok()
            {
                ready.set();
            }
        });
        self.relay
            .run(shutdown)
            .await
            .context("relaying events to Kafka")
    }
}

/// Creates the topics, waiting for the broker if it is not up yet; `false`
/// when shutdown came first.
pub async fn wait_for_topics(
    kafka: &kafka::KafkaConfig,
    shutdown: &CancellationToken,
) -> Result<bool> {
    kafka::ensure_topics_retrying(kafka, kafka::STREAM_TYPES, shutdown)
        .await
        .with_context(|| format!("creating the topics at {}", kafka.brokers))
}

/// `purser relay`.
pub async fn run(global: &GlobalArgs, args: Args, shutdown: CancellationToken) -> Result<()> {
    let pool = db::open(global, POOL_SIZE).await?;
    Relay::build(args, pool)?.run(shutdown).await
}
