//! `purser serve`: every component in one process (Command API, relay,
//! projection workers, saga orchestrator, Query API), sharing one pool and
//! one shutdown token, each in a task of its own.

use anyhow::Result;
use service::auth::Access;
use service::metrics::Registry;
use service::Components;
use tokio_util::sync::CancellationToken;

use crate::{command_api, db, project, query_api, relay, saga, GlobalArgs};

/// Options of `purser serve`: those of every component it runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    http: service::HttpConfig,
    #[command(flatten)]
    command_api: ::command_api::Config,
    #[command(flatten)]
    kafka: kafka::KafkaConfig,
    #[command(flatten)]
    relay: kafka::RelayOptions,
    #[command(flatten)]
    workers: project::WorkerArgs,
    #[command(flatten)]
    query_api: ::query_api::QueryApiConfig,
    /// Both APIs authenticate with these options (each its own limits).
    #[command(flatten)]
    auth: ::auth::AuthConfig,
    #[command(flatten)]
    orchestrator: saga::OrchestratorArgs,
}

impl Args {
    /// The process's pool: each component's share.
    fn pool_size(&self) -> u32 {
        self.command_api.db_max_connections
            + relay::POOL_SIZE
            + project::POOL_SIZE
            + saga::POOL_SIZE
            + query_api::POOL_SIZE
    }
}

/// Builds every component (binding the addresses, so a taken port fails
/// before anything runs), then runs each in a task of its own until
/// shutdown. Both APIs' `/health/ready` answer 200 only once every
/// component is ready (the relay knows its role, every projection has a
/// worker consuming that caught up with the store as it was when it joined,
/// the orchestrator runs): from then on a command is readable within the
/// default `min_version` wait. The first to fail stops the others, which finish their work in
/// flight, and the process exits with its error.
pub async fn run(global: &GlobalArgs, mut args: Args, shutdown: CancellationToken) -> Result<()> {
    // Bad Kafka settings are refused before anything starts.
    args.kafka.validate()?;
    // Refused before anything starts without a JWKS (unless insecure).
    let authenticator = args.auth.authenticator()?;
    let command_access = Access::new(authenticator.clone(), &args.auth.rate_limit)
        .with_trusted_proxies(args.auth.trusted_proxies());
    let query_access = Access::new(authenticator, &args.auth.rate_limit)
        .with_trusted_proxies(args.auth.trusted_proxies());
    // One set of listener limits for both APIs.
    args.command_api.http = args.http.clone();
    args.query_api.http = args.http.clone();
    let pool = db::open(global, args.pool_size()).await?;
    // One registry: both APIs' /metrics and the admin listener serve it.
    let registry = Registry::new();
    crate::metrics::register_pool(&registry, &pool);
    let command_api =
        command_api::build(&args.command_api, pool.clone(), command_access, &registry).await?;
    // Both APIs answer ready only once every component is.
    let readiness = command_api.readiness().clone();
    let query_api = query_api::build(&args.query_api, pool.clone(), query_access, &registry)
        .await?
        .with_readiness(readiness.clone());
    let admin = saga::admin(args.orchestrator.admin_addr, &registry).await?;
    let orchestrator = saga::Orchestrator::build(args.orchestrator.saga, pool.clone(), &registry)?
        .with_readiness(&readiness);
    let workers =
        project::Workers::build(args.kafka.clone(), args.workers, pool.clone(), &registry)?
            .with_ready(readiness.register("projection workers"));
    let relay = relay::Relay::build(
        relay::Args {
            kafka: args.kafka,
            relay: args.relay,
        },
        pool.clone(),
        &registry,
    )?
    .with_ready(readiness.register("relay"));

    let mut components = Components::new(shutdown);
    components.spawn(command_api);
    components.spawn(relay);
    components.spawn(workers);
    components.spawn(orchestrator);
    components.spawn(query_api);
    components.spawn(admin);
    let stopped = components.wait().await;
    pool.close().await;
    Ok(stopped?)
}
