//! `purser relay`: publishes the event log to Kafka.

use std::sync::Arc;

use anyhow::{Context, Result};
use service::metrics::Registry;
use service::{Component, Components};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Connections the relay uses.
pub const POOL_SIZE: u32 = 4;

/// Where `purser relay` serves its admin listener by default.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:8083";

/// Options of `purser relay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: kafka::KafkaConfig,
    #[command(flatten)]
    pub relay: kafka::RelayOptions,
}

/// `purser relay`'s own options.
#[derive(Debug, clap::Args)]
pub struct RelayCommand {
    #[command(flatten)]
    pub args: Args,
    #[command(flatten)]
    pub admin: crate::metrics::AdminArgs,
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
    /// Registers its metrics in the process's `registry` (how far it is
    /// behind the store's head read at each scrape).
    pub fn build(args: Args, pool: PgPool, registry: &Registry) -> Result<Relay> {
        let store = event_store::EventStore::new(pool);
        let metrics = kafka::RelayMetrics::new();
        registry.register(|r| metrics.register(r));
        {
            let (metrics, store) = (metrics.clone(), store.clone());
            registry.on_scrape(Arc::new(move || {
                let (metrics, store) = (metrics.clone(), store.clone());
                Box::pin(async move {
                    if let Err(error) = metrics.refresh(&store).await {
                        tracing::warn!(%error, "cannot read the relay's lag for /metrics");
                    }
                })
            }));
        }
        let relay = kafka::Relay::with_options(store, args.kafka.clone(), args.relay)
            .context("creating the Kafka producer")?
            .with_metrics(metrics);
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
pub async fn run(
    global: &GlobalArgs,
    command: RelayCommand,
    shutdown: CancellationToken,
) -> Result<()> {
    // Bad Kafka settings are refused before anything starts.
    command.args.kafka.validate()?;
    let pool = db::open(global, POOL_SIZE).await?;
    let registry = Registry::new();
    crate::metrics::register_pool(&registry, &pool);
    let admin = crate::saga::admin(command.admin.or(DEFAULT_ADMIN_ADDR), &registry).await?;
    let relay = Relay::build(command.args, pool.clone(), &registry)?;
    let mut components = Components::new(shutdown);
    components.spawn(relay);
    components.spawn(admin);
    let stopped = components.wait().await;
    pool.close().await;
    Ok(stopped?)
}
